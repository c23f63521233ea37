"""The sandbox stops or fails hostile programs (each layer on its own where this machine has it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from evaluation.sandbox import (
    _LAUNCHER,
    Isolation,
    SandboxLimits,
    Status,
    detect_isolation,
    run_program,
)

FAST = SandboxLimits(timeout_s=1.0, memory_mb=256)


def _isolation(python_guards: bool, needs: str | None = None) -> Isolation:
    """The detected layers, with the Python guards on or off; with them off, skip unless the OS
    layer `needs` ("namespaces", "unique_uid" or "nproc") exists here, so that layer alone is
    what the test checks."""
    d = detect_isolation()
    if not python_guards:
        have = {
            "namespaces": d.namespaces,
            "unique_uid": d.drop_privileges,
            "nproc": d.drop_privileges or os.geteuid() != 0,  # root ignores RLIMIT_NPROC
        }
        if needs is not None and not have[needs]:
            pytest.skip(f"OS layer {needs!r} is not available here: {d.describe()}")
    return Isolation(d.namespaces, d.drop_privileges, python_guards)


def _launcher_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        if str(_LAUNCHER).encode() in cmdline and "\nState:\tZ" not in status:
            pids.add(int(entry.name))
    return pids


def test_detects_the_strongest_layers_this_machine_allows():
    d = detect_isolation()
    ns_ok = shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True).returncode == 0
    )
    assert d.namespaces == ns_ok, d.describe()
    if os.geteuid() == 0 and ns_ok:
        assert d.drop_privileges, d.describe()


def test_program_passes_and_its_temp_dir_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_program("open('scratch.txt', 'w').write('ok')\nassert 2 + 2 == 4", FAST)
    assert result.status is Status.PASSED, result
    assert 0 < result.duration_s < 1.0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "program,reason",
    [
        ("assert 1 == 2, 'wrong'", "AssertionError: wrong"),
        ("import sys\nsys.exit(0)", "SystemExit: 0"),
        ("import os\nos._exit(0)", "without the pass marker"),
        ("def f(:\n  pass", "SyntaxError"),
    ],
)
def test_failing_or_exiting_program_is_failed(program, reason):
    result = run_program(program, FAST)
    assert result.status is Status.FAILED
    assert reason in result.reason


@pytest.mark.parametrize("program", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_endless_program_times_out(program):
    result = run_program(program, FAST)
    assert result.status is Status.TIMEOUT, result
    assert result.duration_s < 3.0


def test_unbounded_allocation_fails():
    result = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))", FAST)
    assert result.status is Status.FAILED, result
    assert "MemoryError" in result.reason


@pytest.mark.parametrize("python_guards", [True, False], ids=["guards", "os-only"])
def test_fork_loop_fails(python_guards):
    program = "import os, time\nfor _ in range(50):\n    if os.fork() == 0:\n        time.sleep(30)"
    result = run_program(program, FAST, _isolation(python_guards, needs="nproc"))
    assert result.status is Status.FAILED, result
    assert _launcher_pids() == set()


def test_children_die_with_the_process_group_on_timeout():
    # Without the guards and without a unique uid, root may fork: the group kill is what stops it.
    d = detect_isolation()
    isolation = Isolation(d.namespaces, drop_privileges=False, python_guards=False)
    program = (
        "import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        time.sleep(60)\n"
        "while True:\n    pass"
    )
    result = run_program(program, FAST, isolation)
    assert result.status in (Status.TIMEOUT, Status.FAILED), result
    deadline = time.monotonic() + 3
    while _launcher_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _launcher_pids() == set()


@pytest.mark.parametrize("python_guards", [True, False], ids=["guards", "os-only"])
def test_write_outside_work_dir_does_not_land(tmp_path, python_guards):
    isolation = _isolation(python_guards, needs="unique_uid")
    tmp_path.chmod(0o777)  # even a world-writable target must stay untouched
    targets = [tmp_path / "escaped.txt", Path("/dev/shm") / f"escaped-{uuid.uuid4().hex}"]
    program = "\n".join(f"open({str(t)!r}, 'w').write('pwned')" for t in targets)
    if not python_guards and not isolation.namespaces:
        targets, program = targets[:1], program.splitlines()[0]  # /dev/shm is world-writable
    result = run_program(program, FAST, isolation)
    for target in targets:
        assert not target.exists(), f"{target} written: {result}"
    if targets[0].parent == tmp_path and "/tmp" in str(tmp_path):
        assert result.status is Status.FAILED, result


@pytest.mark.parametrize("python_guards", [True, False], ids=["guards", "os-only"])
def test_socket_gets_no_connection(python_guards):
    isolation = _isolation(python_guards, needs="namespaces")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        program = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'leak')"
        )
        result = run_program(program, FAST, isolation)
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.status is Status.FAILED, result


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=8)
