"""The driver: plan the DAG, run it on Ray tasks (ObjectRefs are the edges), track, report."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import inspect
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from pipeline import state
from pipeline.config import PipelineConfig, RayConfig
from pipeline.dag import Graph, build_graph
from pipeline.fingerprint import REPO_ROOT
from pipeline.task import (
    WORKERS_LOCK,
    Driver,
    InvalidConfig,
    StageFailed,
    StagePreempted,
    Tracking,
    execute,
    validate,
)
from pipeline.tracking import log_failed_stage, log_finished_stage, open_parent
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
    """Keys of the training stages (kind role `training`) and everything downstream of them."""
    keys = {key for key, node in graph.nodes.items() if node.kind.role == "training"}
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
    """The dry-run report: every stage, its inputs, and what would happen (and why): SKIP, RUN
    (nothing earlier), RESUME (an interrupted attempt), CONTINUE (extend-only keys changed:
    trains on from the last checkpoint) or RESTART (earlier outputs moved aside first)."""
    console.print(f"DAG of {len(graph.nodes)} stages in {graph.run_dir}", highlight=False)
    for key, node in graph.nodes.items():
        d = decisions[key]
        verb = f"[cyan]{d.action.upper():<4}[/]" if d.run else "[blue]SKIP[/]"
        after = f" <- {', '.join(node.deps)}" if node.deps else ""
        console.print(
            f"  {verb} {key} {escape(f'[{node.kind.name}]')}{after}: {d.reason}", highlight=False
        )
    runs = sum(d.run for d in decisions.values())
    kinds = [d.action for d in decisions.values() if d.action in state.KEEPS_OR_MOVES]
    detail = ", ".join(f"{kinds.count(a)} {a}" for a in state.KEEPS_OR_MOVES if a in kinds)
    detail = f" ({detail})" if detail else ""
    console.print(f"{runs} to run{detail}, {len(decisions) - runs} up to date", highlight=False)


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
    with _keep_sigterm_handler():
        return _init_ray(cfg, graph)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init installs a SIGTERM handler that aborts the driver (exit -6, MLflow runs left
    RUNNING); put back the Python handler in effect before (see `python -m pipeline`)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _init_ray(cfg: RayConfig, graph: Graph) -> bool:
    import ray

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


def validate_changed(graph: Graph, decisions: dict[str, state.Decision]) -> None:
    """Before anything runs: have each stage's app check the config of every stage whose run
    would touch earlier outputs (continue or restart) and whose inputs are final (its upstream
    stages are up to date), so a typo fails in seconds. The others are checked by their task,
    still before their outputs are touched. InvalidConfig names the stage."""
    for key, node in graph.nodes.items():
        if all(not decisions[d].run for d in node.deps):
            validate(node, decisions[key])


def remove_orphans(graph: Graph) -> list[Path]:
    """Move per-domain (or per-phase) stage folders of domains (phases) no longer configured
    aside into run_dir/.trash (so globs over a stage's domain folders see only current domains);
    returns where to."""
    moved = []
    names = {n.name for n in graph.nodes.values() if n.domain is not None or n.phase is not None}
    for name in names:
        for folder in sorted((graph.run_dir / name).glob("*")):
            key = f"{name}/{folder.name}"
            ours = (folder / state.ATTEMPT).exists() or (folder / state.MARKER).exists()
            if folder.is_dir() and key not in graph.nodes and ours:
                moved.append(state.move_aside(folder, graph.run_dir, key, "no longer configured"))
    return moved


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
                logged = cause.logged if cause is _cause(err) else graph.nodes[key].kind.live_run
                if parent and not logged:
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
    try:
        validate_changed(graph, decisions)
    except InvalidConfig as err:
        raise ValueError(str(err)) from None
    if cfg.dry_run:
        print_plan(graph, decisions, console)
        return result
    with run_lock(graph.run_dir):
        return _execute(cfg, graph, decisions, result, console)


def _execute(cfg, graph: Graph, decisions, result: RunResult, console: Console) -> RunResult:
    import ray

    (graph.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    parent = open_parent(cfg, graph, decisions, launcher="ray")
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
    for folder in remove_orphans(graph):
        console.print(f"moved aside (no longer configured): {folder}", highlight=False)
    try:
        started_ray = any(d.run for d in decisions.values()) and init_ray(cfg.ray, graph)
        with view:
            for key, d in decisions.items():  # initial states (the plan was printed above)
                view.states[key].state = "pending" if d.run else "skipped"
                view.states[key].note = "" if d.run else d.reason
            refs = _submit(graph, decisions, track)
            results, failures = _collect(graph, refs, view, since, parent)
    except BaseException as err:
        if started_ray:  # stop the stage tasks before their MLflow runs are closed
            ray.shutdown()
            started_ray = False
            with contextlib.suppress(ValueError):
                _wait_for_orphans(graph.run_dir, timeout_s=30)
        if parent:
            parent.drain()
            parent.end_live_stages(f"pipeline driver stopped: {err!r}")
            parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", repr(err))
        raise
    finally:
        if started_ray:
            ray.shutdown()
    _print_trash(graph, results, console)
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


def _print_trash(graph: Graph, results: dict, console: Console) -> None:
    """One line when this run moved earlier outputs aside: where, and how to list or purge."""
    moved = [r["moved_aside"] for r in results.values() if r.get("moved_aside")]
    if moved:
        console.print(
            f"{len(moved)} stage(s) had earlier outputs moved aside into "
            f"{graph.run_dir / state.TRASH}; list: python -m pipeline trash "
            f"run_dir={graph.run_dir}, delete: ... purge=true",
            highlight=False,
        )
