"""Build megatron-core TransformerConfig, layer specs and GPTModel from our ModelConfig.

This module knows the model, not the process layout: it never creates process groups. The
parallel sizes are copied from a ParallelConfig (plain data) into the TransformerConfig, and
megatron-core reads the already-initialised parallel state when the model is instantiated.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_mtp_block_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import (
    MLATransformerConfig,
    TransformerConfig,
)

from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.recompute import RecomputeConfig, check_recompute_for_model


def have_transformer_engine() -> bool:
    """Whether Transformer Engine is importable (decides TE vs local layer specs)."""
    return importlib.util.find_spec("transformer_engine") is not None


def _common_kwargs(m: ModelConfig) -> dict[str, Any]:
    return dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
    )


def _attention_kwargs(m: ModelConfig) -> dict[str, Any]:
    if not m.is_mla:
        return dict(num_query_groups=m.num_query_groups, kv_channels=m.head_dim)
    return dict(
        rotary_base=int(m.rope_theta),
        # DeepSeek's MLA normalises the compressed q and kv latents (q_a/kv_a_layernorm).
        qk_layernorm=True,
        q_lora_rank=m.q_lora_rank,
        kv_lora_rank=m.kv_lora_rank,
        qk_head_dim=m.qk_head_dim,
        qk_pos_emb_head_dim=m.qk_pos_emb_head_dim,
        v_head_dim=m.v_head_dim,
        rope_type=m.rope_type,
        rotary_scaling_factor=m.rotary_scaling_factor,
        original_max_position_embeddings=m.original_max_position_embeddings,
        mscale=m.rope_mscale,
        mscale_all_dim=m.rope_mscale_all_dim,
    )


def _moe_kwargs(m: ModelConfig) -> dict[str, Any]:
    if not m.is_moe:
        return {}
    return dict(
        num_moe_experts=m.num_experts,
        moe_ffn_hidden_size=m.moe_ffn_hidden_size,
        moe_shared_expert_intermediate_size=(
            m.shared_expert_ffn_hidden_size if m.num_shared_experts else None
        ),
        moe_layer_freq=m.moe_layer_pattern,
        moe_router_topk=m.router_topk,
        moe_router_score_function=m.router_score_function,
        moe_router_pre_softmax=m.router_pre_softmax and m.router_score_function == "softmax",
        moe_router_enable_expert_bias=m.router_enable_expert_bias,
        moe_router_bias_update_rate=m.router_bias_update_rate,
        moe_router_num_groups=m.router_num_groups,
        moe_router_group_topk=m.router_group_topk,
        moe_router_topk_scaling_factor=m.router_topk_scaling_factor,
        moe_router_load_balancing_type=m.load_balancing_type,
        moe_aux_loss_coeff=m.aux_loss_coeff if m.load_balancing_type != "none" else 0.0,
        moe_router_dtype="fp32",
        moe_grouped_gemm=False,
    )


def _parallel_kwargs(p: ParallelConfig, use_te: bool) -> dict[str, Any]:
    return dict(
        tensor_model_parallel_size=p.tensor_parallel,
        pipeline_model_parallel_size=p.pipeline_parallel,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_parallel,
        expert_model_parallel_size=p.expert_parallel,
        expert_tensor_parallel_size=p.expert_tensor_parallel_size,
        context_parallel_size=p.context_parallel,
        sequence_parallel=p.sequence_parallel,
        moe_token_dispatcher_type=p.moe_token_dispatcher,
        moe_flex_dispatcher_backend="deepep",
        moe_permute_fusion=p.moe_permute_fusion,
        overlap_moe_expert_parallel_comm=p.moe_a2a_overlap,
        pipeline_model_parallel_layout=p.pipeline_layout,
        transformer_impl="transformer_engine" if use_te else "local",
        # CPU initialisation draws the full weight then splits it, so every TP layout starts
        # from the same weights; GPU runs initialise on device.
        use_cpu_initialization=not torch.cuda.is_available(),
        gradient_accumulation_fusion=False,
        bias_activation_fusion=use_te,
        bias_dropout_fusion=use_te,
        masked_softmax_fusion=use_te,
        apply_rope_fusion=False,
        deallocate_pipeline_outputs=True,
        # gloo: batched isend/irecv between the same two ranks (PP2 with virtual stages sends
        # both activations and gradients to the same peer) can pair messages in the wrong
        # order; megatron's unbatched, parity-ordered p2p is exact. NCCL keeps batching.
        batch_p2p_comm=torch.cuda.is_available(),
        calculate_per_token_loss=False,
    )


def recompute_kwargs(r: RecomputeConfig | None, use_te: bool) -> dict[str, Any]:
    """TransformerConfig's recompute_* arguments (none: megatron's defaults). moe_act
    recompute exists only in megatron's grouped-GEMM experts (Transformer Engine's
    TEGroupedMLP here), which it switches on."""
    if r is None or r.granularity == "none":
        return {}
    if r.granularity == "selective":
        kwargs: dict[str, Any] = dict(
            recompute_granularity="selective", recompute_modules=list(r.modules)
        )
        if "moe_act" in r.modules:
            if not use_te:
                raise ValueError(
                    "recompute: moe_act needs grouped-GEMM experts (Transformer Engine); "
                    "use moe or shared_experts on this machine"
                )
            kwargs["moe_grouped_gemm"] = True
        return kwargs
    return dict(
        recompute_granularity="full",
        recompute_method=r.full_method,
        recompute_num_layers=r.full_num_layers,
    )


def build_transformer_config(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision_kwargs: dict[str, Any] | None = None,
    recompute: RecomputeConfig | None = None,
    **overrides: Any,
) -> TransformerConfig:
    """Megatron TransformerConfig (MLATransformerConfig for MLA models) for our configs.

    `precision_kwargs` come from `trainer.precision.megatron_precision_kwargs` (bf16,
    params_dtype, fp8, fp8_recipe...); `recompute` (None = no recompute) is validated against
    the model by `check_recompute_for_model`; `overrides` win over everything (tests, benchmarks).
    """
    if recompute is not None:
        check_recompute_for_model(recompute, model_cfg, parallel_cfg)
    use_te = have_transformer_engine()
    kwargs: dict[str, Any] = {
        **_common_kwargs(model_cfg),
        **_attention_kwargs(model_cfg),
        **_moe_kwargs(model_cfg),
        **_parallel_kwargs(parallel_cfg, use_te),
        **recompute_kwargs(recompute, use_te),
    }
    if model_cfg.mtp_num_layers:
        kwargs.update(
            mtp_num_layers=model_cfg.mtp_num_layers,
            mtp_loss_scaling_factor=model_cfg.mtp_loss_weight,
        )
    precision = dict(precision_kwargs or {})
    precision.setdefault("params_dtype", torch.float32)
    dtype = precision["params_dtype"]
    kwargs.update(precision, pipeline_dtype=dtype, **overrides)
    cls = MLATransformerConfig if model_cfg.is_mla else TransformerConfig
    return cls(**kwargs)


def _use_local_mla_attention(block: TransformerBlockSubmodules) -> None:
    from trainer.cpu_patches import mla_local_core_attention

    for layer_spec in block.layer_specs:
        attention = layer_spec.submodules.self_attention
        if getattr(attention.submodules, "core_attention", None) is not None:
            attention.submodules.core_attention = mla_local_core_attention()


def build_layer_specs(
    config: TransformerConfig, vp_stage: int | None = None
) -> tuple[TransformerBlockSubmodules, Any]:
    """Decoder block spec (this pipeline stage's layers) and MTP block spec (or None)."""
    use_te = config.transformer_impl == "transformer_engine"
    block = get_gpt_decoder_block_spec(
        config, use_transformer_engine=use_te, normalization="RMSNorm", vp_stage=vp_stage
    )
    if config.multi_latent_attention and not use_te:
        _use_local_mla_attention(block)
    mtp = None
    if config.mtp_num_layers:
        # The MTP block reuses the spec of the model's last decoder layer.
        last_layer = _all_layer_specs(config, use_te)[-1]
        mtp = get_gpt_mtp_block_spec(
            config, last_layer, use_transformer_engine=use_te, vp_stage=vp_stage
        )
    return block, mtp


def _all_layer_specs(config: TransformerConfig, use_te: bool) -> list[ModuleSpec]:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_layer_specs

    specs = get_gpt_decoder_layer_specs(config, use_te, normalization="RMSNorm")
    if config.multi_latent_attention and not use_te:
        _use_local_mla_attention(TransformerBlockSubmodules(layer_specs=specs))
    return specs


def build_model(
    model_cfg: ModelConfig,
    config: TransformerConfig,
    *,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
) -> GPTModel:
    """One GPTModel chunk (a pipeline stage, or one virtual stage of it)."""
    block, mtp = build_layer_specs(config, vp_stage=vp_stage)
    return GPTModel(
        config=config,
        transformer_layer_spec=block,
        vocab_size=model_cfg.vocab_size,
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not model_cfg.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=int(model_cfg.rope_theta),
        mtp_block_spec=mtp,
        vp_stage=vp_stage,
    )


@torch.no_grad()
def lm_logits(model: GPTModel, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits [batch, seq, vocab] of the main model (MTP modules skipped: megatron's
    forward runs them only to add their loss, which needs labels)."""
    config, mtp_process = model.config, getattr(model, "mtp_process", False)
    depth = config.mtp_num_layers
    positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    try:
        config.mtp_num_layers, model.mtp_process = None, False
        return model(tokens, positions.expand_as(tokens), None)
    finally:
        config.mtp_num_layers, model.mtp_process = depth, mtp_process
