"""Reduce per-rank training statistics into one set of run metrics (identical on all ranks).

Sources: the LM loss reported by the loss function (last pipeline stage), megatron's MTP and
MoE aux-loss trackers, and forward hooks on every router counting tokens per expert. All
values are combined with one world-wide all-reduce in which each statistic is contributed
exactly once per data-parallel replica, so the numbers do not depend on the layout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.moe.moe_utils import (
    clear_aux_losses_tracker,
    get_moe_layer_wise_logging_tracker,
)
from megatron.core.transformer.moe.router import TopKRouter
from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

from trainer.config.model import ModelConfig
from trainer.flops import flops_per_token


class MetricsCollector:
    """Hooks the routers of `model` and reduces step metrics across ranks."""

    def __init__(self, model_cfg: ModelConfig, model: list[torch.nn.Module], tconfig: Any):
        self.model_cfg = model_cfg
        self.num_experts = model_cfg.num_experts or 0
        slots = model_cfg.num_layers + model_cfg.mtp_num_layers + 1
        self.counts = torch.zeros(slots, max(self.num_experts, 1))
        self.routers: list[TopKRouter] = []
        for chunk in model:
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    self.routers.append(module)
                    module.register_forward_hook(self._count_hook)
        self.world = dist.get_world_size()
        self.dp_size = ps.get_data_parallel_world_size()
        self.contributes = (
            ps.get_tensor_model_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0
        )
        self.last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        self._flops: dict[int, float] = {}

    def _count_hook(self, module: TopKRouter, _inputs: Any, outputs: Any) -> None:
        if module.training:
            routing_map = outputs[1]
            slot = min(int(module.layer_number or 0), self.counts.shape[0] - 1)
            self.counts[slot] += routing_map.sum(dim=0).detach().float().cpu()

    def start_step(self) -> None:
        self.counts.zero_()
        self.clear_trackers()

    @staticmethod
    def clear_trackers() -> None:
        clear_aux_losses_tracker()
        if "values" in MTPLossLoggingHelper.tracker:
            MTPLossLoggingHelper.tracker["values"].zero_()

    def _local_vector(self, losses: list[dict], num_microbatches: int) -> torch.Tensor:
        lm = torch.zeros(2)
        for item in losses:
            lm += item["lm loss"].float().cpu()
        mtp = torch.zeros(1)
        values = MTPLossLoggingHelper.tracker.get("values")
        if values is not None:
            mtp += values.float().cpu().sum() / max(self.model_cfg.mtp_num_layers, 1)
        aux = torch.zeros(1)
        for entry in get_moe_layer_wise_logging_tracker().values():
            aux += entry["values"].float().cpu().sum()
        scale = 1.0 / (num_microbatches * self.dp_size)
        vec = torch.cat([lm, mtp * scale, aux * scale])
        return vec if self.contributes else torch.zeros_like(vec)

    def reduce(self, losses: list[dict], num_microbatches: int) -> dict[str, float]:
        """Metrics of the step just run (call on every rank)."""
        vec = torch.cat([self._local_vector(losses, num_microbatches), self.counts.flatten()])
        vec = _all_reduce(vec)
        lm_sum, lm_count, mtp, aux = vec[:4].tolist()
        lm_loss = lm_sum / max(lm_count, 1.0)
        moe_layers = max(sum(self.model_cfg.moe_layer_pattern), 1)
        metrics = {
            "lm_loss": lm_loss,
            "mtp_loss": mtp,
            "load_balancing_loss": aux / moe_layers,
            "loss": lm_loss
            + self.model_cfg.mtp_loss_weight * mtp
            + self.model_cfg.aux_loss_coeff * aux,
        }
        metrics.update(self._expert_metrics(vec[4:].view_as(self.counts)))
        self.clear_trackers()
        return metrics

    def _expert_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        if not self.num_experts:
            return {}
        used = counts[counts.sum(dim=1) > 0]
        if used.numel() == 0:
            return {}
        share = used / used.sum(dim=1, keepdim=True)
        mean_share = share.mean(dim=0)
        imbalance = (share.max(dim=1).values * self.num_experts).max()
        out = {f"expert_share/{i}": float(v) for i, v in enumerate(mean_share)}
        out["expert_imbalance_max_over_mean"] = float(imbalance)
        return out

    def broadcast_lm_loss(self, total: torch.Tensor) -> float:
        """Per-token LM loss from (sum, count) of this rank's last-stage micro-batches."""
        vec = total.clone() if self.contributes and self.last_stage else torch.zeros(2)
        vec = _all_reduce(vec)
        return float(vec[0] / vec[1].clamp(min=1))

    def throughput(self, seconds: float, cfg: Any) -> dict[str, float]:
        tokens = cfg.train.global_batch_size * cfg.data.seq_length
        tokens_per_s = tokens / max(seconds, 1e-9)
        seq = cfg.data.seq_length
        if seq not in self._flops:  # analytical count walks every parameter spec: cache it
            self._flops[seq] = flops_per_token(self.model_cfg, seq)
        flops = self._flops[seq] * tokens_per_s
        mfu = flops / (cfg.logging.peak_flops_per_device * self.world)
        return {"tokens_per_s": tokens_per_s, "mfu": mfu, "step_time_s": seconds}


def _all_reduce(vec: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks (through the GPU when the backend is NCCL); returns a CPU tensor."""
    if torch.cuda.is_available():
        vec = vec.cuda()
    dist.all_reduce(vec)
    return vec.cpu()
