"""What a job does when its work ends non-zero: requeue, restart elsewhere, or end with the cause.

    python -m slurm.recover --run-dir D --exit STATUS [--stopped] [--restartable] \\
        --max-requeues N --max-restarts M [--requeue/--no-requeue] [--err-log F --err-offset B]

The batch script calls it (SIGTERM ignored: a requeue signals the script) after the work ended
with STATUS != 0. Two budgets, counted in the attempt ledger `<run_dir>/attempts.json`:
- a stop on the time-limit signal (the stop file exists; the trainer saved a checkpoint) is
  requeued at most `cluster.max_requeues` times;
- a restartable job (training, the pipeline's training part) that crashed (a rank died, a
  Python error) or hung (the trainer's watchdog, exit 76, report in `$PRETRAIN_HANG_REPORT`) is
  requeued at most `cluster.max_restarts` times.
  A node-local failure (a rank killed by a signal, a hang whose suspects all ran on one host)
  also excludes that node from the requeued job (`scontrol requeuehold`, `update
  ExcNodeList=...`, `release`; Slurm refuses ExcNodeList on a running job), unless the
  partition has no other node for the job.
Every attempt is one ledger entry (job id, nodes, exit, cause, detail, action). The trainer
logs the ledger into its MLflow run on each attempt and records the run there; past the limit
this module ends that run FAILED with the cause. Exit status: 0 requeued, else the job's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LEDGER = "attempts.json"
HANG_EXIT = 76
"""The trainer's watchdog exit code (trainer.watchdog.HANG_EXIT; apps are not imported here)."""
STOP_EXIT = 75
"""Exit code of a job stopped on the time-limit signal that is not requeued (EX_TEMPFAIL)."""

# torchrun's failure summary ("Root Cause (first observed failure):" then host/rank/exitcode).
_ROOT_CAUSE = re.compile(
    r"Root Cause.*?host\s*:\s*(?P<host>\S+).*?rank\s*:\s*(?P<rank>\d+).*?"
    r"exitcode\s*:\s*(?P<code>-?\d+)(?:.*?traceback\s*:\s*(?P<trace>[^\n]+))?",
    re.S,
)
# srun's own line for a task that died (cluster.launch=srun, or torchrun's agent itself).
_SRUN_TASK = re.compile(
    r"srun: error: (?P<host>\S+): tasks? (?P<rank>[\d,\-]+): (?P<how>Killed|Terminated|"
    r"Exited with exit code (?P<code>\d+))"
)
_PY_ERROR = re.compile(r"^(?:\[[^\]]*\]:?\s*)?(\w+(?:Error|Exception|Interrupt)\b.*)$", re.M)


@dataclass
class Failure:
    """Why an attempt ended, and whether one node is to blame."""

    cause: str
    """`time limit`, `hang`, `killed` (a rank died by a signal) or `crash` (a non-zero exit)."""
    detail: str
    """One line for people: the hang summary, the rank/host/signal, the last Python error."""
    node: str | None = None
    """The node to blame when the failure is node-local, else None."""


@dataclass
class Attempt:
    attempt: int
    job_id: str
    nodes: list[str]
    exit: int
    cause: str
    detail: str
    node: str | None
    action: str
    """`requeue` (time limit), `restart` (failure; same job requeued), `fail` or `stop`."""
    excluded: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.time)


