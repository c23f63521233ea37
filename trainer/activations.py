"""Activation memory: what autograd saves for backward, per micro-batch, with or without recompute.

An inventory of the tensors each megatron-core 0.16 layer saves (`layer_saved`), in elements per
token, each tagged with the selective-recompute modules that drop it; measured against the
storages a CPU run saves (trainer.memory_measure.saved_activation_bytes on the tiny configs,
megatron's local layers: tests/trainer/test_recompute.py). The GPU path (`flash_attention`:
Transformer Engine's fused attention and norms, megatron's fused SwiGLU) differs where those
kernels save less; that part follows their source and is not measured here.
What each recompute option keeps:
- selective: a region run under megatron's `tensor_parallel.checkpoint` (core_attn, mlp, moe,
  shared_experts) saves only its inputs, which the layer saves anyway except for GQA's key/value
  (saved before their expansion to all heads); a `CheckpointWithoutOutput` region (layernorm,
  mla_up_proj) also frees its outputs, which the next ops had saved, and restores them in backward;
- full: each checkpointed group of layers (uniform: `num_layers` consecutive layers; block: the
  first `num_layers` layers of a stage, one by one) saves only its input hidden states; an MTP
  layer saves its two inputs (uniform only: megatron skips MTP under block).
During backward a recomputed unit lives again until its backward is done: one side of a layer
(its MLP-side or attention-side selected modules) under selective, a whole group under full.
The largest is `ActivationBytes.recompute_transient` (MemoryEstimate.recompute_transient, part
of the total), measured by trainer.memory_measure.recompute_peak_bytes, not by the saved bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig
from trainer.config.recompute import RecomputeConfig
from trainer.pp_layout import Stage, pipeline_stages

FP32 = 4


@dataclass(frozen=True)
class Saved:
    """Tensors one layer saves for backward."""

    what: str
    elems: float
    """Elements per token of this rank's micro-batch."""
    dropped_by: tuple[str, ...] = ()
    """Selective recompute modules that drop them, outermost first."""
    dtype_bytes: int | None = None
    """Bytes per element; None = the model's dtype (router and logits work in fp32)."""
    added_by: tuple[str, ...] = ()
    """Saved only when one of these modules is recomputed (a checkpoint's own inputs)."""


@dataclass(frozen=True)
class Shape:
    """Per-rank sizes an inventory needs."""

    seq: int
    micro_batch: int
    tp: int
    sp: bool
    etp: int
    """Expert tensor-parallel size."""
    flash: bool
    """megatron's GPU path with Transformer Engine: fused attention (no probabilities), fused
    SwiGLU, TE norms (no normalised copy); False = the local layers that run on CPU."""

    @property
    def sp_div(self) -> int:
        """Divisor of tensors outside the TP region (sharded along the sequence under SP)."""
        return self.tp if self.sp else 1


def _norm(h: int, d: Shape, what: str) -> list[Saved]:
    """An RMSNorm: its input, then rstd, the normalised input (torch's norm only) and the output
    (which the next linear layers save), which megatron's `layernorm` recompute frees."""
    internals = h + 1 if d.flash else 2 * h + 1
    return [
        Saved(f"{what} input", h / d.sp_div),
        Saved(f"{what} rstd, (normalised,) output", internals / d.sp_div, ("layernorm",)),
    ]


def _mla(cfg: ModelConfig, d: Shape) -> list[Saved]:
    n, qk, v = cfg.num_attention_heads, cfg.qk_head_dim, cfg.v_head_dim
    rope = cfg.qk_pos_emb_head_dim
    out = []
    if cfg.q_lora_rank:  # q_layernorm input, rstd, normalised; q_up_proj input
        out.append(Saved("q latent and its norm", 3 * cfg.q_lora_rank + 1))
    out += [
        Saved("kv latent (+ rope key) and its norm", 3 * cfg.kv_lora_rank + rope + 1),
        Saved("rope cos/sin", 4 * rope / d.micro_batch, ("mla_up_proj",)),
        Saved("q, k, v (up-projected, rope)", n * (2 * (qk + rope) + v) / d.tp, ("mla_up_proj",)),
    ]
    return out


