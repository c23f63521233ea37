"""GRPO (DeepSeek-R1's reasoning RL) on our megatron-core policy.

    python -m posttrain.grpo prompts.path=runs/task/train.jsonl \\
        prompts.tokenizer=runs/dp/tokenizer/tokenizer.json model=tiny_v3 \\
        checkpoint.init_from=runs/sft/iter_0000200 checkpoint.dir=runs/grpo \\
        rollout.group_size=8 train.steps=100
    torchrun --nproc-per-node 2 -m posttrain.grpo parallel=tp2 ...      # also parallel=dp2
    python -m posttrain.grpo --cfg job                                    # resolved config
    python -m posttrain.grpo ... dry_run=true world_size=8   # check inputs and layout only

Per step (NeMo-RL's grpo.py design): the step's prompts (a seeded order; this DP rank's
share) are sampled `rollout.group_size` times each by the rollout backend (posttrain.rollout),
scored by the reward plugins (posttrain.rewards), turned into group advantages, and the policy
takes `train.updates_per_step` optimizer steps on the clipped surrogate + k3 KL to a frozen
reference (posttrain.grpo_loss), token-normalised over the global batch (all micro-batches and
DP ranks), log-probs computed from vocabulary-parallel logits under TP.

The policy is the trainer's own (trainer.loop.Trainer: megatron DDP, megatron's optimizer,
checkpoints with RNG), initialised from `checkpoint.init_from`; the reference is a frozen copy
of the starting weights. Rerunning with the same checkpoint.dir resumes (checkpoint.save_interval
steps; SIGTERM / stop file save first and exit 75). Metrics per step go to the console and
MLflow: reward/mean, reward/std, accuracy, format, kl, clip_fraction, entropy, loss, grad_norm,
response_length/mean, gen_tokens_per_s, train_tokens_per_s, reward_errors, prompts_skipped/*.
Prompts longer than the context and records without a gold answer are skipped and counted; a
reward plugin that raises scores 0 and is counted (`reward_errors/<reason>`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.grpo_config import GRPOConfig
from trainer import contract
from trainer.callbacks import Callback, ConsoleCallback, ProgressCallback

if TYPE_CHECKING:  # megatron is imported only when a run starts (`--cfg job` stays quick)
    from posttrain.grpo_step import GRPO


class GRPOConsole(ConsoleCallback):
    KEYS = (
        "reward/mean",
        "accuracy",
        "format",
        "kl",
        "clip_fraction",
        "entropy",
        "response_length/mean",
        "gen_tokens_per_s",
        "train_tokens_per_s",
    )


class GRPOProgress(ProgressCallback):
    """The trainer's progress file (trainer.contract) with generation tokens/s as the
    throughput: sampling is most of a GRPO step."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        rate = {"tokens_per_s": metrics["gen_tokens_per_s"], "loss": metrics["loss"]}
        super().on_step(step, rate)


# ---- the run -------------------------------------------------------------------------------
def build_callbacks(cfg: GRPOConfig, rank: int, resume_run_id: str | None) -> list[Callback]:
    """Console, MLflow (the trainer's callback: a pipeline stage's run when MLFLOW_RUN_ID is
    set) and the progress file (when $PRETRAIN_PROGRESS_FILE is set) on rank 0."""
    import os

    from trainer.callbacks import MLflowCallback

    if rank != 0:
        return []
    callbacks: list[Callback] = [GRPOConsole()] if cfg.logging.console else []
    if cfg.logging.mlflow:
        callbacks.append(MLflowCallback(cfg.logging, resume_run_id))
    if os.environ.get(contract.PROGRESS_ENV):
        callbacks.append(GRPOProgress(os.environ[contract.PROGRESS_ENV]))
    return callbacks


def fit(cfg: GRPOConfig, grpo: GRPO, callbacks: list[Callback]) -> dict[str, Any]:
    """Run GRPO steps up to train.steps with the trainer's save / stop handling."""
    import torch.distributed as dist

    from trainer.preemption import SignalWatch, TrainingStopped, poll
    from trainer.watchdog import inject_fault

    trainer, ck, steps = grpo.trainer, cfg.checkpoint, cfg.train.steps
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    last_save = time.monotonic()
    with SignalWatch() as watch:
        while trainer.step < steps:
            inject_fault(grpo.tcfg.resilience, dist.get_rank(), trainer.step + 1)
            metrics = grpo.step()
            history.append(metrics)
            if trainer.step % cfg.train.log_interval == 0 or trainer.step == steps:
                for cb in callbacks:
                    cb.on_step(trainer.step, metrics)
            if trainer.step == steps:
                break
            due = bool(ck.save_interval_s) and time.monotonic() - last_save >= ck.save_interval_s
            asked = poll(ck.stop_file, watch, due)
            saved = asked.save or bool(ck.save_interval and trainer.step % ck.save_interval == 0)
            if saved:
                trainer.save(ck.dir, ck.keep_last)
                last_save = time.monotonic()
            if asked.stop:
                if not saved:
                    trainer.save(ck.dir, ck.keep_last)
                for cb in callbacks:
                    cb.on_stop(trainer.step, asked.stop)
                raise TrainingStopped(trainer.step, asked.stop)
    if metrics:
        trainer.save(ck.dir, ck.keep_last)
    return summarize(trainer.step, metrics, history, grpo)


