"""Helpers for pipeline tests: configs of the fake DAG, CLI runs, output snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")


def pythonpath() -> str:
    return os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )


def compose(run_dir: Path, *overrides: str, config_name: str = "fake_pipeline"):
    """The fake DAG's PipelineConfig, composed by Hydra as the CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(HERE / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=[f"run_dir={run_dir}", *overrides])
    return OmegaConf.to_object(cfg)


def cli_command(run_dir: Path, *overrides: str) -> list[str]:
    conf = str(HERE / "conf")
    return [sys.executable, "-m", "pipeline", "--config-dir", conf, "--config-name", "fake_pipeline",
            f"run_dir={run_dir}", *overrides]  # fmt: skip


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=pythonpath(), RAY_AUTH_MODE="disabled")


def run_cli(
    run_dir: Path, *overrides: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(run_dir, *overrides), cwd=cwd, env=cli_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def output_files(run_dir: Path) -> dict[str, bytes]:
    """Every stage output file (not logs, markers or other dot-files) -> its bytes."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if (
            path.is_file()
            and rel.parts[0] != "logs"
            and not any(p.startswith(".") for p in rel.parts)
        ):
            files[str(rel)] = path.read_bytes()
    return files
