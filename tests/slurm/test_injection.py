"""A hostile config value reaches the job literally and runs nothing: environment values and
command arguments are quoted; values that would land in #SBATCH lines are refused."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from slurm import jobs
from slurm.config import ClusterConfig, CommandJob, load_cluster


def _hostile(marker_dir: Path) -> str:
    m = marker_dir
    return (
        f"$(touch {m}/dollar) `touch {m}/backtick`; touch {m}/semicolon && echo \"dq\" 'sq' "
        f"\\\ntouch {m}/newline\n${{HOME}} | touch {m}/pipe # end"
    )


WRITE = (
    "import os, sys; open(sys.argv[1], 'w').write(os.environ['HOSTILE']); "
    "open(sys.argv[1] + '.arg', 'w').write(sys.argv[2])"
)


@pytest.mark.usefixtures("dev_cluster")
def test_hostile_values_reach_the_slurm_job_literally_and_run_nothing(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    value, out = _hostile(markers), tmp_path / "seen"
    cluster = dataclasses.replace(
        load_cluster("slurm_dev"), cpus_per_task=1, time="00:05:00", env={"HOSTILE": value}
    )
    job = CommandJob([sys.executable, "-c", WRITE, str(out), value], run_dir=str(tmp_path / "r"))
    result = jobs.run_job(job, cluster, poll_s=0.5, timeout_s=120)
    assert result.ok
    assert out.read_text() == value  # the environment variable, byte for byte
    assert Path(f"{out}.arg").read_text() == value  # the command argument, byte for byte
    assert list(markers.iterdir()) == []  # no substitution, separator or newline ran anything


def test_hostile_values_run_nothing_under_the_local_scheduler(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    value, out = _hostile(markers), tmp_path / "seen"
    cluster = ClusterConfig(scheduler="local", env={"HOSTILE": value})
    job = CommandJob([sys.executable, "-c", WRITE, str(out), value], run_dir=str(tmp_path / "r"))
    assert jobs.run_job(job, cluster).ok
    assert out.read_text() == value and Path(f"{out}.arg").read_text() == value
    assert list(markers.iterdir()) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("partition", "debug\n#SBATCH --wrap=id"),
        ("account", "a b"),
        ("qos", "x'y"),
        ("constraint", 'h100"'),
        ("mem", "1G\ntouch /tmp/x"),
    ],
)
def test_values_for_sbatch_lines_with_breaks_spaces_or_quotes_are_refused(field, value):
    with pytest.raises(ValueError, match=f"cluster.{field} "):
        ClusterConfig(**{field: value})


def test_env_names_and_job_names_must_be_plain(tmp_path):
    with pytest.raises(ValueError, match="cluster.env key 'A;B'"):
        ClusterConfig(env={"A;B": "1"})
    with pytest.raises(ValueError, match="cluster.job_name"):
        ClusterConfig(job_name="x$(id)")
    with pytest.raises(ValueError, match="whitespace"):
        jobs.prepare(CommandJob(["true"], run_dir=str(tmp_path / "a b")), ClusterConfig())
