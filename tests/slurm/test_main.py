"""`python -m slurm render|submit` argument handling and errors (no cluster needed)."""

from __future__ import annotations

import pytest

from slurm.__main__ import main
from slurm.config import TrainJob, load_cluster
from slurm.render import render_sbatch


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Hydra and run dirs stay out of the repo


def test_render_prints_the_script_for_the_chosen_cluster(capsys, tmp_path):
    rc = main(
        ["render", "cluster=slurm_h100", "cluster.nodes=2", "run_dir=/r", "--", "a=1", "b=x y"]
    )
    assert rc == 0
    cluster = load_cluster("slurm_h100")
    cluster.nodes = 2
    expected = render_sbatch(TrainJob(overrides=["a=1", "b=x y"], run_dir="/r"), cluster)
    assert capsys.readouterr().out == expected
    assert list(tmp_path.iterdir()) == []  # render writes nothing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["launch"], "usage: python -m slurm {render|submit|status}"),
        (["render", "cluster.time=soon"], "error: cluster.time 'soon' is not"),
        (
            ["render", "cluster=slurm_dev", "cluster.gpus_per_node=-2"],
            "error: cluster.gpus_per_node",
        ),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_submit_local_failure_exits_1_with_log(capsys, tmp_path):
    rc = main(["submit", "cluster=local", "run_dir=run", "cluster.python=/bin/false"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"ended FAILED (exit 1:0); log: {tmp_path}/run/logs/train-local.out" in err
