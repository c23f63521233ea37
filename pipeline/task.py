"""The body of a stage's Ray task: prepare the folder, run the kind, track it, write the marker."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pipeline import state, tracking
from pipeline.dag import Node
from pipeline.registry import TaskContext


class StageFailed(Exception):
    """A stage raised; carries the stage key and its log path to the driver."""

    logged = False
    """The stage's own MLflow run recorded the failure (else the driver records it)."""

    def __init__(self, key: str, log_path: str, message: str):
        super().__init__(key, log_path, message)
        self.key, self.log_path, self.message = key, log_path, message

    def __str__(self) -> str:
        return f"stage {self.key} failed: {self.message} (log: {self.log_path})"


class InvalidConfig(ValueError):
    """The stage's app rejected its new config; no earlier output was touched."""

    def __init__(self, key: str, message: str):
        super().__init__(f"stage {key}: bad config ({message}); earlier outputs left untouched")


def validate(node: Node, decision: state.Decision) -> None:
    """Have the stage's app check its config when running it would touch earlier outputs
    (unless the driver did so at plan time); InvalidConfig with the app's line otherwise."""
    if node.validated or not node.kind.validate or not decision.touches_outputs:
        return
    try:
        node.kind.validate(node)
    except ValueError as err:
        raise InvalidConfig(node.key, str(err)) from None
    node.validated = True


class StagePreempted(StageFailed):
    """A stage stopped on request (Slurm's pre-timeout signal, `$PRETRAIN_STOP_FILE`) after
    saving its progress; a rerun (the requeued job) resumes it. Raised by resumable kinds."""

    def __str__(self) -> str:
        return f"stage {self.key} stopped for requeue: {self.message} (log: {self.log_path})"


@dataclass
class Driver:
    """The driver process; a stage task on the same host dies with it (see _watch_driver)."""

    pid: int
    host: str

    @classmethod
    def this(cls) -> Driver:
        return cls(os.getpid(), socket.gethostname())


def _watch_driver(driver: Driver | None) -> None:
    """If the driver is killed, kill this worker's process group at once (Ray notices only
    after a second or more, while the stage keeps writing into the run directory)."""
    if driver is None or driver.host != socket.gethostname() or driver.pid == os.getpid():
        return

    def watch() -> None:
        while True:
            try:
                os.kill(driver.pid, 0)
            except ProcessLookupError:
                if os.getpgid(0) == os.getpid():
                    os.killpg(os.getpid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            except PermissionError:  # a different process took the pid: the driver is gone
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.1)

    threading.Thread(target=watch, name="driver-watchdog", daemon=True).start()


def _driver_gone(driver: Driver | None) -> bool:
    """The driver on this host has died (Ray may stop this task with SystemExit before the
    watchdog's SIGKILL lands: that is a killed run, not a failed stage)."""
    if driver is None or driver.host != socket.gethostname() or driver.pid == os.getpid():
        return False
    try:
        os.kill(driver.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return True
    return False


@dataclass
class Tracking:
    """Where a stage task logs to MLflow (None fields = tracking off)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    max_artifact_mb: float


@contextlib.contextmanager
def _output_to(log_path: Path):
    """Send this process's stdout/stderr (fds 1 and 2, so children too) to the stage log.

    Yields a function that writes a line to the original stdout (the console).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lambda line: os.write(saved[0], line.encode(errors="replace"))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


CONFIG_FILE = ".stage_config.json"


def _artifacts(node: Node, ctx: TaskContext) -> list[Path]:
    found = [node.output / "stats.json", node.output / CONFIG_FILE, node.log_path]
    return found + [p for p in ctx.artifacts if p not in found]


WORKERS_LOCK = ".workers.lock"


@contextlib.contextmanager
def _hold_workers_lock(run_dir: Path):
    """Held (shared) while a stage runs, so a new driver can wait for orphans of a killed one."""
    with open(run_dir / WORKERS_LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        yield


def execute(node: Node, track: Tracking | None, driver: Driver | None, *upstream: dict) -> dict:
    """Run one stage (Ray task body). `upstream` are the parents' results (ordering edges)."""
    _watch_driver(driver)
    started = time.time()
    with _hold_workers_lock(node.run_dir), _output_to(node.log_path) as echo:
        print(f"=== stage {node.key} ({node.kind.name}) started {time.ctime(started)}", flush=True)
        run_id = None
        try:
            decision = state.decide(node)
            validate(node, decision)
            moved = state.prepare_output(node, decision)
            if moved:
                line = f"{node.key}: previous outputs moved aside to {moved} ({decision.reason})"
                print(f"=== {line}", flush=True)
                echo(f"[pipeline] {line}\n")
            live = track if track and node.kind.live_run else None
            if live:
                run_id = tracking.start_stage_run(
                    live.uri, live.experiment_id, live.parent_run_id, node
                )
            stats, ctx = _run_kind(node, live, run_id, echo)
            marker = state.write_marker(node, stats, started, run_id)
        except StagePreempted as err:
            print(f"=== stage {node.key} stopped for requeue: {err.message}", flush=True)
            if run_id:
                tracking.end_stage_run(
                    track.uri, run_id, "KILLED", f"stopped for requeue: {err.message}"
                )
            err.logged = run_id is not None
            raise
        except BaseException as err:  # noqa: BLE001 - reported to the driver as StageFailed
            if isinstance(err, InvalidConfig):
                print(f"=== {err}", flush=True)
                message = str(err)
            else:
                traceback.print_exc()
                message = f"{type(err).__name__}: {err}".strip()
            if run_id and _driver_gone(driver):
                tracking.end_stage_run(
                    track.uri, run_id, "KILLED", "the pipeline driver was killed"
                )
            elif run_id:
                tracking.fail_stage_run(track.uri, run_id, message, node.log_path)
            failed = StageFailed(node.key, str(node.log_path), message)
            failed.logged = run_id is not None
            raise failed from None
        print(f"=== stage {node.key} done in {marker['finished_at'] - started:.1f}s", flush=True)
    return {
        "key": node.key,
        "stats": stats,
        "started": started,
        "finished": marker["finished_at"],
        "moved_aside": str(moved) if moved else None,
        "logged": run_id is not None,
        "params": ctx.params,
        "artifacts": [str(p) for p in _artifacts(node, ctx)],
        "max_mb": track.max_artifact_mb if track else 0,
    }


def _run_kind(node: Node, track: Tracking | None, run_id: str | None, echo) -> dict:
    ctx = TaskContext(
        key=node.key,
        name=node.name,
        domain=node.domain,
        output=node.output,
        run_dir=node.run_dir,
        overrides=list(node.overrides),
        options=node.options,
        inputs={up: [node.run_dir / k for k in keys] for up, keys in node.inputs.items()},
        log_path=node.log_path,
        mlflow_run_id=run_id,
        tracking_uri=track and track.uri,
        echo=echo,
    )
    stats = node.kind.run(ctx) or {}
    state.write_json_atomic(
        node.output / CONFIG_FILE, {"config": node.config, "overrides": node.overrides}
    )
    if track and run_id:
        tracking.finish_stage_run(
            track.uri, run_id, stats, _artifacts(node, ctx), track.max_artifact_mb, ctx.params
        )
    return stats, ctx
