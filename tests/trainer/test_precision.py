"""Precision configs, the FP8 guard and megatron precision kwargs (trainer.precision)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.config.precision import PrecisionConfig
from trainer.precision import (
    FP8_REQUIREMENTS,
    check_precision_supported,
    megatron_precision_kwargs,
    transformer_engine_version,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "precision"
FP8_NAMES = ["fp8_delayed", "fp8_tensorwise", "fp8_blockwise", "fp8_mxfp8"]


def load(name: str) -> PrecisionConfig:
    node = OmegaConf.merge(
        OmegaConf.structured(PrecisionConfig), OmegaConf.load(CONF / f"{name}.yaml")
    )
    return OmegaConf.to_object(node)


def test_every_precision_yaml_loads() -> None:
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert names == sorted(["fp32", "bf16", *FP8_NAMES, "fp8_blockwise_param"])
    for name in names:
        assert load(name).name == name
    # NVIDIA's V3 recipe: blockwise FP8 plus FP8 weights (and their FP8 all-gather)
    param = load("fp8_blockwise_param")
    assert param.fp8_recipe == "blockwise" and param.fp8_param


def test_recipes_match_their_yaml() -> None:
    for name in FP8_NAMES:
        cfg = load(name)
        assert cfg.is_fp8 and cfg.fp8_recipe == name.removeprefix("fp8_")


@pytest.mark.parametrize("name", FP8_NAMES)
def test_fp8_without_transformer_engine_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"precision={name}: .*needs Transformer Engine"):
        check_precision_supported(load(name), te_version=None, compute_capability=(9, 0))


@pytest.mark.skipif(transformer_engine_version() is not None, reason="TE installed")
@pytest.mark.parametrize("name", FP8_NAMES)
def test_fp8_guard_raises_on_this_machine(name: str) -> None:
    """Without TE (every CPU machine) asking for FP8 is an error, never a silent bf16 run."""
    with pytest.raises(ValueError, match="Transformer Engine"):
        check_precision_supported(load(name))


@pytest.mark.parametrize(
    ("name", "te", "cc", "message"),
    [
        ("fp8_delayed", "1.0", (8, 0), r"compute capability >= 8\.9 .*found 8\.0"),
        ("fp8_tensorwise", "2.1.0", (9, 0), r"Transformer Engine >= 2\.2, found 2\.1\.0"),
        ("fp8_blockwise", "2.3.0", (8, 9), r"compute capability >= 9\.0"),
        ("fp8_blockwise", "2.2.0+abc", (9, 0), r"Transformer Engine >= 2\.3"),
        ("fp8_mxfp8", "2.4", (9, 0), r"compute capability >= 10\.0 \(Blackwell"),
        ("fp8_mxfp8", "2.0", (10, 0), r"Transformer Engine >= 2\.1"),
        ("fp8_delayed", "2.4", None, r"needs a CUDA GPU"),
    ],
)
def test_fp8_requirements(name: str, te: str, cc, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_precision_supported(load(name), te_version=te, compute_capability=cc)


def test_fp8_requirements_met(monkeypatch: pytest.MonkeyPatch) -> None:
    check_precision_supported(load("fp8_delayed"), te_version="1.12", compute_capability=(8, 9))
    check_precision_supported(load("fp8_mxfp8"), te_version="2.1", compute_capability=(10, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.9")
    check_precision_supported(load("fp8_blockwise"), te_version="2.3", compute_capability=(9, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(ValueError, match=r"CUDA >= 12\.9"):
        check_precision_supported(
            load("fp8_blockwise"), te_version="2.3", compute_capability=(9, 0)
        )


def test_requirement_table_matches_design() -> None:
    assert FP8_REQUIREMENTS["delayed"].min_compute_capability == (8, 9)
    assert FP8_REQUIREMENTS["tensorwise"].min_te == "2.2"
    assert (FP8_REQUIREMENTS["blockwise"].min_te, FP8_REQUIREMENTS["blockwise"].min_cuda) == (
        "2.3",
        "12.9",
    )
    assert FP8_REQUIREMENTS["mxfp8"].min_compute_capability == (10, 0)


def test_high_precision_passes_and_maps_to_megatron() -> None:
    for name in ("fp32", "bf16"):
        check_precision_supported(load(name))
    assert megatron_precision_kwargs(load("fp32")) == {
        "fp16": False,
        "bf16": False,
        "params_dtype": torch.float32,
    }
    bf16 = megatron_precision_kwargs(load("bf16"))
    assert bf16["bf16"] and bf16["params_dtype"] is torch.bfloat16 and "fp8" not in bf16


def test_fp8_kwargs_are_valid_megatron_config() -> None:
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = megatron_precision_kwargs(load("fp8_blockwise"))
    assert kwargs["fp8"] == "e4m3" and kwargs["fp8_recipe"] == "blockwise"
    delayed = megatron_precision_kwargs(load("fp8_delayed"))
    assert delayed["fp8_amax_history_len"] == 1024 and delayed["fp8"] == "hybrid"
    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, **delayed)
    assert config.fp8 == "hybrid" and config.fp8_recipe == "delayed"


def test_bad_precision_configs() -> None:
    with pytest.raises(ValueError, match="fp8_recipe"):
        PrecisionConfig(fp8_format="e4m3")
    with pytest.raises(ValueError, match="params_dtype='fp64'"):
        PrecisionConfig(params_dtype="fp64")
    with pytest.raises(ValueError, match="bf16 or fp16"):
        PrecisionConfig(params_dtype="fp32", fp8_format="e4m3", fp8_recipe="delayed")
    with pytest.raises(ValueError, match="fp8_recipe='nvfp4'"):
        PrecisionConfig(fp8_format="e4m3", fp8_recipe="nvfp4")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_runs_a_te_linear_on_a_capable_gpu() -> None:
    """On a GPU that passes the guard, the recipe really runs an FP8 GEMM through TE."""
    te = pytest.importorskip("transformer_engine.pytorch")
    from transformer_engine.common import recipe as te_recipe

    cfg = load("fp8_delayed")
    try:
        check_precision_supported(cfg)
    except ValueError as err:
        pytest.skip(f"this GPU/TE cannot run FP8: {err}")
    layer = te.Linear(256, 256, params_dtype=torch.bfloat16).cuda()
    x = torch.randn(32, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with te.fp8_autocast(enabled=True, fp8_recipe=te_recipe.DelayedScaling()):
        y = layer(x)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None
    reference = x.detach() @ layer.weight.detach().t()
    assert not torch.equal(y.detach(), reference)  # quantised, not a bf16 GEMM
    torch.testing.assert_close(y.detach().float(), reference.float(), atol=0.5, rtol=0.1)
