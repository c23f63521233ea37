"""Memory estimate (trainer.memory): buffer layout, sharding, and exactness against megatron."""

from __future__ import annotations

import traceback
from functools import partial
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.distributed import run_distributed
from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig
from trainer.flops import count_parameters
from trainer.memory import LocalParam, buffer_bytes, buffer_layout, estimate_memory, rank_params
from trainer.pp_layout import Stage, chunk_layers, parse_pipeline_layout, pipeline_stages

CONF = Path(__file__).resolve().parents[2] / "conf"
GiB = 2**30


def load_model(name: str) -> ModelConfig:
    node = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(CONF / "model" / f"{name}.yaml")
    )
    return OmegaConf.to_object(node)


def precision(dtype: str) -> PrecisionConfig:
    return PrecisionConfig(name=dtype, params_dtype=dtype)


def _params(*numels: int) -> list[LocalParam]:
    return [LocalParam(f"p{i}", n, False) for i, n in enumerate(numels)]


def test_buffer_layout_plain_ddp_is_dense() -> None:
    layout = buffer_layout(_params(100, 30), dp=2, distributed_optimizer=False, bucket_size=None)
    assert layout.numel == 130 and layout.ranges == [(30, 130), (0, 30)]


def test_buffer_layout_distributed_optimizer_pads() -> None:
    """Params start at multiples of 64 (filled in reverse order), the bucket ends at a
    multiple of lcm(DP, 128)."""
    layout = buffer_layout(_params(100, 30), dp=3, distributed_optimizer=True, bucket_size=None)
    assert layout.ranges == [(64, 164), (0, 30)]
    assert layout.numel == 384 and layout.buckets == [(0, 384)]


def test_buffer_layout_buckets_and_shared_embedding() -> None:
    params = [LocalParam("emb", 10, False, shared_embedding=True), *_params(50, 50, 50)]
    layout = buffer_layout(params, dp=1, distributed_optimizer=True, bucket_size=100)
    # reversed: 50 @0, 50 @64 -> bucket [0,128); 50 @128 -> open; emb closes it, own bucket.
    assert layout.buckets == [(0, 128), (128, 256), (256, 384)]
    assert layout.ranges[0] == (256, 266)


def test_distributed_optimizer_shards_states() -> None:
    params = _params(1000, 3000)
    full = buffer_bytes(params, 1, precision("bf16"), False, None)
    assert full.weights == 4000 * 2 and full.grads == 4000 * 4
    assert full.optimizer == 4000 * 12 + 2 * 4  # master + exp_avg + exp_avg_sq, 2 steps
    sharded = buffer_bytes(params, 4, precision("bf16"), True, None)
    assert sharded.grads == 4096 * 4 and sharded.weights == 4096 * 2  # padded, not sharded
    assert sharded.optimizer == 1024 * 12 + 4  # rank 0: first 1024 elements, one param
    fp32 = buffer_bytes(params, 1, precision("fp32"), False, None)
    assert fp32.optimizer == 4000 * 8 + 2 * 4  # fp32 params are their own master copy


def test_chunk_layers_match_megatron_interleaving() -> None:
    assert list(chunk_layers(8, 2, None, 1, 0)) == [4, 5, 6, 7]
    assert list(chunk_layers(8, 2, 2, 0, 0)) == [0, 1]
    assert list(chunk_layers(8, 2, 2, 1, 0)) == [2, 3]
    assert list(chunk_layers(8, 2, 2, 0, 1)) == [4, 5]
    with pytest.raises(ValueError, match="not divisible by PP x VPP = 6"):
        chunk_layers(8, 3, 2, 0, 0)


