"""Project-wide fixtures: the real Slurm dev cluster (tests using it skip when Slurm is not
installed or the cluster does not answer; start it with `bash slurm/dev_cluster.sh start`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _cluster_problem() -> str | None:
    """Why the dev cluster cannot be used, or None when it answers."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (run `bash slurm/dev_cluster.sh start` to install a cluster)"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(
        s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states
    ):
        return f"no usable Slurm node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=20)
    if acct.returncode != 0:
        return "sacct fails: the cluster has no accounting (slurmdbd)"
    return None


@pytest.fixture(scope="session")
def dev_cluster() -> None:
    """Skip unless a Slurm cluster with accounting answers."""
    problem = _cluster_problem()
    if problem:
        pytest.skip(f"no Slurm dev cluster: {problem}")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every in-process Ray test (saves ~5 s per test).

    The only place tests start Ray in this process: a test that let an executor start its own
    left it running, and the next ray.init failed ("called ray.init twice").
    """
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tests = Path(__file__).parent
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(tests.parent), str(tests / "pipeline"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        object_store_memory=80 * 2**20,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()
