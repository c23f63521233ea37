"""The driver: plan the DAG, run it on Ray tasks (ObjectRefs are the edges), track, report."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import inspect
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape

from pipeline import state
from pipeline.config import PipelineConfig, RayConfig
from pipeline.dag import Graph, build_graph
from pipeline.fingerprint import REPO_ROOT
from pipeline.task import WORKERS_LOCK, Driver, StageFailed, StagePreempted, Tracking, execute
from pipeline.tracking import log_failed_stage, log_finished_stage
from pipeline.view import DagView, throughput_from


class PipelineError(RuntimeError):
    """The run ended with failed stages (message names them and their logs)."""


class PipelinePreempted(PipelineError):
    """Every failed stage stopped for requeue (StagePreempted); a rerun resumes them."""

    exit_code = os.EX_TEMPFAIL  # 75, like the trainer: the sbatch script requeues on it


@dataclass
class RunResult:
    run_dir: Path
    plan: dict[str, state.Decision]
    states: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str | None = None

    @property
    def ran(self) -> list[str]:
        return [k for k, s in self.states.items() if s == "done"]


def load_plugins(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"plugin module {module!r} cannot be imported: {err}") from None


def plan(graph: Graph, part: str = "all") -> dict[str, state.Decision]:
    """Run or skip for every node; `part` limits what this driver runs (see `restrict`)."""
    return restrict(graph, {key: state.decide(node) for key, node in graph.nodes.items()}, part)


def training_part(graph: Graph) -> set[str]:
    """Keys of the train stages and everything downstream of them."""
    keys = {key for key, node in graph.nodes.items() if node.kind.name == "train"}
    for key in list(keys):
        keys |= graph.dependants(key)
    return keys


def restrict(graph: Graph, decisions: dict[str, state.Decision], part: str) -> dict:
    """part=data: leave the training part to a later driver. part=train: run only the training
    part, and refuse if a data stage is not complete (the data job must have finished)."""
    if part == "all":
        return decisions
    train = training_part(graph)
    out = {}
    for key, decision in decisions.items():
        if (key in train) == (part == "train") or not decision.run:
            out[key] = decision
        elif part == "data":
            out[key] = state.Decision(False, "left to the training job (part=data)")
        else:
            raise ValueError(
                f"part=train: data stage {key} is not complete ({decision.reason}); "
                "the data part must finish first"
            )
    return out


def print_plan(graph: Graph, decisions: dict[str, state.Decision], console: Console) -> None:
    """The dry-run report: every stage, its inputs, and whether it would run (and why)."""
    console.print(f"DAG of {len(graph.nodes)} stages in {graph.run_dir}", highlight=False)
    for key, node in graph.nodes.items():
        d = decisions[key]
        verb = "[cyan]RUN [/]" if d.run else "[blue]SKIP[/]"
        after = f" <- {', '.join(node.deps)}" if node.deps else ""
        console.print(
            f"  {verb} {key} {escape(f'[{node.kind.name}]')}{after}: {d.reason}", highlight=False
        )
    runs = sum(d.run for d in decisions.values())
    console.print(f"{runs} to run, {len(decisions) - runs} up to date", highlight=False)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """One driver per run directory at a time (released by the OS if the driver dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ValueError(
            f"another pipeline run is using {run_dir}; wait for it or stop it"
        ) from None
    try:
        _wait_for_orphans(run_dir)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _wait_for_orphans(run_dir: Path, timeout_s: float = 120.0) -> None:
    """Block until no stage task of an earlier (killed) driver still runs in run_dir."""
    deadline = time.time() + timeout_s
    with open(run_dir / WORKERS_LOCK, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.time() > deadline:
                    raise ValueError(
                        f"stage processes of an earlier run still hold {run_dir / WORKERS_LOCK} "
                        f"after {timeout_s:.0f}s; stop them and rerun"
                    ) from None
                time.sleep(0.1)


def _code_paths(graph: Graph) -> list[str]:
    """sys.path entries Ray workers need to import every stage kind (local Ray only)."""
    paths = {str(REPO_ROOT)}
    for node in graph.nodes.values():
        module = sys.modules.get(node.kind.run.__module__)
        source = inspect.getsourcefile(module) if module else None
        for entry in sys.path:
            if source and entry and source.startswith(os.path.abspath(entry) + os.sep):
                paths.add(os.path.abspath(entry))
    return sorted(paths)


def init_ray(cfg: RayConfig, graph: Graph) -> bool:
    """Start or join Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address:
        try:
            ray.init(address=cfg.address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as err:
            raise ValueError(
                f"cannot join the Ray cluster at ray.address={cfg.address}: {err}"
            ) from None
        return True
    extra = [p for p in _code_paths(graph) if p not in os.environ.get("PYTHONPATH", "").split(":")]
    os.environ["PYTHONPATH"] = os.pathsep.join(extra + [os.environ.get("PYTHONPATH", "")]).strip(
        ":"
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray runs workers at nice 15 by default; stages are the job's main work, not background.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # address="local" always starts a private instance: with None, Ray joins whatever
    # /tmp/ray/ray_current_cluster names (a stale file from an old `ray start` breaks the run).
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_mb * 2**20,
        configure_logging=False,
    )
    return True


def remove_orphans(graph: Graph) -> list[Path]:
    """Delete per-domain stage folders of domains no longer configured (so globs over a
    stage's domain folders see only current domains)."""
    removed = []
    names = {n.name for n in graph.nodes.values() if n.domain is not None}
    for name in names:
        for folder in (graph.run_dir / name).glob("*"):
            known = f"{name}/{folder.name}" in graph.nodes
            ours = (folder / state.ATTEMPT).exists() or (folder / state.MARKER).exists()
            if folder.is_dir() and not known and ours:
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


def _submit(graph: Graph, decisions, track: Tracking | None) -> dict:
    """Submit every stage that must run as a Ray task, parents' ObjectRefs as arguments."""
    import ray

    remote = ray.remote(execute)
    driver = Driver.this()
    refs: dict = {}
    for key, node in graph.nodes.items():
        if not decisions[key].run:
            continue
        parents = [refs[d] for d in node.deps if d in refs]
        refs[key] = remote.options(
            num_cpus=node.num_cpus, name=f"stage:{key}", max_retries=0, retry_exceptions=False
        ).remote(node, track, driver, *parents)
    return refs


def _cause(err: BaseException) -> BaseException:
    return getattr(err, "cause", None) or err


def _collect(graph: Graph, refs: dict, view: DagView, since: float, parent) -> tuple[dict, list]:
    """Wait for every task; returns results and the root failures (StageFailed or other)."""
    import ray

    pending = {ref: key for key, ref in refs.items()}
    outputs = {k: graph.nodes[k].output for k in refs}
    results, failures = {}, []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
        for ref in ready:
            key = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - every failure is reported below
                cause = _cause(err)
                if isinstance(cause, StageFailed) and cause.key != key:
                    view.set(key, "blocked", note=f"upstream {cause.key} failed")
                    continue
                if not isinstance(cause, StageFailed):
                    cause = StageFailed(
                        key, str(graph.nodes[key].log_path), f"{type(cause).__name__}: {cause}"
                    )
                failures.append(cause)
                if parent and not graph.nodes[key].kind.live_run:
                    parent.log_async(log_failed_stage, graph.nodes[key], cause.message)
                stopped = isinstance(cause, StagePreempted)
                note = f"stopped for requeue: {cause.message}" if stopped else cause.message
                view.set(
                    key, "stopped" if stopped else "failed", finished=time.time(), note=note[:80]
                )
                continue
            results[key] = res
            if parent and not res["logged"]:
                parent.log_async(log_finished_stage, graph.nodes[key], res)
            tp = throughput_from(res["stats"])
            view.set(key, "done", started=res["started"], finished=res["finished"], throughput=tp)
        view.poll_running(outputs, since)
    return results, failures


def run_pipeline(cfg: PipelineConfig, console: Console | None = None) -> RunResult:
    """Plan and (unless dry_run) execute the DAG; raises PipelineError if a stage fails."""
    console = console or Console(soft_wrap=True)
    load_plugins(cfg.plugins)
    graph = build_graph(cfg)
    decisions = plan(graph, cfg.part)
    result = RunResult(run_dir=graph.run_dir, plan=decisions)
    if cfg.dry_run:
        print_plan(graph, decisions, console)
        return result
    with run_lock(graph.run_dir):
        return _execute(cfg, graph, decisions, result, console)


def _execute(cfg, graph: Graph, decisions, result: RunResult, console: Console) -> RunResult:
    import ray

    (graph.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    parent = _start_parent(cfg, graph, decisions)
    track = parent and Tracking(
        parent.uri, parent.experiment_id, parent.run_id, cfg.tracking.max_removed_samples_mb
    )
    result.parent_run_id, result.tracking_uri = parent and parent.run_id, parent and parent.uri
    started_ray = False
    since = time.time()
    view = DagView(list(graph.nodes), live=cfg.live, console=console)
    if not view.live:
        print_plan(graph, decisions, console)
    results: dict = {}
    remove_orphans(graph)
    try:
        started_ray = any(d.run for d in decisions.values()) and init_ray(cfg.ray, graph)
        with view:
            for key, d in decisions.items():  # initial states (the plan was printed above)
                view.states[key].state = "pending" if d.run else "skipped"
                view.states[key].note = "" if d.run else d.reason
            refs = _submit(graph, decisions, track)
            results, failures = _collect(graph, refs, view, since, parent)
    except BaseException as err:
        if parent:
            parent.drain()
            parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", repr(err))
        raise
    finally:
        if started_ray:
            ray.shutdown()
    result.results = results
    result.states = {k: s.state for k, s in view.states.items()}
    for error in parent.drain() if parent else []:
        console.print(f"warning: a stage could not be recorded in MLflow: {error}", highlight=False)
    if failures:
        message = "; ".join(str(f) for f in failures)
        stopped = all(isinstance(f, StagePreempted) for f in failures)
        if parent:
            parent.finish("KILLED" if stopped else "FAILED", message)
        raise (PipelinePreempted if stopped else PipelineError)(message)
    if parent:
        parent.finish("FINISHED")
    return result


def _start_parent(cfg: PipelineConfig, graph: Graph, decisions):
    if not cfg.tracking.enabled:
        return None
    from pipeline.tracking import ParentRun

    parent = ParentRun(cfg.tracking, graph.run_dir)
    if cfg.tracking.parent_run_id:  # a Slurm job of a submitted pipeline: the run exists
        parent.attach(cfg.tracking.parent_run_id)
        return parent
    parent.close_stale()
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg))
    parent.start(
        resolved, {k: ("run: " if d.run else "skip: ") + d.reason for k, d in decisions.items()}
    )
    skipped = {k: graph.nodes[k].fingerprint for k, d in decisions.items() if not d.run}
    if skipped:
        parent.note_skipped(skipped)
    return parent
