"""`python -m pipeline compare RUN_DIR_A RUN_DIR_B [...]`: the eval tables of pipeline runs side
by side, with the difference to the first run (for people who prefer the terminal to MLflow).

Reads `<run_dir>/<stage>/results.json` of every eval-kind stage (the stage folders that hold
one); a metric missing from a run shows as `-`. Exit 2 with one line when a run has no results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.kinds.evaluate import RESULTS


def eval_metrics(run_dir: Path) -> dict[str, float]:
    """`metric -> value` of all eval stages of a run (keys prefixed by the stage when a run has
    several); ValueError naming the folder when there is none."""
    found = sorted(p for p in run_dir.glob(f"*/{RESULTS}") if p.is_file())
    found = [p for p in found if "metrics" in _read(p)]
    if not found:
        raise ValueError(f"{run_dir}: no eval results (*/{RESULTS}); run the eval stage first")
    out: dict[str, float] = {}
    for path in found:
        prefix = f"{path.parent.name}:" if len(found) > 1 else ""
        out.update({f"{prefix}{k}": v for k, v in _read(path)["metrics"].items()})
    return out


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def table(runs: dict[str, dict[str, float]]) -> str:
    """Rows = metrics, columns = runs, then `Δ` columns against the first run."""
    names = list(runs)
    keys = sorted({k for metrics in runs.values() for k in metrics})
    head = ["metric", *names, *(f"Δ {n}" for n in names[1:])]
    rows = []
    for key in keys:
        values = [runs[n].get(key) for n in names]
        cells = [key, *(_num(v) for v in values)]
        base = values[0]
        for v in values[1:]:
            cells.append(_num(v - base, signed=True) if v is not None and base is not None else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    return "\n".join(lines)


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any(a.startswith("-") for a in argv):
        print("usage: python -m pipeline compare RUN_DIR_A RUN_DIR_B [...]", file=sys.stderr)
        return 2
    try:
        runs = {}
        for arg in argv:
            name = Path(arg).name
            runs[name if name not in runs else arg] = eval_metrics(Path(arg))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(runs))
    return 0
