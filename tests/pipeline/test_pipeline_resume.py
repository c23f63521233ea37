"""SIGKILL the pipeline driver during a data stage, between stages and during training; each
rerun resumes, and the final outputs are byte-identical to an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_testlib import (
    check_stage_processes_die,
    cli_command,
    output_files,
    run_cli,
    sigkill_driver_when,
)

from pipeline.state import MARKER

pytestmark = pytest.mark.slow

SLOW = (
    "stages.clean.options.sleep_s=0.3",
    "stages.train.overrides=['checkpoint.dir={output}/checkpoints','train.steps=6','data={deps[join]}','sleep_s=0.4']",
)


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_when(run_dir: Path, cwd: Path, ready, what: str, timeout: float = 120) -> None:
    """Start the driver, SIGKILL it once ready() holds, check its stage processes die."""
    check_stage_processes_die(
        sigkill_driver_when(cli_command(run_dir, *SLOW), cwd, ready, what, timeout)
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    res = run_cli(base / "run", "tracking.enabled=false", cwd=base)
    assert res.returncode == 0, res.stdout + res.stderr
    return output_files(base / "run")


def test_sigkill_anywhere_then_rerun_gives_identical_outputs(reference, tmp_path):
    run = tmp_path / "run"
    clean_en = run / "clean/en"
    _kill_when(
        run,
        tmp_path,
        lambda: _lines(clean_en / "data.jsonl") >= 3 and not (clean_en / MARKER).exists(),
        "a data stage half-way",
    )
    assert not (clean_en / MARKER).exists() and 3 <= _lines(clean_en / "data.jsonl") < 20

    _kill_when(run, tmp_path, lambda: (run / "join" / MARKER).exists(), "the join stage's marker")
    assert _lines(run / "clean/en/data.jsonl") == 20  # cleaned and redone in full

    ckpts = run / "train/checkpoints"
    _kill_when(run, tmp_path, lambda: (ckpts / "step_0002.json").exists(), "training step 2")
    assert not (ckpts / "summary.json").exists()

    res = run_cli(run, *SLOW, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (run / "logs/train.log").read_text()
    resumed = [
        int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "resumed from step" in line
    ]
    assert resumed and resumed[-1] >= 2, log
    assert "[pipeline] source/en: running" not in res.stdout  # finished stages were skipped
    assert output_files(run) == reference

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("fake").experiment_id
    parents = client.search_runs([exp], filter_string="tags.`pipeline.role` = 'parent'")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED", "KILLED", "KILLED"]
    summary = json.loads((ckpts / "summary.json").read_text())
    assert summary["final_step"] == 6
