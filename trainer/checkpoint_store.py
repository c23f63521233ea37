"""The checkpoint folder's bookkeeping: completeness markers, `latest`, resume choice, pruning.

Layout of `checkpoint.dir`:
    iter_0000010/              one checkpoint; complete iff it holds `checkpoint.json`
    iter_0000010/checkpoint.json   written last (before the folder gets its final name): step,
                               lineage, the model config it was saved with, every file's size
    latest                     names the newest complete checkpoint of the current lineage
    previous/<UTC time>/       checkpoints of an earlier run that `checkpoint.resume=false` set
                               aside (kept, never deleted by the trainer)
A lineage is one training run from scratch (or from `init_from`) with all its resumes; pruning
keeps the newest `keep_last` checkpoints *by step* of the current lineage only and never the one
`latest` names. Nothing here touches megatron: it only reads and writes the folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import contract

LATEST = "latest"
SUMMARY = contract.SUMMARY_FILE
"""Written by a training run that ended (trainer.run), next to its checkpoints."""
MARKER = "checkpoint.json"
PREVIOUS = "previous"
_ITER = re.compile(r"^iter_(\d{7,})$")


class CheckpointDamaged(ValueError):
    """A checkpoint's files are missing, truncated or unreadable (an older one may still load)."""


class CheckpointIncompatible(ValueError):
    """A checkpoint was saved with another model than this run's (no older one will load)."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    marker: dict[str, Any]

    @property
    def lineage(self) -> str | None:
        return self.marker.get("lineage")


def iteration_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("step"), int) else None


def iteration_folders(root: str | Path) -> list[Path]:
    """Every `iter_N` folder (complete or not, `.tmp` excluded)."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if _ITER.match(p.name) and p.is_dir())


def complete_checkpoints(root: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under `root` (marker present and readable), oldest step first."""
    found = []
    for path in iteration_folders(root):
        marker = read_marker(path)
        if marker is not None:
            found.append(Checkpoint(path, marker["step"], marker))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint `latest` names, or None (missing, dangling or garbage)."""
    pointer = Path(root) / LATEST
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = Path(root) / name
    if not _ITER.match(name) or read_marker(path) is None:
        return None
    return path


def resume_candidates(root: str | Path) -> tuple[list[Checkpoint], str | None]:
    """Checkpoints to try in order (the one `latest` names, then the others newest first) and
    a warning when `latest` is missing, dangling or garbage while complete checkpoints exist."""
    complete = complete_checkpoints(root)
    if not complete:
        return [], None
    named = latest_checkpoint(root)
    newest_first = sorted(complete, key=lambda c: c.step, reverse=True)
    if named is not None:
        first = [c for c in newest_first if c.path == named]
        return first + [c for c in newest_first if c.path != named], None
    pointer = Path(root) / LATEST
    what = "missing" if not pointer.exists() else f"unusable ({_pointer_text(pointer)})"
    warning = (
        f"{pointer} is {what}; resuming from the newest complete checkpoint "
        f"{newest_first[0].path.name} instead"
    )
    return newest_first, warning


def checkpoint_at(path: str | Path) -> Checkpoint:
    """A complete checkpoint folder, or the newest of a checkpoint.dir; ValueError otherwise."""
    candidates, _ = resume_candidates(path)
    if candidates:
        return candidates[0]
    marker = read_marker(Path(path))
    if marker is None:
        raise ValueError(f"{path} is not a complete checkpoint (no readable {MARKER})")
    return Checkpoint(Path(path), marker["step"], marker)


def _pointer_text(pointer: Path) -> str:
    try:
        text = pointer.read_bytes()[:60].decode(errors="replace").strip()
    except OSError as err:
        return str(err)
    return f"names {text!r}, not a complete checkpoint" if text else "empty"


def write_marker(folder: Path, marker: dict[str, Any]) -> None:
    """Record every file's size, then write the marker (the folder's last write)."""
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    _write_atomic(folder / MARKER, json.dumps({**marker, "files": files}, indent=1))


def verify_files(ckpt: Checkpoint) -> None:
    """CheckpointDamaged naming the first missing or truncated file of `ckpt`."""
    for name, size in ckpt.marker.get("files", {}).items():
        path = ckpt.path / name
        if not path.is_file():
            raise CheckpointDamaged(f"checkpoint {ckpt.path} is damaged: {name} is missing")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointDamaged(
                f"checkpoint {ckpt.path} is damaged: {name} has {actual} of {size} bytes"
            )


def unreadable(path: Path | str, err: Exception) -> CheckpointDamaged:
    """The one-line error for a checked checkpoint folder whose files fail to load."""
    detail = " ".join(str(err).split())[:300] or type(err).__name__
    return CheckpointDamaged(f"checkpoint {path} cannot be read: {detail}")


def model_differences(
    saved: dict[str, Any], current: dict[str, Any], ignore: Collection[str] = ()
) -> list[str]:
    """Model config fields that differ between a checkpoint and this run (name and `ignore`
    excluded; only fields both record: an imported model records the fields its config.json
    defines)."""
    keys = sorted((set(saved) & set(current)) - {"name", *ignore})
    differ = [k for k in keys if saved.get(k) != current.get(k)]
    return [f"{k}={saved.get(k)!r} vs {current.get(k)!r}" for k in differ]


def write_pointer(root: Path, name: str) -> None:
    _write_atomic(root / LATEST, name + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prune(root: Path, keep_last: int, lineage: str) -> list[Path]:
    """Delete complete checkpoints of `lineage` beyond the newest `keep_last` by step, never
    the one `latest` names and never another lineage's. Returns the deleted folders."""
    named = latest_checkpoint(root)
    own = [c for c in complete_checkpoints(root) if c.lineage == lineage]
    doomed = [c.path for c in own[:-keep_last] if c.path != named]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def set_aside(root: str | Path) -> Path | None:
    """Move every checkpoint, `latest` and summary.json of `root` into previous/<UTC time>/
    (a rename: cheap, nothing deleted). Returns that folder, or None when there was nothing."""
    base = Path(root)
    movable = [*iteration_folders(base), base / LATEST, base / SUMMARY]
    movable = [p for p in movable if p.exists()]
    if not movable:
        return None
    target = base / PREVIOUS / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    while target.exists():
        target = target.with_name(target.name + "_")
    target.mkdir(parents=True)
    for path in movable:
        os.replace(path, target / path.name)
    return target


def check_dir_usable(root: str | Path) -> None:
    """ValueError (one line) when `checkpoint.dir` is a file or cannot be written."""
    base = Path(root)
    for parent in [base, *base.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"checkpoint.dir={root}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"checkpoint.dir={root}: {parent} is not writable")
            return
