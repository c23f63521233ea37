"""Tiny DeepSeek-V3 (MLA + MoE with shared experts, first dense layer, group-limited sigmoid
routing with expert bias, seq aux loss, MTP) trained on CPU over gloo.

Three process groups run once per module (1, 2 and 4 ranks); each runs several layouts in
turn so process start-up is paid once:
- 1 rank: writes the initial weights every layout loads, the reference losses, and the
  expert-bias experiment;
- 2 ranks: TP2+SP, PP2, EP2, DP2, PP2xVPP2 parity, the same with activation recompute
  (TP2 selective, PP2 full, EP2 moe + layernorm), exact resume, TP2->TP1 and PP2->PP1 loads;
- 4 ranks: TP2xPP2 and DP2xEP2 parity.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.distributed import run_distributed

STEPS = 3
SEQ = 64
RECOMPUTE_ALL_BUT_MOE = ["core_attn", "mla_up_proj", "layernorm", "mlp", "shared_experts"]
TWO_RANK_LAYOUTS = {
    "tp2": {"tensor_parallel": 2, "sequence_parallel": True},
    "pp2": {"pipeline_parallel": 2},
    "ep2": {"expert_parallel": 2},
    "dp2": {},
    "dp2_distributed_optimizer": {"use_distributed_optimizer": True},
    "pp2_vpp2": {"pipeline_parallel": 2, "virtual_pipeline_parallel": 2},
    # activation recompute changes no loss: one run per layout, compared to the same reference
    "tp2_recompute_selective": {
        "tensor_parallel": 2,
        "sequence_parallel": True,
        "recompute": {"granularity": "selective", "modules": RECOMPUTE_ALL_BUT_MOE},
    },
    "pp2_recompute_full": {"pipeline_parallel": 2, "recompute": {"granularity": "full"}},
    "ep2_recompute_moe": {
        "expert_parallel": 2,
        "recompute": {"granularity": "selective", "modules": ["moe", "layernorm"]},
    },
}
RESUME_LAYOUTS = {
    "pp2": {"pipeline_parallel": 2},
    "dp2_distributed_optimizer": {"use_distributed_optimizer": True},
}
FOUR_RANK_LAYOUTS = {
    "tp2_pp2": {"tensor_parallel": 2, "sequence_parallel": True, "pipeline_parallel": 2},
    "dp2_ep2": {"expert_parallel": 2},
}


def _config(parallel: dict[str, Any], **model: Any) -> Any:
    """`parallel` holds ParallelConfig fields, and `recompute` (RecomputeConfig fields)."""
    from trainer.config.model import ModelConfig
    from trainer.config.optim import OptimConfig
    from trainer.config.parallel import ParallelConfig
    from trainer.config.precision import PrecisionConfig
    from trainer.config.recompute import RecomputeConfig
    from trainer.config.trainer import TrainConfig, TrainerConfig

    parallel = dict(parallel)
    cfg = TrainerConfig(
        model=ModelConfig(**model),
        recompute=RecomputeConfig(**parallel.pop("recompute", {})),
        parallel=ParallelConfig(**parallel),
        precision=PrecisionConfig(name="fp32", params_dtype="fp32"),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=0),
        train=TrainConfig(steps=4, global_batch_size=8, micro_batch_size=2, eval_iters=1),
    )
    cfg.data.seq_length = SEQ
    return cfg


def _trainer(parallel: dict[str, Any], init: str | None = None, **model: Any) -> Any:
    from trainer.batches import SyntheticDataset
    from trainer.loop import Trainer
    from trainer.parallel import initialize_parallel

    cfg = _config(parallel, **model)
    initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    vocab = cfg.model.vocab_size
    trainer = Trainer(cfg, SyntheticDataset(512, SEQ, vocab), SyntheticDataset(64, SEQ, vocab, 1))
    if init:
        trainer.load(init, weights_only=True)
    return trainer


def _losses(trainer: Any, steps: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(steps):
        m = trainer.train_step()
        out.append((m["lm_loss"], m["loss"]))
    return out


def _one_rank(root: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    trainer = _trainer({})
    trainer.save(f"{root}/init", keep_last=1)
    reference = _losses(trainer, STEPS)
    fresh_again = _losses(_trainer({}), STEPS)  # same seed, built from scratch again
    return {"reference": reference, "fresh_again": fresh_again, "bias": _expert_bias_experiment()}


def _expert_bias_experiment() -> dict[str, Any]:
    """Start with a bias that sends every token to experts 0 and 1; the aux-loss-free update
    (router weights frozen by a ~0 LR, no aux loss) must take it back and spread the load."""
    import torch

    trainer = _trainer({}, router_bias_update_rate=0.02, load_balancing_type="none")
    trainer.cfg.optim.lr = trainer.cfg.optim.min_lr = 1e-9
    start = torch.tensor([0.3, 0.3] + [0.0] * 6)
    for router in trainer.metrics.routers:
        router.expert_bias.copy_(start)
    imbalance = [trainer.train_step()["expert_imbalance_max_over_mean"] for _ in range(10)]
    return {
        "imbalance": imbalance,
        "start": start.tolist(),
        "bias": trainer.metrics.routers[0].expert_bias.tolist(),
    }


def _two_ranks(root: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    init = f"{root}/init/iter_0000000"
    out: dict[str, Any] = {
        n: _losses(_trainer(p, init), STEPS) for n, p in TWO_RANK_LAYOUTS.items()
    }
    # Exact resume: 4 uninterrupted steps vs 2 + checkpoint + fresh trainer + 2.
    for name, layout in RESUME_LAYOUTS.items():
        full = _losses(_trainer(layout, init), 4)
        first = _trainer(layout, init)
        _losses(first, 2)
        first.save(f"{root}/resume_{name}", keep_last=2)
        second = _trainer(layout)
        second.load(f"{root}/resume_{name}/iter_0000002")
        out[f"resume_{name}"] = {"full": full, "resumed": _losses(second, 2), "step": second.step}
    # Resharding: save under TP2 / PP2 after 2 steps, load under TP1 x PP1 (DP2).
    for name, layout in (("tp2", TWO_RANK_LAYOUTS["tp2"]), ("pp2", TWO_RANK_LAYOUTS["pp2"])):
        src = _trainer(layout, init)
        _losses(src, 2)
        saved = src.save(f"{root}/reshard_{name}", keep_last=1)
        before = src.evaluate()
        out[f"reshard_{name}"] = (before, _trainer({}, saved).evaluate())
    return out


def _four_ranks(root: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    init = f"{root}/init/iter_0000000"
    return {n: _losses(_trainer(p, init), STEPS) for n, p in FOUR_RANK_LAYOUTS.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = str(tmp_path_factory.mktemp("training"))
    one = run_distributed(_one_rank, 1, root)[0]
    two = run_distributed(_two_ranks, 2, root)[0]
    four = run_distributed(_four_ranks, 4, root)[0]
    return {"one": one, "two": two, "four": four, "root": Path(root)}


def _assert_close(got: list, want: list, rel: float = 2e-5) -> None:
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for a, b in zip(g, w, strict=True):
            assert math.isclose(a, b, rel_tol=rel), f"step {step}: {got} != {want}"


@pytest.mark.parametrize("layout", list(TWO_RANK_LAYOUTS) + list(FOUR_RANK_LAYOUTS))
def test_layout_matches_single_process(runs: dict, layout: str) -> None:
    group = runs["two"] if layout in TWO_RANK_LAYOUTS else runs["four"]
    _assert_close(group[layout], runs["one"]["reference"])


def test_same_seed_gives_identical_runs(runs: dict) -> None:
    """Initialisation and data are seeded end to end: two fresh runs match bit for bit."""
    assert runs["one"]["fresh_again"] == runs["one"]["reference"]


@pytest.mark.parametrize("layout", list(RESUME_LAYOUTS))
def test_resume_is_exact(runs: dict, layout: str) -> None:
    resume = runs["two"][f"resume_{layout}"]
    assert resume["step"] == 4
    assert resume["resumed"] == resume["full"][2:]


@pytest.mark.parametrize("source", ["tp2", "pp2"])
def test_checkpoint_loads_under_other_layout(runs: dict, source: str) -> None:
    before, after = runs["two"][f"reshard_{source}"]
    assert math.isclose(before, after, rel_tol=1e-6), (before, after)


def test_checkpoints_are_atomic_with_latest_pointer(runs: dict) -> None:
    resume_dir = runs["root"] / "resume_pp2"
    assert (resume_dir / "latest").read_text().strip() == "iter_0000002"
    assert not list(resume_dir.glob("*.tmp"))


def test_expert_bias_moves_toward_balance(runs: dict) -> None:
    bias = runs["one"]["bias"]
    start, end, imbalance = bias["start"], bias["bias"], bias["imbalance"]
    assert imbalance[0] == pytest.approx(4.0), "experts 0 and 1 take all tokens at first"
    assert end[0] < start[0] and end[1] < start[1], "overloaded experts' bias must fall"
    assert all(e > s for e, s in zip(end[2:], start[2:], strict=True)), "idle experts' must rise"
    assert min(imbalance[1:]) < 0.6 * imbalance[0], imbalance


def _gpu_steps() -> list[tuple[float, float]]:
    trainer = _trainer({})
    return _losses(trainer, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_v3_trains_on_gpu() -> None:
    losses = run_distributed(_gpu_steps, 1)[0]
    assert all(math.isfinite(lm) for lm, _ in losses)
