"""The train stage kind: command lines, the Slurm hand-off on the dev cluster, failures.

No Ray needed.
"""

from __future__ import annotations

import sys

import pytest
from pipeline_testlib import pythonpath, stage_context

from pipeline.kinds.train import TrainOptions, command, train
from pipeline.registry import TaskContext
from tests.tiny_corpus import write_tiny_manifest


def _ctx(tmp_path, **options) -> TaskContext:
    return stage_context(
        tmp_path,
        "train",
        ["train.steps=3"],
        TrainOptions(**options),
        mlflow_run_id="abc",
        tracking_uri="sqlite:////x.db",
        echo=lambda line: None,
    )


def test_command_uses_torchrun_for_several_processes():
    assert command(TrainOptions(), ["a=1"]) == ([sys.executable, "-m", "trainer", "a=1"], {})
    cmd, _ = command(TrainOptions(nproc_per_node=4), ["a=1"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[4:] == ["--nproc-per-node=4", "--max-restarts=0", "-m", "trainer", "a=1"]


def test_slurm_launchers_run_the_launch_layer_command_line(tmp_path):
    """launcher=srun|slurm: the kind runs `python -m slurm.train` (it imports no slurm code)."""
    cmd, env = command(TrainOptions(launcher="srun", cluster="c.yaml", module="m"), ["a=1"])
    assert (
        cmd == [sys.executable, "-m", "slurm.train", "c.yaml", "--step", "--module=m", "--", "a=1"]
        and env == {}
    )
    opts = TrainOptions(launcher="slurm", cluster="slurm_dev", timeout_s=60)
    cmd, _ = command(opts, ["a=1"], tmp_path)
    assert cmd[3:] == [
        "slurm_dev",
        f"--run-dir={tmp_path / 'slurm'}",
        "--timeout-s=60",
        "--",
        "a=1",
    ]


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="nproc_per_node must be >= 1"):
        TrainOptions(nproc_per_node=0)
    with pytest.raises(ValueError, match="launcher must be 'local', 'slurm' or 'srun'"):
        TrainOptions(launcher="k8s")


@pytest.mark.usefixtures("dev_cluster")
def test_slurm_launcher_trains_on_the_dev_cluster_into_the_stage_run(tmp_path):
    """launcher=slurm: the real trainer runs as a job on the real dev cluster, the stage returns
    its summary, and the job logs its curve into the stage's MLflow run."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("train-kind")).info.run_id
    (tmp_path / "train").mkdir()
    ctx = _ctx(tmp_path / "train", launcher="slurm", cluster="slurm_dev")
    ctx.mlflow_run_id, ctx.tracking_uri = run_id, uri
    ctx.overrides = [
        f"data.manifest={write_tiny_manifest(tmp_path)}",
        "data.seq_length=64",
        "train.steps=3",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=3",
        "train.eval_iters=1",
        "logging.mlflow=true",
    ]
    stats = train(ctx)
    assert stats["final_step"] == 3
    assert (tmp_path / "train/slurm/logs").is_dir()  # the job ran through the slurm package
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]


def test_failed_trainer_fails_the_stage_with_its_last_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    ctx = _ctx(tmp_path, module="pipeline_fake_trainer")
    ctx.overrides = [f"checkpoint.dir={tmp_path}/ck", "fail=true"]
    with pytest.raises(
        RuntimeError, match="trainer exited with code 3; last lines:\n.*planted failure"
    ):
        train(ctx)


def test_live_throughput_comes_from_the_trainer_progress_file(tmp_path, monkeypatch):
    """trainer.contract: the kind names the progress file, the trainer appends a line per step,
    the kind reports the latest tokens/s (the console text is not parsed)."""
    import json

    monkeypatch.setenv("PYTHONPATH", pythonpath())
    ctx = _ctx(tmp_path, module="pipeline_fake_trainer")
    ctx.overrides = [f"checkpoint.dir={tmp_path}/ck", "train.steps=3"]
    ctx.mlflow_run_id = None  # no MLflow store here
    stats = train(ctx)
    assert stats["final_step"] == 3
    lines = (tmp_path / ".progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert json.loads((tmp_path / ".progress.json").read_text()) == {
        "throughput": 1237.0,
        "unit": "tok/s",
    }
