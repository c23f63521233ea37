"""`cluster=slurm` on the apps' command lines: data_prep really submitted (a Ray cluster in the
job), trainer printed with dry_run=true."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.usefixtures("dev_cluster")
def test_data_prep_stage_submitted_with_cluster_slurm_runs_on_ray_in_the_job(tmp_path):
    docs = tmp_path / "in.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i}. " * 30}) + "\n" for i in range(40)))
    out = tmp_path / "read"
    res = _run(
        "data_prep",
        "stage=read",
        f"input={docs}",
        f"output={out}",
        "cluster=slurm",
        "cluster.wait=true",
        "cluster.cpus_per_task=1",
        "cluster.time=00:05:00",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_in"] == stats["documents_kept"] == 40
    job = json.loads((out / "slurm/jobs.json").read_text())["jobs"][0]
    assert job["name"] == "data_prep-read" and f"stdout {job['stdout']}" in res.stdout
    log = Path(job["stdout"]).read_text()
    assert "1 node(s) alive" in log and '"documents_kept": 40' in log
    resolved = (out / "slurm/data_prep-read.yaml").read_text()
    assert "stage: read" in resolved and "scheduler: slurm" in resolved  # what was submitted
    status = _run("slurm", "status", str(out / "slurm"))
    assert status.returncode == 0 and "run COMPLETED" in status.stdout


def test_trainer_dry_run_prints_the_job_and_submits_nothing(tmp_path):
    ckpt = tmp_path / "ck"
    res = _run(
        "trainer",
        "cluster=slurm",
        "cluster.nodes=2",
        "cluster.gpus_per_node=8",
        "dry_run=true",
        f"checkpoint.dir={ckpt}",
        "train.steps=7",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --nodes=2" in res.stdout and "--nproc-per-node=8" in res.stdout
    assert "train.steps=7 \\\n    cluster=local \\\n" in res.stdout  # the job trains in place
    assert "dry_run=" not in res.stdout.split("-m trainer")[-1]
    assert not (ckpt / "slurm" / "jobs.json").exists()


def test_cluster_slurm_with_datatrove_slurm_executor_is_refused(tmp_path):
    res = _run(
        "data_prep",
        "stage=read",
        "input=x",
        f"output={tmp_path}",
        "cluster=slurm",
        "executor=slurm",
        "executor.partition=debug",
        timeout=120,
    )
    assert res.returncode == 2 and "not both" in res.stderr


@pytest.mark.usefixtures("dev_cluster")
def test_rejected_submission_is_one_clear_line(tmp_path):
    res = _run(
        "trainer",
        "cluster=slurm",
        "cluster.partition=no_such_partition",
        f"checkpoint.dir={tmp_path}",
        timeout=120,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: sbatch ") and "invalid partition" in res.stderr.lower()


@pytest.mark.parametrize(
    "argv, error",
    [
        (
            ["data_prep", "stage=read", "input=x", "output={tmp}/o x", "cluster=slurm_dev"],
            "error: run_dir '{tmp}/o x/slurm': Slurm log paths cannot contain whitespace",
        ),
        (
            ["trainer", "cluster=slurm", "cluster.nodes=0"],
            "error: cluster.nodes must be >= 1, got 0",
        ),
        (
            ["trainer", "+cluster.bogus=1"],
            "error: unknown config key 'cluster.bogus' (not in the launch schema)",
        ),
        (["pipeline", "cluster=nosuch"], "error: Could not find 'cluster/nosuch' (clusters in"),
        (
            ["trainer", "-m", "cluster=slurm", "train.steps=1,2"],
            "error: cluster=... submits one command; a sweep (-m) goes to Slurm through",
        ),
    ],
)
def test_launch_errors_are_one_line_naming_the_field(tmp_path, argv, error):
    res = _run(*(a.replace("{tmp}", str(tmp_path)) for a in argv), timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith(error.replace("{tmp}", str(tmp_path))), res.stderr


def test_cfg_with_a_cluster_prints_the_app_config_and_submits_nothing(tmp_path):
    res = _run("trainer", "--cfg", "job", "cluster=slurm", f"checkpoint.dir={tmp_path}")
    assert res.returncode == 0 and "num_layers:" in res.stdout and "\ncluster:" not in res.stdout
    assert not (tmp_path / "slurm").exists()
