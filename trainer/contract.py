"""What the trainer promises the programs that run it (the pipeline's train kind, Slurm scripts):
the files it writes and the environment it reads, named here once. Imports nothing heavy.

- `checkpoint.dir/summary.json` (SUMMARY_FILE): written once training ended; its keys are the
  stage's stats (final_step, valid_loss_first/last, tokens_per_s, ...).
- `$PRETRAIN_PROGRESS_FILE` (PROGRESS_ENV): when set, rank 0 appends one JSON line per logged
  step, `{"step": N, "tokens_per_s": X, "loss": Y, "time": UNIX_S}` (read with read_progress).
- `$PRETRAIN_STOP_FILE` (STOP_FILE_ENV): when this file appears the trainer checkpoints after the
  current step and exits with STOPPED_EXIT_CODE (75) so its job can be requeued.
- `$MLFLOW_RUN_ID` / `$MLFLOW_TRACKING_URI`: log into this existing MLflow run.
- on one machine it runs under `torchrun --standalone` (standalone_torchrun: the one builder of
  that command line, used by the pipeline's train kind and by `cluster.scheduler=local` scripts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
PROGRESS_ENV = "PRETRAIN_PROGRESS_FILE"
STOP_FILE_ENV = "PRETRAIN_STOP_FILE"
STOPPED_EXIT_CODE = os.EX_TEMPFAIL  # 75
PROGRESS_KEYS = ("step", "tokens_per_s", "loss", "time")


def standalone_torchrun(nproc_per_node: int, max_restarts: int) -> list[str]:
    """torchrun's arguments (after `python -m torch.distributed.run`) for `nproc_per_node`
    ranks on this machine, restarted at most `max_restarts` times (each resumes from the last
    checkpoint); the module and its overrides follow."""
    return ["--standalone", f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}"]


def read_progress(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete progress records from byte `offset` on, and the offset after the last one
    (a line still being written is left for the next read)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return records, offset + end
