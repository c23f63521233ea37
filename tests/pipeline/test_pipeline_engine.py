"""The engine on real Ray and a real MLflow sqlite store, with fake stage kinds."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from pipeline_testlib import compose, output_files

from pipeline import PipelineError, run_pipeline
from pipeline.state import MARKER


def _stage_runs(client: MlflowClient, parent_id: str) -> dict:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def test_run_noop_rerun_and_subgraph_rerun(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_pipeline(compose(tmp_path / "run", f"tracking.uri={uri}"))
    assert sorted(first.ran) == ["clean/en", "clean/zh", "join", "source/en", "source/zh", "train"]
    joined = (tmp_path / "run/join/data.jsonl").read_text().splitlines()
    assert len(joined) == 40 and json.loads(joined[0]) == {"text": "en doc 0", "id": 0, "s": "join"}
    outputs = output_files(tmp_path / "run")

    again = run_pipeline(compose(tmp_path / "run", f"tracking.uri={uri}"))
    assert again.ran == [] and set(again.states.values()) == {"skipped"}
    assert output_files(tmp_path / "run") == outputs

    zh_marker = (tmp_path / "run/clean/zh" / MARKER).read_bytes()
    edit = "+domains.en.stage_overrides.clean=['sleep_s=0.001']"
    third = run_pipeline(compose(tmp_path / "run", f"tracking.uri={uri}", edit))
    assert sorted(third.ran) == ["clean/en", "join", "train"]
    assert (tmp_path / "run/clean/zh" / MARKER).read_bytes() == zh_marker

    client = MlflowClient(uri)
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.role"] == "parent"
    stages = _stage_runs(client, first.parent_run_id)
    assert set(stages) == set(first.ran)
    clean = stages["clean/en"]
    assert clean.info.status == "FINISHED"
    assert clean.data.metrics["documents_in"] == 20 and clean.data.params["kind"] == "fake_map"
    assert {a.path for a in client.list_artifacts(clean.info.run_id)} >= {
        "stats.json",
        "clean.en.log",
    }
    lineage = {(i.dataset.name, i.tags[0].value) for i in clean.inputs.dataset_inputs}
    assert lineage == {("source/en", "input"), ("clean/en", "output")}
    losses = client.get_metric_history(stages["train"].info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4, 5, 6]
    skipped = client.get_run(again.parent_run_id).data.tags
    assert skipped["skipped.join"].startswith("reused output of run ")


def test_failing_stage_fails_run_lets_other_branch_finish(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose(
        tmp_path / "run", f"tracking.uri={uri}", "+domains.zh.stage_overrides.clean=['fail=true']"
    )
    with pytest.raises(PipelineError) as info:
        run_pipeline(cfg)
    message = str(info.value)
    log = tmp_path / "run/logs/clean.zh.log"
    assert "stage clean/zh failed: RuntimeError: planted failure in clean/zh" in message
    assert str(log) in message and "join" not in message  # only the root cause is reported
    assert "Traceback" in log.read_text() and "planted failure" in log.read_text()
    assert (tmp_path / "run/clean/en" / MARKER).exists()  # the unrelated branch finished
    assert (
        not (tmp_path / "run/join").exists() and not (tmp_path / "run/clean/zh" / MARKER).exists()
    )

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fake").experiment_id
    (parent,) = client.search_runs([exp], filter_string="tags.`pipeline.role` = 'parent'")
    assert parent.info.status == "FAILED" and "clean/zh" in parent.data.tags["error"]
    stages = _stage_runs(client, parent.info.run_id)
    assert stages["clean/zh"].info.status == "FAILED"
    assert "planted failure" in stages["clean/zh"].data.tags["error"]
    assert stages["clean/en"].info.status == "FINISHED" and "join" not in stages


def test_parallel_branches_run_concurrently(ray_session, tmp_path):
    cfg = compose(tmp_path / "run", "tracking.enabled=false", "+stages.source.options.sleep_s=0.05")
    run_pipeline(cfg)
    spans = []
    for domain in ("en", "zh"):
        stats = json.loads((tmp_path / f"run/source/{domain}" / MARKER).read_text())["stats"]
        spans.append((stats["t_start"], stats["t_end"], stats["pid"]))
    (start_a, end_a, pid_a), (start_b, end_b, pid_b) = spans
    assert end_a - start_a >= 1.0 and end_b - start_b >= 1.0
    overlap = min(end_a, end_b) - max(start_a, start_b)
    assert overlap > 0.5, f"branches did not overlap: {spans}"
    assert pid_a != pid_b
