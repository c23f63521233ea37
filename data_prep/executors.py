"""Where a phase runs: datatrove's Local / Ray / Slurm executors, chosen by `executor.kind`.

datatrove executors can return normally when some tasks failed (see DESIGN.md); `run_and_check`
always checks the completion markers afterwards and raises `IncompleteRanksError` naming the
ranks and their log files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from datatrove.executor.base import PipelineExecutor

from appconf.lifetime import children_die_with_me
from data_prep.config import ExecutorConfig
from data_prep.errors import IncompleteRanksError


def make_executor(
    ex: ExecutorConfig, pipeline: list, tasks: int, logging_dir: str, depends, job_name: str
) -> PipelineExecutor:
    """Build the datatrove executor of one phase, chained to the previous one with depends=."""
    if ex.kind == "local":
        from datatrove.executor.local import LocalPipelineExecutor

        workers = ex.workers if ex.workers > 0 else min(tasks, os.cpu_count() or 1)
        return LocalPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=min(workers, tasks),
            logging_dir=logging_dir,
            depends=depends,
        )
    if ex.kind == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        _init_ray()
        return RayPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=ex.workers,
            logging_dir=logging_dir,
            depends=depends,
            cpus_per_task=ex.cpus_per_task,
            mem_per_cpu_gb=ex.mem_per_cpu_gb,
        )
    from datatrove.executor.slurm import SlurmPipelineExecutor

    venv = f"source {sys.prefix}/bin/activate" if sys.prefix != sys.base_prefix else None
    # The runner waits for each phase before submitting the next (a driver hook may need its
    # output), so Slurm jobs are not chained with afterok dependencies on finished jobs.
    return SlurmPipelineExecutor(
        pipeline,
        tasks=tasks,
        time=ex.time,
        partition=ex.partition,
        cpus_per_task=ex.cpus_per_task,
        mem_per_cpu_gb=max(1, round(ex.mem_per_cpu_gb)),  # sbatch wants whole GB here
        job_name=job_name,
        logging_dir=logging_dir,
        sbatch_args=dict(ex.sbatch_args or {}),
        env_command=ex.env_command or venv,
        qos=None,
        mail_type="NONE",
    )


def _init_ray() -> None:
    """Join the cluster in RAY_ADDRESS (a Slurm data job sets it) or start a private one.

    Not left to Ray's implicit init: without an address it joins whatever cluster
    /tmp/ray/ray_current_cluster names, and a stale file from an old `ray start` breaks the run.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", include_dashboard=False, configure_logging=False)


def _squeue_lists(job_id: str) -> bool:
    res = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True)
    return res.returncode == 0 and bool(res.stdout.strip())


def _wait_for_slurm(executor, poll_s: float) -> None:
    """Slurm run() only submits: wait until the job leaves the queue or all ranks completed."""
    job_id = getattr(executor, "job_id", None)
    while executor.get_incomplete_ranks(skip_completed=True):
        if job_id is None or not _squeue_lists(job_id):
            return
        time.sleep(poll_s)


def run_and_check(executor: PipelineExecutor, phase: str, ex: ExecutorConfig) -> None:
    """Run the phase; raise IncompleteRanksError (ranks + log paths) if any task did not finish."""
    error = None
    try:
        with children_die_with_me():  # a SIGKILLed run leaves no forked helper behind
            executor.run()
        if ex.kind == "slurm":
            _wait_for_slurm(executor, ex.poll_s)
    except Exception as e:  # a failed task re-raises in the pool; report it with the ranks
        error = e
    incomplete = executor.get_incomplete_ranks(skip_completed=True)
    if incomplete or error is not None:
        root = executor.logging_dir.path
        logs = [f"{root}/logs/task_{r:05d}.log" for r in incomplete]
        err = IncompleteRanksError(phase, incomplete, logs)
        if error is not None:
            err.args = (f"{err.args[0]} (first error: {type(error).__name__}: {error})",)
        raise err from None
