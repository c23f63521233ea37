"""A 2-process CPU training job of a few steps through the renderer on the real dev cluster.
Skipped without the cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slurm import launch_training, load_cluster
from tests.tiny_corpus import write_tiny_manifest

pytestmark = pytest.mark.usefixtures("dev_cluster")


def test_two_process_cpu_training_completes(tmp_path):
    manifest = write_tiny_manifest(tmp_path)
    ckpt = tmp_path / "ckpt"
    overrides = [
        "model=tiny_v3",
        f"data.manifest={manifest}",
        "data.seq_length=64",
        "train.steps=3",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=3",
        "train.eval_iters=1",
        f"checkpoint.dir={ckpt}",
    ]
    cluster = load_cluster("slurm_dev")
    cluster.time = "00:05:00"
    result = launch_training(overrides, cluster, tmp_path / "run", poll_s=0.5, timeout_s=170)
    assert result.ok
    summary = json.loads((ckpt / "summary.json").read_text())
    assert summary["final_step"] == 3
    assert np.isfinite(summary["train_loss"])
    log = result.log_path.read_text()
    assert f"[slurm] job {result.job_id} attempt 1 on 1 node(s)" in log
    assert "[slurm] torchrun: 2 proc(s) per node" in log
    assert "layout: world 2 = DP2" in log  # the trainer saw both torchrun workers


def test_task_per_process_launch_trains_the_same_as_torchrun(tmp_path):
    """cluster.launch=srun: two Slurm tasks become ranks 0 and 1 (slurm.srun_task), and the run
    equals the torchrun-launched one step for step."""
    manifest = write_tiny_manifest(tmp_path)
    base = [
        "model=tiny_v3",
        f"data.manifest={manifest}",
        "data.seq_length=64",
        "train.steps=2",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=0",
    ]
    losses = {}
    for launch in ("srun", "torchrun"):
        cluster = load_cluster("slurm_dev")
        cluster.time, cluster.launch = "00:05:00", launch
        if launch == "srun":
            cluster.cpus_per_task = 1  # per task: 2 tasks x 1 CPU
        ckpt = tmp_path / launch
        result = launch_training(
            [*base, f"checkpoint.dir={ckpt}"],
            cluster,
            tmp_path / f"run_{launch}",
            poll_s=0.5,
            timeout_s=170,
        )
        assert result.ok
        log = result.log_path.read_text()
        assert "layout: world 2 = DP2" in log
        losses[launch] = json.loads((ckpt / "summary.json").read_text())["train_loss"]
        if launch == "srun":
            assert "-m slurm.srun_task trainer" in (tmp_path / "run_srun/train.sbatch").read_text()
    assert losses["srun"] == pytest.approx(losses["torchrun"], rel=1e-6)
