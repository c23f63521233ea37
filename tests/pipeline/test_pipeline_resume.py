"""SIGKILL the pipeline driver during a data stage, between stages and during training; each
rerun resumes, and the final outputs are byte-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from pipeline_testlib import cli_command, cli_env, output_files, run_cli

from pipeline.state import MARKER

pytestmark = pytest.mark.slow

SLOW = ("stages.clean.options.sleep_s=0.3",
        "stages.train.overrides=['checkpoint.dir={output}/checkpoints','train.steps=6','data={deps[join]}','sleep_s=0.4']")  # fmt: skip


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_when(run_dir: Path, cwd: Path, ready, what: str, timeout: float = 120) -> None:
    """Start the driver, SIGKILL it once ready() holds, check its stage processes die."""
    proc = subprocess.Popen(cli_command(run_dir, *SLOW), cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, (
                f"driver ended before {what}: {proc.stdout.read().decode()[-2000:]}"
            )
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)
        tree = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    _check_stage_processes_die(tree)


def _check_stage_processes_die(tree: list[psutil.Process]) -> None:
    """Stage workers and the trainer die with the driver; Ray's helper agents are reaped here."""
    writers, helpers = [], []
    for p in tree:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        is_writer = ("ray::" in cmd and "Agent" not in cmd) or "fake_trainer" in cmd
        (writers if is_writer else helpers).append(p)
    _, alive = psutil.wait_procs(writers, timeout=3)
    for p in alive + helpers:  # processes this test started (the killed driver's Ray helpers)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    alive = [p for p in alive if _status(p) not in (psutil.STATUS_ZOMBIE, None)]
    assert not alive, f"stage processes outlived the killed driver by 3 s: {alive}"


def _status(p: psutil.Process) -> str | None:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    res = run_cli(base / "run", "tracking.enabled=false", cwd=base)
    assert res.returncode == 0, res.stdout + res.stderr
    return output_files(base / "run")


def test_sigkill_anywhere_then_rerun_gives_identical_outputs(reference, tmp_path):
    run = tmp_path / "run"
    clean_en = run / "clean/en"
    _kill_when(run, tmp_path, lambda: _lines(clean_en / "data.jsonl") >= 3 and not (clean_en / MARKER).exists(),
               "a data stage half-way")  # fmt: skip
    assert not (clean_en / MARKER).exists() and 3 <= _lines(clean_en / "data.jsonl") < 20

    _kill_when(run, tmp_path, lambda: (run / "join" / MARKER).exists(), "the join stage's marker")
    assert _lines(run / "clean/en/data.jsonl") == 20  # cleaned and redone in full

    ckpts = run / "train/checkpoints"
    _kill_when(run, tmp_path, lambda: (ckpts / "step_0002.json").exists(), "training step 2")
    assert not (ckpts / "summary.json").exists()

    res = run_cli(run, *SLOW, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (run / "logs/train.log").read_text()
    resumed = [
        int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "resumed from step" in line
    ]
    assert resumed and resumed[-1] >= 2, log
    assert "[pipeline] source/en: running" not in res.stdout  # finished stages were skipped
    assert output_files(run) == reference

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("fake").experiment_id
    parents = client.search_runs([exp], filter_string="tags.`pipeline.role` = 'parent'")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED", "KILLED", "KILLED"]
    summary = json.loads((ckpts / "summary.json").read_text())
    assert summary["final_step"] == 6
