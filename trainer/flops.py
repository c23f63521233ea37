"""Analytical parameter counts and training FLOPs of a DeepSeek-family model.

`param_specs` lists every parameter tensor megatron-core's GPTModel instantiates for a
`ModelConfig` (local spec, no biases, SwiGLU, RMSNorm, MLA with q/kv layernorms), in the order of
`model.named_parameters()`, with how each one is sharded by tensor and expert parallelism. The
memory estimator (`trainer.memory`) lays these out the way megatron's DDP buffers do.

`count_parameters` sums them into total / activated counts with a per-part breakdown.
Conventions (the ones DeepSeek's published figures follow within their rounding):
- total: every parameter instantiated (main model + MTP modules; embedding and output head
  are separate tensors, DeepSeek models do not tie them).
- activated: parameters used to process one token: everything except the routed experts a
  token is not sent to (num_experts - top_k per MoE layer) and except the input-embedding
  table (a row lookup, not a matmul). The output head is counted (a tied table once).

`flops_per_token` is the training cost of one token (forward + backward = 3x forward): 6 FLOPs
per activated matmul weight plus the attention score/value products (causal: half the
sequence on average), MTP modules included because they run every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.config.model import ModelConfig

PARTS = (
    "embedding",
    "attention",
    "norm",
    "dense_mlp",
    "router",
    "routed_experts",
    "shared_experts",
    "output",
)
"""Breakdown keys of ParamCounts.breakdown (MTP parameters are counted in their own parts too,
and additionally summed in ParamCounts.mtp)."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor as megatron-core instantiates it (world size 1)."""

    name: str
    """megatron's parameter name (model.named_parameters())."""
    shape: tuple[int, ...]
    """Full (unsharded) shape."""
    part: str
    """Breakdown key (one of PARTS)."""
    location: str
    """'embedding' (first stage), 'layer' (a decoder layer), 'final' (last stage: final norm and
    output head) or 'mtp' (last stage)."""
    layer: int | None = None
    """Decoder layer index for location='layer'."""
    tp_dim: int | None = None
    """Dimension split across tensor-parallel ranks (None: replicated on every TP rank)."""
    expert: bool = False
    """Routed-expert weight: split across expert-parallel ranks (whole experts)."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def in_mtp(self) -> bool:
        return self.location == "mtp"


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model (see the module docstring for the conventions)."""

    total: int
    """All instantiated parameters, MTP modules included."""
    activated: int
    """Parameters used per token, MTP modules included."""
    embedding: int
    """Input embedding table."""
    output: int
    """Output head."""
    mtp: int
    """Parameters of the MTP modules (they share the embedding and output head)."""
    mtp_activated: int
    """Activated parameters of the MTP modules."""
    breakdown: dict[str, int] = field(default_factory=dict)
    """Total parameters per part (keys: PARTS), MTP included."""

    @property
    def total_without_mtp(self) -> int:
        return self.total - self.mtp

    @property
    def activated_without_mtp(self) -> int:
        return self.activated - self.mtp_activated


# ------------------------------------------------------------------------------------------
# Parameter specs per module


