"""Typed schema of the optimizer and learning-rate schedule (the `optim:` config group).

AdamW with gradient clipping; LR warmup followed by cosine decay or DeepSeek's multi-step
schedule (DeepSeek-LLM: the LR drops to 31.6% of the peak after 80% of the training tokens and
to 10% after 90%). `trainer.schedule.lr_at` evaluates the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# str fields checked in __post_init__ (OmegaConf does not accept typing.Literal).
SCHEDULES = ("cosine", "multistep", "constant")
STATE_DTYPES = ("fp32", "bf16", "fp16", "fp8")
"""Adam moment dtypes of the precision-aware optimizer (fp8 = TE's uint8 E4M3 tensors)."""
MASTER_DTYPES = ("fp32", "fp16")
STATE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


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
    precision_aware: bool = False
    """megatron-core's precision-aware optimizer (Transformer Engine's FusedAdam keeps the
    states in the dtypes below). Needs the distributed optimizer, a bf16/fp16 model and TE;
    refused otherwise. The published DeepSeek-V3 H100 recipe: bf16 moments, fp32 master."""
    exp_avg_dtype: str = "fp32"
    """Adam first moment: fp32, bf16, fp16 or fp8 (non-fp32 needs precision_aware)."""
    exp_avg_sq_dtype: str = "fp32"
    """Adam second moment: fp32, bf16, fp16 or fp8 (non-fp32 needs precision_aware)."""
    main_params_dtype: str = "fp32"
    """Master weights: fp32 or fp16 (fp16 needs precision_aware; TE keeps a scale)."""
    store_param_remainders: bool = True
    """precision_aware with a bf16 model and fp32 master weights: keep only the 16 low bits
    of each fp32 master weight (the high 16 are the bf16 weight itself; TE >= 2.1)."""

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
        for name in ("exp_avg_dtype", "exp_avg_sq_dtype"):
            value = getattr(self, name)
            _require(value in STATE_DTYPES, f"{name}={value!r} is not one of {list(STATE_DTYPES)}")
        _require(
            self.main_params_dtype in MASTER_DTYPES,
            f"main_params_dtype={self.main_params_dtype!r} is not one of {list(MASTER_DTYPES)}",
        )
        if not self.precision_aware:
            for name in ("exp_avg_dtype", "exp_avg_sq_dtype", "main_params_dtype"):
                _require(
                    getattr(self, name) == "fp32",
                    f"{name}={getattr(self, name)} needs precision_aware=true (megatron-core "
                    "keeps optimizer states in fp32 otherwise)",
                )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"optim config: {message}")
