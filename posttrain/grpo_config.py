"""Typed schema of `python -m posttrain.grpo` (conf/grpo.yaml).

The policy's groups are the trainer's own (conf/model, conf/parallel, conf/precision, optim,
checkpoint, logging): `GRPOConfig.trainer_config()` is the TrainerConfig the policy is built
and checkpointed with. The rest says what GRPO adds: prompts, rollouts, loss, rewards, steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from posttrain.grpo_loss import GRPOLossConfig
from posttrain.rewards import RewardConfig
from trainer.config.data import DataConfig
from trainer.config.model import ModelConfig
from trainer.config.optim import OptimConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig
from trainer.config.trainer import (
    CheckpointConfig,
    LoggingConfig,
    ResilienceConfig,
    TrainConfig,
    TrainerConfig,
)

BACKENDS = ("megatron", "vllm")


@dataclass
class PromptsConfig:
    path: str = MISSING
    """Chat JSONL of prompts with gold answers (posttrain.tasks.arithmetic's train.jsonl)."""
    tokenizer: str = MISSING
    """tokenizer.json (data_prep's train_tokenizer output) the policy was trained with."""
    eod_token: str = "<|endoftext|>"
    """The token that ends a response (and pads)."""
    context: int = 256
    """Longest sequence, prompt + response (the policy's data.seq_length)."""
    min_response_tokens: int = 8
    """A prompt leaving less room than this is skipped (`prompt_longer_than_context`)."""
    system_prompt: bool = True
    """Keep the records' system message (false: user message only, shorter prompts)."""

    def __post_init__(self) -> None:
        if self.context < 2 or self.min_response_tokens < 1:
            raise ValueError("prompts config: context >= 2 and min_response_tokens >= 1 needed")


@dataclass
class RolloutConfig:
    backend: str = "megatron"
    """megatron (sampling loop over the policy's forward; CPU or GPU) or vllm (GPU clusters)."""
    prompts_per_step: int = 8
    """Prompts per GRPO step, over all data-parallel ranks (a multiple of DP)."""
    group_size: int = 4
    """Samples per prompt (G), the group its advantages are relative to."""
    max_new_tokens: int = 128
    """Longest response (also cut at prompts.context)."""
    temperature: float = 1.0
    top_p: float = 1.0
    vllm_gpu_memory_utilization: float = 0.3
    """vllm only: share of GPU memory the engine takes beside the training state."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"rollout.backend={self.backend!r}: choose from {list(BACKENDS)}")
        if self.group_size < 2 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError(
                "rollout config: group_size >= 2, prompts_per_step >= 1, max_new_tokens >= 1"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("rollout config: temperature >= 0 and 0 < top_p <= 1 needed")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError("rollout config: 0 < vllm_gpu_memory_utilization <= 1 needed")


@dataclass
class GRPOTrainConfig:
    steps: int = 20
    """GRPO steps (a rollout batch each); resume continues up to this number."""
    updates_per_step: int = 1
    """Optimizer updates per rollout batch (its rows split in this many mini-batches); > 1
    makes the importance ratio and its clipping matter (old log-probs from before the first)."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one rank."""
    seed: int = 1234
    """Seed of the weights (when not init_from), the prompt order and the sampling noise."""
    log_interval: int = 1
    inject_kill_step: int = -1
    """Test only: rank 0 SIGKILLs itself at the start of this step (first attempt only; the
    trainer's resilience.inject_kill_* hook)."""

    def __post_init__(self) -> None:
        for name in ("steps", "updates_per_step", "micro_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"train config: {name} must be >= 1")


def _optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, min_lr=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0)


@dataclass
class GRPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy's architecture (conf/model/*): that of checkpoint.init_from."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Process layout (conf/parallel/*; pipeline and context parallelism are refused for now)."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optim: OptimConfig = field(default_factory=_optim)
    """Optimizer (GRPO default: constant LR 1e-5, no weight decay)."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """checkpoint.init_from: the policy's (and the frozen reference's) starting weights."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dry_run: bool = False
    """Check the config and the layout, print one JSON line, build nothing (the pipeline's
    train kind validates a stage this way)."""
    world_size: int | None = None
    """Dry run only: world size to plan for (default: env WORLD_SIZE or 1)."""

    def __post_init__(self) -> None:
        if self.world_size is not None and self.world_size < 1:
            raise ValueError("grpo: world_size must be >= 1")
        if self.parallel.pipeline_parallel > 1 or self.parallel.context_parallel > 1:
            raise ValueError(
                "grpo: pipeline_parallel > 1 and context_parallel > 1 are not supported yet "
                "(use tensor_parallel, expert_parallel and data parallelism)"
            )
        if self.rollout.backend == "vllm" and (
            self.parallel.tensor_parallel > 1 or self.parallel.expert_parallel > 1
        ):
            raise ValueError(
                "grpo: rollout.backend=vllm refits from a one-process model per rank: "
                "tensor_parallel and expert_parallel must be 1 (use data parallelism)"
            )
        if self.prompts.context > self.model.max_position_embeddings:
            raise ValueError(
                f"grpo: prompts.context={self.prompts.context} exceeds the model's "
                f"max_position_embeddings={self.model.max_position_embeddings}"
            )

    @property
    def rows_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    def check_layout(self, data_parallel: int) -> None:
        """Raise when the batch does not split over `data_parallel` ranks and micro-batches."""
        r, t = self.rollout, self.train
        per_rank = r.prompts_per_step // data_parallel
        rows = per_rank * r.group_size
        if r.prompts_per_step % data_parallel or rows % (t.updates_per_step * t.micro_batch_size):
            raise ValueError(
                f"grpo: rollout.prompts_per_step={r.prompts_per_step} x group_size="
                f"{r.group_size} must split over DP={data_parallel} ranks, "
                f"train.updates_per_step={t.updates_per_step} and micro_batch_size="
                f"{t.micro_batch_size}"
            )

    def trainer_config(self) -> TrainerConfig:
        """The TrainerConfig that builds, optimizes and checkpoints the policy."""
        return TrainerConfig(
            model=self.model,
            parallel=self.parallel,
            precision=self.precision,
            optim=self.optim,
            data=DataConfig(seq_length=self.prompts.context),
            train=TrainConfig(
                steps=self.train.steps,
                global_batch_size=self.rows_per_step // self.train.updates_per_step,
                micro_batch_size=self.train.micro_batch_size,
                seed=self.train.seed,
                eval_interval=0,
                eval_iters=0,
            ),
            checkpoint=self.checkpoint,
            logging=self.logging,
            resilience=ResilienceConfig(
                hang_timeout_s=0,
                straggler_interval=0,
                inject_kill_rank=0 if self.train.inject_kill_step > 0 else -1,
                inject_kill_step=self.train.inject_kill_step,
            ),
        )
