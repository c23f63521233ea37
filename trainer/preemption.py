"""Stop on request (Slurm's pre-timeout signal): checkpoint, exit 75, be requeued, resume.

The sbatch script traps the signal and touches `$PRETRAIN_STOP_FILE` (config key
`checkpoint.stop_file`). After every optimizer step rank 0 looks for that file and one tiny
all_reduce (MAX) shares the answer, so every rank stops after the same step. The loop then
saves a checkpoint and raises `TrainingStopped`; `python -m trainer` exits with EXIT_CODE
(75, EX_TEMPFAIL: "try again") on every rank, and the requeued job resumes bit-exactly.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

EXIT_CODE = os.EX_TEMPFAIL
"""Exit status of a run stopped for requeue (os.EX_TEMPFAIL)."""


class TrainingStopped(Exception):
    """Raised out of the loop after the stop checkpoint was saved."""

    def __init__(self, step: int, stop_file: str):
        super().__init__(step, stop_file)
        self.step, self.stop_file = step, stop_file

    def __str__(self) -> str:
        return (
            f"stop requested ({self.stop_file}): checkpoint at step {self.step} saved; "
            f"exiting with code {EXIT_CODE} to be requeued"
        )


def _flag_device() -> torch.device:
    """NCCL reduces only tensors on the current CUDA device; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def stop_requested(stop_file: str | None) -> bool:
    """Whether `stop_file` exists on rank 0; the same answer on every rank (collective: call
    it on all ranks at the same point). No file configured: False without communicating."""
    if not stop_file:
        return False
    seen = dist.get_rank() == 0 and os.path.exists(stop_file)
    flag = torch.tensor([1 if seen else 0], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
