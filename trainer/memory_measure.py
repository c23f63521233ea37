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
    return sum(_live_bytes(saved, params).values()), out


def _live_bytes(refs: list[weakref.ref], skip: set[int]) -> dict[int, int]:
    """nbytes of the distinct non-empty storages behind the live tensors of `refs`, keyed by
    address; storages at addresses in `skip` excluded."""
    out = {}
    for ref in refs:
        t = ref()
        if t is None:
            continue
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in skip:
            out[storage.data_ptr()] = storage.nbytes()
    return out


def recompute_peak_bytes(model: object, forward: object) -> tuple[int, int]:
    """(bytes saved after `forward()`, peak bytes that recompute rebuilds during backward).

    The peak is the largest total, at any moment of the backward, of the storages that
    recomputation saves again (tensors autograd saves while backward runs, other than storages
    the forward saved, e.g. a checkpoint's inputs) plus the outputs megatron's
    CheckpointWithoutOutput restores into the storages it had emptied: what
    `MemoryEstimate.recompute_transient` estimates. Sampled at every save and after every
    restore; 0 without recompute. Keeps every storage it saw until it returns (so no address
    is reused while it compares addresses).
    """
    from megatron.core.tensor_parallel import random as mp_random

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    fwd: list[weakref.ref] = []
    bwd: list[tuple[weakref.ref, torch.UntypedStorage]] = []
    held: list[tuple[weakref.ref, torch.UntypedStorage]] = []  # forward's, alive at its end
    state = {"backward": False, "peak": 0}

    def sample() -> None:
        held[:] = [(r, st) for r, st in held if r() is not None]
        kept = params | {st.data_ptr() for _, st in held if st.nbytes()}
        rebuilt = {st.data_ptr(): st.nbytes() for _, st in held if id(st) in emptied}
        rebuilt = {k: v for k, v in rebuilt.items() if v}
        for r, st in bwd:
            if r() is not None and st.nbytes() and st.data_ptr() not in kept:
                rebuilt[st.data_ptr()] = st.nbytes()
        state["peak"] = max(state["peak"], sum(rebuilt.values()))

    def pack(t: torch.Tensor) -> torch.Tensor:
        if state["backward"]:
            bwd.append((weakref.ref(t), t.untyped_storage()))
            sample()
        else:
            fwd.append(weakref.ref(t))
        return t

    original = mp_random.CheckpointWithoutOutput._recompute

    def recompute(self: object, grad: object) -> None:
        original(self, grad)
        sample()

    mp_random.CheckpointWithoutOutput._recompute = recompute
    emptied: set[int] = set()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
            saved = _live_bytes(fwd, params)
            held[:] = [(r, t.untyped_storage()) for r in fwd if (t := r()) is not None]
            emptied = {id(st) for _, st in held if not st.nbytes()}
            state["backward"] = True
            loss.sum().backward()
    finally:
        mp_random.CheckpointWithoutOutput._recompute = original
    return sum(saved.values()), state["peak"]
