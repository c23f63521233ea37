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
    CHROMIUM,
    REPO,
    TINY,
    check_stage_processes_die,
    cli_env,
    data_outputs,
    get_json,
    page_text,
    post_json,
    same_output,
    sigkill_driver_when,
    start_mlflow_server,
    stop_group,
)

pytestmark = pytest.mark.slow


def _cmd(tmp: Path, run: str, remix: str | None = None) -> list[str]:
    """The real pipeline on TINY settings; `remix` replaces TINY's remix overrides."""
    tiny = [t for t in TINY if not (remix and t.startswith("stages.remix.overrides="))]
    return [
        sys.executable,
        "-m",
        "pipeline",
        f"run_dir={tmp / run}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        *tiny,
        *([remix] if remix else []),
    ]


def _run(tmp: Path, run: str, remix: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(
        _cmd(tmp, run, remix), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=400
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
    got_eval, want_eval = (
        json.loads((r / "eval/results.json").read_text())["metrics"]
        for r in (run, tmp_path / "reference")
    )
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
    _check_compare_and_ui(tmp_path)


def _check_compare_and_ui(tmp: Path) -> None:
    """A second pipeline with another remix weight: `pipeline compare` lines the eval tables
    up, and MLflow (REST and headless Chromium) shows both parents' eval metrics side by side
    and the eval table artifact."""
    remix = (
        "stages.remix.overrides=['input={run_dir}/decontaminate/*/*.jsonl.gz',"
        "'output={output}','+remix.weights.en=0.8','+remix.weights.zh=0.2','remix.holdout=0.3']"
    )
    other = _run(tmp, "mix80", remix)
    assert "bpb/en" in other.stdout  # the run ends with its eval table
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "compare", str(tmp / "reference"), str(tmp / "mix80")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert rows["metric"] == ["reference", "mix80", "Δ", "mix80"]
    for key in ("bpb/en", "bpb/zh", "bpb/all", "eval/next_sentence_en/acc_norm"):
        ref, mix, delta = map(float, rows[key])
        assert abs(mix - ref - delta) < 2e-4, key
    assert float(rows["bpb/en"][2]) != 0.0  # another mix, another model
    if CHROMIUM is None:
        pytest.skip("chromium not installed (scripts/setup.sh installs it)")
    proc, base = start_mlflow_server(f"sqlite:///{tmp}/mlflow.db", tmp)
    try:
        api = base + "/api/2.0/mlflow"
        exp = get_json(api + "/experiments/get-by-name?experiment_name=pipeline")["experiment"]
        runs = post_json(
            api + "/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 200}
        )["runs"]
        parents = {
            r["info"]["run_name"]: r
            for r in runs
            if r["info"]["run_name"] in ("reference", "mix80")
        }
        assert len(parents) == 2
        for parent in parents.values():
            metrics = {m["key"] for m in parent["data"]["metrics"]}
            assert {"bpb/en", "bpb/zh", "eval/next_sentence_zh/acc"} <= metrics
            files = get_json(api + f"/artifacts/list?run_id={parent['info']['run_id']}")["files"]
            assert "eval_table.json" in {f["path"] for f in files}
        ids = json.dumps(
            [parents["reference"]["info"]["run_id"], parents["mix80"]["info"]["run_id"]]
        )
        page = page_text(
            f'{base}/#/compare-runs?runs={ids}&experiments=["{exp["experiment_id"]}"]', tmp
        )
        assert "Comparing 2 Runs" in page and "reference" in page and "mix80" in page, page[:2000]
        assert "bpb/en" in page and "eval/next_sentence_en/acc" in page, page[:3000]
    finally:
        stop_group(proc)


def _check_resumed_curve(tmp: Path, run_dir: Path) -> None:
    """The last train run logged only the steps after the checkpoint it resumed from."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("pipeline").experiment_id
    runs = client.search_runs(
        [exp],
        filter_string=f"tags.`pipeline.run_dir` = '{run_dir}' and attributes.run_name = 'train'",
        order_by=["attributes.start_time DESC"],
    )
    assert [r.info.status for r in runs] == ["FINISHED", "KILLED"]
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [3, 4]


def _check_mlflow(tmp: Path, run_dir: Path) -> None:
    """The reference run's lineage: stats as metrics, composed configs, artifacts, loss curve."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("pipeline").experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`pipeline.run_dir` = '{run_dir}'")
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == 24 and {r.info.status for r in runs} == {"FINISHED"}
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
    pii = by_name["pii/zh"].data  # a formatter stage: every document kept, PII tallied
    assert pii.params["resolved.stage"] == "pii"
    assert pii.metrics["documents_in"] == pii.metrics["documents_kept"] > 0
    assert "manifest.json" in artifacts("tokenize") and "tokenizer.json" in artifacts(
        "train_tokenizer"
    )
    inputs = {i.dataset.name for i in by_name["tokenize"].inputs.dataset_inputs}
    assert inputs == {"remix", "train_tokenizer", "tokenize"}
    assert {"config.json", "tokenizer_config.json"} <= artifacts("export")
    loss = client.get_metric_history(by_name["train"].info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3, 4]
