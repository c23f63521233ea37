"""Typed schema of the optimizer and learning-rate schedule (the `optim:` config group).

AdamW with gradient clipping; LR warmup followed by cosine decay or DeepSeek's multi-step
schedule (DeepSeek-LLM: the LR drops to 31.6% of the peak after 80% of the training tokens and
to 10% after 90%). `trainer.schedule.lr_at` evaluates the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A str field checked in __post_init__ (OmegaConf does not accept typing.Literal).
SCHEDULES = ("cosine", "multistep", "constant")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate (reached at the end of warmup)."""
    min_lr: float = 3e-4
    """Final learning rate of the cosine schedule (ignored by multistep/constant)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW beta1, beta2 (DeepSeek: 0.9, 0.95)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (DeepSeek: 0.1)."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping threshold (0 = no clipping)."""
    warmup_steps: int = 10
    """Linear warmup steps from 0 to lr (DeepSeek-LLM: 2000)."""
    schedule: str = "cosine"
    """Decay after warmup: cosine to min_lr, multistep (DeepSeek), or constant."""
    decay_steps: int | None = None
    """Steps over which the decay runs (warmup included); None = the run's total train steps."""
    multistep_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    """multistep: fractions of the decay steps at which the LR drops."""
    multistep_factors: list[float] = field(default_factory=lambda: [0.316, 0.1])
    """multistep: LR as a fraction of the peak after each milestone."""

    def __post_init__(self) -> None:
        _require(
            self.schedule in SCHEDULES,
            f"schedule={self.schedule!r} is not one of {list(SCHEDULES)}",
        )
        _require(self.lr > 0, f"lr must be positive, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, "min_lr must be in [0, lr]")
        _require(len(self.betas) == 2, f"betas needs two values, got {list(self.betas)}")
        _require(all(0 <= b < 1 for b in self.betas), "betas must be in [0, 1)")
        _require(self.eps > 0, "eps must be positive")
        _require(self.weight_decay >= 0, "weight_decay must be >= 0")
        _require(self.clip_grad >= 0, "clip_grad must be >= 0 (0 = off)")
        _require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _require(self.decay_steps is None or self.decay_steps > 0, "decay_steps must be > 0")
        milestones, factors = list(self.multistep_milestones), list(self.multistep_factors)
        _require(
            len(milestones) == len(factors),
            "multistep_milestones and multistep_factors must have the same length",
        )
        _require(
            all(0 < m < 1 for m in milestones) and milestones == sorted(milestones),
            "multistep_milestones must be increasing fractions in (0, 1)",
        )
        _require(all(0 < f <= 1 for f in factors), "multistep_factors must be in (0, 1]")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"optim config: {message}")
