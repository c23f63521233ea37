"""Typed schema of the numeric precision (the `precision:` group of conf/precision/*.yaml).

`trainer.precision.check_precision_supported` validates a config against the machine (FP8 needs
Transformer Engine and a capable GPU) and `megatron_precision_kwargs` turns it into megatron-core
TransformerConfig keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

# OmegaConf structured configs do not accept typing.Literal, so choices are str fields checked
# against these tuples in __post_init__.
PARAM_DTYPES = ("fp32", "bf16", "fp16")
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
AMAX_ALGOS = ("most_recent", "max")

BYTES_PER_DTYPE: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class PrecisionConfig:
    name: str = "bf16"
    """Short name shown in logs (fp32, bf16, fp8_delayed, fp8_tensorwise, fp8_blockwise, ...)."""
    params_dtype: str = "bf16"
    """Dtype of model weights and of non-FP8 compute; fp32 master weights are kept by the
    optimizer whenever this is not fp32."""
    fp8_format: str | None = None
    """FP8 format for GEMMs: e4m3 everywhere, or hybrid (e4m3 forward, e5m2 gradients);
    None = no FP8."""
    fp8_recipe: str | None = None
    """FP8 scaling recipe: delayed (per-tensor amax history), tensorwise (current per-tensor),
    blockwise (DeepSeek-V3: 1x128 activation tiles, 128x128 weight blocks) or mxfp8 (Blackwell).
    Required when fp8_format is set."""
    fp8_param: bool = False
    """Keep GEMM weights in FP8 (1 byte) and all-gather them in FP8 under the distributed
    optimizer (megatron's fp8_param + fp8_param_gather; the V3 H100 recipe): halves the GEMM
    weights' memory and their all-gather traffic; the optimizer keeps fp32 master weights."""
    fp8_amax_history_len: int = 1024
    """Delayed recipe only: length of the amax history window."""
    fp8_amax_compute_algo: str = "max"
    """Delayed recipe only: how the scale is derived from the amax history."""
    fp8_margin: int = 0
    """Delayed recipe only: scaling-factor margin (power of two)."""
    first_last_layers_bf16: bool = False
    """Run the first and last transformer layers in bf16 instead of FP8."""
    grad_reduce_in_fp32: bool = True
    """Accumulate and all-reduce gradients in fp32 (megatron's main_grad buffer dtype)."""

    def __post_init__(self) -> None:
        _check_choice("params_dtype", self.params_dtype, PARAM_DTYPES)
        _check_choice("fp8_format", self.fp8_format, FP8_FORMATS + (None,))
        _check_choice("fp8_recipe", self.fp8_recipe, FP8_RECIPES + (None,))
        _check_choice("fp8_amax_compute_algo", self.fp8_amax_compute_algo, AMAX_ALGOS)
        if self.fp8_format is None and self.fp8_recipe is not None:
            raise ValueError(
                f"precision config: fp8_recipe={self.fp8_recipe} needs fp8_format (e4m3 or hybrid)"
            )
        if self.fp8_format is not None:
            if self.fp8_recipe is None:
                raise ValueError(
                    "precision config: fp8_format is set but fp8_recipe is not; choose one of "
                    "delayed, tensorwise, blockwise, mxfp8"
                )
            if self.params_dtype == "fp32":
                raise ValueError("precision config: FP8 training needs params_dtype bf16 or fp16")
        if self.fp8_param and self.fp8_format is None:
            raise ValueError("precision config: fp8_param needs fp8_format")
        if self.fp8_amax_history_len < 1:
            raise ValueError("precision config: fp8_amax_history_len must be >= 1")

    @property
    def is_fp8(self) -> bool:
        return self.fp8_format is not None

    @property
    def param_bytes(self) -> int:
        """Bytes per model weight element (FP8 weights count as their bf16/fp16 copy)."""
        return BYTES_PER_DTYPE[self.params_dtype]

    @property
    def grad_bytes(self) -> int:
        """Bytes per element of megatron's main_grad buffer."""
        if self.params_dtype == "fp32" or self.grad_reduce_in_fp32:
            return 4
        return BYTES_PER_DTYPE[self.params_dtype]


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"precision config: {name}={value!r} is not one of {list(choices)}")
