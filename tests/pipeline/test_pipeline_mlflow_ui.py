"""After a tiny pipeline run, a real `mlflow server` shows the parent run, the stage runs and
the loss curve: checked through its REST API and in headless Chromium."""

from __future__ import annotations

import pytest
from pipeline_testlib import (
    CHROMIUM,
    compose,
    get_json,
    page_text,
    post_json,
    start_mlflow_server,
    stop_group,
)

from pipeline import run_pipeline

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)"
)
def test_mlflow_server_shows_runs_and_loss_curve(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose(tmp_path / "run", f"tracking.uri={uri}", "tracking.run_name=ui-check")
    result = run_pipeline(cfg)
    proc, base = start_mlflow_server(uri, tmp_path)
    try:
        api = base + "/api/2.0/mlflow"
        exp = get_json(api + "/experiments/get-by-name?experiment_name=fake")["experiment"][
            "experiment_id"
        ]
        runs = post_json(api + "/runs/search", {"experiment_ids": [exp], "max_results": 100})[
            "runs"
        ]
        by_name = {r["info"]["run_name"]: r for r in runs}
        parent = by_name["ui-check"]
        assert parent["info"]["run_id"] == result.parent_run_id
        children = {
            name
            for name, r in by_name.items()
            if {"key": "mlflow.parentRunId", "value": result.parent_run_id}
            in r["data"].get("tags", [])
        }
        assert children == {"source/en", "source/zh", "clean/en", "clean/zh", "join", "train"}
        assert {r["info"]["status"] for r in runs} == {"FINISHED"}
        train_id = by_name["train"]["info"]["run_id"]
        history = get_json(api + f"/metrics/get-history?run_id={train_id}&metric_key=loss")[
            "metrics"
        ]
        assert [m["step"] for m in history] == [1, 2, 3, 4, 5, 6]
        assert history[-1]["value"] < history[0]["value"]

        runs_page = page_text(f"{base}/#/experiments/{exp}/runs", tmp_path)
        assert "ui-check" in runs_page and "7 matching runs" in runs_page, runs_page[:2000]
        run_page = page_text(f"{base}/#/experiments/{exp}/runs/{train_id}", tmp_path)
        for expected in ("Parent run ui-check", "loss 1.66", "valid_loss_last", "Datasets join"):
            assert expected in run_page, (expected, run_page[:3000])
    finally:
        stop_group(proc)
