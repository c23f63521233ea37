"""Completion markers, attempt records and the run/skip decision for each stage.

A stage folder holds `.complete.json` (written atomically, last, after the outputs) and
`.attempt.json` (written when an attempt starts). A stage is skipped iff its marker holds
the node's current fingerprint. Otherwise it runs, and its folder is:
- kept, when a resumable kind (training) resumes an interrupted attempt of the same
  fingerprint, or continues a run whose only changes are the kind's extend-only override keys
  (`train.steps` 4 -> 6 trains on from its checkpoint);
- moved aside to `run_dir/.trash/<stage>.<UTC time>/` (a rename), when it holds finished work
  or checkpoints and the stage restarts; `python -m pipeline trash run_dir=DIR` lists them,
  `purge=true` deletes them;
- deleted only when it is the partial output of an interrupted non-resumable stage (this
  attempt rebuilds it).
Nothing is touched before the stage's new config is validated (see pipeline.task.execute).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dag import Node, override_key
from pipeline.fingerprint import digest

MARKER = ".complete.json"
ATTEMPT = ".attempt.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


SKIP, RUN, RESUME, CONTINUE, RESTART = "skip", "run", "resume", "continue", "restart"
KEEPS_OR_MOVES = (RESUME, CONTINUE, RESTART)
"""Actions that keep a stage's earlier outputs (resume, continue) or move them aside."""
TRASH = ".trash"
MOVED = ".moved_aside.json"


@dataclass
class Decision:
    run: bool
    reason: str
    action: str = ""
    """skip, run (nothing earlier to keep), resume (an interrupted attempt), continue (a
    finished or interrupted run extended by extend-only keys), restart (earlier outputs are
    moved aside)."""

    def __post_init__(self) -> None:
        self.action = self.action or (RUN if self.run else SKIP)

    @property
    def touches_outputs(self) -> bool:
        """Whether running it changes earlier outputs (so its config is validated first)."""
        return self.action in (CONTINUE, RESTART)


def _changes(node: Node, marker: dict) -> str:
    """Why a marker no longer matches: which part of the fingerprint moved."""
    parts = []
    if marker.get("config_digest") != digest(node.config):
        old = marker.get("config", {})
        keys = sorted(k for k in set(old) | set(node.config) if old.get(k) != node.config.get(k))
        if "overrides" in keys:  # name the override keys that moved
            moved = set(old.get("overrides", [])) ^ set(node.config.get("overrides", []))
            names = sorted({override_key(o) or o for o in moved})
            keys[keys.index("overrides")] = f"overrides: {', '.join(names) or 'order'}"
        parts.append(f"config changed ({', '.join(keys) or 'format'})")
    if marker.get("code_version") != node.code_version:
        parts.append(
            "code changed ("
            + ", ".join(node.kind.code_modules(node.options) + node.kind.conf)
            + ")"
        )
    old_inputs = marker.get("inputs", {})
    moved = sorted(
        k for k in node.input_fingerprints if old_inputs.get(k) != node.input_fingerprints[k]
    )
    if moved:
        parts.append(f"input changed ({', '.join(moved)})")
    return "; ".join(parts) or "fingerprint changed"


def _extend_rule(key: str, extends: tuple[str, ...]) -> str | None:
    """How `key` may change and still extend the run: 'any', 'grow', or None (it may not)."""
    for entry in extends:
        name, grow = (entry[:-1], True) if entry.endswith("+") else (entry, False)
        if key == name or (name.endswith(".*") and key.startswith(name[:-1])):
            return "grow" if grow else "any"
    return None


def _split_overrides(overrides: list[str], extends) -> tuple[list[str], dict[str, str]]:
    """Overrides that change the work (in order), and the values of the extend-only keys."""
    fixed, extended = [], {}
    for override in overrides:
        key = override_key(override)
        if key is not None and _extend_rule(key, extends):
            extended[key] = override.split("=", 1)[1]  # Hydra: the last one wins
        else:
            fixed.append(override)
    return fixed, extended


def _grows(old: str | None, new: str | None) -> bool:
    try:
        return float(new) > float(old)
    except (TypeError, ValueError):  # unset (the app's default) or not a number: cannot tell
        return False


