"""A train stage stopped for requeue: `python -m pipeline` exits 75, the stage's MLflow run
ends KILLED with a note (not FAILED), and the rerun resumes the stage instead of redoing it.

Run as `python -m test_pipeline_preemption checkpoint.dir=D ...`, this module is a stand-in
trainer that honours $PRETRAIN_STOP_FILE as the real one does (exit 75 while it exists).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline_testlib import cli_command, cli_env

from pipeline.state import MARKER

STAND_IN = ["stages.train.options.module=test_pipeline_preemption"]


def _stand_in_trainer(argv: list[str]) -> int:
    ckpt = Path(dict(a.split("=", 1) for a in argv)["checkpoint.dir"])
    ckpt.mkdir(parents=True, exist_ok=True)
    with open(ckpt / "attempts.txt", "a") as fh:
        fh.write("attempt\n")
    stop_file = os.environ.get("PRETRAIN_STOP_FILE")
    if stop_file and os.path.exists(stop_file):
        print(f"[trainer] stop requested ({stop_file}): exiting with code 75", flush=True)
        return 75
    summary = {
        "final_step": 6,
        "train_loss": 1.0,
        "valid_loss_first": 2.0,
        "valid_loss_last": 1.0,
        "tokens_per_s": 1.0,
        "mfu": 0.0,
    }
    (ckpt / "summary.json").write_text(json.dumps(summary))
    return 0


def _pipeline(run_dir: Path, stop_file: Path) -> subprocess.CompletedProcess:
    env = {**cli_env(), "PRETRAIN_STOP_FILE": str(stop_file)}
    return subprocess.run(
        cli_command(run_dir, *STAND_IN),
        cwd=run_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _train_runs(tracking: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tracking}")
    exp = client.get_experiment_by_name("fake").experiment_id
    runs = client.search_runs([exp], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.tags.get("pipeline.stage") == "train"], runs


def test_stopped_train_stage_is_killed_exits_75_and_resumes(tmp_path: Path) -> None:
    run_dir, stop_file = tmp_path / "run", tmp_path / "stop"
    stop_file.touch()  # as the sbatch script's USR1 trap does
    first = _pipeline(run_dir, stop_file)
    assert first.returncode == 75, first.stderr[-3000:]
    assert "stopped for requeue: stage train stopped for requeue" in first.stderr
    assert "[pipeline] train: stopped" in first.stdout  # the view says stopped, not failed
    assert not (run_dir / "train" / MARKER).exists()
    assert (run_dir / "join" / MARKER).exists()  # finished stages keep their markers
    train_runs, all_runs = _train_runs(tmp_path / "mlflow.db")
    assert [r.info.status for r in train_runs] == ["KILLED"]
    assert train_runs[0].data.tags["mlflow.note.content"].startswith("stopped for requeue")
    parent = next(r for r in all_runs if r.data.tags.get("pipeline.role") == "parent")
    assert parent.info.status == "KILLED"

    stop_file.unlink()  # the requeued job starts without it
    second = _pipeline(run_dir, stop_file)
    assert second.returncode == 0, second.stderr[-3000:]
    attempts = (run_dir / "train" / "checkpoints" / "attempts.txt").read_text().splitlines()
    assert len(attempts) == 2, "the rerun must resume the stage's output, not wipe it"
    assert (run_dir / "train" / MARKER).exists()
    train_runs, _ = _train_runs(tmp_path / "mlflow.db")
    assert [r.info.status for r in train_runs] == ["KILLED", "FINISHED"]


if __name__ == "__main__":
    sys.exit(_stand_in_trainer(sys.argv[1:]))
