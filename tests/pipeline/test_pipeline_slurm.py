"""`python -m pipeline cluster=slurm` on the real dev cluster: chained jobs reproduce a local run,
and a hard-killed job fails the run in the status command and in MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testlib import REPO, TINY, cli_env, data_outputs, same_output

from slurm.jobs import wait

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("dev_cluster")]
ON_SLURM = ("cluster=slurm", "cluster.procs_per_node=1", "cluster.time=00:15:00")


def _pipeline(tmp: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        f"run_dir={tmp / run}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        *TINY,
        *extra,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _status(job_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slurm", "status", str(job_dir), "--lines", "3"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def _jobs(run: Path) -> dict[str, dict]:
    record = json.loads((run / "slurm/jobs.json").read_text())
    return {job["role"]: job for job in record["jobs"]}


def _runs(tmp: Path, run_dir: Path) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("pipeline").experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`pipeline.run_dir` = '{run_dir}'")
    return {r.info.run_name: r for r in runs}


def test_pipeline_on_slurm_matches_a_local_run(tmp_path):
    run = tmp_path / "slurm"
    _pipeline(tmp_path, "slurm", *ON_SLURM, "cluster.wait=true")
    jobs = _jobs(run)
    assert jobs["train"]["dependency"] == f"afterok:{jobs['data']['job_id']}"
    assert (
        jobs["finish"]["dependency"]
        == f"afterany:{jobs['data']['job_id']}:{jobs['train']['job_id']}"
    )
    assert (run / "slurm/pipeline-data.yaml").is_file()  # the resolved config next to the script
    status = _status(run / "slurm")
    assert status.returncode == 0 and "run COMPLETED" in status.stdout, status.stdout
    train_log = (run / "logs/train.log").read_text()
    assert "launch: srun " in train_log and "--rdzv-id=" + jobs["train"]["job_id"] in train_log

    _pipeline(tmp_path, "local")
    got, want = data_outputs(run), data_outputs(tmp_path / "local")
    assert sorted(got) == sorted(want) and any(k.endswith(".bin") for k in got)
    for name in want:
        assert same_output(name, got[name], want[name]), f"{name} differs from the local run"
    summary = json.loads((run / "train/checkpoints/summary.json").read_text())
    local = json.loads((tmp_path / "local/train/checkpoints/summary.json").read_text())
    for key in ("final_step", "train_loss", "valid_loss_first", "valid_loss_last"):
        assert summary[key] == pytest.approx(local[key], rel=1e-6), key

    runs = _runs(tmp_path, run)  # one parent run for all jobs, every stage nested in it
    parent = runs["slurm"]
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.launcher"] == "slurm"
    stages = [
        r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(stages) == 23 and {r.info.status for r in stages} == {
        "FINISHED"
    }  # + export, eval, pii x2, decontaminate x2
    assert "loss" in runs["train"].data.metrics


def test_hard_killed_job_fails_the_run_in_status_and_mlflow(tmp_path):
    run = tmp_path / "run"
    submitted = _pipeline(tmp_path, "run", *ON_SLURM)  # returns once the jobs are queued
    assert "status: " in submitted.stdout
    jobs = _jobs(run)
    deadline = time.time() + 180
    while not (run / "read/en/.attempt.json").exists():  # the data job is running stages
        assert time.time() < deadline, "the data job never started a stage"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=KILL", jobs["data"]["job_id"]], check=True)
    finished = wait(jobs["finish"]["job_id"], poll_s=1.0, timeout_s=180)
    assert finished.ok, (run / "slurm/logs").iterdir()

    status = _status(run / "slurm")
    assert status.returncode == 1, status.stdout + status.stderr
    rows = {line.split()[1]: line.split()[2] for line in status.stdout.splitlines()[1:4]}
    assert (
        rows["pipeline-data"] in ("FAILED", "CANCELLED") and rows["pipeline-train"] == "CANCELLED"
    )
    assert "run FAILED: pipeline-data" in status.stdout

    runs = _runs(tmp_path, run)
    parent = runs["run"]
    assert parent.info.status == "FAILED"
    assert f"pipeline-data job {jobs['data']['job_id']} ended" in parent.data.tags["slurm.error"]
    assert "RUNNING" not in {r.info.status for r in runs.values()}  # no stage run left open
