"""`dry_run=true`: plan a layout without building anything heavy.

Prints the parallel layout, parameter counts, FLOPs per token and the memory estimate per GPU
(weights, gradients, optimizer states, activations and, with activation recompute, what each
recomputed module saves and the transient cost of recomputing), then one JSON line for scripts.
"""

from __future__ import annotations

import json
from typing import Any

from trainer.config.recompute import RecomputeConfig
from trainer.config.trainer import TrainerConfig
from trainer.flops import count_parameters, flops_per_token
from trainer.memory import estimate_memory
from trainer.parallel import env_world_size, validate_layout


def plan(cfg: TrainerConfig) -> dict[str, Any]:
    """The dry-run report as a dict (the JSON line's content)."""
    world = cfg.world_size or env_world_size()
    layout = validate_layout(cfg.model, cfg.parallel, world)
    num_mb = cfg.micro_batches(layout.data)
    counts = count_parameters(cfg.model)
    mem = estimate_memory(
        cfg.model,
        cfg.parallel,
        cfg.precision,
        cfg.train.micro_batch_size,
        cfg.data.seq_length,
        num_mb,
        data_parallel_size=layout.data,
        optim=cfg.optim,
        recompute=cfg.recompute,
    )
    report = {
        "layout": layout.describe(),
        "world_size": world,
        "num_microbatches": num_mb,
        "total_params": counts.total,
        "activated_params": counts.activated,
        "total_params_without_mtp": counts.total_without_mtp,
        "activated_params_without_mtp": counts.activated_without_mtp,
        "flops_per_token": flops_per_token(cfg.model, cfg.data.seq_length),
        "memory_per_gpu_bytes": mem.total,
        "memory_breakdown_bytes": {
            "weights": mem.weights,
            "grads": mem.grads,
            "optimizer": mem.optimizer,
            "activations": mem.activations,
            "recompute_transient": mem.recompute_transient,
        },
        "recompute": describe_recompute(cfg.recompute),
        "activation_saved_by_recompute_bytes": mem.activation_saved_by_recompute,
        "params_on_busiest_rank": mem.num_params,
        "recipe": recipe(cfg),
    }
    if cfg.parallel.device_memory_gib is not None:
        device = int(cfg.parallel.device_memory_gib * 2**30)
        report["device_memory_bytes"] = device
        report["headroom_bytes"] = device - mem.total
        report["fits"] = mem.total <= device
    return report


def recipe(cfg: TrainerConfig) -> str:
    """The memory/speed features a run switches on, in one line."""
    p, o, pr = cfg.parallel, cfg.optim, cfg.precision
    parts = [f"precision {pr.name}"]
    if pr.fp8_param:
        parts.append("FP8 weights + FP8 param all-gather")
    if o.precision_aware:
        parts.append(
            f"precision-aware optimizer (exp_avg {o.exp_avg_dtype}, exp_avg_sq "
            f"{o.exp_avg_sq_dtype}, master {o.main_params_dtype})"
        )
    if cfg.model.is_moe:
        moe = f"dispatcher {p.moe_token_dispatcher}"
        moe += ", ETP" + str(p.expert_tensor_parallel_size)
        moe += ", permute fusion" if p.moe_permute_fusion else ""
        moe += ", A2A overlap" if p.moe_a2a_overlap else ""
        parts.append(moe)
    parts.append(f"collective timeout {p.distributed_timeout_s:g} s")
    return "; ".join(parts)


def describe_recompute(r: RecomputeConfig) -> str:
    """none, selective[core_attn,mlp] or full(uniform, 1 layer per group)."""
    if r.granularity == "selective":
        return f"selective[{','.join(r.modules)}]"
    if r.granularity == "full":
        unit = "layer(s) per group" if r.full_method == "uniform" else "layer(s) per stage"
        return f"full({r.full_method}, {r.full_num_layers} {unit})"
    return "none"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_plan(report: dict[str, Any]) -> None:
    print(f"model layout: {report['layout']} ({report['num_microbatches']} micro-batches/step)")
    print(
        f"parameters: total {report['total_params']:,} / activated {report['activated_params']:,}"
        f" (without MTP: {report['total_params_without_mtp']:,} / "
        f"{report['activated_params_without_mtp']:,})"
    )
    print(f"training FLOPs per token: {report['flops_per_token']:.4g}")
    parts = ", ".join(f"{k} {_gib(v)}" for k, v in report["memory_breakdown_bytes"].items())
    print(f"recipe: {report['recipe']}")
    print(f"memory per GPU: {_gib(report['memory_per_gpu_bytes'])} ({parts})")
    if "device_memory_bytes" in report:
        device, headroom = report["device_memory_bytes"], report["headroom_bytes"]
        verdict = "fits" if report["fits"] else "DOES NOT FIT"
        print(
            f"{verdict} in {_gib(device)} per GPU: headroom {_gib(headroom)} "
            f"({headroom / device:.0%})"
        )
    kept_out = report["activation_saved_by_recompute_bytes"]
    saving = ", ".join(f"{k} {_gib(v)}" for k, v in kept_out.items())
    print(f"activation recompute: {report['recompute']}" + (f" (saves {saving})" if saving else ""))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}))
