"""Render, submit and wait for jobs on Slurm (or locally): sbatch templates, a submitter and a
single-node dev cluster script (`bash slurm/dev_cluster.sh start`). See `python -m slurm`."""

from slurm.config import ClusterConfig, CommandJob, RayJob, TrainJob, load_cluster
from slurm.jobs import (
    JobResult,
    SlurmError,
    SlurmJobError,
    SlurmUnavailableError,
    launch_training,
    run_job,
    submit,
    wait,
)
from slurm.render import render_sbatch

__all__ = [
    "ClusterConfig",
    "CommandJob",
    "JobResult",
    "SlurmError",
    "SlurmJobError",
    "SlurmUnavailableError",
    "RayJob",
    "TrainJob",
    "launch_training",
    "load_cluster",
    "render_sbatch",
    "run_job",
    "submit",
    "wait",
]
