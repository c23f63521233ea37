"""MLflow lineage: a parent run per pipeline run, a nested run per stage.

The one owner of these runs' lifecycle: `open_parent` starts (or attaches to) the parent for the
local DAG and for a Slurm submission alike, `end_stage_run` / `ParentRun.end_live_stages` end
runs a stopped stage left open, `end_parent_run` ends a submitted pipeline from its jobs' outcome
(the finishing job). The driver owns the parent run; each stage's Ray task opens and closes its
own nested run (params = resolved stage config, metrics = stats, artifacts = stats.json,
manifest, removed samples, stage config, log, tokenizer; dataset inputs = upstream outputs). The
train kind
hands the nested run to the trainer through MLFLOW_RUN_ID / MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, TrackingConfig

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM_VALUE = 6000


def resolve_uri(uri: str) -> str:
    """Make a relative sqlite/file store absolute (Ray workers and the trainer use other cwds)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b': v} (lists are kept as values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def numeric_metrics(stats: dict) -> dict[str, float]:
    """The numeric leaves of a stats dict, as MLflow metric names."""
    out = {}
    for key, value in flatten(stats).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[clean_key(key)] = float(value)
    return out


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class ParentRun:
    """The pipeline run's MLflow parent run (driver side)."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path):
        self.uri = resolve_uri(cfg.uri)
        self.client = _client(self.uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is None:  # the UI then opens on its "model training" runs view
            tags = {"mlflow.experimentKind": "custom_model_development"}
            self.experiment_id = self.client.create_experiment(cfg.experiment, tags=tags)
        else:
            self.experiment_id = exp.experiment_id
        self.run_dir = run_dir
        self.run_name = cfg.run_name or run_dir.name
        self.run_id: str | None = None
        self.attached = False

    def close_stale(self) -> int:
        """Mark runs of earlier, killed drivers on this run_dir as KILLED."""
        query = f"tags.`pipeline.run_dir` = '{self.run_dir}' and attributes.status = 'RUNNING'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query)
        for run in runs:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(runs)

    def end_live_stages(self, note: str) -> int:
        """End this parent's stage runs still RUNNING (a live train stage whose task was stopped
        with the driver) as KILLED, with a note why; returns how many."""
        if self.run_id is None:
            return 0
        query = f"tags.mlflow.parentRunId = '{self.run_id}' and attributes.status = 'RUNNING'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query)
        for run in runs:
            end_stage_run(self.uri, run.info.run_id, "KILLED", note)
        return len(runs)

    def start(self, resolved_config: dict, plan: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.run_name,
            tags={"pipeline.run_dir": str(self.run_dir), "pipeline.role": "parent"},
        )
        self.run_id = run.info.run_id
        log_params(self.client, self.run_id, flatten(resolved_config))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pipeline_config.json"
            path.write_text(json.dumps({"config": resolved_config, "plan": plan}, indent=1))
            self.client.log_artifact(self.run_id, str(path))
        return self.run_id

    def note_skipped(self, skipped: dict[str, str]) -> None:
        """Tag the parent with the run that produced each reused stage output."""
        from mlflow.entities import RunTag

        query = f"tags.`pipeline.run_dir` = '{self.run_dir}' and attributes.status = 'FINISHED'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query)
        producer = {r.data.tags.get("pipeline.fingerprint"): r.info.run_id for r in runs}
        tags = [
            RunTag(
                clean_key(f"skipped.{key}"), f"reused output of run {producer.get(fp, 'unknown')}"
            )
            for key, fp in skipped.items()
        ]
        for i in range(0, len(tags), 100):
            self.client.log_batch(self.run_id, tags=tags[i : i + 100])

    def log_async(self, fn, *args) -> None:
        """Queue a stage record (one writer thread: SQLite stores take one writer at a time)."""
        from concurrent.futures import ThreadPoolExecutor

        if not hasattr(self, "_pool"):
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
            self._futures = []
        self._futures.append(
            self._pool.submit(fn, self.uri, self.experiment_id, self.run_id, *args)
        )

    def drain(self) -> list[str]:
        """Wait for queued records; returns the errors of records that could not be written."""
        errors = []
        for future in getattr(self, "_futures", []):
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - tracking must not hide the run's outcome
                errors.append(f"{type(err).__name__}: {err}")
        self._futures = []
        return errors

    def attach(self, run_id: str) -> None:
        """Use an existing parent run (created at Slurm submission); `finish` then records
        errors only, and the pipeline's finishing job ends the run."""
        if self.client.get_run(run_id).info.experiment_id != self.experiment_id:
            raise ValueError(
                f"tracking.parent_run_id {run_id} is not in experiment {self.experiment_id}"
            )
        self.run_id, self.attached = run_id, True

    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        if not self.attached:
            self.client.set_terminated(self.run_id, status=status)


