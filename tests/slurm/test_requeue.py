"""Requeue on the real dev cluster, 2-process CPU training jobs:
- the pre-timeout signal (sent as Slurm sends it, `scancel --signal=USR1 --batch`): checkpoint,
  requeue, resume, the losses of an uninterrupted run; max_requeues bounds the retries;
- a rank SIGKILLed mid-run: slurm.recover requeues (cluster.max_restarts), the job resumes from
  the last checkpoint and ends with the same losses, the MLflow run holds both attempts;
- a hang past max_restarts: the watchdog's report names the rank, the job and the MLflow run
  end FAILED with that cause.

Slurm holds a requeued job back for `AuthInfo=cred_expire` seconds (default 120) and then for
the next scheduler pass; slurm/dev_cluster.sh sets cred_expire=10 and sched_interval=2, so the
requeued job restarts ~11 s after the signal (the test prints the timings it saw).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from slurm import TrainJob, load_cluster
from slurm.jobs import log_path_for, prepare, submit, wait
from tests.tiny_corpus import write_tiny_manifest

pytestmark = pytest.mark.usefixtures("dev_cluster")
STEPS = 12
STEP_LINE = re.compile(r"^step (\d+) loss=", re.M)


def _overrides(tmp_path: Path, name: str, steps: int = STEPS, extra: tuple = ()) -> list[str]:
    return [
        "model=tiny_v3",
        f"data.manifest={tmp_path / 'manifest.json'}",
        "data.seq_length=64",
        f"train.steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=4",
        "train.eval_iters=1",
        f"checkpoint.dir={tmp_path / name}",
        "logging.mlflow=true",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.experiment={name}",
        *extra,
    ]


def _submit(
    tmp_path: Path,
    name: str,
    max_requeues: int,
    steps: int = STEPS,
    max_restarts: int = 0,
    extra: tuple = (),
) -> tuple:
    cluster = load_cluster("slurm_dev")
    cluster.time, cluster.max_requeues, cluster.job_name = "00:05:00", max_requeues, name
    cluster.max_restarts = max_restarts
    cluster.env = {**cluster.env, "PYTHONUNBUFFERED": "1"}  # the test follows the log live
    job = TrainJob(overrides=_overrides(tmp_path, name, steps, extra), run_dir=str(tmp_path / name))
    script = prepare(job, cluster)
    job_id = submit(script)
    return job_id, log_path_for(script, job_id)


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.is_file() else ""


def _wait_for(what: str, check, timeout_s: float = 150.0, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _signal_at_step(job_id: str, log: Path, step: int) -> float:
    """Wait until the log shows `step`, then send what `--signal=B:USR1@N` sends."""
    _wait_for(
        f"step {step} in {log}",
        lambda: max(map(int, STEP_LINE.findall(_read(log))), default=0) >= step,
    )
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    return time.monotonic()


def _the_run(tmp_path: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp])
    assert len(runs) == 1, f"{experiment}: every attempt must log into one MLflow run"
    return client, runs[0]


def _losses(tmp_path: Path, experiment: str) -> list[tuple[int, float]]:
    client, run = _the_run(tmp_path, experiment)
    history = client.get_metric_history(run.info.run_id, "loss")
    return sorted((m.step, m.value) for m in history)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[tuple[int, float]]:
    """The losses of an uninterrupted job (what every recovered job must reproduce)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    write_tiny_manifest(tmp_path)
    ref_id, ref_log = _submit(tmp_path, "reference", max_requeues=1)
    result = wait(ref_id, log_path=ref_log, poll_s=0.5, timeout_s=150)
    assert result.state == "COMPLETED", _read(ref_log)
    return _losses(tmp_path, "reference")


def _same_losses(resumed: list, uninterrupted: list) -> float:
    assert [s for s, _ in resumed] == [s for s, _ in uninterrupted] == list(range(1, STEPS + 1))
    worst = max(abs(a - b) for (_, a), (_, b) in zip(resumed, uninterrupted, strict=True))
    assert worst <= 1e-6, (resumed, uninterrupted)
    return worst


def _sacct_states(job_id: str) -> list[str]:
    """Every attempt's state from accounting (which may lag the controller by a few seconds)."""

    def states():
        out = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-D", "-n", "-P", "-o", "State"],
            capture_output=True,
            text=True,
            check=True,
        )
        found = out.stdout.split()
        return found if found and found[-1] not in ("RUNNING", "PENDING", "REQUEUED") else None

    return _wait_for(f"accounting of job {job_id}", states, timeout_s=30, poll_s=0.5)