def summarize(
    step: int, last: dict[str, float], history: list[dict[str, float]], grpo: GRPO
) -> dict[str, Any]:
    warm = history[1:] or history
    mean = lambda key: sum(m[key] for m in warm) / len(warm) if warm else None  # noqa: E731
    return {
        "final_step": step,
        "reward_mean": last.get("reward/mean"),
        "accuracy": last.get("accuracy"),
        "format": last.get("format"),
        "kl": last.get("kl"),
        "loss": last.get("loss"),
        "entropy": last.get("entropy"),
        "grad_norm": last.get("grad_norm"),
        "response_length": last.get("response_length/mean"),
        "gen_tokens_per_s": mean("gen_tokens_per_s"),
        "train_tokens_per_s": mean("train_tokens_per_s"),
        "reward_errors": grpo.history.get("reward_errors", {}),
        "prompts_skipped": dict(grpo.prompts.skipped),
    }


def check_cpu_only() -> None:
    """Refuse a CUDA machine in one line: rollouts and batches are built on the CPU and nothing
    moves them to the GPU yet (megatron would run there and fail on the first mixed op). This
    also holds for rollout.backend=vllm: its engine and refit are wired, but GPU GRPO is not."""
    import torch

    if torch.cuda.is_available():
        raise ValueError(
            "posttrain on CUDA is not supported yet (rollouts and batches are built on the CPU); "
            "run on CPU with CUDA_VISIBLE_DEVICES= set empty"
        )


def plan(cfg: GRPOConfig) -> dict[str, Any]:
    """`dry_run=true`: check that the batch splits over the layout of `world_size` ranks
    (default env WORLD_SIZE or 1) without building or reading anything (the prompts may not
    exist yet when a pipeline validates the stage)."""
    import os

    world = cfg.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    data_parallel = cfg.parallel.data_parallel_size(world)
    cfg.check_layout(data_parallel)
    return {
        "dry_run": True,
        "world_size": world,
        "data_parallel": data_parallel,
        "rows_per_step": cfg.rows_per_step,
        "steps": cfg.train.steps,
    }


def run(cfg: GRPOConfig) -> dict[str, Any]:
    """Entry of `python -m posttrain.grpo`: set up, resume, train, write the summary
    (trainer.contract.SUMMARY_FILE in checkpoint.dir)."""
    import torch.distributed as dist
    from tokenizers import Tokenizer

    from posttrain.grpo_step import GRPO
    from posttrain.prompts import load_prompts
    from trainer.callbacks import mlflow_run_id
    from trainer.checkpoint_store import check_dir_usable
    from trainer.features import check_features_supported
    from trainer.parallel import initialize_parallel
    from trainer.precision import check_precision_supported

    tcfg = cfg.trainer_config()
    check_cpu_only()
    check_precision_supported(tcfg.precision)
    check_features_supported(tcfg)
    check_dir_usable(cfg.checkpoint.dir)
    if not Path(cfg.prompts.tokenizer).is_file():
        raise ValueError(f"prompts.tokenizer={cfg.prompts.tokenizer}: no such file")
    tokenizer = Tokenizer.from_file(cfg.prompts.tokenizer)
    prompts = load_prompts(
        cfg.prompts.path,
        tokenizer,
        cfg.prompts.context,
        cfg.prompts.min_response_tokens,
        cfg.prompts.system_prompt,
    )
    layout = initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    grpo = GRPO(cfg, tokenizer, prompts)
    rank = dist.get_rank()
    callbacks = build_callbacks(cfg, rank, grpo.history.get("mlflow_run_id"))
    if cfg.logging.mlflow:
        run_id = [mlflow_run_id(callbacks)]
        dist.broadcast_object_list(run_id, src=0)
        grpo.history["mlflow_run_id"] = run_id[0]
    info = {
        "layout": layout.describe(),
        "resumed_from": grpo.resumed_from,
        "prompts": f"{len(prompts.prompts)} usable, skipped {dict(prompts.skipped)}",
    }
    for cb in callbacks:
        cb.on_train_start(cfg, info)
    summary = fit(cfg, grpo, callbacks)
    for cb in callbacks:
        cb.on_train_end(summary)
    if rank == 0:
        path = Path(cfg.checkpoint.dir) / contract.SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary), file=sys.stdout, flush=True)
    return summary


def _to_config(cfg: Any) -> GRPOConfig:
    from appconf.cli import typed
    from appconf.strict import check_keys

    check_keys(cfg, GRPOConfig, "posttrain.grpo")  # a `+key` the schema lacks is no silent no-op
    return typed(cfg)


def main() -> None:
    import warnings

    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="grpo_schema", node=GRPOConfig)

    conf = str(Path(__file__).resolve().parent.parent / "conf")  # also when called as a function

    @hydra.main(config_path=conf, config_name="grpo", version_base="1.3")
    def app(cfg: Any) -> None:
        from trainer.parallel import destroy_parallel
        from trainer.preemption import EXIT_CODE, TrainingStopped

        warnings.filterwarnings("ignore", module="megatron")
        try:
            config = _to_config(cfg)
            if config.dry_run:
                print(json.dumps(plan(config)), flush=True)
                return
            try:
                run(config)
            except TrainingStopped as stopped:
                print(f"[grpo] {stopped}", flush=True)
                destroy_parallel()
                sys.exit(EXIT_CODE)
            destroy_parallel()
        except ValueError as err:  # bad user input: one clear line, no traceback
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    app()


if __name__ == "__main__":
    main()