def classify(
    status: int, stopped: bool, log_text: str, hang_report: dict | None, nodes: list[str]
) -> Failure:
    """The cause of a non-zero end from what the attempt left: the stop file, the hang
    report, torchrun's root-cause block or srun's task line, the last Python error. Only a node
    of this attempt (`nodes`, Slurm's names) is ever blamed."""
    if stopped:
        return Failure("time limit", f"stopped on the time-limit signal (exit {status})")
    task = _SRUN_TASK.search(log_text)
    first_node = task["host"] if task and task["host"] in nodes else None
    if status == HANG_EXIT or hang_report:
        report = hang_report or {}
        hosts = {
            r.get("host")
            for k, r in report.get("ranks", {}).items()
            if int(k) in report.get("suspects", [])
        }
        node = _slurm_node(hosts.pop(), nodes, None) if len(hosts) == 1 else None
        return Failure("hang", report.get("summary", f"hang watchdog fired (exit {status})"), node)
    root = _ROOT_CAUSE.search(log_text)
    if root:
        code, host, rank = int(root["code"]), root["host"], root["rank"]
        if code < 0:  # torchrun names its host as the OS does; srun's line names the Slurm node
            detail = f"rank {rank} on {host} was killed by {_signal_name(-code)}"
            return Failure("killed", detail, _slurm_node(host, nodes, first_node))
        return Failure(
            "crash", f"rank {rank} on {host} exited with code {code}" + _last_error(log_text), None
        )
    if task and task["how"] in ("Killed", "Terminated"):
        detail = f"task {task['rank']} on {task['host']} was {task['how'].lower()}"
        return Failure("killed", detail, first_node)
    if status >= 128:
        return Failure("killed", f"the job step was killed by {_signal_name(status - 128)}")
    where = f" (task {task['rank']} on {task['host']})" if task else ""
    return Failure("crash", f"exited with code {status}{where}" + _last_error(log_text))


def _slurm_node(host: str | None, nodes: list[str], fallback: str | None) -> str | None:
    """`host` (or its short name) when it is one of the attempt's nodes, else `fallback`."""
    for name in (host, (host or "").split(".")[0]):
        if name and name in nodes:
            return name
    return fallback


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _last_error(text: str) -> str:
    found = _PY_ERROR.findall(text)
    return f": {found[-1].strip()[:300]}" if found else ""


def read_ledger(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / LEDGER).read_text())
    except (OSError, ValueError):
        return {"attempts": []}


def write_ledger(run_dir: Path, ledger: dict[str, Any]) -> None:
    tmp = run_dir / f".{LEDGER}.tmp"
    tmp.write_text(json.dumps(ledger, indent=1))
    os.replace(tmp, run_dir / LEDGER)


def decide(args: argparse.Namespace, ledger: dict, failure: Failure) -> tuple[str, str]:
    """(action, message): requeue / restart / stop / fail, within the two budgets."""
    done = ledger["attempts"]
    if failure.cause == "time limit":
        used = sum(a["action"] == "requeue" for a in done)
        if not args.requeue:
            return (
                "stop",
                "stopped on the time-limit signal; not requeueable (cluster.requeue=false)",
            )
        if used < args.max_requeues:
            return "requeue", (
                f"stopped on the time-limit signal (exit {args.exit}); requeueing "
                f"(attempt {used + 1} of {args.max_requeues + 1})"
            )
        return "stop", (
            f"stopped on the time-limit signal; no requeue left "
            f"(cluster.max_requeues={args.max_requeues})"
        )
    used = sum(a["action"] == "restart" for a in done)
    if args.restartable and args.requeue and used < args.max_restarts:
        return "restart", (
            f"{failure.cause}: {failure.detail}; restarting from the last "
            f"checkpoint (restart {used + 1} of {args.max_restarts})"
        )
    budget = (
        f"no restart left (cluster.max_restarts={args.max_restarts})"
        if args.restartable
        else "not restarted (only training jobs restart on failure)"
    )
    return "fail", f"{failure.cause}: {failure.detail}; {budget}"


def _scontrol(*args: str) -> bool:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"[slurm] scontrol {' '.join(args)}: {done.stderr.strip()}", flush=True)
    return done.returncode == 0


