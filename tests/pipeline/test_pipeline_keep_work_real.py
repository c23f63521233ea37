"""Never lose work, on the real trainer (`python -m trainer`, a one-layer tiny dense model on a
pre-tokenized tiny corpus) driven by the real pipeline: a bad train override is rejected before
the finished run is touched; raising train.steps continues from the last checkpoint and ends
where a run trained that long from the start does; a model change restarts with the old run
moved aside (listed and purged by `python -m pipeline trash`); SIGTERM to the driver ends the
train stage's MLflow run KILLED."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testlib import REPO, cli_env, compose
from rich.console import Console

from pipeline import run_pipeline
from pipeline.state import MARKER, TRASH
from tests.tiny_corpus import write_tiny_manifest

pytestmark = pytest.mark.slow

TINY_MODEL = (
    "model=tiny_dense",
    "model.num_layers=1",
    "model.vocab_size=512",
    "data.seq_length=32",
    "train.global_batch_size=2",
    "train.micro_batch_size=1",
    "train.eval_interval=4",
    "train.eval_iters=1",
    "checkpoint.save_interval=2",
    "logging.mlflow=true",
    # constant LR: a cosine schedule depends on the total steps, so a run extended from 4 to 6
    # steps could not match one planned for 6 (the trainer keeps the schedule it started with)
    "optim.schedule=constant",
    "optim.warmup_steps=0",
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _pinned_code_version(monkeypatch):
    """Other work may edit trainer/ while these tests run; a code change would (rightly)
    restart the stage, so the fingerprint of the code is pinned here."""
    monkeypatch.setattr("pipeline.dag.code_version", lambda modules, conf: f"pinned {modules}")


def _train(manifest: Path, *extra: str) -> str:
    items = [
        f"data.manifest={manifest}",
        "checkpoint.dir={output}/checkpoints",
        "data.cache_dir={output}/dataset_cache",
        *TINY_MODEL,
        *extra,
    ]
    return "stages.train.overrides=[" + ",".join(f"'{i}'" for i in items) + "]"


def _cfg(tmp: Path, run: str, manifest: Path, *extra: str, dry_run: bool = False):
    return compose(
        tmp / run,
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"dry_run={str(dry_run).lower()}",
        _train(manifest, *extra),
        config_name="real_train",
    )


def _dry_run(tmp: Path, manifest: Path, *extra: str) -> str:
    console = Console(record=True, width=300)
    run_pipeline(_cfg(tmp, "run", manifest, *extra, dry_run=True), console)
    return console.export_text()


def _all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _losses(tmp: Path, run_dir: Path) -> dict[int, float]:
    """The `loss` curve the newest train stage run of run_dir logged to MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("keep_work").experiment_id
    (newest, *_) = client.search_runs(
        [exp],
        filter_string=f"tags.`pipeline.run_dir` = '{run_dir}' and attributes.run_name = 'train'",
        order_by=["attributes.start_time DESC"],
    )
    return {m.step: m.value for m in client.get_metric_history(newest.info.run_id, "loss")}


def _summary(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "train/checkpoints/summary.json").read_text())


