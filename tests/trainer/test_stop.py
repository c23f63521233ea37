"""Stop on request (the trainer half of Slurm preemption), in one spawned process.

`python -m trainer`'s main runs three times there: a run whose stop file appears at step 3
(a callback creates it, as the sbatch script's USR1 trap would), the rerun that resumes from
that checkpoint, and an uninterrupted reference run. The stopped run must save step 3, exit
75 without summary.json, end its MLflow run KILLED; the rerun must continue the same MLflow
run and reproduce the reference bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.distributed import run_distributed
from tests.tiny_corpus import write_tiny_manifest

STEPS, STOP_AT = 6, 3


def _overrides(root: Path, name: str, manifest: Path) -> list[str]:
    return [
        "model=tiny_v3",
        f"data.manifest={manifest}",
        "data.seq_length=64",
        f"train.steps={STEPS}",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.eval_interval=3",
        "train.eval_iters=1",
        f"checkpoint.dir={root / name}",
        f"checkpoint.stop_file={root / name}.stop",
        "logging.console=false",
        "logging.mlflow=true",
        f"logging.tracking_uri=sqlite:///{root}/mlflow.db",
        "logging.experiment=stop-test",
    ]


def _main(overrides: list[str], losses: list, stop_file: Path | None) -> int:
    """Run `python -m trainer` in this process; returns its exit code. Records per-step
    losses and creates `stop_file` after step STOP_AT, through a callback."""
    import trainer.run
    from trainer.callbacks import Callback, build_callbacks

    class Probe(Callback):
        def on_step(self, step: int, metrics: dict[str, float]) -> None:
            losses.append((step, metrics["loss"], metrics["lm_loss"]))
            if stop_file is not None and step == STOP_AT:
                stop_file.touch()

    trainer.run.build_callbacks = lambda *a: [*build_callbacks(*a), Probe()]
    sys.argv = ["trainer", *overrides]
    try:
        runpy.run_module("trainer", run_name="__main__", alter_sys=True)  # = python -m trainer
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def _run_statuses(root: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("stop-test").experiment_id
    return [run.info.status for run in client.search_runs([experiment])]


def _three_runs(root: Path) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    manifest = write_tiny_manifest(root)
    out: dict[str, Any] = {}
    stop = Path(f"{root / 'stopped'}.stop")
    first: list = []
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        out["first_code"] = _main(_overrides(root, "stopped", manifest), first, stop)
    out["first"], out["first_stdout"] = first, printed.getvalue()
    out["status_after_stop"] = _run_statuses(root)
    out["latest_after_stop"] = (root / "stopped" / "latest").read_text().strip()
    out["summary_after_stop"] = (root / "stopped" / "summary.json").exists()
    stop.unlink()  # the sbatch script removes it before the requeued attempt
    second: list = []
    out["second_code"] = _main(_overrides(root, "stopped", manifest), second, None)
    out["second"] = second
    reference: list = []
    out["reference_code"] = _main(_overrides(root, "reference", manifest), reference, None)
    out["reference"] = reference
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stop")
    return {**run_distributed(_three_runs, 1, root)[0], "root": root}


def test_stop_file_checkpoints_the_current_step_and_exits_75(runs: dict) -> None:
    assert runs["first_code"] == 75
    stop_file = runs["root"] / "stopped.stop"
    assert (
        f"[trainer] stop requested ({stop_file}): checkpoint at step 3 saved; "
        "exiting with code 75; rerun the same command to resume"
    ) in runs["first_stdout"].splitlines()
    assert runs["status_after_stop"] == ["KILLED"]
    assert [s for s, *_ in runs["first"]] == [1, 2, 3]
    assert runs["latest_after_stop"] == "iter_0000003"
    assert not runs["summary_after_stop"]


def test_rerun_resumes_and_matches_an_uninterrupted_run(runs: dict) -> None:
    assert runs["second_code"] == 0 and runs["reference_code"] == 0
    assert [s for s, *_ in runs["second"]] == [4, 5, 6]
    assert runs["first"] + runs["second"] == runs["reference"]  # bit for bit
    resumed = json.loads((runs["root"] / "stopped" / "summary.json").read_text())
    reference = json.loads((runs["root"] / "reference" / "summary.json").read_text())
    for key in ("final_step", "train_loss", "valid_loss_first", "valid_loss_last"):
        assert resumed[key] == reference[key], key


def test_stopped_mlflow_run_is_killed_then_continued_by_the_rerun(runs: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{runs['root']}/mlflow.db")
    experiment = client.get_experiment_by_name("stop-test").experiment_id
    by_start = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    assert len(by_start) == 2, "the rerun must log into the stopped run, not a new one"
    stopped = by_start[0]
    assert stopped.info.status == "FINISHED"  # ended KILLED, then finished by the rerun
    assert "checkpoint at step 3 saved" in stopped.data.tags["trainer.stopped"]
    steps = [m.step for m in client.get_metric_history(stopped.info.run_id, "loss")]
    assert steps == list(range(1, STEPS + 1))


def _flag_under_nccl(stop_file: str) -> list[bool]:
    import torch.distributed as dist

    from trainer.parallel import _init_process_group
    from trainer.preemption import stop_requested

    _init_process_group(60)  # NCCL when CUDA is present
    assert dist.get_backend() == "nccl"
    before = stop_requested(stop_file)
    Path(stop_file).touch()
    return [before, stop_requested(stop_file), stop_requested(None)]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_stop_flag_is_reduced_on_the_gpu_under_nccl(tmp_path: Path) -> None:
    """NCCL reduces only CUDA tensors: the flag must live on the current device."""
    assert run_distributed(_flag_under_nccl, 1, str(tmp_path / "stop"))[0] == [False, True, False]
