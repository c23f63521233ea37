"""What a live megatron run holds in memory: the measured side of trainer.memory's estimate.

Used by tests/trainer/test_memory.py and benchmarks/memory_estimator.py to check
`estimate_memory` against real allocations (exact for weights, gradients and optimizer states).
"""

from __future__ import annotations

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
    """Bytes autograd saves for backward while `forward()` runs (parameters excluded).

    Counts distinct storages through `torch.autograd.graph.saved_tensors_hooks`; this is what
    `activation_bytes` estimates for one micro-batch on a single stage. Returns (bytes, output).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return sum(seen.values()), out