def _gqa(cfg: ModelConfig, d: Shape) -> list[Saved]:
    n, hd = cfg.num_attention_heads, cfg.head_dim
    g = cfg.num_query_groups or n
    out = [Saved("rope cos/sin", 4 * hd / d.micro_batch)]
    if d.flash:
        return out + [Saved("q, k, v", (n + 2 * g) * hd / d.tp)]
    # The local attention saves q and k, v expanded to every head. Recomputed, its inputs are
    # saved instead: q, k, and v, a view of the fused qkv output (which keeps all of it).
    return out + [
        Saved("q, k, v as the local attention saves them", 3 * n * hd / d.tp, ("core_attn",)),
        Saved(
            "q, k and the qkv output (recompute inputs)",
            (2 * n + 3 * g) * hd / d.tp,
            added_by=("core_attn",),
        ),
    ]


def _attention(cfg: ModelConfig, d: Shape) -> list[Saved]:
    n = cfg.num_attention_heads
    v = cfg.v_head_dim if cfg.is_mla else cfg.head_dim
    out = _norm(cfg.hidden_size, d, "input norm")
    out += _mla(cfg, d) if cfg.is_mla else _gqa(cfg, d)
    if not d.flash:  # fused attention saves no s x s probabilities
        out.append(Saved("softmax probabilities", n * d.seq / d.tp, ("core_attn",)))
    out.append(Saved("context (linear_proj input)", n * v / d.tp))
    return out


def _moe(cfg: ModelConfig, d: Shape) -> list[Saved]:
    """Router, dispatch and experts. Each TP rank routes its sequence shard (SP); an expert
    tensor-parallel group gathers its ranks' tokens and splits the experts' FFN width by ETP."""
    assert cfg.num_experts is not None
    e, k, h, f = cfg.num_experts, cfg.router_topk, cfg.hidden_size, cfg.moe_ffn_hidden_size
    router = 2 * e + 4 * k + (2 * e if cfg.router_num_groups else 0)
    routed = k * d.etp / d.sp_div  # routed token copies per token of the full sequence
    out = [
        Saved("router logits, scores, top-k", router / d.sp_div, ("moe",), FP32),
        Saved("routing map and indices", (1.25 * e + 2 * k) / d.sp_div, ("moe",), FP32),
        Saved("dispatched tokens", routed * h, ("moe",)),
        Saved("routed probs", routed, ("moe",), FP32),
        Saved("routed experts' fc1 output", routed * 2 * f / d.etp, ("moe",)),
        # fc2 input, and unfused SwiGLU's silu, product and prob-weighted output: moe_act's
        # region (it needs grouped-GEMM experts, not on CPU: not measured)
        Saved(
            "routed experts' activation",
            routed * (1 if d.flash else 4) * f / d.etp,
            ("moe", "moe_act"),
        ),
    ]
    if cfg.num_shared_experts:
        shared = _ffn(d) * cfg.shared_expert_ffn_hidden_size / d.tp
        out.append(Saved("shared experts' FFN", shared, ("moe", "shared_experts")))
    return out


def layer_saved(cfg: ModelConfig, d: Shape, moe: bool) -> list[Saved]:
    """What one transformer layer saves without recompute (elements per token)."""
    out = _attention(cfg, d) + _norm(cfg.hidden_size, d, "pre-MLP norm")
    if moe:
        return out + _moe(cfg, d)
    return out + [Saved("dense FFN", _ffn(d) * cfg.ffn_hidden_size / d.tp, ("mlp",))]


def _ffn(d: Shape) -> int:
    """Saved elements per FFN width: fc1 output (gate and up) and fc2 input, plus unfused
    SwiGLU's silu output and product (megatron's fused bias_swiglu saves only its input)."""
    return 3 if d.flash else 5


def _bytes(items: list[Saved], tokens: int, dtype_bytes: int) -> float:
    """Bytes of the items saved without recompute."""
    return sum(s.elems * (s.dtype_bytes or dtype_bytes) for s in items if not s.added_by) * tokens


def _owner(modules: tuple[str, ...], selected: frozenset[str]) -> str | None:
    return next((m for m in modules if m in selected), None)


