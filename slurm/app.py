"""Submit a project app to Slurm instead of running it here: `cluster=slurm` on the command line
of `python -m trainer`, `python -m data_prep` or `python -m pipeline`.

The app's own overrides (minus the `cluster*` and `dry_run` ones, plus `cluster=local`) become
the command the job runs, so the job does exactly what the same command would do locally. Next
to each script go the resolved config (`<name>.yaml`) and a record of the submission
(`jobs.json`), which `python -m slurm status DIR` reads.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm.config import ClusterConfig, CommandJob, RayJob, TrainJob
from slurm.jobs import SlurmError, check, log_path_for, prepare, submit, wait
from slurm.render import named, render_sbatch

RECORD = "jobs.json"
_APP_KEYS = ("cluster", "dry_run")


def job_overrides(overrides: list[str], drop: tuple[str, ...] = _APP_KEYS) -> list[str]:
    """The app's overrides for the job: `cluster...` and `dry_run` removed, `cluster=local` added
    (the job runs the app in place)."""
    kept = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] not in drop:
            kept.append(override)
    return [*kept, "cluster=local"]


@dataclass
class Submission:
    """One submitted job, as recorded in `<run_dir>/jobs.json`."""

    name: str
    job_id: str
    script: str
    stdout: str
    stderr: str
    dependency: str | None = None
    submitted_at: float = 0.0
    role: str = "job"
    """What the job does; a `finish` job ends a run and is not judged with the others."""


def record(run_dir: Path, submission: Submission, meta: dict[str, Any] | None = None) -> None:
    """Append a submission (and run-level metadata such as the MLflow run) to jobs.json."""
    path = run_dir / RECORD
    data = load_record(run_dir) or {"jobs": [], "meta": {}}
    data["jobs"].append(dataclasses.asdict(submission))
    data["meta"].update(meta or {})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def new_record(run_dir: Path) -> None:
    """Start a fresh jobs.json for a new submission (an earlier one is kept as jobs-<id>.json)."""
    old = load_record(run_dir)
    if old and old["jobs"]:
        (Path(run_dir) / RECORD).rename(Path(run_dir) / f"jobs-{old['jobs'][0]['job_id']}.json")


def load_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def submit_job(
    job: TrainJob | CommandJob | RayJob,
    cluster: ClusterConfig,
    *,
    config_yaml: str,
    dependency: str | None = None,
    env: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    role: str = "job",
) -> Submission:
    """Write script + resolved config, sbatch it (after `dependency`), record and print it."""
    cluster = named(job, cluster)
    script = prepare(job, cluster)
    script.with_suffix(".yaml").write_text(config_yaml)
    args = [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"] if dependency else []
    job_id = submit(script, env, args)
    out = log_path_for(script, job_id)
    sub = Submission(
        cluster.job_name,
        job_id,
        str(script),
        str(out),
        str(out.with_suffix(".err")),
        dependency,
        time.time(),
        role,
    )
    record(script.parent, sub, meta)
    after = f" (after {dependency})" if dependency else ""
    print(f"submitted {sub.name}: job {job_id}{after}", flush=True)
    print(f"  script {script}\n  stdout {sub.stdout}\n  stderr {sub.stderr}", flush=True)
    return sub


def wait_all(submissions: list[Submission], poll_s: float = 5.0) -> int:
    """Block until every job ends; 0 if all COMPLETED, else 1 (the first failure is printed)."""
    code = 0
    for sub in submissions:
        result = wait(sub.job_id, log_path=sub.stdout, poll_s=poll_s)
        print(f"job {sub.job_id} ({sub.name}) {result.state} after {result.elapsed_s:.0f} s")
        if not result.ok and code == 0:
            try:
                check(result, f"{sub.name} job")
            except Exception as err:  # noqa: BLE001 - printed, then the exit code says it
                print(f"error: {err}", file=sys.stderr)
            code = 1
    return code


def submit_app(
    job: TrainJob | CommandJob | RayJob,
    cluster: ClusterConfig,
    *,
    config_yaml: str,
    dry_run: bool = False,
) -> int:
    """What `cluster=slurm` does for trainer and data_prep: print (dry_run) or submit the job;
    returns the process exit code (waits for the job when `cluster.wait`)."""
    if dry_run:
        print(render_sbatch(job, cluster), end="")
        return 0
    try:
        new_record(Path(job.run_dir).absolute())
        sub = submit_job(job, cluster, config_yaml=config_yaml)
    except SlurmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"status: {sys.executable} -m slurm status {Path(sub.script).parent}", flush=True)
    return wait_all([sub]) if cluster.wait else 0