def _other_nodes(partition: str | None, excluded: set[str]) -> int:
    """Nodes of the job's partition (not down or drained) outside `excluded`."""
    cmd = ["sinfo", "-h", "-N", "-o", "%N %t"] + (["-p", partition] if partition else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    usable = {
        line.split()[0]
        for line in done.stdout.splitlines()
        if len(line.split()) == 2 and not line.split()[1].startswith(("down", "drain", "fail"))
    }
    return len(usable - excluded)


def requeue(job_id: str, exclude: list[str]) -> None:
    """Requeue the job, excluding `exclude` (held while its ExcNodeList is updated)."""
    if not exclude:
        _scontrol("requeue", job_id)
        return
    if _scontrol("requeuehold", job_id):
        _scontrol("update", f"JobId={job_id}", f"ExcNodeList={','.join(exclude)}")
        _scontrol("release", job_id)


def end_tracked_run(ledger: dict, message: str) -> None:
    """End the trainer's MLflow run (recorded in the ledger) FAILED with the cause."""
    tracked = ledger.get("mlflow") or {}
    if not tracked.get("run_id"):
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracked["tracking_uri"])
        client.set_tag(tracked["run_id"], "failure", message[:5000])
        client.set_tag(tracked["run_id"], "mlflow.note.content", f"job failed: {message}"[:5000])
        client.log_dict(tracked["run_id"], ledger, LEDGER)
        client.set_terminated(tracked["run_id"], status="FAILED")
    except Exception as err:  # noqa: BLE001 - the job's own outcome must not depend on MLflow
        print(f"[slurm] MLflow run not ended: {str(err).splitlines()[0][:200]}", flush=True)


def _read_tail(path: str | None, offset: int) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _hang_report(path: str | None) -> dict | None:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def recover(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    ledger = read_ledger(run_dir)
    log_text = _read_tail(args.err_log, args.err_offset)
    nodes = args.nodelist.split(",") if args.nodelist else []
    failure = classify(args.exit, args.stopped, log_text, _hang_report(args.hang_report), nodes)
    action, message = decide(args, ledger, failure)
    excluded = list(ledger.get("excluded", []))
    if action == "restart" and failure.node and failure.node not in excluded:
        if _other_nodes(args.partition, {*excluded, failure.node}) >= args.nodes:
            excluded.append(failure.node)
            message += f"; excluding node {failure.node}"
        else:
            message += f"; not excluding {failure.node}: no other node for a {args.nodes}-node job"
    ledger["attempts"].append(
        asdict(
            Attempt(
                len(ledger["attempts"]) + 1,
                args.job_id,
                nodes,
                args.exit,
                failure.cause,
                failure.detail,
                failure.node,
                action,
                excluded,
            )
        )
    )
    ledger["excluded"] = excluded
    write_ledger(run_dir, ledger)
    print(f"[slurm] {message}", flush=True)
    if action in ("requeue", "restart"):
        requeue(args.job_id, excluded if failure.node in excluded else [])
        return 0
    if action == "fail":
        end_tracked_run(ledger, message)
    return STOP_EXIT if action == "stop" else args.exit


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m slurm.recover", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--exit", type=int, required=True, help="the work's exit status")
    p.add_argument("--stopped", action="store_true", help="the stop file exists (time limit)")
    p.add_argument("--restartable", action="store_true", help="restart on failure (training)")
    p.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max-requeues", type=int, default=0)
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--job-id", default=os.environ.get("SLURM_JOB_ID", "local"))
    p.add_argument("--nodelist", default="", help="this attempt's nodes, comma-separated")
    p.add_argument("--nodes", type=int, default=1, help="nodes the job needs")
    p.add_argument("--partition", default=None)
    p.add_argument("--err-log", default=None, help="the job's stderr file")
    p.add_argument("--err-offset", type=int, default=0, help="its size when the attempt began")
    p.add_argument("--hang-report", default=os.environ.get("PRETRAIN_HANG_REPORT"))
    return p.parse_args(argv)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a requeue signals the job's processes
    sys.exit(recover(parse_args(sys.argv[1:])))
