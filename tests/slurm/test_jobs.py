"""submit/wait/check against fake Slurm commands, and local execution of rendered jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm import jobs
from slurm.config import ClusterConfig, CommandJob
from slurm.jobs import JobResult, SlurmJobError, SlurmUnavailableError, launch_training
from tests.slurm.fake_bin import write_fakes


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Fake sbatch/sacct/scontrol; sacct answers the lines of sacct.seq one call at a time."""
    bodies = {
        "sbatch": 'echo "$@" > "$FAKE/sbatch.args"; cat "$FAKE/sbatch.out"; '
        'exit $(cat "$FAKE/sbatch.rc")',
        "sacct": 'line=$(head -n1 "$FAKE/sacct.seq"); sed -i 1d "$FAKE/sacct.seq"; '
        '[ -n "$line" ] && echo "$line"; true',
        "scontrol": 'cat "$FAKE/scontrol.out" 2>/dev/null; true',
    }
    bin_dir = write_fakes(tmp_path / "fakebin", bodies)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE", str(tmp_path))
    (tmp_path / "sbatch.rc").write_text("0")
    return tmp_path


def test_submit_returns_the_parsable_job_id(fake_slurm, tmp_path):
    (fake_slurm / "sbatch.out").write_text("4242;dev\n")
    assert jobs.submit(tmp_path / "x.sbatch") == "4242"
    assert (fake_slurm / "sbatch.args").read_text().split() == [
        "--parsable",
        str(tmp_path / "x.sbatch"),
    ]


def test_submit_failure_shows_sbatch_error(fake_slurm, tmp_path):
    (fake_slurm / "sbatch.out").write_text("sbatch: error: invalid partition specified: nope\n")
    (fake_slurm / "sbatch.rc").write_text("1")
    with pytest.raises(SlurmJobError, match="invalid partition specified: nope"):
        jobs.submit(tmp_path / "x.sbatch")


def test_missing_slurm_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmUnavailableError, match="`sbatch` is not on PATH"):
        jobs.submit(tmp_path / "x.sbatch")


def test_wait_polls_until_a_final_state(fake_slurm):
    (fake_slurm / "sacct.seq").write_text(
        "".join(
            f"7|{state}|0:0|00:00:01\n" for state in ("PENDING", "RUNNING", "RUNNING", "COMPLETED")
        )
    )
    result = jobs.wait("7", log_path="/l/x.out", poll_s=0.01)
    assert (result.state, result.exit_code, result.ok) == ("COMPLETED", "0:0", True)
    assert result.log_path == Path("/l/x.out")
    assert (fake_slurm / "sacct.seq").read_text() == ""  # all four answers consumed


def test_wait_falls_back_to_scontrol_while_accounting_lags(fake_slurm):
    (fake_slurm / "sacct.seq").write_text("7|RUNNING|0:0|00:00:05\n")
    (fake_slurm / "scontrol.out").write_text(
        "JobId=7 JobName=train JobState=OUT_OF_MEMORY Reason=OutOfMemory ExitCode=0:125 "
        "StdOut=/l/train-7.out\n"
    )
    result = jobs.wait("7", poll_s=0.01)
    assert (result.state, result.exit_code, result.ok) == ("OUT_OF_MEMORY", "0:125", False)
    assert result.log_path == Path("/l/train-7.out")  # taken from scontrol's StdOut


def test_cancelled_by_user_is_a_final_state(fake_slurm):
    (fake_slurm / "sacct.seq").write_text("7|CANCELLED by 0|0:15|00:00:09\n")
    assert jobs.wait("7", log_path="/l", poll_s=0.01).state == "CANCELLED"


def test_wait_timeout_says_how_to_cancel(fake_slurm):
    (fake_slurm / "sacct.seq").write_text("7|RUNNING|0:0|00:00:01\n" * 100)
    with pytest.raises(TimeoutError, match="scancel 7"):
        jobs.wait("7", log_path="/l", poll_s=0.01, timeout_s=0.05)


def test_check_names_state_log_and_tail(tmp_path):
    log = tmp_path / "train-9.out"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "RuntimeError: boom\n")
    with pytest.raises(SlurmJobError) as err:
        jobs.check(JobResult("9", "TIMEOUT", "0:0", log, 1.0), "train job")
    text = str(err.value)
    assert f"train job 9 ended TIMEOUT (exit 0:0); log: {log}" in text
    assert "RuntimeError: boom" in text and "line 29" in text and "line 5\n" not in text
    assert err.value.result.state == "TIMEOUT"


def test_local_command_job_runs_and_logs(tmp_path):
    out = tmp_path / "out.txt"
    job = CommandJob(["bash", "-c", f"echo hello; echo 42 > {out}"], run_dir=str(tmp_path / "run"))
    result = jobs.run_job(job, ClusterConfig(scheduler="local", job_name="cmd"))
    assert result.ok and out.read_text() == "42\n"
    assert result.log_path == tmp_path / "run" / "logs" / "cmd-local.out"
    assert "hello" in result.log_path.read_text()
    assert (tmp_path / "run" / "cmd.sbatch").is_file()


def test_local_failure_raises_with_log(tmp_path):
    job = CommandJob(["bash", "-c", "echo dying >&2; exit 3"], run_dir=str(tmp_path / "run"))
    with pytest.raises(
        SlurmJobError, match=r"ended FAILED \(exit 3:0\); log: .*cmd-local.out"
    ) as err:
        jobs.run_job(job, ClusterConfig(scheduler="local", job_name="cmd"))
    assert "dying" in str(err.value)


def test_launch_training_locally_runs_torchrun_with_overrides_and_env(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/argv\n'
        f'echo "$MLFLOW_RUN_ID" > {tmp_path}/run_id\n'
    )
    fake_python.chmod(0o755)
    cluster = {"scheduler": "local", "cpus_per_task": 2, "python": str(fake_python)}
    result = launch_training(
        ["train.max_steps=3"], cluster, tmp_path / "run", env={"MLFLOW_RUN_ID": "abc"}
    )
    assert result.ok
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=2",
        "-m",
        "trainer",
    ]
    assert argv[7:] == ["train.max_steps=3", f"hydra.run.dir={tmp_path}/run/hydra"]
    assert (tmp_path / "run_id").read_text() == "abc\n"
