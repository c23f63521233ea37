"""The real DAG (sample corpus -> data_prep stages -> tokenizer -> shards -> megatron-core
training) on a tiny corpus: SIGKILL during a data stage and during training, rerun, and
compare with an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_testlib import (
    REPO,
    TINY,
    check_stage_processes_die,
    cli_env,
    data_outputs,
    same_output,
    sigkill_driver_when,
)

pytestmark = pytest.mark.slow


def _cmd(tmp: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", f"run_dir={tmp / run}",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", *TINY]  # fmt: skip


def _run(tmp: Path, run: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        _cmd(tmp, run), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _kill_when(tmp: Path, ready, what: str) -> None:
    check_stage_processes_die(sigkill_driver_when(_cmd(tmp, "run"), REPO, ready, what, 300))


def test_real_dag_resumes_after_sigkill_in_data_stage_and_training(tmp_path):
    run = tmp_path / "run"
    _kill_when(tmp_path, lambda: (run / "quality/zh/.attempt.json").exists(), "quality/zh start")
    assert not (run / "quality/zh/.complete.json").exists()
    ckpt = run / "train/checkpoints"
    _kill_when(
        tmp_path,
        lambda: any(ckpt.glob("iter_0000002")) and (ckpt / "latest").exists(),
        "checkpoint 2",
    )
    assert not (ckpt / "summary.json").exists()

    resumed = _run(tmp_path, "run")
    assert "read/en: running" not in resumed.stdout  # finished stages are skipped
    log = (run / "logs/train.log").read_text()
    last_resume = log.split("resumed_from:")[-1][:300].replace(
        "\n", ""
    )  # the trainer may wrap lines
    plan = "\n".join(line for line in resumed.stdout.splitlines() if "train" in line)
    assert "resumed_from:" in log and last_resume.split("step")[0].strip().endswith(
        "iter_0000002"
    ), plan

    reference = _run(tmp_path, "reference")
    got, want = data_outputs(run), data_outputs(tmp_path / "reference")
    assert sorted(got) == sorted(want) and any(k.endswith(".bin") for k in got)
    assert "export/hf/config.json" in got  # the exported weights are compared byte for byte too
    for name in want:
        assert same_output(name, got[name], want[name]), (
            f"{name} differs from the uninterrupted run"
        )
    # evaluation is seeded too: the resumed run's model scores exactly like the reference's
    got_eval, want_eval = (json.loads((r / "eval/results.json").read_text())["metrics"]
                           for r in (run, tmp_path / "reference"))  # fmt: skip
    assert got_eval == want_eval and {"bpb/en", "bpb/zh", "eval/next_sentence_zh/acc"} <= set(
        got_eval
    )
    summary = json.loads((ckpt / "summary.json").read_text())
    ref_summary = json.loads((tmp_path / "reference/train/checkpoints/summary.json").read_text())
    assert summary["final_step"] == ref_summary["final_step"] == 4
    # training is seeded end to end: the resumed run ends exactly where the uninterrupted one does
    for key in ("train_loss", "valid_loss_first", "valid_loss_last"):
        assert summary[key] == ref_summary[key], key
    assert "Open the MLflow UI" in reference.stdout
    _check_mlflow(tmp_path, tmp_path / "reference")
    _check_resumed_curve(tmp_path, run)


def _check_resumed_curve(tmp: Path, run_dir: Path) -> None:
    """The last train run logged only the steps after the checkpoint it resumed from."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("pipeline").experiment_id
    runs = client.search_runs(
        [exp], filter_string=f"tags.`pipeline.run_dir` = '{run_dir}' and attributes.run_name = 'train'",
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    assert [r.info.status for r in runs] == ["FINISHED", "KILLED"]
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [3, 4]


def _check_mlflow(tmp: Path, run_dir: Path) -> None:
    """The reference run's lineage: stats as metrics, composed configs, artifacts, loss curve."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("pipeline").experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`pipeline.run_dir` = '{run_dir}'")
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == 22 and {r.info.status for r in runs} == {"FINISHED"}
    export = by_name["export"].data.params
    assert export["hf_model_type"] == "deepseek_v3" and export["hf_folder"] == str(
        run_dir / "export" / "hf"
    )

    def artifacts(name: str) -> set[str]:
        return {a.path for a in client.list_artifacts(by_name[name].info.run_id)}

    quality = by_name["quality/zh"].data
    assert quality.metrics["documents_in"] == quality.metrics["documents_kept"] + sum(
        v for k, v in quality.metrics.items() if k.startswith("removed.")
    )
    assert (
        quality.params["resolved.stage"] == "quality"
        and "resolved.quality.zh.word_tokenizer" in quality.params
    )
    assert {"stats.json", "removed_samples"} <= artifacts("quality/zh")
    assert "manifest.json" in artifacts("tokenize") and "tokenizer.json" in artifacts(
        "train_tokenizer"
    )
    inputs = {i.dataset.name for i in by_name["tokenize"].inputs.dataset_inputs}
    assert inputs == {"remix", "train_tokenizer", "tokenize"}
    assert {"config.json", "tokenizer_config.json"} <= artifacts("export")
    loss = client.get_metric_history(by_name["train"].info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3, 4]