def _selective(
    items: list[Saved], selected: frozenset[str], tokens: int, dtype_bytes: int
) -> tuple[float, dict[str, float]]:
    """Saved bytes under selective recompute, and the bytes each module keeps out (what it
    drops less what its checkpoint saves instead; nested modules: the outer one)."""
    saved, by_module = 0.0, {}
    for s in items:
        nbytes = s.elems * (s.dtype_bytes or dtype_bytes) * tokens
        dropper, adder = _owner(s.dropped_by, selected), _owner(s.added_by, selected)
        if s.added_by and adder is None:
            continue
        if adder is not None:
            by_module[adder] = by_module.get(adder, 0.0) - nbytes
        if dropper is not None:
            by_module[dropper] = by_module.get(dropper, 0.0) + nbytes
        else:
            saved += nbytes
    return saved, by_module


@dataclass
class StageActivations:
    """Saved bytes of one model chunk for one micro-batch."""

    saved: float = 0.0
    by_recompute: dict[str, float] | None = None
    """Bytes recompute removed, per selective module (or `full`)."""
    transient: float = 0.0
    """Largest recomputed unit, rebuilt during backward."""

    def add_dropped(self, module: str, nbytes: float) -> None:
        self.by_recompute = self.by_recompute or {}
        self.by_recompute[module] = self.by_recompute.get(module, 0.0) + nbytes


def _layers_in_full_groups(recompute: RecomputeConfig, num_layers: int) -> list[list[int]]:
    """Positions (within a chunk) of the layers of each checkpointed group."""
    n = recompute.full_num_layers
    if recompute.full_method == "uniform":
        return [list(range(i, min(i + n, num_layers))) for i in range(0, num_layers, n)]
    return [[i] for i in range(min(n, num_layers))]


def _decoder(
    cfg: ModelConfig, stage: Stage, d: Shape, dbytes: int, recompute: RecomputeConfig
) -> StageActivations:
    tokens = d.seq * d.micro_batch
    pattern = cfg.moe_layer_pattern
    layers = [layer_saved(cfg, d, bool(pattern[i])) for i in stage.layers]
    out = StageActivations()
    if recompute.granularity == "full":
        grouped = _layers_in_full_groups(recompute, len(layers))
        in_group = {i for g in grouped for i in g}
        kept = [_bytes(x, tokens, dbytes) for i, x in enumerate(layers) if i not in in_group]
        group_input = cfg.hidden_size / d.sp_div * tokens * dbytes
        full = sum(_bytes(layers[i], tokens, dbytes) for g in grouped for i in g)
        out.saved = sum(kept) + len(grouped) * group_input
        if grouped:
            out.add_dropped("full", full - len(grouped) * group_input)
        sizes = [sum(_bytes(layers[i], tokens, dbytes) for i in g) for g in grouped]
        out.transient = max(sizes, default=0.0)
        return out
    for items in layers:
        saved, by_module = _selective(items, recompute.selected, tokens, dbytes)
        for module, nbytes in by_module.items():
            out.add_dropped(module, nbytes)
        out.saved += saved
        out.transient = max(out.transient, _rebuilt(items, recompute.selected, tokens, dbytes))
    return out


def _rebuilt(items: list[Saved], selected: frozenset[str], tokens: int, dbytes: int) -> float:
    """Bytes the selected modules of one layer rebuild at once during its backward: the MLP
    side (pre-MLP norm, mlp/moe/shared experts) is recomputed and released before the attention
    side (input norm, MLA up-projection, core attention), whose parts are alive together (the
    up-projection's outputs are restored before core attention is recomputed)."""
    sides = {"attention": 0.0, "mlp": 0.0}
    for s in items:
        module = _owner(s.dropped_by, selected)
        if module is None:
            continue
        attention = module in ("core_attn", "mla_up_proj") or s.what.startswith("input norm")
        sides["attention" if attention else "mlp"] += _bytes([s], tokens, dbytes)
    return max(sides.values())


