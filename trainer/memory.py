"""Memory per GPU of a training layout: weights, gradients, optimizer states, activations.

Weights, gradients and optimizer states follow megatron-core's allocations exactly (checked
against the bytes a CPU run allocates for the tiny configs in tests/trainer/test_memory.py):
- every model chunk (virtual pipeline stage) is one DDP instance with one contiguous gradient
  buffer per kind (dense params; expert params get their own buffer when EP > 1). With the
  distributed optimizer the weights live in a parameter buffer too, each parameter starts at a
  multiple of 64 elements and every bucket is padded to a multiple of lcm(DP, 128);
- the optimizer (Adam) keeps fp32 master weights when the model is not fp32, exp_avg and
  exp_avg_sq in fp32, and torch's per-tensor fp32 `step` counter; the distributed optimizer
  keeps these only for this rank's 1/DP shard of each buffer. The precision-aware optimizer
  (Transformer Engine's FusedAdam, `optim.precision_aware`) keeps the moments in their
  configured dtypes (plus one fp32 scale per tensor when not fp32), the master weights as 16-bit
  remainders of the bf16 weights (`store_param_remainders`) or in `main_params_dtype`, and one
  step counter per parameter group (a Python int); see `optimizer_bytes_per_element`;
- FP8 weights (`precision.fp8_param`) are uint8 in their own DDP buffer (megatron groups
  buffers by dtype): the GEMM weights of the decoder layers and MTP; norms, router, embedding
  and output head stay in the model dtype.
Activations are an analytical estimate (saved tensors of one micro-batch per layer, times the
micro-batches a pipeline schedule keeps in flight), with or without activation recompute; see
trainer/activations.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trainer.activations import rank_activations
from trainer.config.model import ModelConfig
from trainer.config.optim import STATE_BYTES, OptimConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig
from trainer.config.recompute import RecomputeConfig
from trainer.flops import ParamSpec, param_specs
from trainer.pp_layout import pipeline_stages

DEFAULT_BUCKET_SIZE = 40_000_000
"""megatron DDP's default bucket size (elements) when grads are reduced during backward."""


@dataclass(frozen=True)
class LocalParam:
    """A parameter as one rank holds it."""

    name: str
    numel: int
    expert_buffer: bool
    """Lives in the expert-parallel DDP buffer (routed expert weight with EP > 1)."""
    shared_embedding: bool = False
    """megatron's `shared_embedding` attribute (gets its own bucket under the dist. optimizer)."""
    fp8: bool = False
    """Stored as FP8 (uint8) with precision.fp8_param: its own DDP buffer."""


@dataclass
class MemoryEstimate:
    """Bytes per GPU on the most loaded rank of a layout."""

    weights: int
    """Model parameters (the DDP parameter buffer under the distributed optimizer)."""
    grads: int
    """megatron's main_grad buffers."""
    optimizer: int
    """fp32 master weights (non-fp32 models) + Adam exp_avg/exp_avg_sq + step counters."""
    activations: int
    """Activations saved for backward by the micro-batches in flight (estimate, after
    recompute)."""
    pipeline_rank: int
    """Pipeline rank this estimate is for (the one with the largest total)."""
    per_pipeline_rank: list[int] = field(default_factory=list)
    """Total bytes of every pipeline rank."""
    num_params: int = 0
    """Parameters held by this rank (after TP/PP/EP sharding)."""
    activation_saved_by_recompute: dict[str, int] = field(default_factory=dict)
    """Bytes that recompute keeps out of `activations`, per selective module (`core_attn`,
    `mlp`, ...) or `full`; empty without recompute. A tensor that nested modules both drop
    (shared experts inside `moe`) counts for the outer one."""
    recompute_transient: int = 0
    """Activations one recomputed unit (a layer's selected modules, or a full-recompute group of
    layers) rebuilds during backward, for one micro-batch; part of `total`."""

    @property
    def static(self) -> int:
        """Weights + gradients + optimizer states."""
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.static + self.activations + self.recompute_transient


# ------------------------------------------------------------------------------------------
# Which parameters a rank holds


def _local_numel(spec: ParamSpec, tp: int) -> int:
    """Elements on one rank; `tp` is the tensor-parallel size of the spec's group (ETP for
    routed experts)."""
    numel = spec.numel
    if spec.tp_dim is not None:
        if spec.shape[spec.tp_dim] % tp:
            raise ValueError(f"{spec.name}: dim {spec.shape[spec.tp_dim]} not divisible by TP {tp}")
        numel //= tp
    return numel


GEMM_PARTS = ("attention", "dense_mlp", "routed_experts", "shared_experts")


