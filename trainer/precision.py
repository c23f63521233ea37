"""Precision checks and megatron-core precision settings.

`check_precision_supported(cfg)` refuses an FP8 config unless Transformer Engine and a capable
GPU are present: without TE, megatron-core silently runs a dense `fp8=...` config in high
precision (its fp8 context is a nullcontext), so a missing requirement must be an error here,
never a silent bf16 run. `megatron_precision_kwargs(cfg)` returns the TransformerConfig keyword
arguments for a checked config.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config.optim import OptimConfig
from trainer.config.precision import PrecisionConfig


@dataclass(frozen=True)
class Fp8Requirement:
    """What one FP8 recipe needs (megatron-core / Transformer Engine documentation)."""

    min_te: str | None
    """Lowest Transformer Engine version (None: any)."""
    min_compute_capability: tuple[int, int]
    """Lowest GPU compute capability (major, minor)."""
    min_cuda: str | None = None
    """Lowest CUDA runtime version torch was built with (None: any)."""
    hardware: str = ""
    """GPU family named in error messages."""


FP8_REQUIREMENTS: dict[str, Fp8Requirement] = {
    "delayed": Fp8Requirement(None, (8, 9), None, "Ada/Hopper or newer"),
    "tensorwise": Fp8Requirement("2.2", (8, 9), None, "Ada/Hopper or newer"),
    "blockwise": Fp8Requirement("2.3", (9, 0), "12.9", "Hopper or newer"),
    "mxfp8": Fp8Requirement("2.1", (10, 0), None, "Blackwell or newer"),
}

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_STATE_DTYPES = {**_DTYPES, "fp8": torch.uint8}  # TE's FusedAdam: uint8 = FP8 (E4M3) states


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def transformer_engine_version() -> str | None:
    """Installed Transformer Engine version, or None when it cannot be imported."""
    if importlib.util.find_spec("transformer_engine") is None:
        return None
    for dist in ("transformer_engine", "transformer-engine", "transformer_engine_torch"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = importlib.import_module("transformer_engine")
    return str(getattr(module, "__version__", "0"))


def gpu_compute_capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, or None without a usable GPU."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()


def _check_fp8(cfg: PrecisionConfig, te_version: str | None, cc: tuple[int, int] | None) -> None:
    recipe = cfg.fp8_recipe
    assert recipe is not None
    need = FP8_REQUIREMENTS[recipe]
    prefix = f"precision={cfg.name}: FP8 recipe '{recipe}'"
    if te_version is None:
        raise ValueError(
            f"{prefix} needs Transformer Engine, which is not installed (install the project's "
            f"'gpu' extra on a CUDA machine); refusing to train in higher precision instead"
        )
    if need.min_te and _version_tuple(te_version) < _version_tuple(need.min_te):
        raise ValueError(f"{prefix} needs Transformer Engine >= {need.min_te}, found {te_version}")
    if cc is None:
        raise ValueError(f"{prefix} needs a CUDA GPU ({need.hardware}); none is available")
    if cc < need.min_compute_capability:
        want = ".".join(map(str, need.min_compute_capability))
        raise ValueError(
            f"{prefix} needs GPU compute capability >= {want} ({need.hardware}), "
            f"found {cc[0]}.{cc[1]}"
        )
    cuda = torch.version.cuda
    if need.min_cuda and (cuda is None or _version_tuple(cuda) < _version_tuple(need.min_cuda)):
        raise ValueError(f"{prefix} needs CUDA >= {need.min_cuda}, torch was built with {cuda}")


def check_precision_supported(
    cfg: PrecisionConfig,
    *,
    te_version: str | None | bool = True,
    compute_capability: tuple[int, int] | None | bool = True,
) -> None:
    """Raise ValueError when this machine cannot train with `cfg` as configured.

    `te_version` / `compute_capability` default to probing the machine; tests pass explicit
    values (None = absent) to exercise every branch.
    """
    if cfg.params_dtype in ("bf16", "fp16") and torch.cuda.is_available():
        if cfg.params_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision={cfg.name}: this GPU does not support bf16")
    if not cfg.is_fp8:
        return
    te = transformer_engine_version() if te_version is True else te_version
    cc = gpu_compute_capability() if compute_capability is True else compute_capability
    _check_fp8(cfg, te if isinstance(te, str) else None, cc if isinstance(cc, tuple) else None)


def megatron_precision_kwargs(cfg: PrecisionConfig) -> dict[str, Any]:
    """megatron-core TransformerConfig keyword arguments for `cfg`.

    The fp8 keys are only set for FP8 configs; callers must run `check_precision_supported`
    first (megatron would otherwise silently fall back to high precision without TE).
    """
    kwargs: dict[str, Any] = {
        "fp16": cfg.params_dtype == "fp16",
        "bf16": cfg.params_dtype == "bf16",
        "params_dtype": _DTYPES[cfg.params_dtype],
    }
    if cfg.is_fp8:
        kwargs.update(
            fp8=cfg.fp8_format,
            fp8_recipe=cfg.fp8_recipe,
            fp8_param=cfg.fp8_param,
            first_last_layers_bf16=cfg.first_last_layers_bf16,
        )
        if cfg.fp8_recipe == "delayed":
            kwargs.update(
                fp8_margin=cfg.fp8_margin,
                fp8_amax_history_len=cfg.fp8_amax_history_len,
                fp8_amax_compute_algo=cfg.fp8_amax_compute_algo,
            )
    return kwargs


def ddp_precision_kwargs(cfg: PrecisionConfig) -> dict[str, Any]:
    """megatron-core DistributedDataParallelConfig / OptimizerConfig precision arguments."""
    return {"grad_reduce_in_fp32": cfg.grad_reduce_in_fp32}


def optimizer_precision_kwargs(cfg: OptimConfig) -> dict[str, Any]:
    """megatron-core OptimizerConfig arguments of the optimizer-state precision (the
    precision-aware optimizer; call `trainer.features.check_features_supported` first)."""
    if not cfg.precision_aware:
        return {}
    return {
        "use_precision_aware_optimizer": True,
        "exp_avg_dtype": _STATE_DTYPES[cfg.exp_avg_dtype],
        "exp_avg_sq_dtype": _STATE_DTYPES[cfg.exp_avg_sq_dtype],
        "main_params_dtype": _DTYPES[cfg.main_params_dtype],
        "store_param_remainders": cfg.store_param_remainders,
    }
