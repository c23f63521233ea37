"""Every CPU patch still applies (its target exists) and is still needed (upstream still has
the CUDA-only code it works around). When megatron-core fixes one upstream, this fails and the
patch should be deleted from trainer/cpu_patches.py."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from trainer import cpu_patches
from trainer.cpu_patches import PATCHES, Patch

# Attributes that upstream leaves undefined without Transformer Engine (the patch defines them).
MAY_BE_MISSING = {("megatron.core.transformer.moe.moe_utils", "te_general_gemm")}


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: f"{p.module}:{p.attr}")
def test_patch_target_exists(patch: Patch) -> None:
    owner, name = patch.owner_and_name()
    if (patch.module, patch.attr) in MAY_BE_MISSING:
        importlib.import_module(patch.module)
        return
    assert hasattr(owner, name), f"{patch.module}.{patch.attr} is gone: the patch no longer applies"


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: f"{p.module}:{p.attr}")
def test_patch_still_needed(patch: Patch) -> None:
    source = patch.upstream_source()
    assert patch.marker in source, (
        f"upstream no longer contains {patch.marker!r} ({patch.reason}); "
        f"remove the patch of {patch.module}.{patch.attr}"
    )


def test_every_patch_documents_its_reason() -> None:
    for patch in PATCHES:
        assert patch.reason and patch.marker and patch.module.startswith(("megatron", "torch"))


def test_local_dot_product_attention_still_rejects_mla_head_dims() -> None:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    params = inspect.signature(DotProductAttention.__init__).parameters
    assert "k_channels" not in params, "upstream fixed issue 1589: drop MLADotProductAttention"


@pytest.mark.skipif(torch.cuda.is_available(), reason="patches apply only without CUDA")
def test_patched_functions_work_on_cpu() -> None:
    assert cpu_patches.apply_cpu_patches() is True
    assert cpu_patches.apply_cpu_patches() is True  # idempotent
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(3)
    assert mask.device.type == "cpu" and mask.tolist()[0] == [False, True, True]
    from megatron.core.optimizer import clip_grads

    assert clip_grads.torch.zeros(1, device="cuda").device.type == "cpu"
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)
    clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=6.0)
    assert torch.allclose(p.grad, torch.full((4,), 0.5), atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="patches apply only without CUDA")
def test_rng_tracker_forks_cpu_state() -> None:
    cpu_patches.apply_cpu_patches()
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    tracker = CudaRNGStatesTracker()
    tracker.add("a", 7)
    before = torch.get_rng_state()
    with tracker.fork("a"):
        first = torch.rand(2)
    assert torch.equal(torch.get_rng_state(), before), "fork must restore the outer state"
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(2)), "forked state must be seeded with the given seed"
