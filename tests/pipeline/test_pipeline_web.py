"""The web stages (warc, url_filter, quality_model, pii) run as pipeline stages: outputs chained,
each stage an MLflow run nested in the pipeline's, with its counts as metrics."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_prep.sample_corpus import CorpusError
from tests.pipeline.pipeline_testlib import HERE, REPO, cli_env

sys.path.insert(0, str(REPO / "tests" / "data_prep"))
from warc_corpus import build_web_corpus  # noqa: E402


def test_web_stages_run_in_the_pipeline_with_their_mlflow_runs(tmp_path):
    from mlflow import MlflowClient

    try:
        corpus = build_web_corpus(tmp_path / "crawl")
    except CorpusError as err:
        pytest.skip(f"Debian documentation packages unavailable: {err}")
    blocked = tmp_path / "mirrors.txt"
    blocked.write_text("example.cn\n")  # the two GB-encoded zh pages are served from there
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "--config-dir",
        str(HERE / "conf"),
        "--config-name",
        "web_pipeline",
        f"run_dir={run}",
        f"stages.warc.overrides=['input={corpus.folder}','output={{output}}']",
        "stages.url_filter.overrides=['input={input}','output={output}',"
        f"'url_filter.block_domains=[{blocked}]']",
        "stages.quality_model.overrides=['input={input}','output={output}',"
        "'quality_model.positives=[{deps[url_filter]}]','quality_model.threshold=0']",
    ]
    res = subprocess.run(
        cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("web").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    stages = ("warc", "url_filter", "quality_model", "pii")
    parent = runs[run.name]
    for name in stages:
        r = runs[name]
        assert r.info.status == "FINISHED", name
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.params["resolved.stage"] == name
    # outputs are chained: each stage reads what the one before kept
    metrics = {name: runs[name].data.metrics for name in stages}
    for prev, cur in zip(stages, stages[1:], strict=False):
        assert metrics[cur]["documents_in"] == metrics[prev]["documents_kept"], cur
    assert metrics["url_filter"]["removed.url_filter_mirrors"] == 2
    assert any(k.startswith("counts.score_") for k in metrics["quality_model"])
    assert "quality_model.heldout.precision" in metrics["quality_model"]