def _heads(
    cfg: ModelConfig, stage: Stage, d: Shape, dbytes: int, recompute: RecomputeConfig
) -> StageActivations:
    """Output heads (final norm, output layer input, fp32 logits) and MTP modules."""
    tokens, h = d.seq * d.micro_batch, cfg.hidden_size
    heads = int(stage.last) + (cfg.mtp_num_layers if stage.mtp else 0)
    head = (2 * h + 1 + h) * dbytes + cfg.vocab_size / d.tp * FP32
    out = StageActivations(saved=heads * tokens * head)
    if not stage.mtp:
        return out
    mtp_layer = Stage((cfg.num_layers - 1,), embedding=False, mtp=False, last=False, first=False)
    # enorm and hnorm (input, rstd, normalised), the concatenation eh_proj saves
    extras = (2 * (2 * h + 1) + 2 * h) * tokens * dbytes
    if recompute.granularity == "full" and recompute.full_method == "uniform":
        layer = _decoder(cfg, mtp_layer, d, dbytes, RecomputeConfig())
        inputs = 2 * h * tokens * dbytes  # hidden states and the shifted tokens' embedding
        out.saved += cfg.mtp_num_layers * inputs
        out.add_dropped("full", cfg.mtp_num_layers * (layer.saved + extras - inputs))
        out.transient = layer.saved + extras
        return out
    layer = _decoder(cfg, mtp_layer, d, dbytes, _no_full(recompute))
    out.saved += cfg.mtp_num_layers * (layer.saved + extras)
    for module, nbytes in (layer.by_recompute or {}).items():
        out.add_dropped(module, cfg.mtp_num_layers * nbytes)
    out.transient = layer.transient
    return out


def _no_full(recompute: RecomputeConfig) -> RecomputeConfig:
    """megatron skips MTP layers under full block recompute."""
    return RecomputeConfig() if recompute.granularity == "full" else recompute


def inflight_microbatches(
    pp: int, vpp: int | None, pp_rank: int, num_microbatches: int, a2a_overlap: bool = False
) -> float:
    """Micro-batches whose activations a rank holds at peak, in units of its full stage.

    With the EP all-to-all overlap (megatron's combined 1F1B) each steady-state step runs the
    forward of one more (virtual-stage) micro-batch before the backward it overlaps with, so
    one more chunk's activations are alive at the peak."""
    extra = int(a2a_overlap)
    if vpp is None:
        return min(num_microbatches, pp - pp_rank + extra)
    warmup = (pp - pp_rank - 1) * 2 + (vpp - 1) * pp + 1 + extra
    return min(num_microbatches * vpp, warmup) / vpp


@dataclass(frozen=True)
class ActivationBytes:
    """Activation memory of one pipeline rank."""

    saved: int
    """Saved for backward, all in-flight micro-batches."""
    saved_by_recompute: dict[str, int]
    """Bytes recompute removed from `saved`, per selective module (or `full`)."""
    recompute_transient: int
    """Largest recomputed unit, rebuilt during backward (0 without recompute)."""


def rank_activations(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_cfg: PrecisionConfig,
    pp_rank: int,
    micro_batch_size: int,
    seq_length: int,
    num_microbatches: int,
    flash_attention: bool = True,
    recompute: RecomputeConfig | None = None,
) -> ActivationBytes:
    """Activation memory of pipeline rank `pp_rank` (all its chunks, micro-batches in flight)."""
    recompute = recompute or RecomputeConfig()
    pp, vpp = parallel_cfg.pipeline_parallel, parallel_cfg.virtual_pipeline_parallel
    stages = pipeline_stages(model_cfg, parallel_cfg)
    if getattr(parallel_cfg, "pipeline_layout", None):
        vpp = len(stages[0]) if len(stages[0]) > 1 else None
    d = Shape(
        seq=seq_length // parallel_cfg.context_parallel,
        micro_batch=micro_batch_size,
        tp=parallel_cfg.tensor_parallel,
        sp=parallel_cfg.sequence_parallel,
        etp=parallel_cfg.expert_tensor_parallel_size,
        flash=flash_attention,
    )
    dbytes = precision_cfg.param_bytes
    saved, transient = 0.0, 0.0
    dropped = dict.fromkeys(sorted(recompute.selected), 0.0)  # 0 shows a module saving nothing
    for stage in stages[pp_rank]:
        for part in (
            _decoder(model_cfg, stage, d, dbytes, recompute),
            _heads(model_cfg, stage, d, dbytes, recompute),
        ):
            saved += part.saved
            transient = max(transient, part.transient)
            for module, nbytes in (part.by_recompute or {}).items():
                dropped[module] = dropped.get(module, 0.0) + nbytes
    inflight = inflight_microbatches(
        pp, vpp, pp_rank, num_microbatches, parallel_cfg.moe_a2a_overlap
    )
    return ActivationBytes(
        int(saved * inflight),
        {m: int(b * inflight) for m, b in dropped.items()},
        int(transient),
    )
