"""Submit rendered scripts (`sbatch --parsable`), wait for them (sacct, then scontrol), or run
them locally; `launch_training` does all three for the pipeline's train stage."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm.config import ClusterConfig, CommandJob, RayJob, TrainJob, load_cluster
from slurm.render import named, render_sbatch

TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "CANCELLED",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)


class SlurmError(RuntimeError):
    """Base class of this package's errors."""


class SlurmUnavailableError(SlurmError):
    """Slurm's commands are not installed or the controller does not answer."""


class SlurmJobError(SlurmError):
    """A job could not be submitted or did not end COMPLETED; the message points to its log."""

    def __init__(self, message: str, result: JobResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class JobResult:
    """How a job ended."""

    job_id: str
    state: str
    """Slurm's final state: COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, CANCELLED, ..."""
    exit_code: str
    """`code:signal` as sacct reports it, e.g. `0:0`, `3:0`."""
    log_path: Path | None
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def err_path(self) -> Path | None:
        """The job's stderr file (`--error=<run_dir>/logs/%x-%j.err`)."""
        return self.log_path.with_suffix(".err") if self.log_path else None


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise SlurmUnavailableError(f"`{argv[0]}` is not on PATH: is Slurm installed here?")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=60)


def submit(
    script_path: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    sbatch_args: list[str] | None = None,
) -> str:
    """Submit a script with `sbatch --parsable`; returns the job id. `env` adds variables,
    `sbatch_args` adds options (e.g. `--dependency=afterok:123`)."""
    script = Path(script_path)
    proc = _run(["sbatch", "--parsable", *(sbatch_args or []), str(script)], env)
    if proc.returncode != 0:
        raise SlurmJobError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def sacct_states(job_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """job id -> (state, exit code, elapsed) from accounting, the latest attempt of a requeued
    job; "CANCELLED by 0" reads CANCELLED. Jobs accounting does not know yet are left out."""
    if not job_ids:
        return {}
    fields = "JobID,State,ExitCode,Elapsed"
    proc = _run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", fields])
    found = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        job_id, state, exit_code, elapsed = line.split("|")[:4]
        found[job_id] = (state.split()[0], exit_code, elapsed)
    return found


def job_state(job_id: str) -> tuple[str, str] | None:
    """(state, exit code) from accounting, or from the controller while accounting lags."""
    found = sacct_states([job_id]).get(job_id)
    if found and found[0] in TERMINAL_STATES:
        return found[0], found[1]
    fields = _scontrol_fields(job_id)
    if "JobState" in fields:
        return fields["JobState"], fields.get("ExitCode", "")
    return (found[0], found[1]) if found else None


def _scontrol_fields(job_id: str) -> dict[str, str]:
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode != 0:
        return {}
    return dict(w.split("=", 1) for w in proc.stdout.split() if "=" in w)


def wait(
    job_id: str,
    *,
    log_path: str | os.PathLike | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> JobResult:
    """Block until the job reaches a final state; returns it (does not raise on FAILED)."""
    start = time.monotonic()
    if log_path is None:
        log_path = _scontrol_fields(job_id).get("StdOut")
    delay, unknown_since = min(0.25, poll_s), None
    while True:
        found = job_state(job_id)
        if found and found[0] in TERMINAL_STATES:
            elapsed = time.monotonic() - start
            return JobResult(job_id, found[0], found[1], _path(log_path), elapsed)
        now = time.monotonic()
        if found is None:
            unknown_since = unknown_since or now
            if now - unknown_since > 30:
                raise SlurmJobError(f"Slurm job {job_id} is unknown to sacct and scontrol")
        if timeout_s is not None and now - start > timeout_s:
            raise TimeoutError(
                f"Slurm job {job_id} still {found[0] if found else 'unknown'} after "
                f"{timeout_s:.0f} s (it keeps running; `scancel {job_id}` to stop it)"
            )
        time.sleep(delay)
        delay = min(delay * 2, poll_s)


def _path(p: str | os.PathLike | None) -> Path | None:
    return Path(p) if p else None


def log_tail(path: Path | None, num_lines: int = 20) -> str:
    """The last lines of a log file, or a note why there are none."""
    if path is None or not path.is_file():
        return f"(no log file at {path})"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-num_lines:])