def extension(node: Node, record: dict) -> str | None:
    """If `node` differs from the run in `record` (marker or attempt) only in extend-only keys
    of its kind, those changes in words ('train.steps 4 -> 6'); else None."""
    extends = node.kind.extends
    if not extends or record.get("code_version") != node.code_version:
        return None
    if record.get("inputs") != node.input_fingerprints:
        return None
    old, new = dict(record.get("config") or {}), dict(node.config)
    old_fixed, old_ext = _split_overrides(old.pop("overrides", []), extends)
    new_fixed, new_ext = _split_overrides(new.pop("overrides", []), extends)
    if old != new or old_fixed != new_fixed:
        return None
    changes = []
    for key in sorted(set(old_ext) | set(new_ext)):
        before, after = old_ext.get(key), new_ext.get(key)
        if before == after:
            continue
        if _extend_rule(key, extends) == "grow" and not _grows(before, after):
            return None
        changes.append(f"{key} {before or '(default)'} -> {after or '(default)'}")
    return ", ".join(changes) or "extend-only overrides reordered"


def decide(node: Node) -> Decision:
    """Run or skip `node`, with the reason in words."""
    marker = read_json(node.output / MARKER)
    if marker is not None and marker.get("fingerprint") == node.fingerprint:
        return Decision(False, "up to date (completion marker matches)")
    attempt = read_json(node.output / ATTEMPT)
    if node.kind.resumable and attempt and attempt.get("fingerprint") == node.fingerprint:
        return Decision(True, "interrupted earlier; resumes from its checkpoint", RESUME)
    record = marker or attempt  # the folder's latest run (an attempt replaces the marker)
    extended = node.kind.resumable and record and extension(node, record)
    if extended:
        return Decision(True, f"continue: {extended} (resumes from its checkpoint)", CONTINUE)
    aside = "restart (previous outputs moved aside to .trash/)"
    if marker is not None:
        return Decision(True, f"{_changes(node, marker)}; {aside}", RESTART)
    if attempt is not None and node.kind.resumable:
        return Decision(True, f"interrupted earlier with another config; {aside}", RESTART)
    if attempt is not None:
        return Decision(True, "interrupted earlier; partial output cleaned and rerun from scratch")
    if node.output.is_dir() and any(node.output.iterdir()):
        return Decision(True, f"folder holds files of no recorded run; {aside}", RESTART)
    return Decision(True, "not run yet")


def move_aside(folder: Path, run_dir: Path, key: str, reason: str) -> Path:
    """Rename `folder` to run_dir/.trash/<key with dots>.<UTC time>/ (same filesystem: cheap)
    with a note of where it came from and why; returns the new path."""
    trash = run_dir / TRASH
    trash.mkdir(parents=True, exist_ok=True)
    stem = f"{key.replace('/', '.')}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    dest, n = trash / stem, 1
    while dest.exists():
        dest, n = trash / f"{stem}.{n}", n + 1
    os.rename(folder, dest)
    note = {"stage": key, "from": str(folder), "moved_at": time.time(), "reason": reason}
    write_json_atomic(dest / MOVED, note)
    return dest


def prepare_output(node: Node, decision: Decision | None = None) -> Path | None:
    """Make the stage folder ready for a new attempt: keep it (resume, continue), move earlier
    outputs aside (restart) or clean partial output. Returns where outputs were moved, if so."""
    decision = decision or decide(node)
    moved = None
    if decision.action == RESTART and node.output.exists():
        moved = move_aside(node.output, node.run_dir, node.key, decision.reason)
    elif decision.action not in (RESUME, CONTINUE) and node.output.exists():
        shutil.rmtree(node.output)  # partial output of an interrupted attempt, rebuilt now
    (node.output / MARKER).unlink(missing_ok=True)  # never leave a marker over partial output
    node.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        node.output / ATTEMPT,
        {
            "fingerprint": node.fingerprint,
            "started_at": time.time(),
            "pid": os.getpid(),
            "config": node.config,
            "code_version": node.code_version,
            "inputs": node.input_fingerprints,
        },
    )
    return moved


def write_marker(node: Node, stats: dict, started: float, mlflow_run_id: str | None) -> dict:
    """Record the stage as complete (the last write of a successful stage)."""
    marker = {
        "stage": node.key,
        "fingerprint": node.fingerprint,
        "config": node.config,
        "config_digest": digest(node.config),
        "code_version": node.code_version,
        "inputs": node.input_fingerprints,
        "started_at": started,
        "finished_at": time.time(),
        "stats": stats,
        "mlflow_run_id": mlflow_run_id,
    }
    write_json_atomic(node.output / MARKER, marker)
    return marker


def result_values(run_dir: Path, refs: dict[str, str]) -> dict[str, Any]:
    """`{name: value}` for refs `STAGE.KEY[.KEY...]` (pipeline.config `result`): values from
    the stages' completion markers in `run_dir`; None where the stage or the key is missing."""
    out: dict[str, Any] = {}
    for name, ref in refs.items():
        stage, *keys = ref.split(".")
        value: Any = (read_json(run_dir / stage / MARKER) or {}).get("stats")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        out[name] = value
    return out