def is_fp8_weight(spec: ParamSpec, model_cfg: ModelConfig, precision: PrecisionConfig) -> bool:
    """A weight megatron keeps in FP8 under precision.fp8_param: a 2-D GEMM weight of a decoder
    layer or MTP block (Transformer Engine linears), not in a bf16 first/last layer."""
    if not precision.fp8_param or spec.part not in GEMM_PARTS or len(spec.shape) != 2:
        return False
    bf16_layers = (0, model_cfg.num_layers - 1) if precision.first_last_layers_bf16 else ()
    return spec.layer not in bf16_layers


def _expert_index(spec: ParamSpec) -> int:
    return int(spec.name.split("local_experts.")[1].split(".")[0])


def rank_params(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    pp_rank: int,
    chunk: int,
    precision: PrecisionConfig | None = None,
) -> list[LocalParam]:
    """Parameters of one model chunk on pipeline rank `pp_rank` (expert-parallel rank 0),
    in megatron's named_parameters order. The MTP stage keeps a copy of the embedding table
    (and a tied model's last stage one of the output head), marked `shared_embedding` like
    megatron. `precision` marks FP8 weights (None: none are)."""
    stage = pipeline_stages(model_cfg, parallel_cfg)[pp_rank][chunk]
    pp, tp, ep = (
        parallel_cfg.pipeline_parallel,
        parallel_cfg.tensor_parallel,
        parallel_cfg.expert_parallel,
    )
    etp = parallel_cfg.expert_tensor_parallel_size
    tied = not model_cfg.untie_embeddings_and_output_weights
    experts_per_rank = (model_cfg.num_experts or 0) // ep
    out = []
    for spec in param_specs(model_cfg):
        keep = {
            "layer": spec.layer in stage.layers,
            "final": stage.last,
            "mtp": stage.mtp,
            "embedding": stage.embedding or stage.mtp,
        }[spec.location]
        if not keep or (spec.expert and _expert_index(spec) >= experts_per_rank):
            continue  # this EP rank holds experts [0, E/EP)
        shared = spec.location == "embedding" and pp > 1 and (model_cfg.mtp_num_layers > 0 or tied)
        numel = _local_numel(spec, etp if spec.expert else tp)
        fp8 = precision is not None and is_fp8_weight(spec, model_cfg, precision)
        out.append(LocalParam(spec.name, numel, spec.expert and ep > 1, shared, fp8))
    if stage.last and not stage.embedding and not stage.mtp and tied:
        vocab = model_cfg.vocab_size // tp * model_cfg.hidden_size
        out.append(LocalParam("output_layer.weight", vocab, False, shared_embedding=True))
    return out


# ------------------------------------------------------------------------------------------
# DDP buffers and optimizer shards


