"""Against the real dev cluster (`bash slurm/dev_cluster.sh start`); skipped without one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm import jobs
from slurm.config import CommandJob, load_cluster
from slurm.jobs import SlurmJobError
from tests.slurm.fake_bin import write_fakes

pytestmark = pytest.mark.usefixtures("dev_cluster")
REPO = Path(__file__).resolve().parents[2]


def _cluster(**overrides):
    cluster = load_cluster("slurm_dev")
    for key, value in {"cpus_per_task": 1, "time": "00:05:00", **overrides}.items():
        setattr(cluster, key, value)
    return cluster


def test_cpu_job_completes_and_writes_its_file(tmp_path):
    out = tmp_path / "out.txt"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['SLURM_JOB_ID']); print('wrote')"
    job = CommandJob([sys.executable, "-c", code], run_dir=str(tmp_path / "run"))
    result = jobs.run_job(job, _cluster(job_name="write"), poll_s=0.5, timeout_s=120)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0")
    assert out.read_text() == result.job_id
    assert result.log_path == tmp_path / "run" / "logs" / f"write-{result.job_id}.out"
    assert "wrote" in result.log_path.read_text()


def test_failing_job_is_reported_failed_with_its_log(tmp_path):
    code = "raise SystemExit('model exploded at step 3')"
    job = CommandJob([sys.executable, "-c", code], run_dir=str(tmp_path / "run"))
    with pytest.raises(SlurmJobError) as err:
        jobs.run_job(job, _cluster(job_name="boom"), poll_s=0.5, timeout_s=120)
    result = err.value.result
    assert result.state == "FAILED" and result.exit_code == "1:0"
    assert f"log: {result.log_path}" in str(err.value)
    assert "model exploded at step 3" in str(err.value)  # the log tail is in the message


def test_cancelled_job_reports_cancelled(tmp_path):
    job = CommandJob(["sleep", "120"], run_dir=str(tmp_path / "run"))
    script = tmp_path / "sleep.sbatch"
    from slurm.render import render_sbatch

    (tmp_path / "run" / "logs").mkdir(parents=True)
    script.write_text(render_sbatch(job, _cluster(job_name="sleep")))
    job_id = jobs.submit(script)
    deadline = time.monotonic() + 30
    while jobs.job_state(job_id)[0] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], check=True)
    result = jobs.wait(job_id, poll_s=0.5, timeout_s=60)
    assert result.state == "CANCELLED" and not result.ok


def test_cli_submits_to_the_dev_cluster(tmp_path):
    """`python -m slurm submit cluster=slurm_dev -- ...` end to end (a fake python as trainer)."""
    body = f'printf "%s\\n" "$@" > {tmp_path}/argv.$SLURM_JOB_ID'
    fake = write_fakes(tmp_path, {"fake_python": body}) / "fake_python"
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "slurm",
        "submit",
        "cluster=slurm_dev",
        f"run_dir={run_dir}",
        f"cluster.python={fake}",
        "poll_s=0.5",
        "--",
        "train.max_steps=2",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "COMPLETED" in proc.stdout
    (argv_file,) = tmp_path.glob("argv.*")  # one torchrun per node; the fake is torchrun itself
    assert "--nproc-per-node=2" in argv_file.read_text().splitlines()
    assert (run_dir / "train.sbatch").is_file() and (run_dir / "submit_config").is_dir()


def test_cli_failure_exits_nonzero_with_one_line_and_log(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "slurm",
        "submit",
        "cluster=slurm_dev",
        f"run_dir={run_dir}",
        "cluster.python=/bin/false",
        "poll_s=0.5",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: train job ") and "ended FAILED" in proc.stderr
    assert f"log: {run_dir}/logs/train-" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hydra_submitit_launcher_multirun(tmp_path):
    app = Path(__file__).resolve().parent / "hydra_app" / "app.py"
    cmd = [
        sys.executable,
        str(app),
        "--multirun",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"out_dir={tmp_path}",
        "x=2,3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {p.name: p.read_text().split() for p in tmp_path.glob("x*.txt")}
    assert {name: value for name, (value, _) in results.items()} == {"x2.txt": "4", "x3.txt": "9"}
    job_ids = {job for _, job in results.values()}
    assert len(job_ids) == 2 and "none" not in job_ids  # two real Slurm jobs


def test_cli_without_wait_returns_the_job_id_at_once(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "slurm",
        "submit",
        "cluster=slurm_dev",
        f"run_dir={tmp_path}",
        "cluster.python=/bin/true",
        "wait=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split("submitted job ")[1].split(";")[0]
    assert jobs.wait(job_id, poll_s=0.5, timeout_s=60).state == "COMPLETED"
    status = subprocess.run(
        [sys.executable, "-m", "slurm", "status", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and f"{job_id}  train" in status.stdout
