"""Render a job (what runs) on a cluster (where it runs) into a bash/sbatch script.

Launch method: one Slurm task per node (`srun --ntasks-per-node=1`), and on each node
`torchrun` (`python -m torch.distributed.run`) starts `nproc_per_node` training processes that
meet through torch's c10d rendezvous on the allocation's first node
(the first of `scontrol show hostnames $SLURM_JOB_NODELIST`), port 20000 + job id % 20000 unless
`cluster.master_port` is set. torchrun sets RANK/LOCAL_RANK/WORLD_SIZE for the trainer, so the
trainer needs no Slurm-specific code, and a dead worker takes the whole job down
(`srun --kill-on-bad-exit=1`). With `executor: local` the same script runs under plain bash with
`torchrun --standalone`.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import jinja2

from slurm.config import ClusterConfig, CommandJob, TrainJob

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


def render_sbatch(job: TrainJob | CommandJob, cluster: ClusterConfig) -> str:
    """The script text that runs `job` on `cluster` (sbatch directives when executor=slurm)."""
    slurm = cluster.executor == "slurm"
    run_dir = str(Path(job.run_dir).absolute())
    workdir = job.workdir or os.getcwd()
    if isinstance(job, TrainJob):
        launch, what = _train_launch(job, cluster, run_dir), _describe_train(job, cluster)
    else:
        launch, what = _command_launch(job, cluster), "command: " + shlex.join(job.command)
    return _ENV.get_template("job.sbatch.j2").render(
        c=cluster,
        slurm=slurm,
        train=isinstance(job, TrainJob),
        run_dir=run_dir,
        workdir=workdir,
        launch=launch,
        what=what,
    )


def trainer_overrides(job: TrainJob, run_dir: str) -> list[str]:
    """The job's overrides plus `hydra.run.dir` under the run dir (unless the job sets it)."""
    overrides = list(job.overrides)
    if not any(o.lstrip("+~").startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={run_dir}/hydra")
    return overrides


def _srun_prefix(cluster: ClusterConfig) -> list[str]:
    """`srun` and its options, one script line each (empty for the local executor)."""
    if cluster.executor != "slurm":
        return []
    lines = ["srun --kill-on-bad-exit=1"]
    if cluster.container_image:
        lines.append(f"--container-image={shlex.quote(cluster.container_image)}")
        if cluster.container_mounts:
            lines.append("--container-mounts=" + shlex.quote(",".join(cluster.container_mounts)))
        lines.append('--container-workdir="$PWD"')
    return lines


def _python(job: TrainJob, cluster: ClusterConfig) -> str:
    return cluster.python or job.python or sys.executable


def _train_launch(job: TrainJob, cluster: ClusterConfig, run_dir: str) -> list[str]:
    torchrun = [shlex.quote(_python(job, cluster)), "-m", "torch.distributed.run"]
    if cluster.executor == "slurm":
        rdzv = [
            '--nnodes="$SLURM_JOB_NUM_NODES"',
            f"--nproc-per-node={cluster.nproc_per_node}",
            "--rdzv-backend=c10d",
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"',
            '--rdzv-id="$SLURM_JOB_ID"',
        ]
    else:
        rdzv = ["--standalone", f"--nproc-per-node={cluster.nproc_per_node}"]
    overrides = [shlex.quote(o) for o in trainer_overrides(job, run_dir)]
    parts = [*_srun_prefix(cluster), " ".join(torchrun), *rdzv, f"-m {job.module}", *overrides]
    return [_CONT.join(parts)]


def _command_launch(job: CommandJob, cluster: ClusterConfig) -> list[str]:
    return [_CONT.join([*_srun_prefix(cluster), shlex.join(job.command)])]


def _describe_train(job: TrainJob, cluster: ClusterConfig) -> str:
    return (
        f"train: {cluster.nodes} node(s) x {cluster.nproc_per_node} process(es) = "
        f"world size {cluster.world_size}, python -m {job.module}"
    )
