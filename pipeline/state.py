"""Completion markers, attempt records and the run/skip decision for each stage.

A stage folder holds `.complete.json` (written atomically, last, after the outputs) and
`.attempt.json` (written when an attempt starts). A stage is skipped iff its marker holds
the node's current fingerprint; otherwise its folder is wiped and the stage reruns from
scratch, except resumable kinds (training) whose interrupted attempt with the same
fingerprint is kept so the stage resumes from its checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dag import Node
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


@dataclass
class Decision:
    run: bool
    reason: str


def _changes(node: Node, marker: dict) -> str:
    """Why a marker no longer matches: which part of the fingerprint moved."""
    parts = []
    if marker.get("config_digest") != digest(node.config):
        old = marker.get("config", {})
        keys = sorted(k for k in set(old) | set(node.config) if old.get(k) != node.config.get(k))
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


def decide(node: Node) -> Decision:
    """Run or skip `node`, with the reason in words."""
    marker = read_json(node.output / MARKER)
    if marker is not None and marker.get("fingerprint") == node.fingerprint:
        return Decision(False, "up to date (completion marker matches)")
    attempt = read_json(node.output / ATTEMPT)
    if node.kind.resumable and attempt and attempt.get("fingerprint") == node.fingerprint:
        return Decision(True, "interrupted earlier; resumes from its checkpoint")
    if marker is not None:
        return Decision(True, _changes(node, marker))
    if attempt is not None:
        return Decision(True, "interrupted earlier; output cleaned and rerun from scratch")
    return Decision(True, "not run yet")


def prepare_output(node: Node) -> None:
    """Make the stage folder ready for a new attempt (wipe unless resuming)."""
    (node.output / MARKER).unlink(missing_ok=True)  # never leave a marker over partial output
    attempt = read_json(node.output / ATTEMPT)
    resume = node.kind.resumable and attempt and attempt.get("fingerprint") == node.fingerprint
    if not resume and node.output.exists():
        shutil.rmtree(node.output)
    node.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        node.output / ATTEMPT,
        {"fingerprint": node.fingerprint, "started_at": time.time(), "pid": os.getpid()},
    )


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