def test_uneven_pipeline_layout_of_the_v3_recipe() -> None:
    """Megatron's layout syntax: 61 layers on PP8 x VPP4, embedding + 2 layers first, MTP and
    loss alone on the last virtual stage."""
    v3 = load_model("deepseek_v3")
    par = ParallelConfig(
        pipeline_parallel=8, virtual_pipeline_parallel=4, pipeline_layout="Ett|(tt|)*29t|mL"
    )
    stages = pipeline_stages(v3, par)
    flat = [stages[r][c] for c in range(4) for r in range(8)]  # megatron's stage order
    assert [i for st in flat for i in st.layers] == list(range(61))
    assert flat[0].embedding and flat[0].layers == (0, 1) and flat[30].layers == (60,)
    assert flat[31] == Stage(layers=(), embedding=False, mtp=True, last=True, first=False)
    held = [p for r in range(8) for c in range(4) for p in rank_params(v3, par, r, c)]
    routed = count_parameters(v3).breakdown["routed_experts"]
    table = v3.vocab_size * v3.hidden_size
    assert sum(p.numel for p in held) == count_parameters(v3).total + table  # + MTP's copy
    assert routed > 0
    last = rank_params(v3, par, 7, 3)
    assert [p.name for p in last][:2] == [
        "embedding.word_embeddings.weight",
        "decoder.final_layernorm.weight",
    ]
    est = estimate_memory(v3, par, precision("bf16"), 1, 4096, 32, data_parallel_size=64)
    assert len(est.per_pipeline_rank) == 8 and est.total == max(est.per_pipeline_rank)
    with pytest.raises(ValueError, match="pipeline_layout"):
        estimate_memory(v3, ParallelConfig(pipeline_parallel=8), precision("bf16"), 1, 4096, 32)


@pytest.mark.parametrize("layout", ["Ett|(tt|)*29t|mL", "E,t*3|(tt|)*2,m|L", "Et|t|t|tmL"])
def test_layout_parser_matches_megatron(layout: str) -> None:
    from megatron.core.transformer.pipeline_parallel_layer_layout import (
        PipelineParallelLayerLayout,
    )

    theirs = PipelineParallelLayerLayout.parse_str_to_list(layout)
    assert parse_pipeline_layout(layout) == [[t.name for t in stage] for stage in theirs]
    with pytest.raises(ValueError, match="unknown characters"):
        parse_pipeline_layout("Etx|L")


def test_rank_params_split_the_model() -> None:
    cfg = load_model("tiny_v3")
    total = count_parameters(cfg).total
    one = rank_params(cfg, ParallelConfig(), 0, 0)
    assert sum(p.numel for p in one) == total
    pp = ParallelConfig(pipeline_parallel=2)
    first, last = rank_params(cfg, pp, 0, 0), rank_params(cfg, pp, 1, 0)
    assert last[-1].name == "output_layer.weight"
    # MTP on the last stage needs its own copy of the embedding; megatron marks both copies
    # `shared_embedding` (synchronised over the embedding group, own DDP bucket).
    for stage in (first, last):
        assert stage[0].name == "embedding.word_embeddings.weight" and stage[0].shared_embedding
    no_mtp = load_model("tiny_dense")
    assert not rank_params(no_mtp, pp, 0, 0)[0].shared_embedding
    tied = ModelConfig(**{**vars(no_mtp), "untie_embeddings_and_output_weights": False})
    assert rank_params(tied, pp, 0, 0)[0].shared_embedding
    table = tied.vocab_size * tied.hidden_size
    assert rank_params(tied, pp, 1, 0)[-1] == LocalParam("output_layer.weight", table, False, True)
    assert "output_layer.weight" not in [p.name for p in rank_params(tied, ParallelConfig(), 0, 0)]
    emb = cfg.vocab_size * cfg.hidden_size
    assert sum(p.numel for p in first + last) == total + emb
    ep = rank_params(cfg, ParallelConfig(expert_parallel=2), 0, 0)
    routed = count_parameters(cfg).breakdown["routed_experts"]
    assert sum(p.numel for p in ep) == total - routed // 2
    assert all(p.expert_buffer == (".local_experts." in p.name) for p in ep)
    tp = rank_params(cfg, ParallelConfig(tensor_parallel=2, sequence_parallel=True), 0, 0)
    assert sum(p.numel for p in tp) < total * 0.6


