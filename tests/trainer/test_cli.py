"""`python -m trainer`: dry run, clear config errors, and a real training run on license
texts (loss falls, summary.json, checkpoints, MLflow metrics, rerun is a no-op)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.real_corpus import build_corpus

ROOT = Path(__file__).resolve().parents[2]


def _trainer(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "trainer", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _json_line(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


def test_dry_run_of_the_published_v3_recipe(tmp_path: Path) -> None:
    res = _trainer(
        "model=deepseek_v3",
        "parallel=v3_h100_1024",
        "precision=fp8_blockwise",
        "dry_run=true",
        "world_size=1024",
        "train.global_batch_size=4096",
        "train.micro_batch_size=1",
        "data.seq_length=4096",
        f"checkpoint.dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr
    report = _json_line(res.stdout)
    assert report["total_params_without_mtp"] == pytest.approx(671e9, rel=0.01)
    assert report["activated_params_without_mtp"] == pytest.approx(37e9, rel=0.02)
    assert report["flops_per_token"] > 6 * 37e9
    assert 10 * 2**30 < report["memory_per_gpu_bytes"] < 400 * 2**30
    assert "DP64 x TP2 x PP8 (x4 virtual)" in report["layout"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["parallel=tp2", "dry_run=true", "world_size=3"], "world size 3"),
        (
            ["parallel=pp2_vpp2", "model.num_layers=6", "dry_run=true", "world_size=2"],
            "divisible by PP x VPP",
        ),
        (["data.seq_length=1024"], "rope limit"),
        (["precision=fp8_blockwise"], "needs Transformer Engine"),
        (["data.manifest=/nonexistent/manifest.json"], "/nonexistent/manifest.json"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, overrides: list, message: str) -> None:
    res = _trainer(*overrides, f"checkpoint.dir={tmp_path}")
    assert res.returncode != 0
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    res = _trainer("train.stepz=3", f"checkpoint.dir={tmp_path}")
    assert res.returncode != 0 and "stepz" in res.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def test_training_on_real_text(corpus: Path, tmp_path: Path) -> None:
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    args = [
        f"data.manifest={corpus}",
        "data.seq_length=64",
        "train.steps=16",
        "train.eval_interval=8",
        "optim.warmup_steps=2",
        f"checkpoint.dir={run_dir}",
        "checkpoint.save_interval=8",
        "logging.mlflow=true",
        f"logging.tracking_uri=sqlite:///{db}",
        "logging.experiment=test",
    ]
    res = _trainer(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_step"] == 16
    assert summary["valid_loss_last"] < summary["valid_loss_first"] - 0.3, summary
    assert summary["tokens_per_s"] > 0 and summary["mfu"] > 0
    assert (run_dir / "latest").read_text().strip() == "iter_0000016"
    assert sorted(p.name for p in run_dir.glob("iter_*")) == ["iter_0000008", "iter_0000016"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("test").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "lm_loss")
    assert [m.step for m in history] == list(range(1, 17))
    for key in ("mtp_loss", "load_balancing_loss", "expert_share.0", "grad_norm", "valid_loss"):
        assert key in run.data.metrics, key
    assert run.data.params["model.name"] == "tiny_v3"

    again = _trainer(*args)  # finished run: resumes, sees nothing to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
