"""Bash stand-ins for Slurm/python commands in tests that check what a script calls."""

from __future__ import annotations

from pathlib import Path


def write_fakes(bin_dir: Path, bodies: dict[str, str]) -> Path:
    """Write each `name: bash body` as an executable `bin_dir/name`; returns bin_dir."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return bin_dir
