"""`python -m pipeline cluster=slurm`: the DAG as Slurm jobs chained by dependencies, so the run
goes on after the submitting shell logs out.

- pipeline-data (a RayJob over `cluster` + `data_cluster`): `python -m pipeline part=data` with a
  Ray cluster over the allocation's nodes;
- pipeline-train (afterok on data): `python -m pipeline part=train` in the batch script, whose
  train stage runs torchrun over the allocation as an `srun` step;
- pipeline-finish (afterany on both; 1 CPU): `python -m pipeline finalize DIR`, which ends the
  MLflow parent run FINISHED or FAILED from the jobs' final states, even after a SIGKILL
  (slurm.status judges the jobs, pipeline.tracking ends the runs).
All jobs log into one MLflow parent run created here (`tracking.parent_run_id`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.dag import Graph, build_graph
from pipeline.engine import load_plugins, plan, print_plan, training_part, validate_changed
from slurm.app import Submission, job_overrides, new_record, submit_job, wait_all
from slurm.config import ClusterConfig, CommandJob, LaunchConfig, RayJob, load_cluster
from slurm.jobs import SlurmError
from slurm.render import render_sbatch


@dataclasses.dataclass
class PlannedJob:
    role: str
    """data, train or finish."""
    job: RayJob | CommandJob
    cluster: ClusterConfig
    after: str | None
    """`afterok` / `afterany`: dependency on the jobs submitted before it."""


def data_cluster(launch: LaunchConfig) -> ClusterConfig:
    """`cluster` with `data_cluster`'s changes (e.g. a CPU partition for the data job)."""
    try:
        base = OmegaConf.structured(launch.cluster)
        merged = load_cluster(OmegaConf.merge(base, launch.data_cluster))
    except Exception as err:  # omegaconf's key/type errors and ClusterConfig's ValueErrors
        raise ValueError(f"data_cluster: {str(err).splitlines()[0]}") from None
    return dataclasses.replace(merged, job_name="pipeline-data")


def finish_cluster(base: ClusterConfig) -> ClusterConfig:
    """A 1-CPU, 10-minute, never-requeued job on the data job's partition/account."""
    return dataclasses.replace(
        base,
        nodes=1,
        gpus_per_node=0,
        procs_per_node=None,
        cpus_per_task=1,
        mem=None,
        time="00:10:00",
        exclusive=False,
        requeue=False,
        signal_before_s=0,
        constraint=None,
        container_image=None,
        extra_sbatch=[],
        job_name="pipeline-finish",
    )


def plan_jobs(
    launch: LaunchConfig, graph: Graph, decisions, overrides: list[str]
) -> list[PlannedJob]:
    """The jobs this submission needs (a part with nothing to run gets no job)."""
    job_dir = graph.run_dir / "slurm"
    train_keys = training_part(graph)
    base = [sys.executable, "-m", "pipeline", *job_overrides(overrides), "live=false"]
    data = data_cluster(launch)
    jobs: list[PlannedJob] = []
    if any(d.run for k, d in decisions.items() if k not in train_keys):
        command = [*base, "part=data", "ray.address=auto"]
        jobs.append(PlannedJob("data", RayJob(command, str(job_dir)), data, None))
    if any(d.run for k, d in decisions.items() if k in train_keys):
        train_cluster = dataclasses.replace(launch.cluster, job_name="pipeline-train")
        command = [*base, "part=train", *_srun_overrides(graph, train_keys, job_dir)]
        jobs.append(
            PlannedJob(
                "train",
                CommandJob(command, str(job_dir), per_node=False, restart_on_failure=True),
                train_cluster,
                "afterok" if jobs else None,
            )
        )
    if jobs:
        command = [sys.executable, "-m", "pipeline", "finalize", str(job_dir)]
        finish = finish_cluster(data)
        jobs.append(
            PlannedJob(
                "finish", CommandJob(command, str(job_dir), per_node=False), finish, "afterany"
            )
        )
    return jobs


def _srun_overrides(graph: Graph, train_keys: set[str], job_dir: Path) -> list[str]:
    """Train stages launch over the job's allocation with the cluster written next to the job."""
    names = sorted(
        {graph.nodes[k].name for k in train_keys if graph.nodes[k].kind.role == "training"}
    )
    path = job_dir / "pipeline-train.cluster.yaml"
    return [
        o
        for n in names
        for o in (f"++stages.{n}.options.launcher=srun", f"++stages.{n}.options.cluster={path}")
    ]


def submit_pipeline(
    cfg: PipelineConfig, launch: LaunchConfig, config_yaml: str, overrides: list[str]
) -> int:
    """Plan, then print (dry_run) or submit the chained jobs; returns the exit code.

    `overrides`: the pipeline's own (no launch keys); `config_yaml`: its resolved config."""
    console = Console(soft_wrap=True)
    load_plugins(cfg.plugins)
    graph = build_graph(cfg)
    decisions = plan(graph)
    validate_changed(graph, decisions)  # a bad override fails here, not in a queued job
    print_plan(graph, decisions, console)
    jobs = plan_jobs(launch, graph, decisions, overrides)
    if not jobs:
        print("nothing to submit: every stage is up to date")
        return 0
    if cfg.dry_run:
        for planned in jobs:
            after = f" ({planned.after} on the previous)" if planned.after else ""
            print(f"\n# ---- {planned.role} job{after}")
            print(render_sbatch(planned.job, planned.cluster), end="")
        return 0
    try:
        submissions = _submit(cfg, launch, config_yaml, graph, decisions, jobs)
    except SlurmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    job_dir = graph.run_dir / "slurm"
    print(f"status: {sys.executable} -m slurm status {job_dir}")
    return wait_all(submissions) if launch.cluster.wait else 0


def _submit(
    cfg: PipelineConfig,
    launch: LaunchConfig,
    yaml: str,
    graph: Graph,
    decisions,
    jobs: list[PlannedJob],
) -> list[Submission]:
    job_dir = graph.run_dir / "slurm"
    job_dir.mkdir(parents=True, exist_ok=True)
    new_record(job_dir)
    (job_dir / "pipeline-train.cluster.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.structured(launch.cluster))
    )
    meta, extra = _open_parent(cfg, graph, decisions)
    submissions: list[Submission] = []
    for planned in jobs:
        if extra and planned.role != "finish":
            planned.job.command.extend(extra)
        after = None
        if planned.after:
            after = planned.after + ":" + ":".join(s.job_id for s in submissions)
        sub = submit_job(
            planned.job,
            planned.cluster,
            config_yaml=yaml,
            dependency=after,
            meta=meta,
            role=planned.role,
        )
        submissions.append(sub)
    return submissions


def _open_parent(cfg: PipelineConfig, graph: Graph, decisions) -> tuple[dict, list[str]]:
    """Open the MLflow parent run all jobs log into; returns (jobs.json meta, job overrides)."""
    from pipeline.tracking import open_parent

    parent = open_parent(cfg, graph, decisions, launcher="slurm")
    if parent is None:
        return {"run_dir": str(graph.run_dir)}, []
    meta = {
        "run_dir": str(graph.run_dir),
        "tracking_uri": parent.uri,
        "experiment_id": parent.experiment_id,
        "parent_run_id": parent.run_id,
    }
    return meta, [f"tracking.parent_run_id={parent.run_id}", f"tracking.uri={parent.uri}"]
