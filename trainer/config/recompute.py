"""Typed schema of activation recompute (the `recompute:` group of conf/recompute/*.yaml).

megatron-core's activation checkpointing: `selective` recomputes the listed submodules of every
transformer layer during backward, `full` saves only the input of each layer (or of each group
of `num_layers` layers) and recomputes the whole layer. `trainer.model` turns this into the
TransformerConfig's recompute_* arguments; `trainer.memory.activation_bytes` models what each
choice saves. `check_recompute_for_model` refuses modules the model does not have.

    python -m trainer recompute=selective 'recompute.modules=[mla_up_proj,mlp]'
    python -m trainer recompute=full recompute.num_layers=2
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig

GRANULARITIES = ("none", "selective", "full")
METHODS = ("uniform", "block")
MODULES = ("core_attn", "mla_up_proj", "layernorm", "mlp", "moe", "moe_act", "shared_experts")
"""megatron-core 0.16's selective recompute modules (TransformerConfig.recompute_modules)."""


@dataclass
class RecomputeConfig:
    granularity: str = "none"
    """none (save every activation), selective (recompute `modules` of each layer) or full
    (save each layer's input, recompute the layer in backward)."""
    modules: list[str] = field(default_factory=lambda: ["core_attn"])
    """selective only: core_attn (attention scores), mla_up_proj (MLA q/kv up-projections and
    RoPE), layernorm (input and pre-MLP norms), mlp (dense FFN), moe (the whole MoE layer),
    shared_experts (MoE shared experts), moe_act (the routed experts' activation; needs
    Transformer Engine's grouped-GEMM experts, so not on CPU)."""
    method: str | None = None
    """full only: uniform (checkpoint groups of `num_layers` consecutive layers, saving each
    group's input) or block (checkpoint the first `num_layers` layers of each pipeline stage,
    keep the rest); None = uniform."""
    num_layers: int | None = None
    """full only: layers per checkpointed group (uniform) or layers checkpointed per pipeline
    stage (block); None = 1."""

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"recompute config: granularity={self.granularity!r} is not one of "
                f"{list(GRANULARITIES)}"
            )
        unknown = [m for m in self.modules if m not in MODULES]
        if unknown:
            raise ValueError(
                f"recompute config: unknown modules {unknown}; choose from {list(MODULES)}"
            )
        if self.granularity == "selective" and not self.modules:
            raise ValueError("recompute config: selective recompute needs at least one module")
        if self.granularity != "full" and (self.method, self.num_layers) != (None, None):
            raise ValueError("recompute config: method and num_layers apply to granularity=full")
        if self.method not in METHODS + (None,):
            raise ValueError(
                f"recompute config: method={self.method!r} is not one of {list(METHODS)}"
            )
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError("recompute config: num_layers must be >= 1")

    @property
    def selected(self) -> frozenset[str]:
        """The selective modules in effect (empty unless granularity is selective)."""
        return frozenset(self.modules) if self.granularity == "selective" else frozenset()

    @property
    def full_method(self) -> str:
        return self.method or "uniform"

    @property
    def full_num_layers(self) -> int:
        return self.num_layers or 1


def check_recompute_for_model(
    recompute: RecomputeConfig,
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig | None = None,
) -> None:
    """Refuse recompute choices this model (or megatron with our layer specs) cannot run.
    moe_act also needs grouped-GEMM experts, i.e. Transformer Engine: checked where the model
    is built (trainer.model.build_transformer_config)."""
    selected = recompute.selected
    if "mla_up_proj" in selected and not model.is_mla:
        raise ValueError(f"recompute: mla_up_proj needs MLA attention; {model.name} has none")
    for name in ("moe", "moe_act", "shared_experts"):
        if name in selected and not model.is_moe:
            raise ValueError(f"recompute: {name} needs an MoE model; {model.name} is dense")
    if "shared_experts" in selected and not model.num_shared_experts:
        raise ValueError(f"recompute: shared_experts, but {model.name} has no shared experts")
    if precision is not None and precision.fp8_recipe == "delayed":
        if selected & {"layernorm", "moe_act"}:
            raise ValueError(
                "recompute: layernorm and moe_act recompute do not work with the fp8 delayed "
                "recipe (megatron-core); use another recipe or other modules"
            )
    if recompute.granularity == "full" and recompute.full_method == "uniform":
        _check_uniform_groups(recompute.full_num_layers, model, parallel)


def _check_uniform_groups(group: int, model: ModelConfig, parallel: ParallelConfig) -> None:
    from trainer.pp_layout import pipeline_stages

    if model.mtp_num_layers and group != 1:
        raise ValueError(
            "recompute: uniform full recompute of a model with MTP needs num_layers=1 "
            "(megatron recomputes each MTP layer alone)"
        )
    sizes = {len(s.layers) for rank in pipeline_stages(model, parallel) for s in rank}
    if any(n % group for n in sizes if n):
        raise ValueError(
            f"recompute: uniform num_layers={group} must divide the layers of every pipeline "
            f"stage ({sorted(sizes)})"
        )
