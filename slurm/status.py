"""`python -m slurm status DIR [--lines N] [--finalize]`: the Slurm jobs of a submitted run
(from DIR/jobs.json), their states, the tail of their logs, and the run's MLflow run.

Exit code: 0 all jobs COMPLETED, 1 one ended otherwise (FAILED, CANCELLED, TIMEOUT, ...),
3 jobs still pending or running. `--finalize` (the pipeline's finishing job runs it as
`python -m pipeline finalize DIR`; exit 0) ends
the MLflow parent run: FINISHED when every job COMPLETED, else FAILED with the failed jobs
named; stage runs a killed job left RUNNING become FAILED (or KILLED: an interrupted attempt
of a job that was requeued and then completed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from slurm.app import load_record
from slurm.jobs import TERMINAL_STATES, log_tail, sacct_states


@dataclass
class JobStatus:
    name: str
    role: str
    job_id: str
    state: str
    exit_code: str
    elapsed: str
    stdout: str
    stderr: str

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"


def job_statuses(run_dir: Path) -> tuple[list[JobStatus], dict]:
    record = load_record(run_dir)
    if record is None:
        raise ValueError(f"no jobs.json in {run_dir}: was anything submitted there?")
    states = sacct_states([j["job_id"] for j in record["jobs"]])
    statuses = []
    for j in record["jobs"]:
        state, code, elapsed = states.get(j["job_id"], ("UNKNOWN", "", ""))
        statuses.append(
            JobStatus(
                j["name"],
                j.get("role", "job"),
                j["job_id"],
                state,
                code,
                elapsed,
                j["stdout"],
                j["stderr"],
            )
        )
    return statuses, record.get("meta", {})


def outcome(statuses: list[JobStatus]) -> int:
    """0 all COMPLETED, 1 one failed, 3 still running (finish jobs are not judged)."""
    work = [s for s in statuses if s.role != "finish"] or statuses
    if any(s.done and not s.ok for s in work):
        return 1
    return 0 if all(s.ok for s in work) else 3


def print_status(statuses: list[JobStatus], meta: dict, lines: int) -> None:
    print(f"{'JOB':>8}  {'NAME':20} {'STATE':12} {'EXIT':6} ELAPSED")
    for s in statuses:
        print(f"{s.job_id:>8}  {s.name:20} {s.state:12} {s.exit_code:6} {s.elapsed}")
    for s in statuses:
        if lines and s.state not in ("PENDING", "UNKNOWN"):
            for path in (s.stdout, s.stderr):
                if Path(path).is_file() and Path(path).stat().st_size:
                    print(f"\n--- {s.name} ({s.job_id}): {path}\n{log_tail(Path(path), lines)}")
    verdict = {0: "COMPLETED", 1: "FAILED", 3: "RUNNING"}[outcome(statuses)]
    failed = [f"{s.name} {s.state}" for s in statuses if s.done and not s.ok]
    print(f"\nrun {verdict}" + (f": {', '.join(failed)}" if failed else ""))
    if meta.get("parent_run_id"):
        uri = meta["tracking_uri"]
        print(f"MLflow run {meta['parent_run_id']}: {mlflow_status(meta)}  ({uri})")
        if uri.startswith(("sqlite:", "/")):
            print(f"  UI: mlflow ui --backend-store-uri {uri}   then http://127.0.0.1:5000")


def mlflow_status(meta: dict) -> str:
    from mlflow import MlflowClient

    return MlflowClient(meta["tracking_uri"]).get_run(meta["parent_run_id"]).info.status


def finalize(statuses: list[JobStatus], meta: dict) -> str | None:
    """End the MLflow parent run from the work jobs' states; returns the status set."""
    if not meta.get("parent_run_id"):
        return None
    from pipeline.tracking import end_parent_run

    failed = [s for s in statuses if s.role != "finish" and not s.ok]
    text = "; ".join(
        f"{s.name} job {s.job_id} ended {s.state} (exit {s.exit_code}), log {s.stdout}"
        for s in failed
    )
    uri, exp, run = meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"]
    return end_parent_run(uri, exp, run, text or None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slurm status", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "run_dir", type=Path, help="the folder with jobs.json (printed at submission)"
    )
    parser.add_argument("--lines", type=int, default=10, help="log lines to show per job (0: none)")
    parser.add_argument("--finalize", action="store_true", help="end the run's MLflow run")
    args = parser.parse_args(argv)
    try:
        statuses, meta = job_statuses(args.run_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.finalize:  # exit 0 once the run is recorded: the work jobs carry the outcome
        print(f"MLflow run {meta.get('parent_run_id')}: {finalize(statuses, meta)}")
        print_status(statuses, meta, args.lines)
        return 0
    print_status(statuses, meta, args.lines)
    return outcome(statuses)
