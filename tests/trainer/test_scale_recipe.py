"""The published scale recipes: optimizer-state precision, FP8 weights, expert TP, collective
timeout, machine guards, and every production layout fitting its GPU by the estimator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.test_memory import load_model, precision
from trainer.config.optim import OptimConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig
from trainer.config.trainer import TrainerConfig
from trainer.features import check_features_supported
from trainer.memory import buffer_layout, estimate_memory, optimizer_bytes_per_element, rank_params

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30
FP8_BLOCKWISE = PrecisionConfig(
    name="fp8_blockwise", params_dtype="bf16", fp8_format="e4m3", fp8_recipe="blockwise"
)
BF16_MOMENTS = OptimConfig(precision_aware=True, exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16")


# ------------------------------------------------------------------------------------------
# Optimizer-state precision


@pytest.mark.parametrize(
    ("prec", "optim", "per_element", "per_tensor"),
    [
        (precision("fp32"), None, 8, 4),  # exp_avg + exp_avg_sq; torch's step per tensor
        (precision("bf16"), None, 12, 4),  # + fp32 master copy
        # V3 recipe: FP8 blockwise keeps megatron's fp32 master; TE's bf16 moments + 2 scales
        (FP8_BLOCKWISE, BF16_MOMENTS, 4 + 2 + 2, 8),
        # bf16 model: TE holds the master as 16-bit remainders of the bf16 weights
        (precision("bf16"), BF16_MOMENTS, 2 + 2 + 2, 8),
        (
            precision("bf16"),
            OptimConfig(
                precision_aware=True,
                exp_avg_dtype="bf16",
                exp_avg_sq_dtype="bf16",
                store_param_remainders=False,
            ),
            4 + 2 + 2,
            8,
        ),
        (
            precision("bf16"),
            OptimConfig(
                precision_aware=True,
                exp_avg_dtype="fp8",
                exp_avg_sq_dtype="fp16",
                main_params_dtype="fp16",
            ),
            2 + 1 + 2,
            16 + 4 + 4,
        ),
    ],
)
def test_optimizer_state_bytes(prec, optim, per_element: int, per_tensor: int) -> None:
    got = optimizer_bytes_per_element(prec, optim)
    assert (got.per_element, got.per_tensor) == (per_element, per_tensor)


def test_bf16_moments_in_the_estimate() -> None:
    """With the distributed optimizer only the 1/DP shard pays, at the state's bytes."""
    model, par = load_model("deepseek_v2_lite"), ParallelConfig(use_distributed_optimizer=True)
    plain = estimate_memory(model, par, FP8_BLOCKWISE, 1, 4096, 8, data_parallel_size=8)
    aware = estimate_memory(
        model, par, FP8_BLOCKWISE, 1, 4096, 8, data_parallel_size=8, optim=BF16_MOMENTS
    )
    assert (aware.weights, aware.grads) == (plain.weights, plain.grads)
    # 8 bytes instead of 12 per owned element; per-tensor extras are < 0.1% here
    assert aware.optimizer / plain.optimizer == pytest.approx(8 / 12, rel=1e-3)


def test_fp8_weights_have_their_own_one_byte_buffer() -> None:
    model = load_model("tiny_v3")
    fp8 = PrecisionConfig(**{**FP8_BLOCKWISE.__dict__, "fp8_param": True})
    params = rank_params(model, ParallelConfig(), 0, 0, fp8)
    gemm = [p for p in params if p.fp8]
    rest = [p for p in params if not p.fp8]
    assert {p.name.rsplit(".", 2)[-2] for p in gemm} >= {"linear_fc1", "linear_proj", "eh_proj"}
    assert not any("norm" in p.name or "embedding" in p.name or "router" in p.name for p in gemm)
    est = estimate_memory(model, ParallelConfig(), fp8, 1, 16, 1)
    assert est.weights == sum(p.numel for p in gemm) + 2 * sum(p.numel for p in rest)
    # the distributed optimizer pads each dtype's buffer on its own (as megatron's DDP)
    dist = estimate_memory(
        model, ParallelConfig(use_distributed_optimizer=True), fp8, 1, 16, 1, data_parallel_size=4
    )
    pads = [buffer_layout(group, 4, True, None).numel for group in (gemm, rest)]
    assert dist.weights == pads[0] + 2 * pads[1]


def test_expert_tensor_parallel_keeps_experts_whole() -> None:
    model = load_model("deepseek_v2_lite")
    tp2 = ParallelConfig(tensor_parallel=2, sequence_parallel=True, expert_parallel=8)
    etp1 = ParallelConfig(
        tensor_parallel=2, sequence_parallel=True, expert_parallel=8, expert_tensor_parallel=1
    )
    size = {p.name: p.numel for p in rank_params(model, tp2, 0, 0)}
    whole = {p.name: p.numel for p in rank_params(model, etp1, 0, 0)}
    expert = "decoder.layers.1.mlp.experts.local_experts.0.linear_fc1.weight"
    dense = "decoder.layers.0.mlp.linear_fc1.weight"
    assert whole[expert] == 2 * size[expert] and whole[dense] == size[dense]
    # expert-data-parallel group: world / (ETP x EP x PP) = 64 / 8 = 8 ranks share the states
    est = estimate_memory(
        model,
        etp1,
        precision("bf16"),
        1,
        4096,
        8,
        use_distributed_optimizer=True,
        data_parallel_size=32,
    )
    assert est.num_params == sum(whole.values())


