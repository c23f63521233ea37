"""Run untrusted Python program text in a sandboxed subprocess, never in the evaluating process.

    from evaluation.sandbox import SandboxLimits, run_program
    result = run_program("assert 1 + 1 == 2", SandboxLimits(timeout_s=3.0))
    result.status, result.reason, result.duration_s   # Status.PASSED, "", 0.03

Layers (each detected at run time by `detect_isolation`; `Isolation.describe()` says which hold):

- always: a child process (`python -I -S`: no site-packages, no PYTHON* variables, an empty
  environment) in its own session/process group, killed as a group (SIGKILL) on timeout and after
  it exits, so stray children die with it; a fresh temporary work directory as cwd, removed after;
  wall-clock timeout plus RLIMIT_CPU; RLIMIT_AS (memory); RLIMIT_FSIZE; RLIMIT_NOFILE;
  RLIMIT_NPROC=1 (no fork or thread where the kernel enforces it: any non-root uid).
- root only (`drop_privileges`): the child switches to a uid/gid of its own (unique per sandbox,
  no supplementary groups, no-new-privs), so RLIMIT_NPROC=1 holds (fork fails in the kernel) and
  the file system's permissions refuse writes anywhere it does not own - except world-writable dirs.
- `unshare --net --mount` usable (`namespaces`): a network namespace with no interfaces up (every
  connect fails, loopback included), and a private mount namespace where /tmp, /var/tmp, /dev/shm
  and /run/lock are fresh tmpfs: writes there vanish with the sandbox.
- always unless disabled (`python_guards`): the program's os.fork/exec/spawn/system/kill,
  subprocess, socket and ctypes are disabled and writes outside the work directory raise. This is
  defense in depth only: Python-level patches can be bypassed by determined native code.
"""

from __future__ import annotations

import enum
import functools
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_LAUNCHER = Path(__file__).with_name("_launcher.py")
_SETUP_FAILED = 121  # _launcher.SETUP_FAILED
_PASSED_MARKER = b"PASSED\n"  # _launcher.PASSED_MARKER
_REASON_CHARS = 500
# Imports C extensions from lib-dynload: fails where the sandbox uid cannot read the stdlib.
_PROBE = "import math, hashlib, json, re, collections\nassert math.gcd(4, 6) == 2"


class Status(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"  # the sandbox itself could not run the program (not the program's fault)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0
    """Wall-clock limit; RLIMIT_CPU is the next whole second."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) of the child."""
    file_mb: int = 16
    """Largest file the child may write (RLIMIT_FSIZE), its stderr included."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"sandbox timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 64:
            raise ValueError(
                f"sandbox memory_mb must be >= 64 (Python itself), got {self.memory_mb}"
            )
        if self.file_mb < 1:
            raise ValueError(f"sandbox file_mb must be >= 1, got {self.file_mb}")


@dataclass(frozen=True)
class Isolation:
    """Which OS-level layers are used; Python guards are on unless `python_guards` is False."""

    namespaces: bool
    """Network namespace (no network) + mount namespace (tmpfs over world-writable dirs)."""
    drop_privileges: bool
    """Root only: the child runs as a uid of its own, so RLIMIT_NPROC and file permissions hold."""
    python_guards: bool = True
    """Preamble disabling fork/exec/subprocess/socket/ctypes and writes outside the work dir."""

    def describe(self) -> str:
        return ", ".join(
            [
                "process group + rlimits + temp dir",
                f"namespaces(net, mount): {'on' if self.namespaces else 'off'}",
                f"unique uid: {'on' if self.drop_privileges else 'off'}",
                f"python guards: {'on' if self.python_guards else 'off'}",
            ]
        )


@dataclass(frozen=True)
class RunResult:
    status: Status
    reason: str
    """Empty when passed; else the exception line, the timeout or the signal that ended it."""
    duration_s: float
    returncode: int | None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


def _command(isolation: Isolation, limits: SandboxLimits) -> list[str]:
    settings = {
        "cpu_s": math.ceil(limits.timeout_s) + 1,
        "memory_bytes": limits.memory_mb << 20,
        "file_bytes": limits.file_mb << 20,
        "mask_tmp": isolation.namespaces,
        "drop_privileges": isolation.drop_privileges,
        "python_guards": isolation.python_guards,
    }
    cmd = [sys.executable, "-I", "-S", str(_LAUNCHER), json.dumps(settings)]
    if isolation.namespaces:
        cmd = ["unshare", "--net", "--mount", "--", *cmd]
    return cmd


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reason(returncode: int, stderr: str) -> tuple[Status, str]:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1][:_REASON_CHARS] if lines else ""
    if returncode == _SETUP_FAILED:
        return Status.ERROR, last or "sandbox setup failed"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not last:
        return Status.TIMEOUT, "CPU time limit (RLIMIT_CPU)"
    if returncode < 0:
        return Status.FAILED, last or f"killed by {signal.Signals(-returncode).name}"
    return Status.FAILED, last or f"exit code {returncode} without the pass marker"


def _remove_tree(path: Path) -> None:
    def make_writable(func, p, _exc) -> None:
        os.chmod(os.path.dirname(p), 0o700)
        func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


def run_program(
    program: str, limits: SandboxLimits | None = None, isolation: Isolation | None = None
) -> RunResult:
    """Run `program` in a fresh sandbox; passed = it ran to the end without raising or exiting."""
    limits = limits or SandboxLimits()
    isolation = isolation or detect_isolation()
    outer = Path(tempfile.mkdtemp(prefix="sandbox-"))
    try:
        os.chmod(outer, 0o711)  # a dropped uid may traverse to its work dir, not list siblings
        work = outer / "work"
        work.mkdir()
        (work / "main.py").write_text(program, encoding="utf-8")
        return _run_in(work, outer / "stderr", _command(isolation, limits), limits.timeout_s)
    finally:
        _remove_tree(outer)


def _run_in(work: Path, stderr_path: Path, cmd: list[str], timeout_s: float) -> RunResult:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work)}
    start = time.perf_counter()
    with open(stderr_path, "w+b") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:  # also when children it left hold stdout open
            out, timed_out = b"", True
        _kill_group(proc.pid)  # the program and every child still in its group
        proc.stdout.close()  # never wait on a pipe that an escaped process may hold
        proc.wait()
        duration = time.perf_counter() - start
        stderr.seek(0)
        err = stderr.read()[-4096:].decode(errors="replace")
    if timed_out:
        return RunResult(Status.TIMEOUT, f"wall time limit {timeout_s:g} s", duration, None)
    if proc.returncode == 0 and out == _PASSED_MARKER:
        return RunResult(Status.PASSED, "", duration, 0)
    status, reason = _reason(proc.returncode, err)
    return RunResult(status, reason, duration, proc.returncode)


@functools.cache
def detect_isolation() -> Isolation:
    """The strongest layer set that runs a trivial program here (probed once per process)."""
    use_ns = [True, False] if shutil.which("unshare") else [False]
    use_uid = [True, False] if os.geteuid() == 0 else [False]
    for namespaces, drop_privileges in itertools.product(use_ns, use_uid):
        isolation = Isolation(namespaces=namespaces, drop_privileges=drop_privileges)
        if run_program(_PROBE, SandboxLimits(timeout_s=10), isolation).passed:
            return isolation
    raise RuntimeError("sandbox: even the plain subprocess sandbox cannot run `pass` here")
