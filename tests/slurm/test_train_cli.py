"""`python -m slurm.train`: the launch layer's command line for programs that run the trainer
(the pipeline's train kind). Job and step runs are covered on the dev cluster by
tests/pipeline/test_pipeline_train_kind.py and tests/pipeline/test_pipeline_slurm.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slurm.train import main


def test_world_size_of_a_named_cluster_and_of_a_yaml_file(tmp_path, capsys):
    assert main(["slurm_h100", "--world-size"]) == 0
    assert capsys.readouterr().out.split() == ["128"]  # 16 nodes x 8 GPUs
    path = tmp_path / "site.yaml"
    path.write_text("nodes: 2\ngpus_per_node: 4\n")
    assert main([str(path), "--world-size"]) == 0
    assert capsys.readouterr().out.split() == ["8"]


def test_bad_cluster_and_missing_mode_are_one_line_errors(capsys):
    assert main(["no_such_cluster", "--world-size"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown cluster 'no_such_cluster'")
    with pytest.raises(SystemExit):
        main(["slurm_dev"])
    assert "give --run-dir (a job), --step or --world-size" in capsys.readouterr().err


def test_step_outside_a_job_fails_clearly():
    res = subprocess.run(
        [sys.executable, "-m", "slurm.train", "slurm_dev", "--step", "--", "a=1"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: launcher=srun must run inside")
