"""Run a whole training job: data, parallel setup, resume, steps, validation, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch.distributed as dist

from trainer import attempts
from trainer.callbacks import Callback, build_callbacks, mlflow_run_id
from trainer.checkpoint_store import (
    SUMMARY,
    CheckpointDamaged,
    check_dir_usable,
    checkpoint_at,
    iteration_folders,
    model_differences,
    resume_candidates,
    set_aside,
)
from trainer.config.model import PHASE_FIELDS
from trainer.config.trainer import CheckpointConfig, TrainerConfig
from trainer.data import build_datasets, load_manifest
from trainer.features import check_features_supported
from trainer.loop import Trainer
from trainer.parallel import initialize_parallel
from trainer.precision import check_precision_supported
from trainer.preemption import SignalWatch, TrainingStopped, poll
from trainer.system_metrics import system_metrics
from trainer.watchdog import HangWatchdog, inject_fault


def preflight(cfg: TrainerConfig) -> None:
    """Checks that need no process group: precision vs machine, manifest vs model."""
    check_precision_supported(cfg.precision)
    check_features_supported(cfg)
    check_dir_usable(cfg.checkpoint.dir)
    if cfg.data.manifest is None:
        raise ValueError("data.manifest is not set: pass data.manifest=PATH/manifest.json")
    load_manifest(cfg.data.manifest, cfg.model, cfg.data.seq_length)


def _eval_steps(cfg: TrainerConfig) -> int:
    t = cfg.train
    return t.eval_iters if t.eval_interval else 0


def fit(
    cfg: TrainerConfig,
    trainer: Trainer,
    callbacks: list[Callback],
    info: dict[str, Any],
    dog: HangWatchdog | None = None,
) -> dict[str, Any]:
    """Train from `trainer.step` to cfg.train.steps; returns the summary (all ranks).

    SIGTERM/SIGINT, the stop file and the periodic save are handled at step boundaries; each
    step, eval and save is progress for the hang watchdog `dog`."""
    beat = dog.beat if dog is not None else (lambda step: None)
    t, ck = cfg.train, cfg.checkpoint
    for cb in callbacks:
        cb.on_train_start(cfg, info)
    valid: list[float] = []
    metrics: dict[str, float] = {}
    speeds: list[float] = []
    if t.eval_interval and trainer.step == 0:  # the starting value every later loss is read against
        valid.append(trainer.evaluate())
        trainer.history["valid_loss_first"] = valid[0]
        for cb in callbacks:
            cb.on_eval(0, valid[0])
    last_save = time.monotonic()
    with SignalWatch() as watch:
        while trainer.step < t.steps:
            inject_fault(cfg.resilience, dist.get_rank(), trainer.step + 1)
            metrics = trainer.train_step()
            _say_saved(trainer.poll_saves())
            beat(trainer.step)
            speeds.append(metrics["tokens_per_s"])
            _report_stragglers(trainer, cfg.resilience.straggler_ratio, callbacks)
            if (
                trainer.step % t.log_interval == 0
                or trainer.step == t.steps
                or trainer.straggler_report
            ):
                for cb in callbacks:
                    cb.on_step(trainer.step, metrics)
            if t.eval_interval and (trainer.step % t.eval_interval == 0 or trainer.step == t.steps):
                valid.append(trainer.evaluate())
                beat(trainer.step)
                trainer.history.setdefault("valid_loss_first", valid[0])
                for cb in callbacks:
                    cb.on_eval(trainer.step, valid[-1])
            if trainer.step == t.steps:  # the final save below
                break
            due = bool(ck.save_interval_s) and time.monotonic() - last_save >= ck.save_interval_s
            asked = poll(ck.stop_file, watch, due)
            saved = asked.save or bool(ck.save_interval and trainer.step % ck.save_interval == 0)
            if saved:
                _say_saved(trainer.wait_saves())  # at most one save in flight
                trainer.save(ck.dir, ck.keep_last)
                beat(trainer.step)
                last_save = time.monotonic()
            if asked.stop:
                _stop(trainer, ck, callbacks, asked.stop, saved_now=saved)
    if metrics:
        _say_saved(trainer.wait_saves())
        trainer.save(ck.dir, ck.keep_last)
    _say_saved(trainer.wait_saves())
    beat(trainer.step)
    warm = speeds[1:] or speeds
    summary = {
        "final_step": trainer.step,
        "train_loss": metrics.get("loss"),
        "valid_loss_first": trainer.history.get("valid_loss_first"),
        "valid_loss_last": valid[-1] if valid else None,
        "tokens_per_s": sum(warm) / len(warm) if warm else None,
        "mfu": metrics.get("mfu"),
    }
    for cb in callbacks:
        cb.on_train_end(summary)
    return summary


def _stop(
    trainer: Trainer,
    ck: CheckpointConfig,
    callbacks: list[Callback],
    reason: str,
    saved_now: bool,
) -> NoReturn:
    """Checkpoint at the current step (unless just saved), tell the callbacks, raise."""
    _say_saved(trainer.wait_saves())
    if not saved_now:
        trainer.save(ck.dir, ck.keep_last)
    _say_saved(trainer.wait_saves())
    stopped = TrainingStopped(trainer.step, reason)
    if dist.get_rank() == 0:
        print(f"[trainer] {stopped}", flush=True)
    for cb in callbacks:
        cb.on_stop(trainer.step, str(stopped))
    raise stopped


def _say(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[trainer] {message}", file=sys.stderr, flush=True)


def resume(cfg: TrainerConfig, trainer: Trainer) -> str:
    """Load what this run continues from; returns it in words ("scratch", a path).

    checkpoint.resume=true: the checkpoint `latest` names, else the newest complete one (with a
    warning); a damaged one falls back to the previous complete one; a folder holding
    checkpoints of which none loads is an error, never a silent restart. resume=false: the
    folder's checkpoints are moved to previous/ and a new lineage starts (from init_from)."""
    ck = cfg.checkpoint
    candidates, warning = resume_candidates(ck.dir)
    if not ck.resume:
        moved = set_aside(ck.dir) if dist.get_rank() == 0 else None
        dist.barrier()
        if moved:
            _say(f"checkpoint.resume=false: earlier checkpoints moved to {moved} (kept)")
        return _start_fresh(cfg, trainer)
    if warning:
        _say(f"warning: {warning}")
    for ckpt in candidates:
        try:
            trainer.load(ckpt)
            return str(ckpt.path)
        except CheckpointDamaged as err:
            _say(f"warning: {err}; trying the previous complete checkpoint")
    stray = [p.name for p in iteration_folders(ck.dir)]
    if candidates or stray:
        raise ValueError(
            f"checkpoint.dir={ck.dir} holds checkpoints ({', '.join(stray[-3:])}) but none is "
            "complete and readable; fix or move them, or start a new run there with "
            "checkpoint.resume=false (they are then moved to previous/, not deleted)"
        )
    return _start_fresh(cfg, trainer)


