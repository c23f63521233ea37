"""slurm.recover's decisions without a cluster: the cause read from what a failed attempt left
(torchrun's root-cause block as torch 2.13 prints it, srun's task line, the hang report), which
node is blamed, and the two budgets (time-limit requeues, failure restarts)."""

from __future__ import annotations

import json

from slurm.recover import classify, decide, parse_args

TORCHRUN_SIGKILL = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
trainer FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_21:35:28
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 28812)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 28812
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_21:35:28
  host      : gpu17.cluster.local
  rank      : 9 (local_rank: 1)
  exitcode  : -9 (pid: 28813)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 28813
=======================================================
srun: error: gpu17: task 1: Exited with exit code 1
srun: launch/slurm: _step_signal: Terminating StepId=202.0
"""
NODES = ["gpu16", "gpu17"]


def test_a_killed_rank_blames_its_node_under_slurm_name():
    failure = classify(1, False, TORCHRUN_SIGKILL, None, NODES)
    assert (failure.cause, failure.node) == ("killed", "gpu17")
    assert failure.detail == "rank 9 on gpu17.cluster.local was killed by SIGKILL"


def test_torchrun_host_unknown_to_slurm_falls_back_to_the_failing_srun_task():
    text = TORCHRUN_SIGKILL.replace("gpu17.cluster.local", "localhost")
    assert classify(1, False, text, None, NODES).node == "gpu17"
    assert classify(1, False, text, None, ["other"]).node is None  # never a node of another job


def test_a_python_error_is_a_crash_blaming_no_node():
    text = TORCHRUN_SIGKILL.replace(
        "exitcode  : -9 (pid: 28813)  (SIGKILL)", "exitcode  : 1 (pid: 28813)"
    )
    text = "ValueError: data.manifest has no shard for split valid\n" + text
    failure = classify(1, False, text, None, NODES)
    assert (failure.cause, failure.node) == ("crash", None)
    assert failure.detail.endswith(
        "exited with code 1: ValueError: data.manifest has no shard for split valid"
    )


def test_srun_launch_killed_task_and_plain_exit_codes():
    killed = classify(137, False, "srun: error: gpu16: task 3: Killed\n", None, NODES)
    assert (killed.cause, killed.node, killed.detail) == (
        "killed",
        "gpu16",
        "task 3 on gpu16 was killed",
    )
    assert classify(137, False, "", None, NODES).detail == "the job step was killed by SIGKILL"
    assert classify(2, False, "", None, NODES).cause == "crash"


def test_hang_report_names_the_suspects_node_only_when_they_share_one():
    ranks = {"0": {"host": "gpu16"}, "1": {"host": "gpu17"}, "2": {"host": "gpu17"}}
    report = {"summary": "hang after step 7: suspects [1, 2]", "suspects": [1, 2], "ranks": ranks}
    failure = classify(1, False, TORCHRUN_SIGKILL, report, NODES)  # the report wins
    assert (failure.cause, failure.detail, failure.node) == ("hang", report["summary"], "gpu17")
    report["suspects"] = [0, 1]
    assert classify(76, False, "", report, NODES).node is None  # two nodes: not node-local


def test_time_limit_stop_wins_over_everything():
    assert classify(75, True, TORCHRUN_SIGKILL, None, NODES).cause == "time limit"


def _args(*extra: str):
    return parse_args(
        ["--run-dir", "/r", "--exit", "1", "--max-requeues", "1", "--max-restarts", "2", *extra]
    )


def test_budgets_are_counted_apart():
    hang = classify(76, False, "", {"summary": "hang after step 3: suspects [1]"}, NODES)
    ledger = {"attempts": []}
    for expected in ("restart", "restart", "fail"):
        action, message = decide(_args("--restartable"), ledger, hang)
        assert action == expected, message
        ledger["attempts"].append({"action": action})
    assert (
        message == "hang: hang after step 3: suspects [1]; no restart left (cluster.max_restarts=2)"
    )
    stop = classify(75, True, "", None, NODES)  # restarts used up: the time-limit budget is apart
    assert decide(_args("--restartable"), ledger, stop)[0] == "requeue"
    ledger["attempts"].append({"action": "requeue"})
    assert decide(_args("--restartable"), ledger, stop) == (
        "stop",
        "stopped on the time-limit signal; no requeue left (cluster.max_requeues=1)",
    )


def test_only_training_jobs_restart_and_only_when_requeueable():
    crash = classify(1, False, "", None, NODES)
    assert decide(_args(), {"attempts": []}, crash)[1].endswith(
        "not restarted (only training jobs restart on failure)"
    )
    assert decide(_args("--restartable", "--no-requeue"), {"attempts": []}, crash)[0] == "fail"


def test_local_job_is_restarted_by_torchrun_and_resumes(tmp_path):
    """cluster=local: the rendered script runs `torchrun --max-restarts`; a SIGKILLed rank
    restarts both workers, which resume from the last checkpoint, and MLflow counts the restart."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tests.tiny_corpus import write_tiny_manifest
    from tests.trainer.test_export import REPO, _env

    write_tiny_manifest(tmp_path)
    ck = tmp_path / "ck"
    cmd = [
        sys.executable,
        "-m",
        "slurm",
        "submit",
        "cluster=local",
        "cluster.max_restarts=1",
        f"run_dir={tmp_path / 'run'}",
        "--",
        f"data.manifest={tmp_path / 'manifest.json'}",
        "data.seq_length=64",
        "model=tiny_dense",
        "parallel=dp2",
        "train.steps=6",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=0",
        f"checkpoint.dir={ck}",
        "checkpoint.save_interval=2",
        "logging.mlflow=true",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "logging.experiment=local",
        "resilience.inject_kill_rank=1",
        "resilience.inject_kill_step=3",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "run" / "logs").glob("*")))
    out = done.stdout + done.stderr + logs
    assert done.returncode == 0, out[-3000:]
    assert "test hook: rank 1 kills itself in step 3" in out
    assert f"resumed_from: {ck}/iter_0000002" in out, out[-3000:]
    assert json.loads((ck / "summary.json").read_text())["final_step"] == 6
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the restart continued the run
    assert runs[0].data.metrics["restarts"] == 1 and runs[0].data.tags["attempt"] == "2"
