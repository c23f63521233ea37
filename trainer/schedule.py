"""Learning-rate schedules: linear warmup, then cosine decay or DeepSeek's multi-step schedule.

`lr_at(step, total_steps, cfg)` is a pure function of the optimizer step (0-based: the LR used
by the step that is about to run). `LRScheduler` applies it to an optimizer's param groups and
checkpoints its position with `state_dict` / `load_state_dict`.

Multi-step (DeepSeek-LLM, arXiv 2401.02954 section 2.3): after warmup the LR stays at the peak,
drops to 31.6% of the peak once 80% of the training steps (tokens) are done, and to 10% at 90%.
"""

from __future__ import annotations

import math
from typing import Any

from trainer.config.optim import OptimConfig


def _decay_steps(cfg: OptimConfig, total_steps: int) -> int:
    steps = cfg.decay_steps if cfg.decay_steps is not None else total_steps
    if steps < 1:
        raise ValueError(f"schedule: total/decay steps must be positive, got {steps}")
    return steps


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `total_steps` steps."""
    if step < 0:
        raise ValueError(f"schedule: step must be >= 0, got {step}")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = _decay_steps(cfg, total_steps)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        done = step / decay_steps
        factor = 1.0
        for milestone, milestone_factor in zip(
            cfg.multistep_milestones, cfg.multistep_factors, strict=True
        ):
            if done >= milestone:
                factor = milestone_factor
        return cfg.lr * factor
    span = max(decay_steps - cfg.warmup_steps, 1)
    progress = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRScheduler:
    """Sets `lr_at(step)` on every param group of an optimizer; checkpointable.

    Param groups may carry an `lr_mult` (megatron's optimizer does); the LR is scaled by it.
    """

    def __init__(self, optimizer: Any, cfg: OptimConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.step_count = 0
        self._apply()

    @property
    def lr(self) -> float:
        return lr_at(self.step_count, self.total_steps, self.cfg)

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def step(self) -> None:
        """Advance one optimizer step and set the LR for the next one."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"step_count": self.step_count, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_count = int(state["step_count"])
        self.total_steps = int(state.get("total_steps", self.total_steps))
        self._apply()