# ------------------------------------------------------------------------------------------
# Config rules and machine guards: one line each, before anything is built


def _cfg(**parts) -> TrainerConfig:
    return TrainerConfig(model=load_model(parts.pop("model", "tiny_v3")), **parts)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: OptimConfig(exp_avg_dtype="bf16"), "exp_avg_dtype=bf16 needs precision_aware"),
        (lambda: OptimConfig(exp_avg_sq_dtype="int4"), "exp_avg_sq_dtype='int4' is not one of"),
        (
            lambda: _cfg(optim=BF16_MOMENTS, precision=precision("bf16")),
            "precision_aware needs parallel.use_distributed_optimizer",
        ),
        (
            lambda: _cfg(
                optim=BF16_MOMENTS,
                parallel=ParallelConfig(use_distributed_optimizer=True),
                precision=precision("fp32"),
            ),
            "needs a bf16/fp16 model",
        ),
        (
            lambda: _cfg(
                parallel=ParallelConfig(moe_a2a_overlap=True, moe_token_dispatcher="allgather"),
                precision=precision("bf16"),
            ),
            "moe_a2a_overlap needs expert_parallel > 1, moe_token_dispatcher alltoall or flex",
        ),
        (lambda: ParallelConfig(moe_token_dispatcher="deepep"), "is not one of"),
        (lambda: ParallelConfig(distributed_timeout_s=0), "distributed_timeout_s must be > 0"),
    ],
)
def test_bad_recipe_configs_are_one_line(build, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


@pytest.mark.parametrize(
    ("parallel", "optim", "message"),
    [
        ({}, BF16_MOMENTS, "precision_aware needs Transformer Engine's FusedAdam"),
        ({"moe_token_dispatcher": "flex"}, None, "flex needs DeepEP"),
        ({"moe_permute_fusion": True}, None, "needs Transformer Engine >= 2.1, found none"),
        (
            {
                "moe_a2a_overlap": True,
                "expert_parallel": 2,
                "pipeline_parallel": 2,
                "virtual_pipeline_parallel": 2,
            },
            None,
            "moe_a2a_overlap needs CUDA",
        ),
    ],
)
def test_features_refused_on_a_machine_without_them(parallel, optim, message: str) -> None:
    cfg = _cfg(
        parallel=ParallelConfig(use_distributed_optimizer=True, **parallel),
        optim=optim or OptimConfig(),
        precision=precision("bf16"),
    )
    with pytest.raises(ValueError, match=message):
        check_features_supported(cfg, te_version=None, cuda=False, deep_ep=False)


def test_features_accepted_where_present() -> None:
    cfg = _cfg(
        parallel=ParallelConfig(
            use_distributed_optimizer=True, moe_token_dispatcher="flex", moe_permute_fusion=True
        ),
        optim=BF16_MOMENTS,
        precision=precision("bf16"),
    )
    check_features_supported(cfg, te_version="2.8.0", cuda=True, deep_ep=True)


def _group_timeouts(timeout_s: float) -> list[float]:
    from megatron.core import parallel_state as ps

    from trainer.config.model import ModelConfig
    from trainer.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(ModelConfig(), ParallelConfig(distributed_timeout_s=timeout_s), 1)
    try:
        groups = [torch.distributed.group.WORLD, ps.get_data_parallel_group()]
        groups.append(ps.get_tensor_model_parallel_group())
        cpu = torch.device("cpu")
        return [g._get_backend(cpu).options._timeout.total_seconds() for g in groups]
    finally:
        destroy_parallel()


def test_distributed_timeout_reaches_every_group() -> None:
    from tests.distributed import run_distributed

    assert run_distributed(_group_timeouts, 1, 1234.0, timeout_s=60)[0] == [1234.0] * 3


# ------------------------------------------------------------------------------------------
# Optimizer bytes against a real precision-aware optimizer (needs TE and a GPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and TE")
def test_bf16_moments_equal_megatron_allocation() -> None:
    pytest.importorskip("transformer_engine")
    from tests.distributed import run_distributed

    got = run_distributed(_allocated_precision_aware, 1, "tiny_v3", timeout_s=180)[0]
    est = estimate_memory(
        load_model("tiny_v3"),
        ParallelConfig(use_distributed_optimizer=True),
        precision("bf16"),
        1,
        16,
        2,
        optim=BF16_MOMENTS,
    )
    assert got[:2] == (est.weights, est.grads)
    # TE keeps the moments' fp32 scales (8 bytes per tensor) outside optimizer.state, where
    # allocated_static_bytes does not look: the estimate counts them, the measurement not
    tensors = len(rank_params(load_model("tiny_v3"), ParallelConfig(), 0, 0))
    assert est.optimizer - got[2] == 8 * tensors


def _allocated_precision_aware(name: str) -> tuple[int, int, int]:
    from trainer.batches import SyntheticDataset
    from trainer.config.data import DataConfig
    from trainer.loop import Trainer
    from trainer.memory_measure import allocated_static_bytes
    from trainer.parallel import destroy_parallel, initialize_parallel

    model = load_model(name)
    par = ParallelConfig(use_distributed_optimizer=True)
    cfg = TrainerConfig(
        model=model,
        parallel=par,
        precision=precision("bf16"),
        optim=BF16_MOMENTS,
        data=DataConfig(seq_length=16),
    )
    cfg.train.global_batch_size, cfg.train.micro_batch_size = 2, 1
    initialize_parallel(model, par, seed=1)
    try:
        trainer = Trainer(cfg, SyntheticDataset(16, 16, model.vocab_size))
        trainer.train_step()
        got = allocated_static_bytes(trainer.model, trainer.optimizer)
        return got.weights, got.grads, got.optimizer
    finally:
        destroy_parallel()


# ------------------------------------------------------------------------------------------
# Production layouts fit their GPUs (dry run, estimator)

PRODUCTION = {
    # layout: (model, precision, world, global batch) as published
    "v3_h100_1024": ("deepseek_v3", "fp8_blockwise", 1024, 4096),
    "v3_h800_2048": ("deepseek_v3", "fp8_blockwise", 2048, 15360),
    "v2_h800": ("deepseek_v2", "bf16", 1024, 9216),
    "llm67b_a100": ("deepseek_llm_67b", "bf16", 1024, 4608),
}


def dry_run(layout: str, *extra: str) -> tuple[str, dict]:
    model, prec, world, batch = PRODUCTION[layout]
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        f"model={model}",
        f"parallel={layout}",
        f"precision={prec}",
        "dry_run=true",
        f"world_size={world}",
        f"train.global_batch_size={batch}",
        "train.micro_batch_size=1",
        "data.seq_length=4096",
        *extra,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


def _plan(layout: str, *extra: str) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from trainer.dry_run import plan

    ConfigStore.instance().store(name="trainer_schema", node=TrainerConfig)
    model, prec, world, batch = PRODUCTION[layout]
    overrides = [f"model={model}", f"parallel={layout}", f"precision={prec}", "dry_run=true"]
    overrides += [f"world_size={world}", f"train.global_batch_size={batch}"]
    overrides += ["train.micro_batch_size=1", "data.seq_length=4096", *extra]
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return plan(OmegaConf.to_object(compose("trainer", overrides=overrides)))


@pytest.mark.parametrize("layout", sorted(PRODUCTION))
def test_production_layout_fits_its_gpu(layout: str) -> None:
    report = _plan(layout)
    assert report["fits"], (layout, report["memory_breakdown_bytes"], report["headroom_bytes"])
    # a stated margin for what the estimate leaves out (CUDA context, allocator, NCCL buffers)
    assert report["headroom_bytes"] >= 2 * GiB, (layout, report["headroom_bytes"] / GiB)


def _phase_overrides(phase: str) -> list[str]:
    """A phase of conf/recipe/deepseek_v3.yaml as trainer overrides (model=, init_from aside)."""
    from omegaconf import OmegaConf

    recipe = OmegaConf.load(ROOT / "conf" / "recipe" / "deepseek_v3.yaml")
    return [o for o in recipe.phases[phase] if not o.startswith(("model=", "checkpoint."))]


@pytest.mark.parametrize(("phase", "cp"), [("yarn_32k", 8), ("yarn_128k", 32)])
def test_v3_context_extension_phases_fit_with_context_parallelism(phase: str, cp: int) -> None:
    """The recipe's long phases on the 1024-H100 layout: without CP the 32K phase needs ~400
    GiB per GPU; splitting the sequence over CP ranks (DP shrinks, the batch still divides)
    brings each back under 80 GiB."""
    report = _plan("v3_h100_1024", *_phase_overrides(phase), f"parallel.context_parallel={cp}")
    assert report["fits"], (phase, report["memory_breakdown_bytes"])
    if cp == 8:
        assert not _plan("v3_h100_1024", *_phase_overrides(phase))["fits"]


def test_v3_h100_dry_run_prints_breakdown_and_headroom() -> None:
    out, report = dry_run("v3_h100_1024")
    assert "fits in 80.00 GiB per GPU: headroom" in out
    assert "precision-aware optimizer (exp_avg bf16, exp_avg_sq bf16" in out
    assert report["memory_per_gpu_bytes"] < 80 * GiB and report["fits"] is True