def test_full_size_estimates_are_sane() -> None:
    """DeepSeek-V2 on 8-way TP x 8-way EP with the distributed optimizer over DP 32."""
    v2 = load_model("deepseek_v2")
    par = ParallelConfig(
        tensor_parallel=4,
        pipeline_parallel=6,
        expert_parallel=8,
        sequence_parallel=True,
        use_distributed_optimizer=True,
    )
    est = estimate_memory(v2, par, precision("bf16"), 1, 4096, 16, data_parallel_size=32)
    total = count_parameters(v2).total
    assert est.num_params < total / 20
    assert est.weights == pytest.approx(2 * est.num_params, rel=0.01)
    assert est.grads == pytest.approx(4 * est.num_params, rel=0.01)
    assert est.optimizer < est.grads  # 12 bytes/param over DP
    assert 5 * GiB < est.total < 80 * GiB
    assert len(est.per_pipeline_rank) == 6 and est.total == max(est.per_pipeline_rank)
    no_distopt = estimate_memory(
        v2,
        par,
        precision("bf16"),
        1,
        4096,
        16,
        use_distributed_optimizer=False,
        data_parallel_size=32,
    )
    # Expert weights (most of V2) shard over the expert-DP group (32 / EP 8 = 4), dense over 32.
    assert 5 * est.optimizer < no_distopt.optimizer < 8 * est.optimizer


def test_activations_grow_with_batch_and_pipeline_depth() -> None:
    cfg = load_model("deepseek_llm_7b")
    base = estimate_memory(cfg, ParallelConfig(), precision("bf16"), 1, 4096, 8)
    double = estimate_memory(cfg, ParallelConfig(), precision("bf16"), 2, 4096, 8)
    # all but RoPE's cos/sin tables (per position, shared by the batch: 0.3% here) double
    assert double.activations == pytest.approx(2 * base.activations, rel=0.01)
    assert double.activations < 2 * base.activations
    pp = estimate_memory(cfg, ParallelConfig(pipeline_parallel=2), precision("bf16"), 1, 4096, 8)
    assert pp.pipeline_rank == 0  # first stage holds PP micro-batches in flight
    unfused = estimate_memory(
        cfg, ParallelConfig(), precision("bf16"), 1, 4096, 8, flash_attention=False
    )
    assert unfused.activations > 2 * base.activations  # s^2 attention scores
    with pytest.raises(ValueError):
        estimate_memory(cfg, ParallelConfig(), precision("bf16"), 0, 4096, 8)


# ------------------------------------------------------------------------------------------
# Exactness: estimated weights/grads/optimizer bytes == what megatron allocates on CPU


def _allocated(cases: list[tuple]) -> list[tuple]:
    """(name, dtype, distopt[, ep]) cases -> (name, dtype, distopt, world, bytes or error)."""
    import torch.distributed as dist

    from trainer.batches import SyntheticDataset
    from trainer.config.data import DataConfig
    from trainer.config.trainer import TrainerConfig
    from trainer.loop import Trainer
    from trainer.memory_measure import allocated_static_bytes
    from trainer.parallel import destroy_parallel, initialize_parallel

    out = []
    for name, dtype, distopt, *ep in cases:
        model = load_model(name)
        par = ParallelConfig(use_distributed_optimizer=distopt, expert_parallel=ep[0] if ep else 1)
        cfg = TrainerConfig(
            model=model, parallel=par, precision=precision(dtype), data=DataConfig(seq_length=16)
        )
        cfg.train.global_batch_size, cfg.train.micro_batch_size = 2, 1
        try:
            initialize_parallel(model, par, seed=1)
            trainer = Trainer(cfg, SyntheticDataset(16, 16, model.vocab_size))
            trainer.train_step()
            got = allocated_static_bytes(trainer.model, trainer.optimizer)
            world = dist.get_world_size()
            out.append((name, dtype, distopt, world, (got.weights, got.grads, got.optimizer)))
        except Exception:  # noqa: BLE001 - reported by the test of this case
            out.append((name, dtype, distopt, 0, traceback.format_exc()))
        finally:
            destroy_parallel()
    return out


def _check_ran(result: tuple) -> tuple[int, tuple]:
    name, dtype, distopt, world, got = result
    if isinstance(got, str):
        pytest.fail(f"the trainer could not run {name} {dtype} distopt={distopt}:\n{got}")
    return world, got