def _attention_specs(cfg: ModelConfig, prefix: str, loc: str, layer: int | None) -> list[ParamSpec]:
    """Self-attention weights in megatron's registration order (tp_dim: 0 column-, 1 row-
    parallel, None replicated; MLA down projections are replicated, as in the TE spec)."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads

    def spec(name: str, shape: tuple[int, ...], tp_dim: int | None) -> ParamSpec:
        return ParamSpec(
            f"{prefix}self_attention.{name}.weight", shape, "attention", loc, layer, tp_dim
        )

    if not cfg.is_mla:
        groups, d = cfg.num_query_groups or heads, cfg.head_dim
        return [
            spec("linear_proj", (h, heads * d), 1),
            spec("linear_qkv", ((heads + 2 * groups) * d, h), 0),
        ]
    q_out = heads * (cfg.qk_head_dim + cfg.qk_pos_emb_head_dim)
    kv_out = heads * (cfg.qk_head_dim + cfg.v_head_dim)
    q_rank, kv_rank = cfg.q_lora_rank, cfg.kv_lora_rank
    specs = [spec("linear_proj", (h, heads * cfg.v_head_dim), 1)]
    if q_rank is None:
        specs.append(spec("linear_q_proj", (q_out, h), 0))
    else:
        specs += [
            spec("linear_q_down_proj", (q_rank, h), None),
            spec("linear_q_up_proj", (q_out, q_rank), 0),
        ]
    specs += [
        spec("linear_kv_down_proj", (kv_rank + cfg.qk_pos_emb_head_dim, h), None),
        spec("linear_kv_up_proj", (kv_out, kv_rank), 0),
    ]
    if q_rank is not None:
        specs.append(spec("q_layernorm", (q_rank,), None))
    specs.append(spec("kv_layernorm", (kv_rank,), None))
    return specs


def _mlp_specs(
    prefix: str, hidden: int, ffn: int, part: str, loc: str, layer: int | None, expert: bool = False
) -> list[ParamSpec]:
    """SwiGLU MLP: fc1 holds gate and up projections (2*ffn x hidden), fc2 is ffn -> hidden."""
    return [
        ParamSpec(f"{prefix}linear_fc1.weight", (2 * ffn, hidden), part, loc, layer, 0, expert),
        ParamSpec(f"{prefix}linear_fc2.weight", (hidden, ffn), part, loc, layer, 1, expert),
    ]


def _moe_specs(cfg: ModelConfig, prefix: str, loc: str, layer: int | None) -> list[ParamSpec]:
    assert cfg.num_experts is not None
    h = cfg.hidden_size
    specs = [ParamSpec(f"{prefix}router.weight", (cfg.num_experts, h), "router", loc, layer)]
    for e in range(cfg.num_experts):
        specs += _mlp_specs(
            f"{prefix}experts.local_experts.{e}.",
            h,
            cfg.moe_ffn_hidden_size,
            "routed_experts",
            loc,
            layer,
            expert=True,
        )
    if cfg.num_shared_experts:
        specs += _mlp_specs(
            f"{prefix}shared_experts.",
            h,
            cfg.shared_expert_ffn_hidden_size,
            "shared_experts",
            loc,
            layer,
        )
    return specs


def _layer_specs(
    cfg: ModelConfig, prefix: str, loc: str, layer: int | None, moe: bool
) -> list[ParamSpec]:
    h = cfg.hidden_size
    specs = [ParamSpec(f"{prefix}input_layernorm.weight", (h,), "norm", loc, layer)]
    specs += _attention_specs(cfg, prefix, loc, layer)
    specs.append(ParamSpec(f"{prefix}pre_mlp_layernorm.weight", (h,), "norm", loc, layer))
    if moe:
        specs += _moe_specs(cfg, f"{prefix}mlp.", loc, layer)
    else:
        specs += _mlp_specs(f"{prefix}mlp.", h, cfg.ffn_hidden_size, "dense_mlp", loc, layer)
    return specs


def _mtp_specs(cfg: ModelConfig, depth: int) -> list[ParamSpec]:
    h, p = cfg.hidden_size, f"mtp.layers.{depth}."
    # The MTP block reuses the spec of the last decoder layer (MoE when the model is MoE).
    last_is_moe = bool(cfg.moe_layer_pattern[-1])
    return [
        ParamSpec(f"{p}enorm.weight", (h,), "norm", "mtp"),
        ParamSpec(f"{p}hnorm.weight", (h,), "norm", "mtp"),
        ParamSpec(f"{p}eh_proj.weight", (h, 2 * h), "attention", "mtp", None, 0),
        *_layer_specs(cfg, f"{p}transformer_layer.", "mtp", None, last_is_moe),
        ParamSpec(f"{p}final_layernorm.weight", (h,), "norm", "mtp"),
    ]


def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
    """Every parameter of the GPTModel built from `cfg`, in megatron's named_parameters order."""
    return list(_cached_specs(repr(cfg), cfg))


_SPEC_CACHE: dict[str, tuple[ParamSpec, ...]] = {}


def _cached_specs(key: str, cfg: ModelConfig) -> tuple[ParamSpec, ...]:
    """Full-size MoE models have ~30k parameter tensors; memory planning asks many times."""
    if key not in _SPEC_CACHE:
        if len(_SPEC_CACHE) > 32:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = tuple(_build_specs(cfg))
    return _SPEC_CACHE[key]