def _start_fresh(cfg: TrainerConfig, trainer: Trainer) -> str:
    if not cfg.checkpoint.init_from:
        return "scratch"
    source = cfg.checkpoint.init_from
    if source.startswith("hf:"):
        source = str(_imported(source[3:], Path(cfg.checkpoint.dir) / "hf_import"))
    ckpt = checkpoint_at(source)
    trainer.load(ckpt, weights_only=True)
    changed = model_differences(
        ckpt.marker.get("model", {}),
        trainer.model_identity(),
        set(trainer.model_identity()) - set(PHASE_FIELDS),
    )
    if changed:  # a training phase: say what it changes (rope scaling, position limit, ...)
        _say(f"init_from {ckpt.path}: model fields differ (saved vs now): " + ", ".join(changed))
    return f"weights of {ckpt.path}"


def _imported(folder: str, output: Path) -> Path:
    """`init_from=hf:DIR`: rank 0 imports DIR into `output` (one process, `python -m
    trainer.import_hf`; reused while DIR is unchanged), every rank then loads it."""
    from trainer.import_hf import is_current
    from trainer.parallel import single_process_env

    failure = [None]
    if dist.get_rank() == 0 and not is_current(output, Path(folder)):
        _say(f"importing Hugging Face folder {folder} into {output}")
        cmd = [sys.executable, "-m", "trainer.import_hf", f"source={folder}", f"output={output}"]
        env = single_process_env(dict(os.environ))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["import failed"]
            failure = [f"checkpoint.init_from=hf:{folder}: {lines[-1].removeprefix('error: ')}"]
    dist.broadcast_object_list(failure, src=0)
    if failure[0]:
        raise ValueError(failure[0])
    return output


def _say_saved(steps: list[int]) -> None:
    if steps and dist.get_rank() == 0:
        for step in steps:
            print(f"[checkpoint] iter_{step:07d} complete (written in the background)", flush=True)


def _report_stragglers(trainer: Trainer, ratio: float, callbacks: list[Callback]) -> None:
    report = trainer.straggler_report
    if report and dist.get_rank() == 0 and report.metrics()["straggler/max_ratio"] >= ratio:
        print(f"[straggler] {report.line()}", flush=True)
        for cb in callbacks:
            cb.on_straggler(report.step, report.line())


def train(cfg: TrainerConfig) -> dict[str, Any]:
    """Entry for `python -m trainer`: validate, set up, resume, train, write summary.json.

    Raises TrainingStopped (after saving a checkpoint) on SIGTERM/SIGINT or the stop file."""
    preflight(cfg)
    layout = initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    cfg.micro_batches(layout.data)
    train_ds, valid_ds = build_datasets(
        cfg.data,
        cfg.model,
        cfg.train.global_batch_size,
        cfg.train.steps,
        cfg.train.eval_iters,
        cfg.train.eval_interval,
    )
    trainer = Trainer(cfg, train_ds, valid_ds)
    resumed_from = resume(cfg, trainer)
    summary_path = Path(cfg.checkpoint.dir) / SUMMARY
    if trainer.step >= cfg.train.steps and summary_path.exists():
        return json.loads(summary_path.read_text())
    rank = dist.get_rank()
    info = {"layout": layout.describe(), "resumed_from": resumed_from}
    callbacks = build_callbacks(
        cfg.logging, rank, trainer.history.get("mlflow_run_id") or attempts.tracked_run_id()
    )
    if cfg.logging.mlflow:  # a requeued attempt continues the same run (all ranks keep the id)
        run_id = [mlflow_run_id(callbacks)]
        dist.broadcast_object_list(run_id, src=0)
        trainer.history["mlflow_run_id"] = run_id[0]
    hang_dir = Path(cfg.checkpoint.dir) / "hang"
    dog = HangWatchdog(cfg.resilience.hang_timeout_s, rank, dist.get_world_size(), hang_dir)
    with dog, system_metrics(cfg.logging, trainer.history.get("mlflow_run_id")):
        summary = fit(cfg, trainer, callbacks, info, dog)
    if rank == 0:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2))
    return summary
