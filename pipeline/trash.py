"""Earlier stage outputs the pipeline moved aside instead of deleting (run_dir/.trash/).

    python -m pipeline trash run_dir=runs/exp1                 # list them: stage, when, why, size
    python -m pipeline trash run_dir=runs/exp1 purge=true      # delete them all
    python -m pipeline trash run_dir=runs/exp1 purge=NAME      # delete one (a name from the list)

A stage that reruns over finished work (its config, code or inputs changed) and the folders of
removed domains are renamed to `.trash/<stage>.<UTC time>/`; nothing there is ever read again.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.state import MOVED, TRASH, read_json

USAGE = "usage: python -m pipeline trash [run_dir=DIR] [purge=true|NAME]"


@dataclass
class Entry:
    path: Path
    stage: str
    moved_at: float
    reason: str
    size_bytes: int


def entries(run_dir: Path) -> list[Entry]:
    """What is in run_dir/.trash, oldest first."""
    found = []
    for path in sorted((run_dir / TRASH).glob("*")):
        if not path.is_dir():
            continue
        note = read_json(path / MOVED) or {}
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        moved_at = note.get("moved_at", path.stat().st_mtime)
        found.append(Entry(path, note.get("stage", "?"), moved_at, note.get("reason", ""), size))
    return sorted(found, key=lambda e: e.moved_at)


def purge(run_dir: Path, name: str | None = None) -> list[Entry]:
    """Delete every entry (or the one called `name`); returns what was deleted."""
    chosen = [e for e in entries(run_dir) if name is None or e.path.name == name]
    if name is not None and not chosen:
        raise ValueError(f"nothing called {name!r} in {run_dir / TRASH}")
    for entry in chosen:
        shutil.rmtree(entry.path)
    return chosen


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def _parse(argv: list[str]) -> tuple[Path, str | None]:
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("run_dir", "purge"):
            raise ValueError(f"unknown argument {arg!r}; {USAGE}")
        args[key] = value
    from pipeline.config import PipelineConfig

    run_dir = Path(args.get("run_dir", PipelineConfig.run_dir)).expanduser().resolve()
    purge_arg = args.get("purge", "false")
    return run_dir, (None if purge_arg.lower() in ("false", "no", "0") else purge_arg)


def main(argv: list[str]) -> int:
    """`python -m pipeline trash ...`: list, or purge with purge=true|NAME."""
    try:
        run_dir, purge_arg = _parse(argv)
        if purge_arg is not None:
            name = None if purge_arg.lower() in ("true", "yes", "1", "all") else purge_arg
            gone = purge(run_dir, name)
            print(f"deleted {len(gone)} folder(s), {_mb(sum(e.size_bytes for e in gone))}")
            return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    found = entries(run_dir)
    for e in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.moved_at))
        print(f"{e.path.name}  stage {e.stage}, moved {when}, {_mb(e.size_bytes)}: {e.reason}")
    total = _mb(sum(e.size_bytes for e in found))
    print(f"{len(found)} folder(s) moved aside in {run_dir / TRASH}, {total}", end="")
    print(
        f"; delete them with: python -m pipeline trash run_dir={run_dir} purge=true"
        if found
        else ""
    )
    return 0
