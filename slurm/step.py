"""A training job step inside the current allocation: what the pipeline's train stage runs when
its driver is itself a Slurm batch script (`launcher=srun`). Same launch as a TrainJob's script
(one torchrun per node with c10d rendezvous on a free port of the first node, or one task per
process), built
as an argv list for subprocess instead of shell text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping

from slurm.config import ClusterConfig


def allocation_nodes(env: Mapping[str, str]) -> list[str]:
    """Hostnames of this job's allocation (SLURM_JOB_NODELIST expanded by scontrol)."""
    if "SLURM_JOB_ID" not in env or "SLURM_JOB_NODELIST" not in env:
        raise RuntimeError("launcher=srun must run inside a Slurm job (SLURM_JOB_ID is not set)")
    proc = subprocess.run(
        ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def free_port(start: int) -> int:
    """The first port from `start` that nothing on this host listens on (the driver runs on
    the allocation's first node, where the rendezvous is)."""
    port = start
    while port < 65535:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
        port += 1
    raise RuntimeError(f"no free port from {start}")


def srun_options(cluster: ClusterConfig, workdir: str) -> list[str]:
    """srun options of every training step, argv form (the sbatch renderer quotes them)."""
    options = ["--kill-on-bad-exit=1", f"--mpi={cluster.mpi}"]
    if cluster.container_image:
        options.append(f"--container-image={cluster.container_image}")
        if cluster.container_mounts:
            options.append("--container-mounts=" + ",".join(cluster.container_mounts))
        options.append(f"--container-workdir={workdir}")
    return options


def rdzv_options(nnodes: str, nproc: int, endpoint: str, rdzv_id: str) -> list[str]:
    """torchrun's multi-node options: c10d rendezvous at `endpoint` (host:port)."""
    return [
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={rdzv_id}",
    ]


def train_step(
    cluster: ClusterConfig,
    module: str,
    overrides: list[str],
    env: Mapping[str, str] | None = None,
    python: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of an `srun` step that trains over the whole allocation."""
    env = dict(os.environ if env is None else env)
    nodes = allocation_nodes(env)
    job_id = int(env["SLURM_JOB_ID"])
    port = cluster.master_port or free_port(20000 + job_id % 20000)
    extra = {"MASTER_ADDR": nodes[0], "MASTER_PORT": str(port)}
    python = cluster.python or python or sys.executable
    nproc = cluster.nproc_per_node
    srun = ["srun", *srun_options(cluster, os.getcwd()), f"--nodes={len(nodes)}"]
    if cluster.launch == "srun":
        srun += [f"--ntasks-per-node={nproc}", f"--ntasks={nproc * len(nodes)}"]
        return [*srun, python, "-m", "slurm.srun_task", module, *overrides], extra
    srun += ["--ntasks-per-node=1", f"--ntasks={len(nodes)}"]
    rdzv = rdzv_options(str(len(nodes)), nproc, f"{nodes[0]}:{port}", str(job_id))
    torchrun = [python, "-m", "torch.distributed.run", *rdzv]
    return [*srun, *torchrun, "-m", module, *overrides], extra
