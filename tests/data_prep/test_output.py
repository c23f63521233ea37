"""The output folder of a stage: one writer at a time, skip only what that writer finished,
and one-line errors for outputs that cannot be written (issue 16: never lose work)."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from data_prep import run_stage

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def _write_docs(path: Path, num: int, seed: int, prefix: str) -> Path:
    rng = random.Random(seed)
    words = ["alpha", "river", "stone", "cloud", "green", "quiet", "table", "north", "lamp"]
    with open(path, "w") as f:
        for i in range(num):
            text = " ".join(rng.choice(words) for _ in range(60)) + "."
            f.write(json.dumps({"text": text, "id": f"{prefix}{i}"}) + "\n")
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "data_prep", *args, "progress=false"]


def _ids(folder: Path) -> list[str]:
    return [
        json.loads(line)["id"]
        for f in sorted(folder.glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt")
    ]


def test_concurrent_runs_into_one_output_second_fails_with_one_line(tmp_path):
    big = _write_docs(tmp_path / "big.jsonl", 40_000, 0, "big")  # ~15 s of quality filtering
    small = _write_docs(tmp_path / "small.jsonl", 50, 1, "small")
    out = tmp_path / "out"
    first = subprocess.Popen(
        _cli("stage=quality", f"input={big}", f"output={out}"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        lock = out / ".work" / "lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "first run never locked"
            time.sleep(0.1)
        second = subprocess.run(
            _cli("stage=quality", f"input={small}", f"output={out}"),
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None, "the first run ended before the second tried: not concurrent"
        first.kill()  # SIGKILL the run only: its forked helpers live on, orphaned
        first.wait()
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(
            f"data_prep: error: another data_prep run is writing {out} (pid {first.pid})"
        )
        # The killed run left a stale lock file and half a run: the next run takes over cleanly.
        again = subprocess.run(
            _cli("stage=quality", f"input={small}", f"output={out}"),
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # the run's orphaned helpers
        except ProcessLookupError:
            pass
        first.wait()
    assert json.loads(again.stdout.splitlines()[-1])["documents_in"] == 50
    assert json.loads((out / "stats.json").read_text())["documents_in"] == 50


def test_skip_check_never_serves_data_of_another_run(tmp_path):
    a = _write_docs(tmp_path / "a.jsonl", 30, 2, "a")
    b = _write_docs(tmp_path / "b.jsonl", 20, 3, "b")
    out = tmp_path / "out"
    args_a = ["input=" + str(a), f"output={out}", "progress=false"]
    first = run_stage("normalize", args_a)
    done_a = (out / ".work" / "done.json").read_text()
    assert first["skipped"] is False
    assert run_stage("normalize", args_a)["skipped"] is True
    second = run_stage("normalize", ["input=" + str(b), f"output={out}", "progress=false"])
    assert second["skipped"] is False and _ids(out) == [f"b{i}" for i in range(20)]
    # A's completion marker next to B's data and stats (what two unlocked runs used to leave):
    (out / ".work" / "done.json").write_text(done_a)
    again = run_stage("normalize", args_a)
    assert again["skipped"] is False, "served B's documents for A's command"
    assert _ids(out) == [f"a{i}" for i in range(30)] and again["documents_in"] == 30
    # A marker without stats.json (a run killed while cleaning up) is no finished run either.
    (out / "stats.json").unlink()
    assert run_stage("normalize", args_a)["skipped"] is False


def test_output_that_is_a_file_is_one_line_error(tmp_path):
    inp = _write_docs(tmp_path / "in.jsonl", 5, 4, "d")
    target = tmp_path / "taken"
    target.write_text("not a folder")
    for output in (target, target / "sub"):
        res = subprocess.run(
            _cli("stage=read", f"input={inp}", f"output={output}"),
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2, res.stderr
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "output must be a folder" in lines[0], res.stderr
    assert target.read_text() == "not a folder"


def _as_nobody() -> list[str]:
    """Root writes anywhere: run the CLI as `nobody` to meet a read-only folder."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def test_read_only_output_is_one_line_error():
    base = Path(tempfile.mkdtemp(prefix="dp_ro_"))
    try:
        base.chmod(0o755)
        inp = _write_docs(base / "in.jsonl", 5, 5, "d")
        inp.chmod(0o644)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        for output in (ro, ro / "sub"):
            res = subprocess.run(
                [*_as_nobody(), *_cli("stage=read", f"input={inp}", f"output={output}")],
                cwd=ROOT,
                env=ENV | {"HOME": str(base)},
                capture_output=True,
                text=True,
            )
            assert res.returncode == 2, res.stderr
            lines = [line for line in res.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "is not writable" in lines[0], res.stderr
    finally:
        shutil.rmtree(base)


def _processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            found.append(int(entry.name))
    return found


def test_sigkill_of_a_run_leaves_no_forked_helper(tmp_path):
    """Was: datatrove's multiprocessing Manager, forked by the run, served on forever."""
    big = _write_docs(tmp_path / "big.jsonl", 40_000, 0, "big")
    out = tmp_path / "out"
    run = subprocess.Popen(
        _cli("stage=quality", f"input={big}", f"output={out}"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_processes_in_group(run.pid)) < 2:  # the run and its forked Manager
            assert run.poll() is None and time.monotonic() < deadline, "no helper was forked"
            time.sleep(0.1)
        run.kill()
        run.wait()
        deadline = time.monotonic() + 30
        while _processes_in_group(run.pid):
            assert time.monotonic() < deadline, f"left behind: {_processes_in_group(run.pid)}"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