def _ceil_to(n: int, divisor: int) -> int:
    return -(-n // divisor) * divisor


@dataclass(frozen=True)
class BufferLayout:
    """Where megatron's _ParamAndGradBuffer puts each parameter."""

    numel: int
    """Buffer size in elements, padding included."""
    ranges: list[tuple[int, int]]
    """(start, end) of every parameter, in the order of the params list given."""
    buckets: list[tuple[int, int]]
    """(start, end) of every bucket (padded)."""


def buffer_layout(
    params: list[LocalParam], dp: int, distributed_optimizer: bool, bucket_size: int | None
) -> BufferLayout:
    """Simulate megatron's _ParamAndGradBuffer index computation (distributed_data_parallel
    fills the buffer in reverse parameter order, i.e. roughly backprop order)."""
    ranges: dict[int, tuple[int, int]] = {}
    buckets: list[tuple[int, int]] = []
    divisor = math.lcm(dp, 128)
    start = bucket_start = end = 0
    open_bucket = False

    def close(bucket_end: int) -> int:
        nonlocal bucket_start, open_bucket
        if distributed_optimizer:
            bucket_end = _ceil_to(bucket_end, divisor)
        buckets.append((bucket_start, bucket_end))
        bucket_start, open_bucket = bucket_end, False
        return bucket_end

    for i in reversed(range(len(params))):
        p = params[i]
        if distributed_optimizer:
            start = _ceil_to(start, 64)
        own_bucket = p.shared_embedding and distributed_optimizer
        if own_bucket and open_bucket:
            start = close(start)
        end = start + p.numel
        ranges[i] = (start, end)
        open_bucket = True
        if (bucket_size is not None and end - bucket_start >= bucket_size) or own_bucket:
            start = close(end)
        else:
            start = end
    if open_bucket:
        close(end)
    numel = buckets[-1][1] if buckets else 0
    return BufferLayout(numel, [ranges[i] for i in range(len(params))], buckets)


@dataclass(frozen=True)
class BufferBytes:
    weights: int
    grads: int
    optimizer: int


@dataclass(frozen=True)
class OptimizerStateBytes:
    """What the optimizer keeps per parameter tensor it owns (its shard under ZeRO-1)."""

    per_element: int
    """Master weight + exp_avg + exp_avg_sq bytes per element."""
    per_tensor: int
    """Fixed bytes per tensor: torch's `step` counter, TE's fp32 scales of non-fp32 states."""


_TE_SCALE_BYTES = {"fp32": 0, "bf16": 4, "fp16": 4, "fp8": 16}
"""TE FusedAdam's per-tensor extras of a state dtype: a 1-element fp32 scale (`_scales`) for any
non-fp32 state; an fp8 (Float8Tensor) state also holds its quantizer's scale and amax and its
scale_inv (3 more fp32 scalars)."""


def optimizer_bytes_per_element(
    precision: PrecisionConfig, optim: OptimConfig | None = None
) -> OptimizerStateBytes:
    """Optimizer-state bytes, as megatron-core 0.16 allocates them.

    - plain (torch AdamW on CPU): fp32 master copy of non-fp32 params (fp32 params are their
      own master), fp32 exp_avg and exp_avg_sq, one 4-byte `step` per tensor;
    - precision-aware (TE FusedAdam): moments in exp_avg_dtype / exp_avg_sq_dtype (+ scales);
      master weights held by TE (16-bit remainders with a bf16 model, fp32 master and
      store_param_remainders; else main_params_dtype), except with an FP8 recipe other than
      delayed and fp32 master weights, where megatron keeps the fp32 master itself
      (`use_precision_aware_optimizer_no_fp8_or_ds_fp8` false); the step is per group.
    """
    if optim is None or not optim.precision_aware:
        master = 0 if precision.params_dtype == "fp32" else 4
        return OptimizerStateBytes(master + 8, 4)
    moments = STATE_BYTES[optim.exp_avg_dtype] + STATE_BYTES[optim.exp_avg_sq_dtype]
    scales = _TE_SCALE_BYTES[optim.exp_avg_dtype] + _TE_SCALE_BYTES[optim.exp_avg_sq_dtype]
    te_holds_master = optim.main_params_dtype != "fp32" or precision.fp8_recipe in (
        None,
        "delayed",
    )
    if not te_holds_master:
        master = 4
    elif (
        optim.main_params_dtype == "fp32"
        and optim.store_param_remainders
        and precision.params_dtype == "bf16"
    ):
        master = 2  # int16 remainders
    else:
        master = STATE_BYTES[optim.main_params_dtype]
        scales += _TE_SCALE_BYTES[optim.main_params_dtype]
    return OptimizerStateBytes(master + moments, scales)


def _shard_numels(layout: BufferLayout, dp: int, distributed_optimizer: bool) -> list[int]:
    """Elements of each parameter that DP rank 0's optimizer owns (its 1/DP of every bucket)."""
    if not distributed_optimizer:
        return [end - start for start, end in layout.ranges]
    shards = [(b0, b0 + (b1 - b0) // dp) for b0, b1 in layout.buckets]
    out = []
    for start, end in layout.ranges:
        out.append(sum(max(0, min(end, s1) - max(start, s0)) for s0, s1 in shards))
    return out


def buffer_bytes(
    params: list[LocalParam],
    dp: int,
    precision: PrecisionConfig,
    distributed_optimizer: bool,
    bucket_size: int | None,
    optim: OptimConfig | None = None,
) -> BufferBytes:
    """Bytes one DDP buffer's parameters cost on DP rank 0 (all of one dtype: FP8 weights,
    1 byte, or the model dtype); optimizer states per `optimizer_bytes_per_element`."""
    if not params:
        return BufferBytes(0, 0, 0)
    layout = buffer_layout(params, dp, distributed_optimizer, bucket_size)
    param_bytes = 1 if params[0].fp8 else precision.param_bytes
    if distributed_optimizer:
        weights = layout.numel * param_bytes
    else:
        weights = sum(p.numel for p in params) * param_bytes
    grads = layout.numel * precision.grad_bytes
    state = optimizer_bytes_per_element(precision, optim)
    shard = [n for n in _shard_numels(layout, dp, distributed_optimizer) if n > 0]
    optimizer = sum(shard) * state.per_element + state.per_tensor * len(shard)
    return BufferBytes(weights, grads, optimizer)


def _ddp_groups(
    params: list[LocalParam], parallel_cfg: ParallelConfig, dp: int
) -> list[tuple[list[LocalParam], int]]:
    """(params, data-parallel size) of each DDP buffer of a chunk: dense and expert-parallel
    parameters, each split by dtype (FP8 weights get their own buffer, as in megatron)."""
    dense = [p for p in params if not p.expert_buffer]
    expert = [p for p in params if p.expert_buffer]
    groups = [(dense, dp)]
    if expert:
        p = parallel_cfg
        # expert-data-parallel size = world / (ETP x EP x PP) = DP x CP x TP / (ETP x EP)
        spread = dp * p.context_parallel * p.tensor_parallel
        if spread % (p.expert_tensor_parallel_size * p.expert_parallel):
            raise ValueError(
                f"DP x CP x TP = {spread} is not divisible by ETP x EP = "
                f"{p.expert_tensor_parallel_size} x {p.expert_parallel}"
            )
        groups.append((expert, spread // (p.expert_tensor_parallel_size * p.expert_parallel)))
    out = []
    for group, size in groups:
        out += [([q for q in group if q.fp8 == fp8], size) for fp8 in (False, True)]
    return out


def static_bytes(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_cfg: PrecisionConfig,
    pp_rank: int,
    data_parallel_size: int,
    use_distributed_optimizer: bool,
    overlap_grad_reduce: bool = False,
    optim: OptimConfig | None = None,
) -> tuple[BufferBytes, int]:
    """Weights/grads/optimizer bytes of one pipeline rank (all its chunks), and its param count."""
    w = g = o = n = 0
    for chunk in range(len(pipeline_stages(model_cfg, parallel_cfg)[pp_rank])):
        params = rank_params(model_cfg, parallel_cfg, pp_rank, chunk, precision_cfg)
        n += sum(p.numel for p in params)
        for group, dp in _ddp_groups(params, parallel_cfg, data_parallel_size):
            bucketed = overlap_grad_reduce and chunk == 0 and pp_rank == 0
            bucket = max(DEFAULT_BUCKET_SIZE, 1_000_000 * dp) if bucketed else None
            b = buffer_bytes(group, dp, precision_cfg, use_distributed_optimizer, bucket, optim)
            w, g, o = w + b.weights, g + b.grads, o + b.optimizer
    return BufferBytes(w, g, o), n


# ------------------------------------------------------------------------------------------
# Activations (the inventory and recompute model live in trainer/activations.py)


def activation_bytes(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_cfg: PrecisionConfig,
    pp_rank: int,
    micro_batch_size: int,
    seq_length: int,
    num_microbatches: int,
    flash_attention: bool = True,
    *,
    recompute: RecomputeConfig | None = None,
) -> int:
    """Bytes saved for backward on pipeline rank `pp_rank` (micro-batches in flight included);
    `recompute` None = no recompute."""
    return rank_activations(
        model_cfg,
        parallel_cfg,
        precision_cfg,
        pp_rank,
        micro_batch_size,
        seq_length,
        num_microbatches,
        flash_attention,
        recompute,
    ).saved


# ------------------------------------------------------------------------------------------


def estimate_memory(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_cfg: PrecisionConfig,
    micro_batch_size: int,
    seq_length: int,
    num_microbatches: int,
    use_distributed_optimizer: bool | None = None,
    data_parallel_size: int = 1,
    overlap_grad_reduce: bool = False,
    flash_attention: bool = True,
    optim: OptimConfig | None = None,
    *,
    recompute: RecomputeConfig | None = None,
) -> MemoryEstimate:
    """Memory per GPU of the most loaded pipeline rank, at data- and expert-parallel rank 0
    (other DP ranks' optimizer shards differ by a few parameter fragments, < 0.1%).

    `use_distributed_optimizer` defaults to parallel_cfg.use_distributed_optimizer;
    `flash_attention`: fused attention that saves no s x s score matrix (TE on GPU); pass False
    for megatron's local (unfused) attention, as used on CPU; `optim`: optimizer-state
    precision (None: megatron's default fp32 states); `recompute`: activation recompute
    (None = none), see trainer/activations.py.
    """
    if min(micro_batch_size, seq_length, num_microbatches, data_parallel_size) < 1:
        raise ValueError("estimate_memory: batch sizes, seq_length and DP must be positive")
    if use_distributed_optimizer is None:
        use_distributed_optimizer = parallel_cfg.use_distributed_optimizer
    best: MemoryEstimate | None = None
    totals = []
    for pp_rank in range(parallel_cfg.pipeline_parallel):
        static, n = static_bytes(
            model_cfg,
            parallel_cfg,
            precision_cfg,
            pp_rank,
            data_parallel_size,
            use_distributed_optimizer,
            overlap_grad_reduce,
            optim,
        )
        act = rank_activations(
            model_cfg,
            parallel_cfg,
            precision_cfg,
            pp_rank,
            micro_batch_size,
            seq_length,
            num_microbatches,
            flash_attention,
            recompute,
        )
        est = MemoryEstimate(
            static.weights,
            static.grads,
            static.optimizer,
            act.saved,
            pp_rank,
            num_params=n,
            activation_saved_by_recompute=act.saved_by_recompute,
            recompute_transient=act.recompute_transient,
        )
        totals.append(est.total)
        if best is None or est.total > best.total:
            best = est
    assert best is not None
    best.per_pipeline_rank = totals
    return best
