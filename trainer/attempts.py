"""The launch layer's attempt ledger as the trainer sees it.

The batch script exports `$PRETRAIN_ATTEMPTS` (`<run_dir>/attempts.json`); `slurm.recover`
appends one entry per ended attempt (cause, detail, action). Rank 0 logs the ledger into its
MLflow run at every start and records the run there, so a later attempt continues the same run
(even before the first checkpoint) and a failure past the restart limit ends it FAILED.
torchrun's own restarts (local runs) are counted by `$TORCHELASTIC_RESTART_COUNT`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "PRETRAIN_ATTEMPTS"


def read() -> dict[str, Any]:
    """The ledger ({"attempts": [...], "mlflow": {...}}); empty when there is none."""
    path = os.environ.get(ENV)
    try:
        return json.loads(Path(path).read_text()) if path else {"attempts": []}
    except (OSError, ValueError):
        return {"attempts": []}


def tracked_run_id() -> str | None:
    """The MLflow run an earlier attempt of this job logged to."""
    return (read().get("mlflow") or {}).get("run_id")


def record_run(tracking_uri: str, run_id: str) -> None:
    """Note the MLflow run in the ledger (rank 0; the launch layer writes only between attempts)."""
    path = os.environ.get(ENV)
    if not path:
        return
    ledger = read()
    ledger["mlflow"] = {"tracking_uri": tracking_uri, "run_id": run_id}
    tmp = Path(path).with_name(f".{Path(path).name}.trainer.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(ledger, indent=1))
    os.replace(tmp, path)


def torchrun_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def table(ledger: dict[str, Any]) -> dict[str, list]:
    """The ended attempts as columns (an MLflow table)."""
    cols = ("attempt", "job_id", "nodes", "exit", "cause", "detail", "action", "excluded")
    rows = ledger.get("attempts", [])
    return {
        c: [", ".join(r.get(c) or []) if c in ("nodes", "excluded") else r.get(c) for r in rows]
        for c in cols
    }
