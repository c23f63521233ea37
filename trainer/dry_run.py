"""`dry_run=true`: plan a layout without building anything heavy.

Prints the parallel layout, parameter counts, FLOPs per token and the memory estimate per GPU
(weights, gradients, optimizer states, activations), then one JSON line for scripts.
"""

from __future__ import annotations

import json
from typing import Any

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
    )
    return {
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
        },
        "params_on_busiest_rank": mem.num_params,
    }


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
    print(f"memory per GPU: {_gib(report['memory_per_gpu_bytes'])} ({parts})")
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}))
