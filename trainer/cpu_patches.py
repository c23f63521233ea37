"""Every patch megatron-core 0.16.x needs to run on CPU over gloo, in one place.

megatron-core hard-codes CUDA in a handful of places (RNG tracker, `device="cuda"` tensor
factories, CUDA streams, `.cuda()` calls). `apply_cpu_patches()` replaces exactly those
functions with CPU-safe equivalents; it is a no-op when CUDA is available, so GPU runs use
upstream code untouched. Each `Patch` names the upstream file/function it works around and a
`marker`: a snippet of the upstream source that makes the patch necessary.
`tests/trainer/test_cpu_patches.py` fails when a target disappears (patch no longer applies)
or its marker is gone from upstream (patch no longer needed).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_APPLIED = False


@dataclass(frozen=True)
class Patch:
    """One replacement of an upstream attribute `module.attr` (attr may be `Class.method`)."""

    module: str
    """Dotted module path, e.g. megatron.core.tensor_parallel.random."""
    attr: str
    """Attribute to replace; `Class.name` for methods."""
    reason: str
    """Why upstream fails on CPU."""
    marker: str
    """Snippet of the upstream source (of the replaced object, or `marker_in`) needing the patch."""
    build: Callable[[Any], Any]
    """Takes the original object, returns the replacement."""
    marker_in: str | None = None
    """Dotted `module:attr` whose source holds the marker, when not the replaced object itself."""

    def owner_and_name(self) -> tuple[Any, str]:
        owner: Any = importlib.import_module(self.module)
        *path, name = self.attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner, name

    def original(self) -> Any:
        owner, name = self.owner_and_name()
        if inspect.isclass(owner):
            obj = inspect.getattr_static(owner, name)
        else:
            obj = getattr(owner, name, None)  # may be undefined upstream (te_general_gemm)
        return getattr(obj, "__megatron_original__", obj)

    def upstream_source(self) -> str:
        if self.marker_in is None:
            original = self.original()
            return inspect.getsource(getattr(original, "__func__", original))
        mod, _, attr = self.marker_in.partition(":")
        obj: Any = importlib.import_module(mod)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return inspect.getsource(obj)

    def apply(self) -> None:
        owner, name = self.owner_and_name()
        original = self.original()
        replacement = self.build(original)
        with contextlib.suppress(AttributeError, TypeError):
            replacement.__megatron_original__ = original
        setattr(owner, name, replacement)


# --------------------------------------------------------------------------------------------
# tensor_parallel/random.py: the RNG tracker reads and writes torch.cuda RNG states.


def _cpu_get_rng_state(*_args: Any, **_kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, *_args: Any, **_kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _tracker_add(_original: Any) -> Callable[..., None]:
    def add(self: Any, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    return add


def _tracker_fork(_original: Any) -> Callable[..., Any]:
    @contextlib.contextmanager
    def fork(self: Any, name: str = "model-parallel-rng") -> Any:
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig_state, orig_name = torch.get_rng_state(), self._current_state_name
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig_state)
            self._current_state_name = orig_name

    return fork


def _checkpoint_without_output_init(original: Any) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, fp8: Any = False) -> None:
        original(self, fp8)
        self.fp8 = bool(fp8)

    return __init__


def _cpu_current_device(_original: Any) -> Callable[[], str]:
    return lambda: "cpu"


def _have_te() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


class _NoStream:
    """Placeholder for a CUDA stream on CPU (never used: the dtoh step is patched too)."""


def _dtoh_and_synchronize(_original: Any) -> Callable[..., Any]:
    def _maybe_dtoh_and_synchronize(self: Any, point: str, tokens_per_expert: Any = None) -> Any:
        if not self.drop_and_pad and point == self.cuda_dtoh_point:
            for name in ("input_splits", "output_splits"):  # output_splits_tp: .tolist() later
                value = getattr(self, name)
                if isinstance(value, torch.Tensor):
                    setattr(self, name, value.tolist())
        return tokens_per_expert

    return _maybe_dtoh_and_synchronize


@functools.lru_cache(maxsize=32)
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq), diagonal=1).bool()


_FACTORIES = frozenset(
    "tensor zeros ones empty full arange rand randn randint zeros_like ones_like empty_like "
    "full_like as_tensor".split()
)


def _to_cpu_device(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, int):  # torch.cuda.current_device() style index
        return "cpu"
    return device


class _CudaShim:
    """`torch.cuda` as seen by a patched module: no streams, no synchronisation, CPU device."""

    def __getattr__(self, name: str) -> Any:
        if name in ("synchronize", "empty_cache", "set_device", "nvtx"):
            return lambda *_a, **_k: None
        if name == "current_device":
            return lambda: "cpu"
        if name == "is_available":
            return lambda: False
        return getattr(torch.cuda, name)


class CpuTorch:
    """Stand-in for the `torch` module inside one megatron module: tensor factories called
    with device="cuda" get device="cpu"; everything else is torch itself."""

    cuda = _CudaShim()

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        if name not in _FACTORIES:
            return value

        @functools.wraps(value)
        def factory(*args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs:
                kwargs["device"] = _to_cpu_device(kwargs["device"])
            return value(*args, **kwargs)

        return factory


def _cpu_torch(_original: Any) -> CpuTorch:
    return CpuTorch()


def _tensor_cuda_identity(_original: Any) -> Callable[..., torch.Tensor]:
    def cuda(self: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        return self

    return cuda


def _clip_by_total_norm(_original: Any) -> Callable[..., None]:
    def clip_grad_by_total_norm_fp32(
        parameters: Any, max_norm: float, total_norm: float, use_decoupled_grad: bool = False
    ) -> None:
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
        clip_coeff = max_norm / (total_norm + 1.0e-6)
        if clip_coeff < 1.0 and grads:
            torch._foreach_mul_(grads, clip_coeff)

    return clip_grad_by_total_norm_fp32


def _torch_norm_new(original: Any) -> Callable[..., Any]:
    def __new__(cls: Any, config: Any, hidden_size: int, eps: float = 1e-5, **kwargs: Any) -> Any:
        import dataclasses

        sequence_parallel = config.sequence_parallel
        if sequence_parallel:
            config = dataclasses.replace(config, sequence_parallel=False)
        norm = original(cls, config, hidden_size, eps, **kwargs)
        for param in norm.parameters():
            # finalize_model_grads all-reduces these over TP (each rank saw part of the sequence)
            param.sequence_parallel = sequence_parallel
        return norm

    return __new__


@contextlib.contextmanager
def _cuda_type_names() -> Any:
    """Make Tensor.type() report CPU tensors as torch.cuda.* for the duration of a call."""
    original = torch.Tensor.type

    def type_(self: torch.Tensor, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
        if dtype is not None:
            return original(self, dtype, *args, **kwargs)
        name = original(self)
        return name.replace("torch.", "torch.cuda.", 1) if self.device.type == "cpu" else name

    torch.Tensor.type = type_  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.type = original  # type: ignore[method-assign]


def _with_cuda_type_names(original: Any) -> Any:
    kind = type(original) if isinstance(original, (staticmethod, classmethod)) else None
    func = original.__func__ if kind else original

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _cuda_type_names():
            return func(*args, **kwargs)

    return kind(wrapper) if kind else wrapper


_DISPATCHER = "megatron.core.transformer.moe.token_dispatcher"
_RANDOM = "megatron.core.tensor_parallel.random"
PATCHES: list[Patch] = [
    Patch(
        _RANDOM,
        "CudaRNGStatesTracker.add",
        "seeds a new named state through torch.cuda.get_rng_state/manual_seed",
        "torch.cuda.get_rng_state()",
        _tracker_add,
    ),
    Patch(
        _RANDOM,
        "CudaRNGStatesTracker.fork",
        "swaps torch.cuda RNG states (and warns whenever the CPU RNG moves inside the fork)",
        "_set_cuda_rng_state(self.states_[name]",
        _tracker_fork,
    ),
    Patch(
        _RANDOM,
        "_get_cuda_rng_state",
        "reads the CUDA default generator (used by checkpointing of RNG states)",
        "torch.cuda.random.get_rng_state",
        lambda _orig: _cpu_get_rng_state,
    ),
    Patch(
        _RANDOM,
        "_set_cuda_rng_state",
        "writes the CUDA default generator",
        "torch.cuda.current_device()",
        lambda _orig: _cpu_set_rng_state,
    ),
    # torch.cuda.current_device() is used as a tensor device in >100 places (layers, rotary
    # embeddings, p2p communication, checkpoint saver); without CUDA it raises. Returning "cpu"
    # only changes behaviour where upstream would crash anyway.
    Patch(
        "torch.cuda",
        "current_device",
        "megatron uses torch.cuda.current_device() as a tensor device (e.g. RotaryEmbedding)",
        "torch.cuda.current_device()",
        _cpu_current_device,
        marker_in="megatron.core.models.common.embeddings.rotary_pos_embedding",
    ),
    # Without TE, megatron.core.extensions.transformer_engine still imports (its TE classes
    # are MagicMocks), so multi_latent_attention sets HAVE_TE = True and then calls
    # isinstance(self.linear_proj, TELinear) with a MagicMock, which raises TypeError.
    Patch(
        "megatron.core.transformer.multi_latent_attention",
        "HAVE_TE",
        "HAVE_TE is True without Transformer Engine; isinstance(x, TELinear) then raises",
        "isinstance(self.linear_proj, TELinear)",
        lambda _orig: _have_te(),
        marker_in="megatron.core.transformer.multi_latent_attention",
    ),
    # The alltoall MoE dispatcher creates a torch.cuda.Stream for device-to-host copies of
    # its split sizes; on CPU the splits must become Python lists for all_to_all_single.
    Patch(
        _DISPATCHER,
        "MoEAlltoAllTokenDispatcher.cuda_dtoh_stream",
        "__init__ creates torch.cuda.Stream() when this class attribute is None",
        "torch.cuda.Stream()",
        lambda _orig: _NoStream(),
        marker_in=f"{_DISPATCHER}:MoEAlltoAllTokenDispatcher.__init__",
    ),
    Patch(
        _DISPATCHER,
        "MoEAlltoAllTokenDispatcher._maybe_dtoh_and_synchronize",
        "copies split sizes on a CUDA side stream; gloo all_to_all_single needs lists",
        "torch.cuda.current_stream()",
        _dtoh_and_synchronize,
    ),
    # moe_utils only defines te_general_gemm when TE imports; RouterGatingLinearFunction then
    # fails with NameError. Defining it as None selects the torch matmul path.
    Patch(
        "megatron.core.transformer.moe.moe_utils",
        "te_general_gemm",
        "te_general_gemm is undefined without TE (NameError in router_gating_linear)",
        "if te_general_gemm is not None",
        lambda _orig: None,
        marker_in="megatron.core.transformer.moe.moe_utils:RouterGatingLinearFunction.forward",
    ),
    # The default causal mask (used when no attention mask is passed) is built on "cuda";
    # fused_softmax imports the function by name, so both references are replaced.
    Patch(
        "megatron.core.transformer.utils",
        "get_default_causal_mask",
        "builds the mask with device='cuda'",
        'device="cuda"',
        lambda _orig: _cpu_causal_mask,
    ),
    Patch(
        "megatron.core.fusions.fused_softmax",
        "get_default_causal_mask",
        "imported by name from transformer/utils.py (same device='cuda' mask)",
        'device="cuda"',
        lambda _orig: _cpu_causal_mask,
    ),
]


# torch_norm.py asserts no sequence parallelism, but MoE with TP > 1 requires SP. The norm
# itself is SP-agnostic; its weights only need the `sequence_parallel` mark so their grads are
# all-reduced across TP (as TE norms do).
PATCHES.append(
    Patch(
        "megatron.core.transformer.torch_norm",
        "WrappedTorchNorm.__new__",
        "asserts config.sequence_parallel is False",
        "sequence parallel not supported by torch LayerNorm",
        _torch_norm_new,
    )
)

# The distributed optimizer and the fp16/bf16 optimizer sort parameters by
# param.type() in ('torch.cuda.FloatTensor', 'torch.cuda.HalfTensor', ...) and raise TypeError
# for CPU tensors; during those calls CPU tensors report the CUDA type names.
PATCHES += [
    Patch(
        "megatron.core.optimizer.distrib_optimizer",
        "DistributedOptimizer._build_model_and_main_param_groups",
        "raises TypeError unless param.type() is a torch.cuda.* tensor type",
        "elif model_param.type() == 'torch.cuda.FloatTensor'",
        _with_cuda_type_names,
    ),
    Patch(
        "megatron.core.optimizer.optimizer",
        "Float16OptimizerWithFloat16Params.__init__",
        "raises TypeError unless param.type() is a torch.cuda.* tensor type",
        "elif param.type() == 'torch.cuda.FloatTensor'",
        _with_cuda_type_names,
    ),
]

# clip_grads asserts param.grad.type() == 'torch.cuda.FloatTensor' (CPU grads are
# torch.FloatTensor); optimizer.py imports the function by name.
for _module in ("megatron.core.optimizer.clip_grads", "megatron.core.optimizer.optimizer"):
    PATCHES.append(
        Patch(
            _module,
            "clip_grad_by_total_norm_fp32",
            "asserts CUDA float gradients before scaling them",
            "'torch.cuda.FloatTensor'",
            _clip_by_total_norm,
            marker_in="megatron.core.optimizer.clip_grads:clip_grad_by_total_norm_fp32",
        )
    )

# Modules that call torch factories with device="cuda" (or torch.cuda.synchronize) in code
# paths a CPU training run takes: their module-level `torch` becomes a CpuTorch.
_CUDA_FACTORY_MODULES = {  # module: (where upstream needs it, marker in its source)
    "megatron.core.utils": ("local_multi_tensor_l2_norm (grad norm)", 'device="cuda"'),
    "megatron.core.optimizer.optimizer": ("FP32Optimizer._scale", "device='cuda'"),
    "megatron.core.optimizer.clip_grads": ("get_grad_norm_fp32", "device='cuda'"),
    "megatron.core.distributed.param_and_grad_buffer": ("bucket warm-up", 'device="cuda"'),
    "megatron.core.pipeline_parallel.schedules": ("total_num_tokens", 'device="cuda"'),
    "megatron.core.transformer.moe.moe_utils": ("aux-loss tracker", 'device="cuda"'),
    "megatron.core.pipeline_parallel.p2p_communication": (
        "P2PCommunicator._communicate",
        "torch.cuda.synchronize()",
    ),
    "megatron.core.dist_checkpointing.strategies.filesystem_async": (
        "FileSystemWriterAsync",
        "torch.cuda.synchronize()",
    ),
    "megatron.core.dist_checkpointing.exchange_utils": ("load exchange", 'device="cuda"'),
    "megatron.core.dist_checkpointing.strategies.async_utils": (
        "async save: TemporalAsyncCaller, AsyncCallsQueue",
        "torch.cuda.synchronize()",
    ),
}
for _module, (_where, _marker) in _CUDA_FACTORY_MODULES.items():
    PATCHES.append(
        Patch(
            _module,
            "torch",
            f"device='cuda' tensor factories / torch.cuda calls ({_where})",
            _marker,
            _cpu_torch,
            marker_in=_module,
        )
    )
# `.cuda()` on tensors: language_module (shared embedding for PP>1/MTP), optimizer state
# reload, distrib_optimizer, exchange_utils, tensor_parallel/data.py. Without CUDA every such
# call raises, so on CPU it becomes the identity.
PATCHES.append(
    Patch(
        "torch",
        "Tensor.cuda",
        ".cuda() calls on tensors, e.g. LanguageModule.setup_embeddings_and_output_layer",
        "weight.data.cuda()",
        _tensor_cuda_identity,
        marker_in="megatron.core.models.common.language_module.language_module",
    )
)


# Selective recompute of `layernorm` (transformer_layer.py) and `mla_up_proj`
# (multi_latent_attention.py) goes through CheckpointWithoutOutput, whose __init__ sets
# `self.fp8 = fp8 is not None`: the default fp8=False becomes True and the FP8 branch calls
# Transformer Engine's FP8GlobalStateManager, undefined without TE (NameError). With TE the
# branch runs with FP8 disabled, i.e. exactly what `self.fp8 = bool(fp8)` does.
PATCHES.append(
    Patch(
        _RANDOM,
        "CheckpointWithoutOutput.__init__",
        "treats fp8=False as FP8 and then calls TE's FP8GlobalStateManager (NameError without TE)",
        "self.fp8 = fp8 is not None",
        _checkpoint_without_output_init,
    )
)


def cpu_patches_needed() -> bool:
    """True when running without CUDA, i.e. when the patches must be applied."""
    return not torch.cuda.is_available()


def apply_cpu_patches(force: bool = False) -> bool:
    """Apply every patch once when CUDA is unavailable (or `force`). Returns whether applied."""
    global _APPLIED
    if _APPLIED:
        return True
    if not (force or cpu_patches_needed()):
        return False
    for patch in PATCHES:
        patch.apply()
    _APPLIED = True
    return True


def _local_mla_core_attention() -> type:
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.utils import divide

    class MLADotProductAttention(DotProductAttention):
        """Local DotProductAttention that accepts MLA's distinct q/k and v head dims.

        Works around upstream issue 1589: MLASelfAttention passes `k_channels`/`v_channels`
        (multi_latent_attention.py) that the local DotProductAttention does not accept, and
        the output reshape must use the value head dim.
        """

        def __init__(
            self,
            *args: Any,
            k_channels: int | None = None,
            v_channels: int | None = None,
            **kw: Any,
        ):
            super().__init__(*args, **kw)
            if k_channels is None or v_channels is None:  # first build by Attention.__init__
                return
            heads = self.config.num_attention_heads
            self.hidden_size_per_partition = divide(v_channels * heads, self.tp_group.size())
            self.hidden_size_per_attention_head = k_channels

    return MLADotProductAttention


def mla_local_core_attention() -> type:
    """Core-attention class for MLA without Transformer Engine (see MLADotProductAttention)."""
    global _MLA_CLS
    if _MLA_CLS is None:
        _MLA_CLS = _local_mla_core_attention()
    return _MLA_CLS


_MLA_CLS: type | None = None
