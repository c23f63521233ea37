"""Layout validation: clear errors before any process group exists."""

from __future__ import annotations

import pytest

from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig
from trainer.parallel import validate_layout

TINY = ModelConfig()  # 4 layers, 8 experts, 4 heads


@pytest.mark.parametrize(
    ("parallel", "world", "message"),
    [
        (
            ParallelConfig(pipeline_parallel=2, virtual_pipeline_parallel=3),
            2,
            "divisible by PP x VPP",
        ),
        (ParallelConfig(pipeline_parallel=3), 3, "divisible by PP x VPP"),
        (
            ParallelConfig(expert_parallel=3),
            3,
            "num_experts=8 is not divisible by expert_parallel=3",
        ),
        (ParallelConfig(tensor_parallel=2), 2, "needs sequence_parallel=true"),
        (ParallelConfig(tensor_parallel=2, sequence_parallel=True), 3, "world size 3"),
        (ParallelConfig(sequence_parallel=True), 1, "sequence_parallel needs tensor_parallel > 1"),
        (ParallelConfig(tensor_parallel=8, sequence_parallel=True), 8, "num_attention_heads=4"),
        (ParallelConfig(expert_parallel=4, pipeline_parallel=2), 4, "EP x ETP x PP = 4 x 1 x 2"),
    ],
)
def test_bad_layouts_fail_with_a_clear_message(parallel, world, message) -> None:
    with pytest.raises(ValueError, match=message):
        validate_layout(TINY, parallel, world)


def test_good_layout_resolves_data_parallel() -> None:
    layout = validate_layout(
        TINY, ParallelConfig(tensor_parallel=2, sequence_parallel=True, expert_parallel=2), 8
    )
    assert (layout.data, layout.tensor, layout.expert) == (4, 2, 2)
    assert "DP4 x TP2" in layout.describe()


def test_uneven_pipeline_layout_skips_the_even_split_check() -> None:
    v3ish = ModelConfig(num_layers=5, num_experts=None)
    p = ParallelConfig(pipeline_parallel=2, pipeline_layout="Ett|ttt|L")
    assert validate_layout(v3ish, p, 2).pipeline == 2


def test_callbacks_only_on_rank_zero() -> None:
    from trainer.callbacks import ConsoleCallback, build_callbacks
    from trainer.config.trainer import LoggingConfig

    assert build_callbacks(LoggingConfig(), rank=1) == []
    assert [type(c) for c in build_callbacks(LoggingConfig(), rank=0)] == [ConsoleCallback]


PARALLEL_WORLDS = {
    "single": 1,
    "dp2": 2,
    "tp2": 2,
    "pp2": 2,
    "ep2": 2,
    "pp2_vpp2": 2,
    "tp2_pp2": 4,
    "dp2_ep2": 4,
    "v3_h100_1024": 1024,
}


@pytest.mark.parametrize(("name", "world"), PARALLEL_WORLDS.items())
def test_parallel_confs_compose_and_validate(name: str, world: int) -> None:
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import trainer.__main__  # noqa: F401  (registers the schema)

    conf = Path(__file__).resolve().parents[2] / "conf"
    model = "deepseek_v3" if name.startswith("v3") else "tiny_v3"
    # production layouts set the precision-aware optimizer: a bf16 model (tests/trainer/
    # test_scale_recipe.py composes all of them with their published model and precision)
    precision = "bf16" if name.startswith("v3") else "fp32"
    with initialize_config_dir(str(conf), version_base="1.3"):
        overrides = [f"parallel={name}", f"model={model}", f"precision={precision}"]
        cfg = compose("trainer", overrides=overrides)
    obj = OmegaConf.to_object(cfg)
    layout = validate_layout(obj.model, obj.parallel, world)
    assert layout.world_size == world
