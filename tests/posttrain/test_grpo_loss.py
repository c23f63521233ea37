"""GRPO math (posttrain.grpo_loss): the properties the R1 issue lists, and TP2 log-probs == TP1."""

from __future__ import annotations

import pytest
import torch

from posttrain.grpo_loss import (
    GRPOLossConfig,
    clipped_policy_loss,
    group_advantages,
    k3_kl,
    token_entropy,
    token_logprobs,
)
from tests.distributed import run_distributed


def test_equal_rewards_give_zero_advantages() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    for loo in (False, True):
        for scale in (False, True):
            adv = group_advantages(rewards, leave_one_out=loo, scale_by_std=scale)
            assert torch.equal(adv, torch.zeros_like(rewards))


def test_advantages_are_standardised_per_group() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [5.0, 1.0, 2.0, 0.0]])
    adv = group_advantages(rewards, eps=0.0)
    assert torch.allclose(adv.mean(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(adv.std(1), torch.ones(2), atol=1e-6)
    loo = group_advantages(rewards, eps=0.0, leave_one_out=True, scale_by_std=False)
    assert loo[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.ones(3, 1))


def _loss_grad(ratio: float, advantage: float) -> float:
    """d loss / d logp of one response token whose ratio to the old policy is `ratio`."""
    logp = torch.tensor([[0.0]], requires_grad=True)
    old = -torch.log(torch.tensor([[ratio]]))
    loss, _ = clipped_policy_loss(
        logp, old, torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool), kl_coef=0.0
    )
    loss.backward()
    return float(logp.grad)


def test_gradient_is_zero_outside_the_trust_region_in_the_right_direction() -> None:
    eps = 0.2
    assert _loss_grad(1 + eps + 0.1, advantage=1.0) == 0.0  # A > 0, ratio above 1 + eps
    assert _loss_grad(1 - eps - 0.1, advantage=-1.0) == 0.0  # A < 0, ratio below 1 - eps
    # the other side of each bound still pulls the ratio back: gradient flows
    assert _loss_grad(1 - eps - 0.1, advantage=1.0) < 0.0
    assert _loss_grad(1 + eps + 0.1, advantage=-1.0) > 0.0
    for ratio in (0.9, 1.0, 1.1):  # inside the region: -A * ratio, gradient -A * ratio
        assert _loss_grad(ratio, advantage=1.0) == pytest.approx(-ratio)
        assert _loss_grad(ratio, advantage=-2.0) == pytest.approx(2 * ratio)


def test_k3_is_non_negative_and_zero_when_policies_match() -> None:
    torch.manual_seed(0)
    logp, ref = -5 * torch.rand(1000), -5 * torch.rand(1000)
    assert (k3_kl(logp, ref) >= 0).all()
    assert torch.equal(k3_kl(logp, logp), torch.zeros(1000))


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 7
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[0, 2:7], mask[1, 3:5], mask[2, 1:6] = True, True, True  # prompt before, padding after
    return {
        "logp": -torch.rand(b, t, generator=g),
        "old_logp": -torch.rand(b, t, generator=g),
        "ref_logp": -torch.rand(b, t, generator=g),
        "advantages": torch.randn(b, generator=g),
        "mask": mask,
    }


def test_normalisation_counts_only_response_tokens() -> None:
    batch = _batch()
    loss, metrics = clipped_policy_loss(**batch)
    changed = {k: v.clone() for k, v in batch.items()}
    outside = ~batch["mask"]
    for key in ("logp", "old_logp", "ref_logp"):  # prompt and padding: arbitrary values
        changed[key][outside] = 50 * torch.randn(int(outside.sum()))
    again, _ = clipped_policy_loss(**changed)
    assert float(again) == pytest.approx(float(loss), rel=1e-6)
    assert metrics["response_tokens"] == 12
    # the token-level mean: the sum of per-token terms over the 12 response tokens / 12
    m = batch["mask"]
    adv = batch["advantages"].unsqueeze(1).expand_as(m)
    ratio = torch.exp(batch["logp"] - batch["old_logp"])
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    kl = k3_kl(batch["logp"], batch["ref_logp"])
    assert float(loss) == pytest.approx(float((pg + 0.01 * kl)[m].sum() / 12), rel=1e-6)
    # a global normaliser (all micro-batches / DP ranks) divides the same sum
    global_loss, _ = clipped_policy_loss(**batch, num_tokens=48)
    assert float(global_loss) == pytest.approx(float(loss) / 4, rel=1e-6)


def test_loss_metrics() -> None:
    batch = _batch()
    logits = torch.randn(3, 7, 11)
    _, metrics = clipped_policy_loss(**batch, logits=logits)
    assert 0.0 <= metrics["clip_fraction"] <= 1.0 and metrics["kl"] >= 0.0
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    assert metrics["entropy"] == pytest.approx(float(entropy[batch["mask"]].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="ref_logp"):
        clipped_policy_loss(**{**batch, "ref_logp": None})
    with pytest.raises(ValueError, match="clip_eps_low"):
        GRPOLossConfig(clip_eps_low=1.5)


def _tp2_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, list]:
    """One TP rank: log-probs, their gradient and the entropy from its vocabulary half (as
    lists: a tensor sent back through the queue lives in the child's shared memory, which is
    gone once the child exits)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, half = dist.get_rank(), logits.shape[-1] // 2
    shard = logits[..., rank * half : (rank + 1) * half].clone().requires_grad_(True)
    logp = token_logprobs(shard, targets, dist.group.WORLD)
    (logp * torch.arange(1.0, 1 + logp.numel()).view_as(logp)).sum().backward()
    entropy = token_entropy(shard, dist.group.WORLD)
    return {"logp": logp.tolist(), "grad": shard.grad.tolist(), "entropy": entropy.tolist()}


def test_tp2_logprobs_equal_tp1() -> None:
    torch.manual_seed(0)
    logits, targets = 4 * torch.randn(2, 5, 16), torch.randint(0, 16, (2, 5))
    targets[0, :2] = torch.tensor([0, 15])  # both halves' edges
    full = logits.clone().requires_grad_(True)
    logp = token_logprobs(full, targets)
    (logp * torch.arange(1.0, 1 + logp.numel()).view_as(logp)).sum().backward()
    assert torch.allclose(
        logp, torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    )
    ranks = run_distributed(_tp2_logprobs, 2, logits, targets, timeout_s=60)
    for rank, out in enumerate(ranks):
        got = {k: torch.tensor(v) for k, v in out.items()}
        assert torch.allclose(got["logp"], logp.detach(), atol=1e-6)
        assert torch.allclose(got["grad"], full.grad[..., rank * 8 : (rank + 1) * 8], atol=1e-6)
        assert torch.allclose(got["entropy"], token_entropy(logits), atol=1e-5)
