"""`python -m slurm.srun_task MODULE [args...]`: run MODULE as one rank of a job launched with
one Slurm task per process (`cluster.launch=srun`).

Maps Slurm's task variables to the ones torch.distributed reads (what torchrun would set):
RANK=SLURM_PROCID, LOCAL_RANK=SLURM_LOCALID, WORLD_SIZE=SLURM_NTASKS,
LOCAL_WORLD_SIZE=SLURM_NTASKS_PER_NODE; MASTER_ADDR/MASTER_PORT come from the batch script.
"""

from __future__ import annotations

import os
import runpy
import sys

_MAPPING = {
    "RANK": "SLURM_PROCID",
    "LOCAL_RANK": "SLURM_LOCALID",
    "WORLD_SIZE": "SLURM_NTASKS",
    "LOCAL_WORLD_SIZE": "SLURM_NTASKS_PER_NODE",
}


def torch_env(slurm_env: dict[str, str]) -> dict[str, str]:
    """The torch.distributed variables for this task; raises if Slurm did not set one."""
    missing = [src for src in _MAPPING.values() if src not in slurm_env]
    if missing:
        raise RuntimeError(f"slurm.srun_task must run under srun: {', '.join(missing)} not set")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in slurm_env:
            raise RuntimeError(f"slurm.srun_task: {name} not set (the batch script exports it)")
    # SLURM_NTASKS_PER_NODE may read "8" or "8(x2)"-style lists on heterogeneous steps.
    local = slurm_env["SLURM_NTASKS_PER_NODE"].split("(")[0].split(",")[0]
    return {
        "RANK": slurm_env["SLURM_PROCID"],
        "LOCAL_RANK": slurm_env["SLURM_LOCALID"],
        "WORLD_SIZE": slurm_env["SLURM_NTASKS"],
        "LOCAL_WORLD_SIZE": local,
    }


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m slurm.srun_task MODULE [args...]")
    os.environ.update(torch_env(dict(os.environ)))
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
