"""Render a job (what runs) on a cluster (where it runs) into a bash/sbatch script.

Training (`TrainJob`), `cluster.launch=torchrun` (default): one Slurm task per node, and on
each node `torchrun` starts `nproc_per_node` processes that meet through torch's c10d rendezvous
on the allocation's first node (first of `scontrol show hostnames`), on the first free port from
20000 + job id % 20000 unless `cluster.master_port` is set. `cluster.launch=srun`: one Slurm
task per process, and `python -m slurm.srun_task` maps SLURM_PROCID/LOCALID/NTASKS to
RANK/LOCAL_RANK/WORLD_SIZE.
Either way the trainer needs no Slurm-specific code, and a dead worker takes the whole job down
(`srun --kill-on-bad-exit=1`). With `scheduler: local` the script runs under plain bash with
`torchrun --standalone`.

Data (`RayJob`): a Ray head on the first node, a worker per other node (`srun --overlap`), a wait
until all nodes joined, the driver with RAY_ADDRESS set, then the cluster is stopped.

Every job runs its work in the background under a SIGUSR1 trap (`--signal=B:USR1@N`): the trap
touches $PRETRAIN_STOP_FILE, the trainer checkpoints and stops, and the script requeues the job
(`scontrol requeue`, at most `cluster.max_requeues` times). A training job that fails (crash,
killed rank, hang watchdog) is requeued at most `cluster.max_restarts` times, the failing node
excluded when the failure is node-local (`python -m slurm.recover` decides and keeps the attempt
ledger `<run_dir>/attempts.json`); locally torchrun restarts it (`--max-restarts`).

Quoting: every config value that reaches a shell line goes through `shlex.quote`; values in
`#SBATCH` lines are validated by ClusterConfig (no spaces, quotes or line breaks). The one
exception is `cluster.env_setup`, whose lines are shell commands by design.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from pathlib import Path

import jinja2

from slurm.config import ClusterConfig, CommandJob, RayJob, TrainJob
from slurm.step import rdzv_options, srun_options
from trainer.contract import standalone_torchrun

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("slurm", "templates"),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,
)
_ENV.filters["q"] = lambda value: shlex.quote(str(value))
_CONT = " \\\n    "


Job = TrainJob | CommandJob | RayJob


def render_sbatch(job: Job, cluster: ClusterConfig) -> str:
    """The script text that runs `job` on `cluster` (sbatch directives when executor=slurm)."""
    cluster = named(job, cluster)
    run_dir = str(Path(job.run_dir).absolute())
    if re.search(r"\s", run_dir):
        raise ValueError(f"run_dir {run_dir!r}: Slurm log paths cannot contain whitespace")
    workdir = job.workdir or os.getcwd()
    tasks_per_node = 1
    if isinstance(job, TrainJob):
        kind, what = "train", _describe_train(job, cluster)
        launch = _train_launch(job, cluster, run_dir, workdir)
        if cluster.launch == "srun":
            tasks_per_node = cluster.nproc_per_node
    elif isinstance(job, RayJob):
        kind, what, launch = (
            "ray",
            "ray driver: " + shlex.join(job.command),
            shlex.join(job.command),
        )
    else:
        kind, what = "command", "command: " + shlex.join(job.command)
        prefix = _srun_prefix(cluster, workdir) if job.per_node else []
        launch = _CONT.join([*prefix, shlex.join(job.command)])
    python = cluster.python or getattr(job, "python", None) or sys.executable
    return _ENV.get_template("job.sbatch.j2").render(
        c=cluster,
        slurm=cluster.scheduler == "slurm",
        kind=kind,
        run_dir=run_dir,
        workdir=workdir,
        launch=launch,
        what=what,
        tasks_per_node=tasks_per_node,
        python=python,
        ray_cli=f"{shlex.quote(python)} -m ray.scripts.scripts",
        restartable=isinstance(job, TrainJob) or getattr(job, "restart_on_failure", False),
    )


def named(job: Job, cluster: ClusterConfig) -> ClusterConfig:
    """`cluster` with a job name: its own, or one after what runs (train, data, job)."""
    if cluster.job_name:
        return cluster
    default = "train" if isinstance(job, TrainJob) else "data" if isinstance(job, RayJob) else "job"
    return dataclasses.replace(cluster, job_name=default)


def trainer_overrides(job: TrainJob, run_dir: str) -> list[str]:
    """The job's overrides plus `hydra.run.dir` under the run dir (unless the job sets it)."""
    overrides = list(job.overrides)
    if not any(o.lstrip("+~").startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={run_dir}/hydra")
    return overrides


def _srun_prefix(cluster: ClusterConfig, workdir: str) -> list[str]:
    """`srun` and its options, one script line each (empty for the local scheduler)."""
    if cluster.scheduler != "slurm":
        return []
    return ["srun", *map(shlex.quote, srun_options(cluster, workdir))]


def _python(job: TrainJob, cluster: ClusterConfig) -> str:
    return cluster.python or job.python or sys.executable


def _train_launch(job: TrainJob, cluster: ClusterConfig, run_dir: str, workdir: str) -> str:
    """The training command line of the script (shell text; the template backgrounds it)."""
    overrides = [shlex.quote(o) for o in trainer_overrides(job, run_dir)]
    python = shlex.quote(_python(job, cluster))
    srun = _srun_prefix(cluster, workdir)
    if cluster.scheduler == "slurm" and cluster.launch == "srun":
        return _CONT.join([*srun, f"{python} -m slurm.srun_task {job.module}", *overrides])
    if cluster.scheduler == "slurm":  # values are numbers or shell variables: not quoted
        rdzv = rdzv_options(
            '"$SLURM_JOB_NUM_NODES"',
            cluster.nproc_per_node,
            '"$MASTER_ADDR:$MASTER_PORT"',
            '"$SLURM_JOB_ID"',
        )
    else:
        rdzv = standalone_torchrun(cluster.nproc_per_node, cluster.max_restarts)
    torchrun = f"{python} -m torch.distributed.run"
    return _CONT.join([*srun, torchrun, *rdzv, f"-m {job.module}", *overrides])


def _describe_train(job: TrainJob, cluster: ClusterConfig) -> str:
    return (
        f"train: {cluster.nodes} node(s) x {cluster.nproc_per_node} process(es) = "
        f"world size {cluster.world_size}, python -m {job.module} ({cluster.launch})"
    )