CASES = [
    ("tiny_v3", "fp32", False),
    ("tiny_v3", "bf16", True),
    ("tiny_v2_lite", "bf16", False),
    ("tiny_v2_lite", "fp32", True),
    ("tiny_dense", "bf16", True),
    ("tiny_moe", "fp32", False),
]


@pytest.fixture(scope="module")
def allocated() -> list[tuple]:
    return run_distributed(_allocated, 1, CASES, timeout_s=180)[0]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_static_bytes_equal_megatron_allocations(allocated: list[tuple], index: int) -> None:
    name, dtype, distopt = CASES[index]
    world, got = _check_ran(allocated[index])
    est = estimate_memory(
        load_model(name),
        ParallelConfig(),
        precision(dtype),
        1,
        16,
        2,
        use_distributed_optimizer=distopt,
        data_parallel_size=world,
    )
    assert got == (est.weights, est.grads, est.optimizer)


def test_static_bytes_exact_on_two_ranks() -> None:
    """DP2 with the distributed optimizer (padding to lcm(DP, 128), 1/DP optimizer shard) and
    EP2 (routed experts split, own DDP buffer) are exact on rank 0 too."""
    for name, dtype, distopt, ep in [("tiny_v3", "bf16", True, 1), ("tiny_v3", "bf16", True, 2)]:
        # one process group per case: re-creating the default group on the same port hangs
        rank0 = run_distributed(_allocated, 2, [(name, dtype, distopt, ep)], timeout_s=90)[0]
        _, got = _check_ran(rank0[0])
        est = estimate_memory(
            load_model(name),
            ParallelConfig(expert_parallel=ep),
            precision(dtype),
            1,
            16,
            1,
            use_distributed_optimizer=distopt,
            data_parallel_size=2,
        )
        assert got == (est.weights, est.grads, est.optimizer), (name, dtype, distopt, ep)
    single = estimate_memory(
        load_model("tiny_v3"),
        ParallelConfig(),
        precision("bf16"),
        1,
        16,
        2,
        use_distributed_optimizer=True,
    )
    dp2 = estimate_memory(
        load_model("tiny_v3"),
        ParallelConfig(),
        precision("bf16"),
        1,
        16,
        1,
        use_distributed_optimizer=True,
        data_parallel_size=2,
    )
    assert dp2.optimizer < 0.6 * single.optimizer


# ------------------------------------------------------------------------------------------
# Activations: estimate vs the tensors autograd really saves (CPU, local unfused attention)


def _saved(cases: list[tuple[str, int, int]]) -> list[tuple]:
    import torch

    from trainer.memory_measure import saved_activation_bytes
    from trainer.model import build_model, build_transformer_config
    from trainer.parallel import destroy_parallel, initialize_parallel

    out = []
    for name, seq, batch in cases:
        cfg, par = load_model(name), ParallelConfig()
        initialize_parallel(cfg, par, seed=1)
        model = build_model(cfg, build_transformer_config(cfg, par))
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq))
        position_ids = torch.arange(seq).unsqueeze(0).expand(batch, -1)
        mask = torch.ones(batch, seq)
        forward = partial(model, tokens, position_ids, None, labels=tokens, loss_mask=mask)
        saved, _ = saved_activation_bytes(model, forward)
        out.append((name, seq, batch, saved))
        destroy_parallel()
    return out


def test_activation_estimate_matches_saved_tensors() -> None:
    """Within 5% of what autograd saves for backward (fp32, one micro-batch, one stage; the
    inventory in trainer/activations.py lists what megatron's local layers save)."""
    cases = [("tiny_v3", 64, 1), ("tiny_v3", 128, 2), ("tiny_dense", 128, 2)]
    for name, seq, batch, saved in run_distributed(_saved, 1, cases, timeout_s=120)[0]:
        est = estimate_memory(
            load_model(name),
            ParallelConfig(),
            precision("fp32"),
            batch,
            seq,
            1,
            flash_attention=False,
        )
        assert est.activations == pytest.approx(saved, rel=0.05), (name, seq, batch)
