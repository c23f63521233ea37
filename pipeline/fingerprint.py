"""Fingerprints that decide whether a stage must rerun.

fingerprint(stage) = sha256(resolved stage config, code version of the stage's kind,
fingerprints of its inputs). The code version hashes the source files of the packages the
kind names (and the conf/ files it composes), so editing a stage's code reruns it.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
_SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".j2", ".txt")


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON form of `obj` (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_files(files: list[Path], root: Path, h: hashlib._Hash) -> None:
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")


def _module_files(module: str) -> tuple[list[Path], Path]:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ValueError(f"cannot find module {module!r} to compute its code version")
    if spec.submodule_search_locations:  # a (possibly namespace) package: every source file
        root = Path(list(spec.submodule_search_locations)[0])
        files = [
            p
            for p in root.rglob("*")
            if p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts and p.is_file()
        ]
        return files, root.parent
    origin = Path(spec.origin)
    return [origin], origin.parent


def code_version(modules: tuple[str, ...], conf_globs: tuple[str, ...] = ()) -> str:
    """Hash of the source files of `modules` and of the conf files matching `conf_globs`."""
    h = hashlib.sha256()
    for module in modules:
        files, root = _module_files(module)
        h.update(module.encode() + b"\0")
        _hash_files(files, root, h)
    for pattern in conf_globs:
        files = [Path(p) for p in glob.glob(str(CONF_DIR / pattern), recursive=True)]
        _hash_files([p for p in files if p.is_file()], CONF_DIR, h)
    return h.hexdigest()


def path_state(pattern: str) -> str:
    """Cheap digest of external input files (names, sizes, mtimes) under a path or glob."""
    base = Path(pattern)
    if base.is_dir():
        files = [p for p in base.rglob("*") if p.is_file()]
    else:
        files = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    state = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files)]
    return digest(state)
