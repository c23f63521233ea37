"""Run an app's CLI (`python -m MODULE overrides...`) as a process of its own and read the JSON
line it ends with: how the export and eval kinds run trainer.export, trainer.bpb and
evaluation.harness (each builds its own single-rank process group or loads its own model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

RANK_VARS = ("RANK", "WORLD_SIZE", "MASTER_PORT")
"""Not inherited: the app sets up its own process group."""


def run_app(module: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """The app's last stdout line as JSON; its output is echoed into the stage log. A failure is
    a RuntimeError carrying the app's last error line."""
    full_env = {k: v for k, v in os.environ.items() if k not in RANK_VARS} | (env or {})
    cmd = [sys.executable, "-m", module, *args]
    print("launch:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or ["(no output)"]
        raise RuntimeError(f"{module} exited with code {done.returncode}: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