def open_parent(cfg: PipelineConfig, graph, decisions: dict, launcher: str) -> ParentRun | None:
    """The pipeline run's parent run (None when tracking is off): attached when
    `tracking.parent_run_id` names one (a part run by a Slurm job), else started after closing
    stale runs of this run_dir, with the resolved config, the plan and the reused outputs."""
    if not cfg.tracking.enabled:
        return None
    from omegaconf import OmegaConf

    parent = ParentRun(cfg.tracking, graph.run_dir)
    if cfg.tracking.parent_run_id:
        parent.attach(cfg.tracking.parent_run_id)
        return parent
    parent.close_stale()
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg))
    parent.start(resolved, {k: f"{d.action}: {d.reason}" for k, d in decisions.items()})
    parent.client.set_tag(parent.run_id, "pipeline.launcher", launcher)
    skipped = {k: graph.nodes[k].fingerprint for k, d in decisions.items() if not d.run}
    if skipped:
        parent.note_skipped(skipped)
    return parent


def end_stage_run(uri: str, run_id: str, status: str, note: str) -> None:
    """End a stage run its task could not end (stopped, killed, requeued) with a note why."""
    client = _client(uri)
    client.set_tag(run_id, "mlflow.note.content", note[:5000])
    client.set_terminated(run_id, status=status)


def end_parent_run(uri: str, experiment_id: str, run_id: str, failure: str | None) -> str:
    """End a submitted pipeline's parent run after its jobs ended: FAILED with `failure` (what
    failed, where its log is) or FINISHED; its stage runs a killed job left RUNNING become
    FAILED (or KILLED: an interrupted, requeued attempt). Returns the status set."""
    client = _client(uri)
    if failure:
        client.set_tag(run_id, "slurm.error", failure[:5000])
    elif "error" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "error")  # an attempt's stop, since requeued
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
    )
    for run in children:
        reason = (
            f"its Slurm job ended: {failure}" if failure else "an interrupted (requeued) attempt"
        )
        client.set_tag(run.info.run_id, "error", reason[:5000])
        client.set_terminated(run.info.run_id, status="FAILED" if failure else "KILLED")
    status = "FAILED" if failure else "FINISHED"
    client.set_terminated(run_id, status=status)
    return status


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(clean_key(k), str(v)[:_MAX_PARAM_VALUE]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def start_stage_run(
    uri: str, experiment_id: str, parent_id: str, node, start_time: float | None = None
) -> str:
    """Open the stage's nested run and log its params and dataset inputs."""
    client = _client(uri)
    tags = {
        "mlflow.parentRunId": parent_id,
        "pipeline.stage": node.name,
        "pipeline.kind": node.kind.name,
        "pipeline.fingerprint": node.fingerprint,
        "pipeline.code_version": node.code_version,
        "pipeline.run_dir": str(node.run_dir),
    }
    if node.domain:
        tags["pipeline.domain"] = node.domain
    if node.phase:
        tags["pipeline.phase"] = node.phase
    start_ms = int(start_time * 1000) if start_time else None
    run_id = client.create_run(
        experiment_id, run_name=node.key, tags=tags, start_time=start_ms
    ).info.run_id
    params = flatten({k: v for k, v in node.config.items() if k != "overrides"})
    params.update({f"override.{o.split('=', 1)[0]}": o.split("=", 1)[-1] for o in node.overrides})
    log_params(client, run_id, params)
    _log_lineage(client, run_id, node)
    return run_id


def log_finished_stage(uri: str, experiment_id: str, parent_id: str, node, result: dict) -> str:
    """Record a stage that ran without a live run (data stages): the driver logs it after the
    fact, with the stage's real start and end times, off the stages' critical path."""
    run_id = start_stage_run(uri, experiment_id, parent_id, node, result["started"])
    artifacts = [Path(p) for p in result.get("artifacts", [])]
    params = dict(result.get("params", {}))
    if node.kind.describe:
        params.update(node.kind.describe(node))
    finish_stage_run(
        uri,
        run_id,
        result["stats"],
        artifacts,
        result["max_mb"],
        params,
        end_time=result["finished"],
    )
    return run_id


def log_failed_stage(uri: str, experiment_id: str, parent_id: str, node, error: str) -> str:
    """Record a failed stage that had no live run, as a FAILED run with the error."""
    attempt = node.output / ".attempt.json"
    started = json.loads(attempt.read_text())["started_at"] if attempt.exists() else None
    run_id = start_stage_run(uri, experiment_id, parent_id, node, started)
    fail_stage_run(uri, run_id, error, node.log_path)
    return run_id


def _dataset(path: str, name: str, digest: str):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are 'local'
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(path)
    return MetaDataset(source, name=name, digest=digest[:16])


def _log_lineage(client, run_id: str, node) -> None:
    from mlflow.entities import DatasetInput, InputTag

    def entry(ds, context: str) -> DatasetInput:
        return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])

    inputs = [
        entry(_dataset(str(node.run_dir / key), key, fp), "input")
        for key, fp in node.input_fingerprints.items()
    ]
    state = node.config.get("domain_input_state")
    if state:
        inputs.append(
            entry(_dataset(node.config["domain_input"], f"raw/{node.domain}", state), "input")
        )
    inputs.append(entry(_dataset(str(node.output), node.key, node.fingerprint), "output"))
    log_inputs(client, run_id, inputs)


