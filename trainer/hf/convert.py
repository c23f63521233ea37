"""Our ModelConfig and megatron-core weights <-> a Hugging Face model of a native family.

Pure tensor and dict code (no process groups, no files): `family` picks the transformers class
that expresses a config, `hf_config` writes its config.json, `to_hf` renames/splits one
megatron tensor (full, unsharded) into HF tensors, `from_hf` is its inverse, and
`model_fields` reads a config.json back into ModelConfig fields.

Families (transformers ships all four natively, no trust_remote_code):
- deepseek_v3: MLA + DeepSeekMoE with sigmoid routing and expert bias (V3-style), or MLA dense;
- deepseek_v2: MLA + DeepSeekMoE with softmax routing over all experts (V2 / V2-Lite);
- llama: dense mha/gqa models (DeepSeek-LLM 7B/67B);
- qwen2_moe: mha/gqa + DeepSeekMoE (DeepSeekMoE-16B; see `_check_qwen2_moe`).
Layouts (DESIGN.md "Hugging Face interop"): q = [nope | rope] per head, kv_a = [latent | rope],
kv_b = [k_nope | v] per head and rope dims copy 1:1 (`rope_interleave=True`); megatron's
`linear_fc1` is [gate; up]; GQA's `linear_qkv` holds per query group [q heads; k; v].
MTP module k is written as DeepSeek's release lays it out: `model.layers.{N+k}.{enorm, hnorm,
eh_proj, shared_head.norm}` plus a decoder layer; transformers ignores those layers.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import torch

from trainer.config.model import ModelConfig

Tensors = list[tuple[str, torch.Tensor]]


ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}


class UnsupportedModel(ValueError):
    """A config that no native transformers family expresses (one line, names the field)."""


# ---------------------------------------------------------------------------------------------
# Families and config.json


def family(m: ModelConfig) -> str:
    """model_type for `m`, or UnsupportedModel naming what no native family can express."""
    if not m.is_mla:
        if m.is_moe:
            _check_qwen2_moe(m)
            return "qwen2_moe"
        return "llama"
    group_span = m.router_topk // m.router_group_topk if m.router_num_groups else None
    if not m.is_moe or m.router_score_function == "sigmoid":
        if group_span not in (None, 2):
            raise UnsupportedModel(
                f"model {m.name!r}: groups scored by their top-{group_span} experts "
                "(router_topk / router_group_topk); deepseek_v3 scores a group by its top-2"
            )
        return "deepseek_v3"
    if group_span not in (None, 1):
        raise UnsupportedModel(
            f"model {m.name!r}: groups scored by their top-{group_span} experts (router_topk / "
            "router_group_topk); deepseek_v2 scores a group by its best expert"
        )
    if not m.router_pre_softmax:
        raise UnsupportedModel(
            f"model {m.name!r}: router_pre_softmax=false (softmax over the top-k logits) has no "
            "transformers family; deepseek_v2 takes a softmax over all experts, then the top-k"
        )
    return "deepseek_v2"


def _check_qwen2_moe(m: ModelConfig) -> None:
    """mha/gqa + DeepSeekMoE (DeepSeekMoE-16B) is written as qwen2_moe: its softmax router over
    all experts without renormalising is DeepSeekMoE's, and its shared expert's sigmoid gate is
    made exactly 1 (gate weight 0 -> 0.5, shared down_proj x 2: both exact in floating point)."""
    why = None
    if m.router_score_function != "softmax" or not m.router_pre_softmax:
        why = "router_score_function=softmax with router_pre_softmax=true"
    elif m.router_num_groups:
        why = "no router groups"
    elif (m.router_topk_scaling_factor or 1.0) != 1.0:
        why = "router_topk_scaling_factor 1"
    elif m.kv_channels not in (None, m.hidden_size // m.num_attention_heads):
        why = "kv_channels = hidden_size / num_attention_heads"
    if why:
        raise UnsupportedModel(
            f"model {m.name!r}: attention_type={m.attention_type} with routed experts is "
            f"exported as qwen2_moe, which needs {why} (DeepSeekMoE-16B's own 'deepseek' class "
            "needs trust_remote_code)"
        )


def _rope(m: ModelConfig) -> dict[str, Any] | None:
    if m.rope_type != "yarn":
        return None
    return {
        "type": "yarn",
        "rope_type": "yarn",
        "factor": m.rotary_scaling_factor,
        "original_max_position_embeddings": m.original_max_position_embeddings,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": m.rope_mscale,
        "mscale_all_dim": m.rope_mscale_all_dim,
    }


def hf_config(m: ModelConfig, special: dict[str, int]) -> dict[str, Any]:
    """config.json for `m`; `special` = {"bos_token_id", "eos_token_id", "pad_token_id"}."""
    kind = family(m)
    common: dict[str, Any] = {
        "model_type": kind,
        "architectures": [ARCHITECTURES[kind]],
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.norm_epsilon,
        "rope_theta": m.rope_theta,
        "rope_scaling": _rope(m),
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
        "attention_bias": False,
        "initializer_range": m.init_method_std,
        "torch_dtype": "float32",
        **special,
    }
    if kind == "qwen2_moe":
        return {
            **common,
            "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
            "qkv_bias": False,
            "use_sliding_window": False,
            "num_experts": m.num_experts,
            "num_experts_per_tok": m.router_topk,
            "moe_intermediate_size": m.moe_ffn_hidden_size,
            "shared_expert_intermediate_size": m.num_shared_experts * m.moe_ffn_hidden_size,
            "norm_topk_prob": False,
            "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(m.first_k_dense_layers)),
        }
    if kind == "llama":
        return {
            **common,
            "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
            "head_dim": m.head_dim,
            "mlp_bias": False,
        }
    mla = {
        **common,
        "num_key_value_heads": m.num_attention_heads,
        "q_lora_rank": m.q_lora_rank,
        "kv_lora_rank": m.kv_lora_rank,
        "qk_nope_head_dim": m.qk_head_dim,
        "qk_rope_head_dim": m.qk_pos_emb_head_dim,
        "v_head_dim": m.v_head_dim,
        "rope_interleave": True,
        "num_nextn_predict_layers": m.mtp_num_layers,
    }
    if not m.is_moe:  # MLA dense: every layer dense
        return {
            **mla,
            "first_k_dense_replace": m.num_layers,
            "n_routed_experts": 1,
            "n_shared_experts": 0,
            "num_experts_per_tok": 1,
            "moe_intermediate_size": 1,
            "n_group": 1,
            "topk_group": 1,
        }
    moe = {
        **mla,
        "moe_intermediate_size": m.moe_ffn_hidden_size,
        "n_routed_experts": m.num_experts,
        "n_shared_experts": m.num_shared_experts,
        "num_experts_per_tok": m.router_topk,
        "first_k_dense_replace": m.first_k_dense_layers,
        "routed_scaling_factor": m.router_topk_scaling_factor or 1.0,
        "n_group": m.router_num_groups or 1,
        "topk_group": m.router_group_topk or 1,
    }
    if kind == "deepseek_v3":
        return {
            **moe,
            "scoring_func": "sigmoid",
            "topk_method": "noaux_tc",
            "norm_topk_prob": m.router_topk > 1,
        }
    method = "group_limited_greedy" if m.router_num_groups else "greedy"
    return {**moe, "scoring_func": "softmax", "topk_method": method, "norm_topk_prob": False}


def model_fields(config: dict[str, Any], name: str) -> dict[str, Any]:
    """ModelConfig fields for a config.json (UnsupportedModel names what we cannot express)."""
    kind = config.get("model_type")
    if kind not in ("llama", "deepseek_v3", "deepseek_v2"):
        raise UnsupportedModel(
            f"config.json model_type={kind!r} is not supported (llama, deepseek_v2, deepseek_v3)"
        )
    if config.get("quantization_config"):
        raise UnsupportedModel(
            "config.json has quantization_config (e.g. DeepSeek's FP8 release): dequantize the "
            "checkpoint to bf16/fp32 first"
        )
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise UnsupportedModel(f"config.json {key}=true: our models have no linear biases")
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"config.json hidden_act={config['hidden_act']!r}: only silu")
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    if rope_type not in ("default", "yarn"):
        raise UnsupportedModel(f"config.json rope_scaling type {rope_type!r}: only yarn or none")
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    out: dict[str, Any] = {
        "name": name,
        "num_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "num_attention_heads": config["num_attention_heads"],
        "ffn_hidden_size": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "rope_theta": float(theta),
        "norm_epsilon": config.get("rms_norm_eps", 1e-6),
        "untie_embeddings_and_output_weights": not config.get("tie_word_embeddings", False),
        "init_method_std": config.get("initializer_range", 0.02),
        "mtp_num_layers": 0,
    }
    if kind == "llama":
        heads, groups = config["num_attention_heads"], config.get("num_key_value_heads")
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        return {
            **out,
            "attention_type": "gqa" if groups and groups != heads else "mha",
            "num_query_groups": groups if groups and groups != heads else None,
            "kv_channels": head_dim,
            "num_experts": None,
            "router_enable_expert_bias": False,
            "router_num_groups": None,
            "router_group_topk": None,
        }
    out.update(
        attention_type="mla",
        q_lora_rank=config.get("q_lora_rank"),
        kv_lora_rank=config["kv_lora_rank"],
        qk_head_dim=config["qk_nope_head_dim"],
        qk_pos_emb_head_dim=config["qk_rope_head_dim"],
        v_head_dim=config["v_head_dim"],
        mtp_num_layers=int(config.get("num_nextn_predict_layers") or 0),
    )
    if rope_type == "yarn":
        out.update(
            rope_type="yarn",
            rotary_scaling_factor=float(rope["factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            rope_mscale=float(rope.get("mscale", 1.0)),
            rope_mscale_all_dim=float(rope.get("mscale_all_dim", 0.0)),
        )
    dense_all = config.get("first_k_dense_replace", 0) >= config["num_hidden_layers"]
    if dense_all:
        return {
            **out,
            "num_experts": None,
            "router_enable_expert_bias": False,
            "router_num_groups": None,
            "router_group_topk": None,
        }
    groups = config.get("n_group") or 1
    sigmoid = kind == "deepseek_v3"
    if not sigmoid and config.get("norm_topk_prob"):
        raise UnsupportedModel("config.json deepseek_v2 with norm_topk_prob=true is not supported")
    return {
        **out,
        "num_experts": config["n_routed_experts"],
        "moe_ffn_hidden_size": config["moe_intermediate_size"],
        "num_shared_experts": config.get("n_shared_experts") or 0,
        "first_k_dense_layers": config.get("first_k_dense_replace", 0),
        "router_topk": config["num_experts_per_tok"],
        "router_score_function": "sigmoid" if sigmoid else "softmax",
        "router_enable_expert_bias": sigmoid,
        "router_pre_softmax": not sigmoid,
        "router_num_groups": groups if groups > 1 else None,
        "router_group_topk": config.get("topk_group") if groups > 1 else None,
        "router_topk_scaling_factor": float(config.get("routed_scaling_factor") or 1.0),
    }


def model_from_hf(config: dict[str, Any], name: str) -> ModelConfig:
    """A ModelConfig (defaults for training-only fields) equal in shape to `config`."""
    values = model_fields(config, name)
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in values.items() if k in known})


# ---------------------------------------------------------------------------------------------
# Tensors

_ATTN = {
    "linear_q_down_proj": "q_a_proj",
    "q_layernorm": "q_a_layernorm",
    "linear_q_up_proj": "q_b_proj",
    "linear_q_proj": "q_proj",
    "linear_kv_down_proj": "kv_a_proj_with_mqa",
    "kv_layernorm": "kv_a_layernorm",
    "linear_kv_up_proj": "kv_b_proj",
    "linear_proj": "o_proj",
}
_LAYER = re.compile(r"^(decoder\.layers\.(\d+)|mtp\.layers\.(\d+)\.transformer_layer)\.(.+)$")
_MTP = {
    "enorm": "enorm",
    "hnorm": "hnorm",
    "eh_proj": "eh_proj",
    "final_layernorm": "shared_head.norm",
}


def _glu(prefix: str, w: torch.Tensor) -> Tensors:
    gate, up = w.chunk(2, dim=0)
    return [(f"{prefix}.gate_proj.weight", gate), (f"{prefix}.up_proj.weight", up)]


def _qkv(m: ModelConfig, w: torch.Tensor, prefix: str) -> Tensors:
    groups = m.num_query_groups or m.num_attention_heads
    per = m.num_attention_heads // groups
    d = m.head_dim
    w = w.view(groups, (per + 2) * d, -1)
    q, k, v = w.split([per * d, d, d], dim=1)
    return [
        (f"{prefix}.q_proj.weight", q.reshape(-1, w.shape[-1])),
        (f"{prefix}.k_proj.weight", k.reshape(-1, w.shape[-1])),
        (f"{prefix}.v_proj.weight", v.reshape(-1, w.shape[-1])),
    ]


def _layer_part(m: ModelConfig, rest: str, w: torch.Tensor, hf: str) -> Tensors:
    """One tensor of a decoder layer (`rest` after `decoder.layers.L.`) under HF prefix `hf`."""
    if rest in ("input_layernorm.weight", "pre_mlp_layernorm.weight"):
        name = "input_layernorm" if rest.startswith("input") else "post_attention_layernorm"
        return [(f"{hf}.{name}.weight", w)]
    if rest.startswith("self_attention."):
        module = rest.split(".")[1]
        if module == "linear_qkv":
            return _qkv(m, w, f"{hf}.self_attn")
        return [(f"{hf}.self_attn.{_ATTN[module]}.weight", w)]
    if rest == "mlp.router.weight":
        if family(m) == "deepseek_v3" and not m.router_enable_expert_bias:  # HF always adds it
            return [
                (f"{hf}.mlp.gate.weight", w),
                (f"{hf}.mlp.gate.e_score_correction_bias", w.new_zeros(w.shape[0])),
            ]
        return [(f"{hf}.mlp.gate.weight", w)]
    if rest == "mlp.router.expert_bias":
        return [(f"{hf}.mlp.gate.e_score_correction_bias", w)]
    expert = re.match(r"mlp\.experts\.local_experts\.(\d+)\.(linear_fc[12])\.weight$", rest)
    if expert:
        where = f"{hf}.mlp.experts.{expert.group(1)}"
        return (
            _glu(where, w)
            if expert.group(2) == "linear_fc1"
            else [(f"{where}.down_proj.weight", w)]
        )
    ffn = re.match(r"mlp\.(shared_experts\.)?(linear_fc[12])\.weight$", rest)
    if ffn and ffn.group(1) and family(m) == "qwen2_moe":
        where = f"{hf}.mlp.shared_expert"
        if ffn.group(2) == "linear_fc1":
            return _glu(where, w)
        gate = w.new_zeros(1, w.shape[0])  # sigmoid(0) = 0.5, undone by the x 2 below
        return [(f"{where}.down_proj.weight", w * 2), (f"{hf}.mlp.shared_expert_gate.weight", gate)]
    if ffn:
        where = f"{hf}.mlp.shared_experts" if ffn.group(1) else f"{hf}.mlp"
        return (
            _glu(where, w) if ffn.group(2) == "linear_fc1" else [(f"{where}.down_proj.weight", w)]
        )
    raise KeyError(rest)


def to_hf(m: ModelConfig, name: str, w: torch.Tensor) -> Tensors:
    """HF tensors for one full megatron tensor (`_extra_state` entries yield nothing)."""
    if name.endswith("_extra_state"):
        return []
    if name == "embedding.word_embeddings.weight":
        return [("model.embed_tokens.weight", w)]
    if name == "output_layer.weight":
        return [("lm_head.weight", w)] if m.untie_embeddings_and_output_weights else []
    if name == "decoder.final_layernorm.weight":
        return [("model.norm.weight", w)]
    layer = _LAYER.match(name)
    if layer:
        index = int(layer.group(2)) if layer.group(2) else m.num_layers + int(layer.group(3))
        return _layer_part(m, layer.group(4), w, f"model.layers.{index}")
    mtp = re.match(r"mtp\.layers\.(\d+)\.(\w+)\.weight$", name)
    if mtp and mtp.group(2) in _MTP:
        return [(f"model.layers.{m.num_layers + int(mtp.group(1))}.{_MTP[mtp.group(2)]}.weight", w)]
    raise KeyError(f"no Hugging Face name for megatron tensor {name}")


def from_hf(m: ModelConfig, name: str, take) -> torch.Tensor:
    """The full megatron tensor `name`, assembled from HF tensors fetched with `take(hf_name)`.

    Inverse of `to_hf`: it maps `name` to HF names by converting a placeholder and joins the
    pieces the way `to_hf` split them."""
    probe = torch.empty(0)
    pieces = [p for p in _pieces(m, name, probe) if not _synthetic(m, p[0])]
    if not pieces:
        raise KeyError(name)
    tensors = [take(hf) for hf, _ in pieces]
    if family(m) == "qwen2_moe" and name.endswith("shared_experts.linear_fc2.weight"):
        return tensors[0] / 2
    if len(tensors) == 1:
        return tensors[0]
    if name.endswith("linear_qkv.weight"):
        groups = m.num_query_groups or m.num_attention_heads
        q, k, v = tensors
        hidden = q.shape[-1]
        return torch.cat(
            [q.view(groups, -1, hidden), k.view(groups, -1, hidden), v.view(groups, -1, hidden)],
            dim=1,
        ).reshape(-1, hidden)
    return torch.cat(tensors, dim=0)  # [gate; up]


def _synthetic(m: ModelConfig, hf_name: str) -> bool:
    """HF tensors `to_hf` adds that have no megatron tensor (constant by construction)."""
    if hf_name.endswith("shared_expert_gate.weight"):
        return True
    return hf_name.endswith("e_score_correction_bias") and not m.router_enable_expert_bias


def _pieces(m: ModelConfig, name: str, probe: torch.Tensor) -> Tensors:
    if name.endswith("linear_qkv.weight"):
        layer = _LAYER.match(name)
        assert layer is not None
        index = int(layer.group(2)) if layer.group(2) else m.num_layers + int(layer.group(3))
        base = f"model.layers.{index}.self_attn"
        return [(f"{base}.{p}_proj.weight", probe) for p in "qkv"]
    if name.endswith("linear_fc1.weight"):
        gate_up = to_hf(m, name, torch.empty(2, 0))
        return [(hf, probe) for hf, _ in gate_up]
    if name == "output_layer.weight" and not m.untie_embeddings_and_output_weights:
        return [("model.embed_tokens.weight", probe)]
    return to_hf(m, name, probe)
