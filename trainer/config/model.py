"""Typed schema of a DeepSeek-family model (the `model:` group of conf/model/*.yaml).

One dataclass covers LLaMA-style dense (DeepSeek-LLM 7B/67B), DeepSeekMoE, and V2/V3 with MLA,
aux-loss-free routing and multi-token prediction. Each field documents its YAML key.
Derived values are properties; validation happens once in __post_init__.
"""

from __future__ import annotations

from dataclasses import dataclass

# OmegaConf structured configs reject typing.Literal, so choice fields are str, checked against
# these tuples in __post_init__.
ATTENTION_TYPES = ("mha", "gqa", "mla")
SCORE_FUNCTIONS = ("softmax", "sigmoid")
LOAD_BALANCING_TYPES = ("aux_loss", "seq_aux_loss", "none")
ROPE_TYPES = ("rope", "yarn")
PHASE_FIELDS = (
    "max_position_embeddings",
    "rope_theta",
    "rope_type",
    "rotary_scaling_factor",
    "original_max_position_embeddings",
    "rope_mscale",
    "rope_mscale_all_dim",
    "init_method_std",
    "router_bias_update_rate",
    "aux_loss_coeff",
    "mtp_loss_weight",
)
"""Fields no weight depends on (how positions are encoded, initialisation, loss and balancing
coefficients): a training phase (conf/recipe/) may change them when it starts from another run's
weights (`checkpoint.init_from`); a resumed run must match in every field."""