def _build_specs(cfg: ModelConfig) -> list[ParamSpec]:
    h, v = cfg.hidden_size, cfg.vocab_size
    specs = [
        ParamSpec("embedding.word_embeddings.weight", (v, h), "embedding", "embedding", None, 0)
    ]
    for i, is_moe in enumerate(cfg.moe_layer_pattern):
        specs += _layer_specs(cfg, f"decoder.layers.{i}.", "layer", i, bool(is_moe))
    specs.append(ParamSpec("decoder.final_layernorm.weight", (h,), "norm", "final"))
    for depth in range(cfg.mtp_num_layers):
        specs += _mtp_specs(cfg, depth)
    if cfg.untie_embeddings_and_output_weights:
        specs.append(ParamSpec("output_layer.weight", (v, h), "output", "final", None, 0))
    return specs


# ------------------------------------------------------------------------------------------
# Counts and FLOPs


def _inactive_expert_params(cfg: ModelConfig, specs: list[ParamSpec]) -> tuple[int, int]:
    """Routed-expert parameters a token does not use: (main model, MTP)."""
    if cfg.num_experts is None or not cfg.is_moe:
        return 0, 0
    unused = cfg.num_experts - cfg.router_topk
    main = sum(s.numel for s in specs if s.expert and not s.in_mtp)
    mtp = sum(s.numel for s in specs if s.expert and s.in_mtp)
    return main // cfg.num_experts * unused, mtp // cfg.num_experts * unused


def count_parameters(cfg: ModelConfig) -> ParamCounts:
    """Total and activated parameter counts of `cfg` (see the module docstring)."""
    specs = param_specs(cfg)
    breakdown = dict.fromkeys(PARTS, 0)
    for s in specs:
        breakdown[s.part] += s.numel
    total = sum(breakdown.values())
    mtp = sum(s.numel for s in specs if s.in_mtp)
    inactive_main, inactive_mtp = _inactive_expert_params(cfg, specs)
    # The input embedding is a lookup; a tied table is counted once, as the output head.
    lookup = breakdown["embedding"] if cfg.untie_embeddings_and_output_weights else 0
    activated = total - lookup - inactive_main - inactive_mtp
    return ParamCounts(
        total=total,
        activated=activated,
        embedding=breakdown["embedding"],
        output=breakdown["output"],
        mtp=mtp,
        mtp_activated=mtp - inactive_mtp,
        breakdown=breakdown,
    )


def _matmul_params_per_token(cfg: ModelConfig, include_mtp: bool) -> int:
    """Weights multiplied per token (norms and the embedding lookup excluded; the output head
    counted once per prediction depth)."""
    counts = count_parameters(cfg)
    specs = param_specs(cfg)
    norms = sum(s.numel for s in specs if len(s.shape) == 1 and (include_mtp or not s.in_mtp))
    activated = counts.activated if include_mtp else counts.activated_without_mtp
    head = counts.output if cfg.untie_embeddings_and_output_weights else counts.embedding
    if include_mtp:
        activated += cfg.mtp_num_layers * head  # every MTP depth runs the shared output head
    return activated - norms


def attention_flops_per_token(cfg: ModelConfig, seq_length: int, causal: bool = True) -> float:
    """Forward FLOPs of the score (QK^T) and value (PV) products of one token, one layer."""
    heads = cfg.num_attention_heads
    if cfg.is_mla:
        qk_dim, v_dim = cfg.qk_head_dim + cfg.qk_pos_emb_head_dim, cfg.v_head_dim
    else:
        qk_dim = v_dim = cfg.head_dim
    keys = seq_length / 2 if causal else seq_length
    return 2.0 * heads * keys * (qk_dim + v_dim)


def flops_per_token(
    cfg: ModelConfig, seq_length: int, include_mtp: bool = True, causal: bool = True
) -> float:
    """Training FLOPs (forward + backward) per token: 6 x matmul weights + attention products."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    layers = cfg.num_layers + (cfg.mtp_num_layers if include_mtp else 0)
    matmul = 6.0 * _matmul_params_per_token(cfg, include_mtp)
    attention = 3.0 * layers * attention_flops_per_token(cfg, seq_length, causal)
    return matmul + attention
