"""What a live megatron run holds in memory: the measured side of trainer.memory's estimate.

Used by tests/trainer/test_memory.py and benchmarks/memory_estimator.py to check
`estimate_memory` against real allocations (exact for weights, gradients and optimizer states).
"""

from __future__ import annotations

import weakref

import torch

from trainer.memory import BufferBytes


def _storage_bytes(tensors: list) -> dict[int, int]:
    """nbytes of every distinct storage behind `tensors`, keyed by its address."""
    out = {}
    for t in tensors:
        storage = t.untyped_storage()
        out[storage.data_ptr()] = storage.nbytes()
    return out


def allocated_static_bytes(model_chunks: list, optimizer: object) -> BufferBytes:
    """Bytes a megatron run really holds for weights, main grads and optimizer state.

    Counts distinct storages: parameters (the DDP param buffer under the distributed
    optimizer), `main_grad` buffers, and the optimizer's params and state tensors that are not
    already counted (fp32 master copies, Adam moments, step counters). Call after one step.
    """
    params = [p for chunk in model_chunks for p in chunk.parameters()]
    weights = _storage_bytes(params)
    grads = _storage_bytes(
        [p.main_grad for p in params if getattr(p, "main_grad", None) is not None]
    )
    tensors = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", opt)
        for group in inner.param_groups:
            tensors += list(group["params"])
        for state in inner.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    extra = {
        k: v for k, v in _storage_bytes(tensors).items() if k not in weights and k not in grads
    }
    return BufferBytes(sum(weights.values()), sum(grads.values()), sum(extra.values()))


def saved_activation_bytes(model: object, forward: object) -> tuple[int, object]:
    """Bytes autograd holds for backward once `forward()` has run (parameters excluded).

    Sees every tensor saved for backward through `torch.autograd.graph.saved_tensors_hooks`
    and, after the forward, sums the distinct storages still alive at their size then:
    megatron's CheckpointWithoutOutput (layernorm and mla_up_proj recompute) releases the
    storage of outputs that later ops saved (resize to 0) and restores it during backward, so
    sizes at save time would overcount. Inside a checkpointed region (tensor_parallel.checkpoint)
    the forward runs without grad and only the region's inputs are saved. What a recompute
    allocates transiently in backward is not counted. This is what `activation_bytes` estimates
    for one micro-batch on a single stage. Returns (bytes, output).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    storages: dict[int, int] = {}
    for ref in saved:
        t = ref()
        if t is None:  # freed during the forward (its graph branch was dropped)
            continue
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()), out
