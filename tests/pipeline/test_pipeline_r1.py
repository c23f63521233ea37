"""`python -m pipeline --config-name r1` (conf/r1.yaml): DeepSeek-R1's post-training chain, tiny.

Runs the shipped recipe end to end with every size knob (`vars.*`) turned down: task ->
tokenizer -> shards -> base models -> cold-start SFT -> GRPO -> rejection sampling -> SFT ->
GRPO, and the student's distillation and GRPO arms; then reruns the same command. Checks the
contract (the last line is the JSON of held-out accuracies), that each stage has its MLflow run
with its metrics, the rejection-sampled set's accounting and that a rerun redoes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_testlib import REPO, cli_env

TINY_R1 = (
    "live=false",
    "vars.n_pretrain=300",
    "vars.n_cold_start=40",
    "vars.n_train=60",
    "vars.n_test=12",
    "vars.pretrain_steps=4",
    "vars.sft_steps=3",
    "vars.sft_rs_steps=3",
    "vars.grpo_steps=2",
    "vars.grpo_prompts=2",
    "vars.group_size=4",
    "vars.max_new_tokens=12",
    "vars.rs_prompts=4",
    "vars.rs_samples=2",
)
RESULT_KEYS = {"sft", "grpo", "student_distilled", "student_grpo"}


def _run(run_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "--config-name", "r1", f"run_dir={run_dir}"]
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [*cmd, *TINY_R1], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def r1(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("r1")
    run_dir = root / "run"
    first = _run(run_dir, root)
    second = _run(run_dir, root)
    return {"root": root, "run_dir": run_dir, "first": first, "second": second}


def _result(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_r1_ends_with_the_accuracies_line_and_a_rerun_redoes_nothing(r1: dict) -> None:
    result = _result(r1["first"])
    assert RESULT_KEYS <= set(result)
    for key in (*RESULT_KEYS, "grpo_stage1", "sft_rs", "student_sft", "format_grpo"):
        assert 0.0 <= result[key] <= 1.0, (key, result)
    assert result["kl_grpo"] >= 0.0
    assert "22 to run" in r1["first"].stdout
    assert "0 to run, 22 up to date" in r1["second"].stdout
    assert _result(r1["second"]) == result  # read back from the completion markers


def _stage_runs(r1: dict) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{r1['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("r1")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    return client, {
        r.data.tags["pipeline.stage"]: r for r in runs if "pipeline.stage" in r.data.tags
    }


@pytest.mark.slow
def test_each_stage_has_its_mlflow_run_with_metrics(r1: dict) -> None:
    client, stages = _stage_runs(r1)
    assert len(stages) == 22, sorted(stages)
    assert all(r.info.status == "FINISHED" for r in stages.values())
    for name in ("grpo1", "grpo", "student_grpo"):  # per-step curves from posttrain.grpo
        run_id = stages[name].info.run_id
        for metric in ("reward.mean", "kl", "clip_fraction", "response_length.mean", "entropy"):
            # step 0: the stage's stats (the summary) logged by the driver when it ends
            steps = sorted(m.step for m in client.get_metric_history(run_id, metric) if m.step)
            assert steps == [1, 2], (name, metric, steps)
    for name in ("acc_sft", "acc_grpo", "acc_student_distilled", "acc_student_grpo"):
        metrics = stages[name].data.metrics
        assert {"accuracy", "format", "n"} <= set(metrics), (name, metrics)
        assert metrics["n"] == 12


@pytest.mark.slow
def test_rejection_sampled_set_is_accounted_and_feeds_both_sft_stages(r1: dict) -> None:
    run_dir = r1["run_dir"]
    stats = json.loads((run_dir / "rejection_sample" / "rs" / "stats.json").read_text())
    assert stats["generated"] == 4 * 2  # rs_prompts x rs_samples
    assert stats["generated"] == stats["kept"] + sum(stats["removed"].values())
    rows = (run_dir / "rejection_sample" / "rs" / "sft.jsonl").read_text().splitlines()
    assert len(rows) == stats["kept"] + stats["included"] and stats["included"] == 40
    shards = json.loads((run_dir / "rs_tokenize" / "manifest.json").read_text())
    assert sum(s["documents"] for s in shards["shards"]) <= len(rows)
    _, stages = _stage_runs(r1)
    for stage, model in (("sft_rs", "r1_teacher"), ("student_distill", "r1_student")):
        params = stages[stage].data.params
        assert params["override.data.manifest"] == str(run_dir / "rs_tokenize" / "manifest.json")
        assert params["override.model"] == model


@pytest.mark.slow
def test_r1_config_is_the_schema_and_dry_runs_on_slurm(tmp_path: Path) -> None:
    """The shipped recipe composes in struct mode and `cluster=slurm_dev dry_run=true` plans the
    chained jobs with the recipe's name on their command lines."""
    cmd = [sys.executable, "-m", "pipeline", "--config-name", "r1", f"run_dir={tmp_path / 'r'}"]
    done = subprocess.run(
        [*cmd, "cluster=slurm_dev", "dry_run=true"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# ---- data job" in done.stdout and "# ---- train job" in done.stdout
    assert "-m pipeline --config-name r1" in done.stdout
    assert "stages.grpo.options.launcher=srun" in done.stdout