def test_signalled_job_checkpoints_requeues_and_matches_an_uninterrupted_run(tmp_path, reference):
    write_tiny_manifest(tmp_path)
    started = time.monotonic()
    job_id, log = _submit(tmp_path, "requeued", max_requeues=1)
    signalled = _signal_at_step(job_id, log, 3)
    _wait_for("attempt 2", lambda: "attempt 2" in _read(log), timeout_s=200)
    restarted = time.monotonic()
    result = wait(job_id, log_path=log, poll_s=0.5, timeout_s=150)
    text = _read(log)
    assert result.state == "COMPLETED", text
    stop = re.search(
        r"\[trainer\] stop requested \((.+)\): checkpoint at step (\d+) saved; "
        r"exiting with code 75",
        text,
    )
    assert stop, text
    stop_step = int(stop.group(2))
    assert 3 <= stop_step < STEPS
    assert stop.group(1) == f"{tmp_path / 'requeued'}/.stop-{job_id}"
    assert "[slurm] USR1: time limit near" in text
    assert "requeueing (attempt 1 of 2)" in text
    assert f"[slurm] job {job_id} attempt 2 on 1 node(s)" in text
    assert f"resumed_from: {tmp_path / 'requeued'}/iter_{stop_step:07d}" in text
    assert _sacct_states(job_id) == ["REQUEUED", "COMPLETED"]

    worst = _same_losses(_losses(tmp_path, "requeued"), reference)
    print(
        f"\nrequeue timings: signal at {signalled - started:.1f}s after submit (stop at step "
        f"{stop_step}); attempt 2 started {restarted - signalled:.1f}s after the signal; "
        f"largest loss difference to the uninterrupted run {worst:.1e}"
    )


def test_max_requeues_bounds_the_retries(tmp_path):
    write_tiny_manifest(tmp_path)
    job_id, log = _submit(tmp_path, "bounded", max_requeues=0, steps=40)
    _signal_at_step(job_id, log, 2)
    result = wait(job_id, log_path=log, poll_s=0.5, timeout_s=150)
    text = _read(log)
    assert (result.state, result.exit_code) == ("FAILED", "75:0"), text
    assert "no requeue left (cluster.max_requeues=0)" in text
    stop = re.search(r"checkpoint at step (\d+) saved", text)
    assert stop, text
    latest = (tmp_path / "bounded" / "latest").read_text().strip()
    assert latest == f"iter_{int(stop.group(1)):07d}"
    assert not (tmp_path / "bounded" / "summary.json").exists()
    assert "attempt 2" not in text
    assert _sacct_states(job_id) == ["FAILED"]


def test_killed_rank_restarts_resumes_and_matches_an_uninterrupted_run(tmp_path, reference):
    write_tiny_manifest(tmp_path)
    kill = (
        "checkpoint.save_interval=2",
        "resilience.inject_kill_rank=1",
        "resilience.inject_kill_step=5",
    )
    job_id, log = _submit(tmp_path, "killed", max_requeues=0, max_restarts=1, extra=kill)
    result = wait(job_id, log_path=log, poll_s=0.5, timeout_s=300)
    text = _read(log)
    assert result.state == "COMPLETED", text
    assert (
        "[slurm] killed: rank 1 on " in text
        and "was killed by SIGKILL; restarting from "
        "the last checkpoint (restart 1 of 1); not excluding"
        in text
    ), text  # one-node cluster
    assert f"[slurm] job {job_id} attempt 2 on 1 node(s)" in text
    assert f"resumed_from: {tmp_path / 'killed'}/iter_0000004" in text
    assert _sacct_states(job_id) == ["REQUEUED", "COMPLETED"]
    _same_losses(_losses(tmp_path, "killed"), reference)
    client, run = _the_run(tmp_path, "killed")
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"
    assert "was killed by SIGKILL (restart)" in run.data.tags["attempt.1"]
    assert run.data.metrics["restarts"] == 1
    path = client.download_artifacts(run.info.run_id, "attempts.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    assert table["columns"][:5] == ["attempt", "job_id", "nodes", "exit", "cause"]
    assert table["data"][0][4] == "killed"


def test_hang_past_max_restarts_fails_naming_the_hung_rank(tmp_path):
    write_tiny_manifest(tmp_path)
    hang = (
        "resilience.hang_timeout_s=5",
        "resilience.inject_hang_rank=1",
        "resilience.inject_hang_step=3",
    )
    job_id, log = _submit(tmp_path, "hung", max_requeues=1, max_restarts=0, extra=hang)
    result = wait(job_id, log_path=log, poll_s=0.5, timeout_s=200)
    text = _read(log)
    assert result.state == "FAILED", text
    assert "[slurm] hang: hang after step 2: suspects [1] (rank 1 at " in text, text
    assert "no restart left (cluster.max_restarts=0)" in text and "attempt 2" not in text
    _, run = _the_run(tmp_path, "hung")
    assert run.info.status == "FAILED"
    assert "suspects [1]" in run.data.tags["failure"], run.data.tags
    assert _sacct_states(job_id) == ["FAILED"]
