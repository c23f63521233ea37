"""part=data / part=train (what the pipeline's Slurm jobs run) on the fake DAG, and the job plan
of `cluster=slurm`: which jobs, chained how."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from pipeline_testlib import compose

from pipeline import run_pipeline
from pipeline.dag import build_graph
from pipeline.engine import load_plugins, plan, training_part
from slurm.config import ClusterConfig, LaunchConfig
from slurm.pipeline_jobs import plan_jobs

DATA = ["clean/en", "clean/zh", "join", "source/en", "source/zh"]


def test_parts_split_the_dag_and_share_one_parent_run(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="part=train: data stage source/en is not complete"):
        run_pipeline(compose(run, f"tracking.uri={uri}", "part=train"))

    data = run_pipeline(compose(run, f"tracking.uri={uri}", "part=data"))
    assert sorted(data.ran) == DATA and data.states["train"] == "skipped"
    assert "left to the training job" in data.plan["train"].reason
    client = MlflowClient(uri)
    assert client.get_run(data.parent_run_id).info.status == "FINISHED"

    parent = data.parent_run_id  # a Slurm submission creates it; both parts attach to it
    client.update_run(parent, status="RUNNING")
    train = run_pipeline(
        compose(run, f"tracking.uri={uri}", "part=train", f"tracking.parent_run_id={parent}")
    )
    assert train.ran == ["train"] and train.parent_run_id == parent
    assert client.get_run(parent).info.status == "RUNNING"  # left to the finishing job
    exp = client.get_run(parent).info.experiment_id
    nested = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in nested) == sorted([*DATA, "train"])


def test_slurm_job_plan_follows_what_is_left_to_run(tmp_path):
    pipeline_cfg = compose(tmp_path / "run")
    load_plugins(pipeline_cfg.plugins)  # the fake kinds (run alone, no earlier test loaded them)
    graph = build_graph(pipeline_cfg)
    assert training_part(graph) == {"train"}
    cfg = LaunchConfig(cluster=ClusterConfig(scheduler="slurm"))
    jobs = plan_jobs(cfg, graph, plan(graph), [])
    assert [(j.role, j.after) for j in jobs] == [
        ("data", None),
        ("train", "afterok"),
        ("finish", "afterany"),
    ]
    assert jobs[0].job.command[-2:] == ["part=data", "ray.address=auto"]
    assert "cluster=local" in jobs[1].job.command and "part=train" in jobs[1].job.command
    assert "++stages.train.options.launcher=srun" in jobs[1].job.command
    # a failed training part is requeued (cluster.max_restarts) and resumes; data jobs are not
    assert jobs[1].job.restart_on_failure and not jobs[2].job.restart_on_failure
    assert jobs[2].cluster.cpus_per_task == 1 and not jobs[2].cluster.requeue

    decisions = plan(graph)
    for key in DATA:  # data part complete: only training (and the finishing job) are submitted
        decisions[key].run = False
    assert [j.role for j in plan_jobs(cfg, graph, decisions, [])] == ["train", "finish"]
    for key in decisions:
        decisions[key].run = False
    assert plan_jobs(cfg, graph, decisions, []) == []
