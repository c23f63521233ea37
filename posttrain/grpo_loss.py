"""The math of GRPO as pure torch functions (the design of NeMo-RL's ClippedPGLossFn).

    adv = group_advantages(rewards.view(num_prompts, group_size))          # [P, G]
    logp = token_logprobs(logits, targets, tp_group)                        # [B, T]
    loss, metrics = clipped_policy_loss(logp, old_logp, adv.view(-1), mask, ref_logp=ref_logp)

- Advantages: (r - mean) / (std + eps) per group (sample std), or with `leave_one_out` the
  baseline of each sample is the mean of the others (RLOO); a group of equal rewards gives 0.
- Policy loss per token: max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)) with
  ratio = exp(logp - old_logp) (PPO's pessimistic bound; eps_high > eps_low is DAPO's
  clip-higher), plus kl_coef * k3(logp, ref_logp).
- Token-level normalisation (DAPO, NeMo-RL `token_level_loss`): the sum over response tokens
  divided by the number of response tokens. Pass `num_tokens` = the response-token count of the
  whole global batch (all micro-batches and data-parallel ranks) so that summing the
  micro-batch losses gives the global token mean; by default it is this batch's count.
  Positions outside `mask` (prompt, padding) never reach the loss, whatever their values.
- Log-probs under tensor parallelism: each rank holds a vocabulary slice of the logits
  (megatron's ColumnParallelLinear output head); the max, the sum of exponentials and the
  target logit are all-reduced over `tp_group` (megatron's vocab_parallel_cross_entropy, with
  the group passed in rather than read from parallel_state), so TP2 equals TP1 exactly up to
  float rounding, gradients included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class GRPOLossConfig:
    clip_eps_low: float = 0.2
    """Lower clip: the ratio is held at >= 1 - clip_eps_low for negative advantages."""
    clip_eps_high: float = 0.2
    """Upper clip: the ratio is held at <= 1 + clip_eps_high for positive advantages."""
    kl_coef: float = 0.01
    """Weight of the k3 KL to the frozen reference (0: no reference needed)."""
    leave_one_out: bool = False
    """Baseline each sample on the mean reward of the rest of its group (RLOO)."""
    scale_by_std: bool = True
    """Divide advantages by the group's reward std (False: Dr. GRPO's unscaled advantages)."""
    eps: float = 1e-6
    """Added to the std before dividing."""

    def __post_init__(self) -> None:
        if not (0 < self.clip_eps_low < 1 and self.clip_eps_high > 0):
            raise ValueError("need 0 < clip_eps_low < 1 and clip_eps_high > 0")
        if self.kl_coef < 0 or self.eps <= 0:
            raise ValueError("need kl_coef >= 0 and eps > 0")


def group_advantages(
    rewards: Tensor, eps: float = 1e-6, leave_one_out: bool = False, scale_by_std: bool = True
) -> Tensor:
    """Advantages of `rewards` [num_groups, group_size] relative to their group."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be [num_groups, group_size >= 2], got {list(rewards.shape)}"
        )
    rewards = rewards.float()
    size = rewards.shape[1]
    if leave_one_out:
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (size - 1)
    else:
        baseline = rewards.mean(1, keepdim=True)
    advantages = rewards - baseline
    if scale_by_std:
        advantages = advantages / (rewards.std(1, keepdim=True) + eps)
    return advantages


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: e^d - d - 1, d = ref - logp
    (>= 0, and 0 where the two agree)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def _group_size(group: Any) -> int:
    return 1 if group is None else dist.get_world_size(group)


class _VocabParallelLogProb(torch.autograd.Function):
    """log softmax(logits)[target] with the vocabulary split across `group` (forward all-reduces;
    backward is local: d logp / d logits = onehot(target) - softmax)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, group: Any) -> Tensor:
        part, ctx.dtype = logits.shape[-1], logits.dtype
        start = dist.get_rank(group) * part
        logits = logits.float()
        shift = logits.max(-1).values
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - shift.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(-1)
        dist.all_reduce(sum_exp, group=group)
        local = targets - start
        inside = (local >= 0) & (local < part)
        index = local.clamp(0, part - 1).unsqueeze(-1)
        picked = torch.where(inside, shifted.gather(-1, index).squeeze(-1), 0.0)
        dist.all_reduce(picked, group=group)
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), index, inside)
        return picked - sum_exp.log()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        softmax, index, inside = ctx.saved_tensors
        onehot = torch.zeros_like(softmax).scatter_(-1, index, inside.unsqueeze(-1).float())
        return ((onehot - softmax) * grad.unsqueeze(-1)).to(ctx.dtype), None, None


def token_logprobs(logits: Tensor, targets: Tensor, tp_group: Any = None) -> Tensor:
    """log p(target) per position, in float32. `logits` [..., V] or, with a tensor-parallel
    `tp_group`, this rank's vocabulary slice [..., V / tp] (rank r holds ids r*V/tp ...)."""
    if _group_size(tp_group) == 1:
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _VocabParallelLogProb.apply(logits, targets, tp_group)


@torch.no_grad()
def token_entropy(logits: Tensor, tp_group: Any = None) -> Tensor:
    """Entropy of the next-token distribution per position (vocab-parallel like token_logprobs)."""
    logits = logits.float()
    shift = logits.max(-1).values
    if _group_size(tp_group) > 1:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=tp_group)
    shifted = logits - shift.unsqueeze(-1)
    exp = shifted.exp()
    sums = torch.stack([exp.sum(-1), (exp * shifted).sum(-1)])
    if _group_size(tp_group) > 1:
        dist.all_reduce(sums, group=tp_group)
    return sums[0].log() - sums[1] / sums[0]


def _mean(values: Tensor, mask: Tensor) -> float:
    return float(values[mask].float().mean()) if bool(mask.any()) else 0.0


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    kl_coef: float = 0.01,
    ref_logp: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    logits: Tensor | None = None,
    tp_group: Any = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO's clipped surrogate loss (+ k3 KL), token-normalised, and its metrics.

    logp / old_logp / ref_logp / mask: [B, T] (mask true on response tokens); advantages [B] per
    sequence or [B, T]; `num_tokens`: the normaliser (default: mask.sum()); `logits` (this rank's
    vocabulary slice under TP) adds the mean entropy to the metrics."""
    mask = mask.bool()
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp (the reference model's log-probs)")
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    adv = torch.where(mask, adv.expand_as(logp).to(logp.dtype), 0.0)
    log_ratio = torch.where(mask, logp - old_logp, 0.0)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - clip_eps_low, 1 + clip_eps_high)
    per_token = torch.max(-adv * ratio, -adv * clipped)
    kl = torch.zeros_like(per_token)
    if ref_logp is not None:
        kl = k3_kl(torch.where(mask, logp, 0.0), torch.where(mask, ref_logp, 0.0))
        per_token = per_token + kl_coef * kl
    count = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens)
    loss = torch.where(mask, per_token, 0.0).sum() / count.clamp(min=1).to(per_token.dtype)
    with torch.no_grad():
        is_clipped = ((ratio > 1 + clip_eps_high) & (adv > 0)) | (
            (ratio < 1 - clip_eps_low) & (adv < 0)
        )
        metrics = {
            "loss": float(loss),
            "clip_fraction": _mean(is_clipped, mask),
            "kl": _mean(kl, mask),
            "ratio_mean": _mean(ratio, mask),
            "response_tokens": float(mask.sum()),
        }
        if logits is not None:
            metrics["entropy"] = _mean(token_entropy(logits, tp_group), mask)
    return loss, metrics