def check(result: JobResult, what: str = "job") -> JobResult:
    """Return a COMPLETED result; raise SlurmJobError naming the state and the log otherwise."""
    if result.ok:
        return result
    message = (
        f"{what} {result.job_id} ended {result.state} (exit {result.exit_code}); "
        f"log: {result.log_path}\n--- last lines of the log ---\n{log_tail(result.log_path)}"
    )
    if result.err_path and result.err_path.is_file() and result.err_path.stat().st_size:
        message += f"\n--- last lines of {result.err_path} ---\n{log_tail(result.err_path)}"
    raise SlurmJobError(message, result)


def run_local(script_path: Path, log_path: Path, env: Mapping[str, str] | None = None) -> JobResult:
    """Run a script rendered for `scheduler: local` with bash; stdout to `log_path`, stderr
    next to it (`.err`), as under Slurm."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "ab") as log, open(log_path.with_suffix(".err"), "ab") as err:
        proc = subprocess.run(
            ["bash", str(script_path)],
            stdout=log,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
    state = "COMPLETED" if proc.returncode == 0 else "FAILED"
    code = f"{proc.returncode}:0" if proc.returncode >= 0 else f"0:{-proc.returncode}"
    return JobResult(f"local-{os.getpid()}", state, code, log_path, time.monotonic() - start)


def prepare(job: TrainJob | CommandJob | RayJob, cluster: ClusterConfig) -> Path:
    """Write `<run_dir>/<job_name>.sbatch` and create `<run_dir>/logs` (Slurm does not)."""
    cluster = named(job, cluster)
    run_dir = Path(job.run_dir).absolute()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    script = run_dir / f"{cluster.job_name}.sbatch"
    script.write_text(render_sbatch(job, cluster))
    return script


def log_path_for(script: Path, job_id: str) -> Path:
    """Where the rendered `--output=<run_dir>/logs/%x-%j.out` puts a job's log."""
    return script.parent / "logs" / f"{script.stem}-{job_id}.out"


def run_job(
    job: TrainJob | CommandJob | RayJob,
    cluster: ClusterConfig,
    *,
    env: Mapping[str, str] | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    on_submit: Callable[[str, Path], None] | None = None,
) -> JobResult:
    """Render `job`, run it on `cluster` (sbatch, or bash for scheduler=local), wait for it.

    on_submit(job_id, log_path) is called right after sbatch accepts the job.
    Returns the COMPLETED result; raises SlurmJobError naming state and log otherwise.
    """
    script = prepare(job, cluster)
    if cluster.scheduler == "local":
        result = run_local(script, log_path_for(script, "local"), env)
    else:
        job_id = submit(script, env)
        log_path = log_path_for(script, job_id)
        if on_submit:
            on_submit(job_id, log_path)
        result = wait(job_id, log_path=log_path, poll_s=poll_s, timeout_s=timeout_s)
    return check(result, f"{named(job, cluster).job_name} job")


def launch_training(
    overrides: list[str],
    cluster_cfg: ClusterConfig | Mapping[str, Any] | str,
    run_dir: str | os.PathLike,
    *,
    env: Mapping[str, str] | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> JobResult:
    """Train with `python -m trainer <overrides>` on a cluster; block until it ends.

    cluster_cfg: a ClusterConfig, a mapping of its fields (e.g. the pipeline's `cluster:` node),
    or a name in conf/cluster/ (`local`, `slurm_dev`, ...). The script and logs go to run_dir.
    env: extra environment for the job (e.g. MLFLOW_RUN_ID, MLFLOW_TRACKING_URI).
    Returns the COMPLETED JobResult; raises SlurmJobError (state + log path + log tail) otherwise.
    """
    cluster = load_cluster(cluster_cfg)
    job = TrainJob(overrides=list(overrides), run_dir=str(Path(run_dir).absolute()))
    return run_job(job, cluster, env=env, poll_s=poll_s, timeout_s=timeout_s)
