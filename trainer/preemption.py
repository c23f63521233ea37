"""Stop on request: checkpoint at the next step boundary, exit 75, resume on rerun.

Three things ask a run to stop, and all take the same path:
- the stop file `$PRETRAIN_STOP_FILE` (config `checkpoint.stop_file`), which the sbatch script
  touches on Slurm's pre-timeout signal;
- SIGTERM (`kill`, `scancel`, a container stop, torchrun passing its own on) and SIGINT (Ctrl-C),
  caught by `SignalWatch` while the loop runs; a second signal exits at once (code 128+signal)
  unless it arrives within DUPLICATE_WINDOW_S of the first: signals that come together (a
  container stop signalling every process and torchrun forwarding its own, or the kernel's
  parent-death signal sent once per dying thread of the parent) are one request;
- the parent's death under torchrun (appconf.lifetime turns it into SIGTERM).
After every optimizer step `poll` shares, with one tiny all_reduce (MAX), whether any rank saw a
request and whether rank 0's clock says a periodic save is due, so every rank acts after the
same step. The loop then saves and raises `TrainingStopped`; `python -m trainer` exits with
EXIT_CODE (75, EX_TEMPFAIL: "try again") on every rank, and rerunning resumes bit-exactly.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer import contract

EXIT_CODE = contract.STOPPED_EXIT_CODE
"""Exit status of a run stopped by a request, checkpoint saved (os.EX_TEMPFAIL = 75)."""
DUPLICATE_WINDOW_S = 1.0
"""A repeated signal this soon after the first is the same request, not "exit now"."""


class TrainingStopped(Exception):
    """Raised out of the loop after the stop checkpoint was saved."""

    def __init__(self, step: int, reason: str):
        super().__init__(step, reason)
        self.step, self.reason = step, reason

    def __str__(self) -> str:
        return (
            f"stop requested ({self.reason}): checkpoint at step {self.step} saved; exiting "
            f"with code {EXIT_CODE}; rerun the same command to resume"
        )


class SignalWatch:
    """While active, SIGTERM/SIGINT set a flag instead of killing; a second one exits now."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._received_at = 0.0
        self._saved: dict[int, object] = {}

    def __enter__(self) -> SignalWatch:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._received_at < DUPLICATE_WINDOW_S:
                return  # delivered together with the first: the same request
            print(f"[trainer] second signal ({name}): exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received, self._received_at = name, time.monotonic()
        print(
            f"[trainer] {name}: saving a checkpoint after this step, then exiting "
            f"(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )


@dataclass(frozen=True)
class Requests:
    stop: str | None
    """Why the run must stop now (None: go on)."""
    save: bool
    """A periodic (time-based) save is due."""


def _flag_device() -> torch.device:
    """NCCL reduces only tensors on the current CUDA device; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_REASONS = ("stop file", "SIGTERM", "SIGINT")


def poll(stop_file: str | None, watch: SignalWatch | None, save_due: bool) -> Requests:
    """What every rank must do after this step (collective: call on all ranks together).
    `save_due` is read from rank 0 only (one clock decides for all)."""
    codes = [0, 0]
    if dist.get_rank() == 0 and stop_file and os.path.exists(stop_file):
        codes[0] = 1
    if watch is not None and watch.received in _REASONS:
        codes[0] = max(codes[0], 1 + _REASONS.index(watch.received))
    codes[1] = int(save_due and dist.get_rank() == 0)
    flags = torch.tensor(codes, dtype=torch.int32, device=_flag_device())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop, save = (int(v) for v in flags.tolist())
    reason = None
    if stop:
        reason = f"{stop_file}" if stop == 1 else _REASONS[stop - 1]
    return Requests(reason, bool(save))


def stop_requested(stop_file: str | None) -> bool:
    """Whether `stop_file` exists on rank 0; the same answer on every rank (collective)."""
    if not stop_file:
        return False
    return poll(stop_file, None, False).stop is not None