def log_inputs(client, run_id: str, inputs: list, attempts: int = 5) -> None:
    """`client.log_inputs`, retried when another stage inserted the same dataset first: MLflow's
    SQL store looks a dataset up, then inserts it, so two stages that start together with a
    shared input race on its unique key (the loser's transaction is rolled back whole)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as err:
            text = str(err)
            duplicate = "IntegrityError" in text or "UNIQUE" in text.upper()
            if not duplicate or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def finish_stage_run(
    uri: str,
    run_id: str,
    stats: dict,
    artifacts: list[Path],
    max_mb: float,
    params: dict,
    end_time: float | None = None,
) -> None:
    """Log the stage's stats as metrics, extra params and artifacts; end the run FINISHED."""
    from mlflow.entities import Metric, Param

    client = _client(uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in numeric_metrics(stats).items()]
    items = [Param(clean_key(k), str(v)[:_MAX_PARAM_VALUE]) for k, v in flatten(params).items()]
    while metrics or items:  # few round trips: MLflow takes <= 1000 metrics, 100 params a batch
        client.log_batch(run_id, metrics=metrics[:900], params=items[:100])
        metrics, items = metrics[900:], items[100:]
    repo = _artifact_repo(client, run_id)
    for path in artifacts:
        _log_artifact(client, repo, run_id, path, max_mb)
    end_ms = int(end_time * 1000) if end_time else None
    client.set_terminated(run_id, status="FINISHED", end_time=end_ms)


def _artifact_repo(client, run_id: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(client.get_run(run_id).info.artifact_uri)


def _log_artifact(client, repo, run_id: str, path: Path, max_mb: float) -> None:
    if not path.exists():
        return
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if size > max_mb * 2**20:
            client.set_tag(run_id, clean_key(f"artifact_skipped.{path.name}"), f"{size} bytes")
            return
        repo.log_artifacts(str(path), artifact_path=path.name)
    else:
        repo.log_artifact(str(path))


def fail_stage_run(uri: str, run_id: str, error: str, log_path: Path) -> None:
    """End the stage's run as FAILED with the error as a tag and the log as an artifact."""
    client = _client(uri)
    client.set_tag(run_id, "error", error[:5000])
    _log_artifact(client, _artifact_repo(client, run_id), run_id, log_path, 100)
    client.set_terminated(run_id, status="FAILED")
