"""Learning-rate schedules (trainer.schedule)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config.optim import OptimConfig
from trainer.schedule import LRScheduler, lr_at


def test_warmup_is_linear_to_peak() -> None:
    cfg = OptimConfig(lr=1e-3, warmup_steps=4)
    assert [lr_at(s, 100, cfg) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_cosine_decays_from_peak_to_min() -> None:
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    assert lr_at(10, 110, cfg) == pytest.approx(1e-3)
    assert lr_at(60, 110, cfg) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway
    assert lr_at(110, 110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, 110, cfg) == pytest.approx(1e-4)  # stays at min after the decay
    values = [lr_at(s, 110, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_deepseek_multistep() -> None:
    """DeepSeek-LLM: peak until 80% of training, 31.6% of it until 90%, then 10%."""
    cfg = OptimConfig(lr=4.2e-4, warmup_steps=20, schedule="multistep")
    total = 1000
    assert lr_at(20, total, cfg) == pytest.approx(4.2e-4)
    assert lr_at(799, total, cfg) == pytest.approx(4.2e-4)
    assert lr_at(800, total, cfg) == pytest.approx(4.2e-4 * 0.316)
    assert lr_at(899, total, cfg) == pytest.approx(4.2e-4 * 0.316)
    assert lr_at(900, total, cfg) == pytest.approx(4.2e-4 * 0.1)
    assert lr_at(999, total, cfg) == pytest.approx(4.2e-4 * 0.1)


def test_decay_steps_overrides_run_length() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=100)
    assert lr_at(50, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_bad_configs_raise() -> None:
    with pytest.raises(ValueError, match="schedule='linear'"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="min_lr"):
        OptimConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="same length"):
        OptimConfig(multistep_milestones=[0.8], multistep_factors=[0.3, 0.1])
    with pytest.raises(ValueError, match="increasing"):
        OptimConfig(multistep_milestones=[0.9, 0.8])
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, 10, OptimConfig())


def test_scheduler_sets_lr_and_resumes_exactly() -> None:
    cfg = OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=3)
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW([{"params": params}, {"params": [], "lr_mult": 0.5}])
    sched = LRScheduler(opt, cfg, total_steps=20)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    assert seen == pytest.approx([lr_at(s, 20, cfg) for s in range(7)])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * lr_at(7, 20, cfg))
    state = sched.state_dict()
    resumed = LRScheduler(torch.optim.AdamW(params), cfg, total_steps=20)
    resumed.load_state_dict(state)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(7, 20, cfg))
