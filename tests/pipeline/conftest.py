"""Fixtures for pipeline tests (helpers live in pipeline_testlib.py)."""

from __future__ import annotations

import os

import pytest
from pipeline_testlib import pythonpath


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for all in-process engine tests (saves ~5 s per test)."""
    import ray

    os.environ["PYTHONPATH"] = pythonpath()
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        object_store_memory=80 * 2**20,
        configure_logging=False,
    )
    yield
    ray.shutdown()