def _trash(run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "trash", f"run_dir={run}", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def trained_to_6(ray_session, manifest, tmp_path_factory) -> dict:
    """The reference: a run planned for 6 steps from the start (its losses and folder)."""
    tmp = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    mp.setattr("pipeline.dag.code_version", lambda modules, conf: f"pinned {modules}")
    try:
        run_pipeline(_cfg(tmp, "run", manifest, "train.steps=6"))
    finally:
        mp.undo()
    return {
        "tmp": tmp,
        "run": tmp / "run",
        "losses": _losses(tmp, tmp / "run"),
        "summary": _summary(tmp / "run"),
    }


def test_bad_override_keeps_the_run_and_more_steps_continue_it(
    ray_session, manifest, trained_to_6, tmp_path
):
    run = tmp_path / "run"
    run_pipeline(_cfg(tmp_path, "run", manifest, "train.steps=4"))
    before = _all_files(run / "train")
    assert any(k.startswith("checkpoints/iter_0000004") for k in before)

    # Before: the stage folder was deleted as soon as the fingerprint changed, then the trainer
    # rejected the value. Now the trainer checks the new config first (at plan time).
    for bad, message in [
        ("data.seq_length=-1", "seq_length must be positive, got -1"),
        ("train.stepz=6", "unknown config key 'train.stepz'"),
    ]:
        with pytest.raises(ValueError, match=rf"stage train: bad config \(.*{re.escape(message)}"):
            run_pipeline(_cfg(tmp_path, "run", manifest, "train.steps=4", bad))
    assert _all_files(run / "train") == before and not (run / TRASH).exists()

    plan = _dry_run(tmp_path, manifest, "train.steps=6")
    assert (
        "CONTINUE train [train]: continue: train.steps 4 -> 6 (resumes from its checkpoint)" in plan
    )
    assert "1 to run (1 continue), 0 up to date" in plan
    assert _all_files(run / "train") == before

    res = run_pipeline(_cfg(tmp_path, "run", manifest, "train.steps=6"))
    assert res.ran == ["train"] and not (run / TRASH).exists()
    log = (run / "logs/train.log").read_text()
    assert re.search(r"resumed_from: \S*iter_0000004", log.rsplit("launch:", 1)[1]), log[-3000:]
    losses, want = _losses(tmp_path, run), trained_to_6["losses"]
    assert sorted(losses) == [5, 6]  # only the new steps were trained
    assert losses == {5: want[5], 6: want[6]}  # exactly where a 6-step run is at steps 5 and 6
    summary = _summary(run)
    assert (
        summary["final_step"] == 6
        and summary["train_loss"] == trained_to_6["summary"]["train_loss"]
    )


def test_model_change_restarts_and_moves_the_old_run_aside(ray_session, manifest, trained_to_6):
    tmp, run = trained_to_6["tmp"], trained_to_6["run"]
    before = _all_files(run / "train")
    wider = ("train.steps=6", "model.num_layers=2")
    plan = _dry_run(tmp, manifest, *wider)
    assert "RESTART train [train]: config changed (overrides: model.num_layers); restart " in plan
    assert "1 to run (1 restart), 0 up to date" in plan

    run_pipeline(_cfg(tmp, "run", manifest, *wider))
    (aside,) = (run / TRASH).iterdir()
    assert aside.name.startswith("train.")
    moved = _all_files(aside)
    assert {k: v for k, v in moved.items() if k in before} == before  # every file, unchanged
    assert "resumed_from: scratch" in (run / "logs/train.log").read_text().rsplit("launch:", 1)[1]
    assert _summary(run)["final_step"] == 6 and (run / "train" / MARKER).exists()

    listing = _trash(run)
    assert listing.returncode == 0, listing.stderr
    assert f"{aside.name}  stage train, moved " in listing.stdout
    assert "config changed (overrides: model.num_layers)" in listing.stdout
    assert "1 folder(s) moved aside" in listing.stdout
    purged = _trash(run, f"purge={aside.name}")
    assert purged.returncode == 0 and "deleted 1 folder(s)" in purged.stdout, purged.stderr
    assert not aside.exists() and (run / "train" / MARKER).exists()


def test_sigterm_to_driver_ends_the_train_run_killed(manifest, tmp_path):
    """Before: SIGTERM to `python -m pipeline` left the train stage's MLflow run RUNNING."""
    from mlflow import MlflowClient

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "--config-dir",
        str(REPO / "tests/pipeline/conf"),
        "--config-name",
        "real_train",
        f"run_dir={run}",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        _train(manifest, "train.steps=200"),
    ]
    ckpt = run / "train/checkpoints/iter_0000002"
    with open(tmp_path / "driver.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=out, stderr=out)
        deadline = time.time() + 240
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline, (
                tmp_path / "driver.log"
            ).read_text()
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=90)
    log = (tmp_path / "driver.log").read_text()
    assert code == 143, log[-3000:]
    assert "terminated (SIGTERM); rerun the same command to resume" in log
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("keep_work").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert {k: r.info.status for k, r in runs.items()} == {"run": "KILLED", "train": "KILLED"}
    assert "pipeline driver stopped" in runs["train"].data.tags["mlflow.note.content"]
    assert not (run / "train" / MARKER).exists() and (run / "train/.attempt.json").exists()
