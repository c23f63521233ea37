"""Stage kind `train`: launch the trainer (torchrun or python -m) and stream its log.

The contract with the trainer is trainer.contract: it logs into the stage's nested MLflow run
(MLFLOW_RUN_ID / MLFLOW_TRACKING_URI in its environment), appends its progress to the file
PRETRAIN_PROGRESS_FILE names (read here for the live view's tokens/s), writes summary.json (the
stage's stats) and resumes from `checkpoint.dir` when the stage reruns after a kill. A trainer
stopped by its stop file (Slurm's pre-timeout signal) raises StagePreempted: the stage run ends
KILLED and `python -m pipeline` exits 75 so the sbatch script requeues it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.registry import TaskContext, register_kind
from pipeline.task import StagePreempted
from trainer import contract

PROGRESS = ".progress.jsonl"
"""The trainer's progress file in the stage folder (trainer.contract.PROGRESS_ENV)."""


@dataclass
class TrainOptions:
    nproc_per_node: int = 1
    """Local processes: 1 runs `python -m MODULE`, more run `torchrun --nproc-per-node N`."""
    launcher: str = "local"
    """local (a subprocess on the Ray worker), slurm (submit a training job and wait for it) or
    srun (a job step over the current allocation: the driver is a Slurm job, `cluster=slurm`)."""
    module: str = "trainer"
    """Python module of the trainer entry point."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the trainer processes."""
    cluster: str = "slurm_dev"
    """launcher=slurm|srun: cluster config, a name in conf/cluster/ or a YAML path (nodes, GPUs,
    partition, container, ...)."""
    timeout_s: float | None = None
    """launcher=slurm: give up waiting for the job after this many seconds (null = never)."""
    max_restarts: int = 0
    """launcher=local with nproc_per_node > 1: torchrun restarts the workers after a failure
    this many times (`--max-restarts`); each restart resumes from the last checkpoint.
    launcher=slurm|srun use the cluster's `max_restarts` (requeue)."""

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"train option max_restarts must be >= 0, got {self.max_restarts}")
        if self.nproc_per_node < 1:
            raise ValueError(f"train option nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.launcher not in ("local", "slurm", "srun"):
            raise ValueError(
                f"train option launcher must be 'local', 'slurm' or 'srun', got {self.launcher!r}"
            )


def override_value(overrides: list[str], key: str) -> str | None:
    """The value the last `key=VALUE` override sets (Hydra applies them in order), or None."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return values[-1] if values else None


def checkpoint_dir(ctx: TaskContext) -> Path:
    found = override_value(ctx.overrides, "checkpoint.dir")
    return Path(found) if found else ctx.output / "checkpoints"


def command(
    opts: TrainOptions, overrides: list[str], output: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The trainer command line (same interpreter, so the same virtual environment) and the
    environment it needs beyond ours. launcher=slurm|srun go through the launch layer's command
    line (`python -m slurm.train`: a job in `output/slurm`, or an srun step of this job)."""
    launch = [sys.executable, "-m", "slurm.train", opts.cluster]
    if opts.launcher == "srun":
        return [*launch, "--step", f"--module={opts.module}", "--", *overrides], {}
    if opts.launcher == "slurm":
        launch.append(f"--run-dir={Path(output or '.') / 'slurm'}")
        if opts.timeout_s is not None:
            launch.append(f"--timeout-s={opts.timeout_s}")
        return [*launch, "--", *overrides], {}
    if opts.nproc_per_node == 1:
        return [sys.executable, "-m", opts.module, *overrides], {}
    torchrun = contract.standalone_torchrun(opts.nproc_per_node, opts.max_restarts)
    argv = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", opts.module]
    return [*argv, *overrides], {}


def _die_with_parent() -> None:
    """Child preexec: get SIGKILL when the Ray worker dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def _kill_stale_trainer(record: Path) -> None:
    """Kill the process group of a trainer left by a killed attempt (torchrun's workers do
    not die with their agent); the group is our own session, so no other process is in it."""
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    if info.get("host") != socket.gethostname():
        return
    try:
        os.killpg(info["pgid"], signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(info["pgid"], 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _stream(proc: subprocess.Popen, ctx: TaskContext, tail: deque) -> None:
    prefix = f"({ctx.key}) "
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        ctx.echo(prefix + line)
        tail.append(line.rstrip())


def _follow_progress(ctx: TaskContext, done: threading.Event, poll_s: float = 1.0) -> None:
    """Report the trainer's latest tokens/s (from its progress file) until `done`, and once
    more after it."""
    offset, stop = 0, False
    while not stop:
        stop = done.wait(poll_s)
        records, offset = contract.read_progress(ctx.output / PROGRESS, offset)
        rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
        if rates:
            ctx.report(throughput=rates[-1], unit="tok/s")


def _trainer_env(ctx: TaskContext, opts: TrainOptions) -> dict[str, str]:
    """What the trainer reads from its environment (trainer.contract) beyond ours."""
    env = {**opts.env, contract.PROGRESS_ENV: str((ctx.output / PROGRESS).absolute())}
    if ctx.mlflow_run_id:
        env.update(MLFLOW_RUN_ID=ctx.mlflow_run_id, MLFLOW_TRACKING_URI=ctx.tracking_uri or "")
    return env


def run_local(ctx: TaskContext, opts: TrainOptions, overrides: list[str]) -> None:
    env = dict(os.environ, **_trainer_env(ctx, opts), PYTHONUNBUFFERED="1")
    env.setdefault("COLUMNS", "200")  # rich-based consoles wrap at 80 columns without a TTY
    cmd, extra_env = command(opts, overrides, ctx.output)
    env.update(extra_env)
    print("launch:", " ".join(cmd), flush=True)
    tail: deque = deque(maxlen=20)
    _kill_stale_trainer(ctx.output / ".trainer.json")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )
    (ctx.output / ".trainer.json").write_text(
        json.dumps({"pgid": proc.pid, "host": socket.gethostname()})
    )
    done = threading.Event()
    follower = threading.Thread(target=_follow_progress, args=(ctx, done), daemon=True)
    follower.start()
    try:
        _stream(proc, ctx, tail)
        code = proc.wait()
    finally:
        done.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        follower.join(timeout=5)
    if code != 0:
        last = "\n".join(list(tail)[-5:])
        if code == contract.STOPPED_EXIT_CODE or _stop_requested(env, overrides):
            raise StagePreempted(
                ctx.key, str(ctx.log_path), f"trainer exited with code {code} after a stop request"
            )
        raise RuntimeError(f"trainer exited with code {code}; last lines:\n{last}")


def _stop_requested(env: dict[str, str], overrides: list[str]) -> bool:
    """Whether the trainer's stop file exists. torchrun and srun turn a worker's exit 75 (stopped
    for requeue) into their own failure code, so the file is the signal that counts."""
    stop_file = override_value(overrides, "checkpoint.stop_file") or env.get(contract.STOP_FILE_ENV)
    return bool(stop_file) and os.path.exists(stop_file)


def run_slurm(ctx: TaskContext, opts: TrainOptions, overrides: list[str]) -> None:
    """A Slurm training job, waited for (run_local runs the launch layer's command); the job's
    log is copied into ours."""
    try:
        run_local(ctx, opts, overrides)
    finally:
        for log in sorted((ctx.output / "slurm").rglob("*.out")):
            print(f"--- {log}\n{log.read_text(errors='replace')}", flush=True)


def trainer_overrides(overrides: list[str], output: Path) -> list[str]:
    """The stage's overrides plus its default checkpoint.dir (in the stage folder)."""
    if any(o.startswith("checkpoint.dir=") for o in overrides):
        return list(overrides)
    return [*overrides, f"checkpoint.dir={output / 'checkpoints'}"]


def _world_size(opts: TrainOptions) -> int:
    if opts.launcher == "local":
        return opts.nproc_per_node
    res = subprocess.run(
        [sys.executable, "-m", "slurm.train", opts.cluster, "--world-size"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise ValueError(_error_lines(res.stderr or res.stdout, res.returncode))
    return int(res.stdout.split()[-1])


def validate(node) -> None:
    """Run the trainer's own CLI with the stage's overrides and `dry_run=true` (it composes and
    checks the config, plans the layout, builds nothing); ValueError with its error line."""
    opts: TrainOptions = node.options
    overrides = trainer_overrides(node.overrides, node.output)
    if override_value(overrides, "world_size") is None:
        overrides.append(f"world_size={_world_size(opts)}")
    env = dict(os.environ, **opts.env, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    with tempfile.TemporaryDirectory(prefix="pipeline-validate-") as scratch:
        # Hydra's run folder defaults to checkpoint.dir/hydra/<time>: keep the stage folder as is
        hydra = [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
        res = subprocess.run(
            [sys.executable, "-m", opts.module, *overrides, "dry_run=true", *hydra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if res.returncode != 0:
        raise ValueError(_error_lines(res.stderr or res.stdout, res.returncode))


def _error_lines(text: str, code: int) -> str:
    """The trainer's error in one line (its `error: ...` line, or Hydra's few lines)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [
        ln
        for ln in lines
        if "HYDRA_FULL_ERROR" not in ln
        and not ln.startswith(("full_key:", "reference_type=", "object_type="))
    ]
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    shown = errors[-1:] or lines[-3:]
    return " ".join(shown) or f"trainer dry run exited with code {code}"


EXTENDS = (
    "train.steps+",
    "train.eval_interval",
    "train.eval_iters",
    "train.log_interval",
    "logging.*",
    "checkpoint.save_interval",
    "checkpoint.save_interval_s",
    "checkpoint.keep_last",
    "resilience.hang_timeout_s",
)
"""Trainer keys that only extend a finished run: changing only these continues training from the
stage's last checkpoint (`train.steps` only when raised) instead of restarting."""


@register_kind(
    "train",
    options=TrainOptions,
    code=lambda o: (o.module,),
    conf=("model/**", "parallel/**", "precision/**", "trainer.yaml", "grpo.yaml"),
    resumable=True,
    live_run=True,
    validate=validate,
    extends=EXTENDS,
    role="training",
)
def train(ctx: TaskContext) -> dict:
    """Train (or resume training) the model; returns the trainer's summary.json as stats."""
    opts: TrainOptions = ctx.options
    ckpt = checkpoint_dir(ctx)
    overrides = trainer_overrides(ctx.overrides, ctx.output)
    started = time.time()
    (run_slurm if opts.launcher == "slurm" else run_local)(ctx, opts, overrides)
    summary_path = ckpt / contract.SUMMARY_FILE
    if not summary_path.exists():
        raise RuntimeError(f"trainer finished but wrote no {summary_path}")
    summary = json.loads(summary_path.read_text())
    ctx.artifacts.append(summary_path)
    return {**summary, "wall_s": time.time() - started}