@dataclass
class ModelConfig:
    name: str = "tiny_v3"
    """Short name shown in logs and MLflow."""
    num_layers: int = 4
    """Transformer blocks in the main model (MTP modules not included)."""
    hidden_size: int = 64
    """Model width d_model."""
    num_attention_heads: int = 4
    """Attention heads."""
    num_query_groups: int | None = None
    """KV heads for GQA; None means MHA (one KV head per query head). Ignored for MLA."""
    attention_type: str = "mla"
    """mha / gqa (LLaMA-style, DeepSeek-LLM) or mla (Multi-head Latent Attention, V2/V3)."""
    kv_channels: int | None = None
    """Head dim for mha/gqa; None means hidden_size / num_attention_heads."""
    ffn_hidden_size: int = 192
    """SwiGLU intermediate size of dense FFN layers."""
    vocab_size: int = 4096
    """Embedding/output vocabulary (padded size used by the model)."""
    max_position_embeddings: int = 512
    """Longest sequence the rope setup supports (seq_length must not exceed it)."""
    rope_theta: float = 10000.0
    """Rotary base."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    untie_embeddings_and_output_weights: bool = True
    """DeepSeek models use separate input embedding and output head."""
    init_method_std: float = 0.006
    """Std of the normal initialiser (DeepSeek-V3 uses 0.006)."""

    # --- MLA (attention_type == "mla") ---
    q_lora_rank: int | None = 32
    """Query compression rank; None = no q compression (V2-Lite)."""
    kv_lora_rank: int = 32
    """Joint KV latent rank (the cached latent)."""
    qk_head_dim: int = 16
    """Per-head q/k dim without rope ('nope' part)."""
    qk_pos_emb_head_dim: int = 8
    """Per-head decoupled rope dim of q/k."""
    v_head_dim: int = 16
    """Per-head value dim."""
    rope_type: str = "rope"
    """Rotary variant for MLA: plain rope or YaRN scaling. Model YAMLs use plain rope (DeepSeek
    pretrains at 4K with it); YaRN belongs to context-extension phases (conf/recipe/)."""
    rotary_scaling_factor: float = 1.0
    """YaRN scaling factor (V3: 40)."""
    original_max_position_embeddings: int = 4096
    """Pre-YaRN context length (V3: 4096)."""
    rope_mscale: float = 1.0
    """YaRN attention-temperature factor mscale (HF rope_scaling.mscale; V2: 0.707, V3: 1.0);
    megatron MLATransformerConfig(mscale=...)."""
    rope_mscale_all_dim: float = 0.0
    """YaRN mscale_all_dim (HF rope_scaling.mscale_all_dim; V2: 0.707, V3: 1.0; 0 = off);
    megatron MLATransformerConfig(mscale_all_dim=...)."""

    # --- DeepSeekMoE ---
    num_experts: int | None = 8
    """Routed experts; None = dense model."""
    moe_ffn_hidden_size: int = 32
    """Intermediate size of one routed expert."""
    num_shared_experts: int = 1
    """Always-on shared experts (their FFN is num_shared_experts * moe_ffn_hidden_size wide)."""
    first_k_dense_layers: int = 1
    """Leading layers that use a dense FFN instead of MoE."""
    router_topk: int = 2
    """Routed experts per token."""
    router_score_function: str = "sigmoid"
    """softmax (V2) or sigmoid (V3) gate."""
    router_pre_softmax: bool = True
    """softmax routing: softmax over all experts, then the top-k, not renormalised (DeepSeek-V2,
    DeepSeekMoE; transformers' deepseek_v2); false: softmax over the top-k logits only."""
    router_enable_expert_bias: bool = True
    """Aux-loss-free balancing: per-expert bias added for top-k selection (sigmoid only)."""
    router_bias_update_rate: float = 1e-3
    """Expert-bias update speed gamma (V3: 1e-3)."""
    router_num_groups: int | None = 2
    """Expert groups for group-limited routing (None = off)."""
    router_group_topk: int | None = 1
    """Groups each token may route to."""
    router_topk_scaling_factor: float | None = 2.5
    """Routed scaling factor applied to gate weights."""
    load_balancing_type: str = "seq_aux_loss"
    """Auxiliary balancing loss: per batch (aux_loss), per sequence (seq_aux_loss) or none."""
    aux_loss_coeff: float = 1e-4
    """Weight of the auxiliary balancing loss."""

    # --- Multi-token prediction ---
    mtp_num_layers: int = 1
    """MTP depth D (0 = off)."""
    mtp_loss_weight: float = 0.3
    """lambda: weight of the mean MTP loss."""

    def __post_init__(self) -> None:
        _require(self.num_layers > 0, "num_layers must be positive")
        for name, choices in (
            ("attention_type", ATTENTION_TYPES),
            ("router_score_function", SCORE_FUNCTIONS),
            ("load_balancing_type", LOAD_BALANCING_TYPES),
            ("rope_type", ROPE_TYPES),
        ):
            value = getattr(self, name)
            _require(value in choices, f"{name}={value!r} is not one of {list(choices)}")
        _require(
            self.hidden_size % self.num_attention_heads == 0 or self.attention_type == "mla",
            f"hidden_size {self.hidden_size} not divisible by num_attention_heads "
            f"{self.num_attention_heads}",
        )
        if self.attention_type == "gqa":
            _require(self.num_query_groups is not None, "gqa needs num_query_groups")
        if self.num_query_groups is not None:
            _require(
                self.num_attention_heads % self.num_query_groups == 0,
                "num_attention_heads must be a multiple of num_query_groups",
            )
        if self.is_moe:
            assert self.num_experts is not None
            _require(
                0 <= self.first_k_dense_layers <= self.num_layers,
                "first_k_dense_layers must be in [0, num_layers]",
            )
            _require(self.router_topk <= self.num_experts, "router_topk > num_experts")
            if self.router_enable_expert_bias:
                _require(
                    self.router_score_function == "sigmoid",
                    "router_enable_expert_bias (aux-loss-free balancing) needs "
                    "router_score_function=sigmoid",
                )
            if self.router_num_groups:
                _require(
                    self.num_experts % self.router_num_groups == 0,
                    "num_experts must be divisible by router_num_groups",
                )
                _require(
                    self.router_group_topk is not None
                    and self.router_group_topk <= self.router_num_groups,
                    "router_group_topk must be set and <= router_num_groups",
                )
        _require(self.mtp_num_layers >= 0, "mtp_num_layers must be >= 0")

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    @property
    def is_mla(self) -> bool:
        return self.attention_type == "mla"

    @property
    def moe_layer_pattern(self) -> list[int]:
        """Megatron's moe_layer_freq list: 0 = dense FFN layer, 1 = MoE layer."""
        if not self.is_moe:
            return [0] * self.num_layers
        k = self.first_k_dense_layers
        return [0] * k + [1] * (self.num_layers - k)

    @property
    def shared_expert_ffn_hidden_size(self) -> int:
        return self.num_shared_experts * self.moe_ffn_hidden_size

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"model config: {message}")
