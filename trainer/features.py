"""Machine requirements of the optional scale features (the published DeepSeek-V3 recipe).

`check_features_supported(cfg)` refuses, in one line each, a precision-aware optimizer without
Transformer Engine's FusedAdam, the flex dispatcher without DeepEP or CUDA, fused permutation
without TE >= 2.1 and the all-to-all overlap without CUDA: megatron-core would otherwise fail
deep inside model or optimizer construction on every rank (or, for optimizer dtypes, assert
with a message about command-line flags this project does not have). The config-only rules
(which combinations megatron accepts) live in the schemas' __post_init__.
"""

from __future__ import annotations

import importlib.util

import torch

from trainer.config.trainer import TrainerConfig
from trainer.precision import _version_tuple, transformer_engine_version

PERMUTE_FUSION_MIN_TE = "2.1"
"""megatron-core 0.16 transformer_config.py: 'fused permutation ... install TE >= 2.1.0'."""


def have_deep_ep() -> bool:
    """DeepEP (github.com/deepseek-ai/DeepEP) importable: the flex dispatcher's kernels."""
    return importlib.util.find_spec("deep_ep") is not None


def check_features_supported(
    cfg: TrainerConfig,
    *,
    te_version: str | None | bool = True,
    cuda: bool | None = None,
    deep_ep: bool | None = None,
) -> None:
    """Raise ValueError when this machine cannot run a feature `cfg` switches on.

    Defaults probe the machine; tests pass explicit values (te_version None = TE absent)."""
    te = transformer_engine_version() if te_version is True else te_version or None
    cuda = torch.cuda.is_available() if cuda is None else cuda
    deep_ep = have_deep_ep() if deep_ep is None else deep_ep
    p, o = cfg.parallel, cfg.optim
    if o.precision_aware and te is None:
        raise ValueError(
            "optim.precision_aware needs Transformer Engine's FusedAdam (install the project's "
            "'gpu' extra on a CUDA machine); refusing to keep fp32 states instead"
        )
    if p.moe_token_dispatcher == "flex" and not (deep_ep and cuda):
        missing = "DeepEP (the deep_ep package)" if not deep_ep else "a CUDA GPU"
        raise ValueError(
            f"parallel.moe_token_dispatcher=flex needs {missing}; use alltoall on this machine"
        )
    if p.moe_permute_fusion and (
        te is None or _version_tuple(te) < _version_tuple(PERMUTE_FUSION_MIN_TE)
    ):
        raise ValueError(
            f"parallel.moe_permute_fusion needs Transformer Engine >= {PERMUTE_FUSION_MIN_TE}, "
            f"found {te or 'none'}"
        )
    if p.moe_a2a_overlap and not cuda:
        raise ValueError(
            "parallel.moe_a2a_overlap needs CUDA (megatron overlaps the all-to-all on a CUDA "
            "stream); set it false on CPU"
        )
