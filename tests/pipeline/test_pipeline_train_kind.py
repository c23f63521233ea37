"""The train stage kind: command lines, the Slurm hand-off, failures (no Ray needed)."""

from __future__ import annotations

import json
import sys

import pytest
from pipeline_testlib import pythonpath

from pipeline.kinds.train import TrainOptions, command, train
from pipeline.registry import StageContext


def _ctx(tmp_path, **options) -> StageContext:
    return StageContext(
        key="train", name="train", domain=None, output=tmp_path, run_dir=tmp_path.parent,
        inputs={}, overrides=["train.steps=3"], options=TrainOptions(**options),
        log_path=tmp_path / "train.log", mlflow_run_id="abc", tracking_uri="sqlite:////x.db",
        echo=lambda line: None,
    )  # fmt: skip


def test_command_uses_torchrun_for_several_processes():
    assert command(TrainOptions(), ["a=1"]) == [sys.executable, "-m", "trainer", "a=1"]
    cmd = command(TrainOptions(nproc_per_node=4), ["a=1"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[4:] == ["--nproc-per-node=4", "-m", "trainer", "a=1"]


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="nproc_per_node must be >= 1"):
        TrainOptions(nproc_per_node=0)
    with pytest.raises(ValueError, match="launcher must be 'local' or 'slurm'"):
        TrainOptions(launcher="k8s")


def test_slurm_launcher_hands_job_and_mlflow_run_to_slurm(tmp_path, monkeypatch):
    import slurm

    calls = {}

    def fake_launch(overrides, cluster, run_dir, *, env=None, timeout_s=None, poll_s=2.0):
        calls.update(overrides=overrides, cluster=cluster, run_dir=run_dir, env=env)
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints/summary.json").write_text(json.dumps({"final_step": 3}))
        return slurm.JobResult("42", "COMPLETED", "0:0", None, 1.0)

    monkeypatch.setattr(slurm, "launch_training", fake_launch)
    stats = train(_ctx(tmp_path, launcher="slurm", cluster="slurm_dev"))
    assert stats["final_step"] == 3
    assert calls["overrides"] == ["train.steps=3", f"checkpoint.dir={tmp_path}/checkpoints"]
    assert calls["cluster"] == "slurm_dev" and calls["run_dir"] == tmp_path / "slurm"
    assert calls["env"] == {"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "sqlite:////x.db"}


def test_failed_trainer_fails_the_stage_with_its_last_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    ctx = _ctx(tmp_path, module="pipeline_fake_trainer")
    ctx.overrides = [f"checkpoint.dir={tmp_path}/ck", "fail=true"]
    with pytest.raises(
        RuntimeError, match="trainer exited with code 3; last lines:\n.*planted failure"
    ):
        train(ctx)
