"""Atomic, resharding-friendly checkpoints through megatron-core dist_checkpointing.

Layout of `checkpoint.dir`:
    iter_0000010/      one complete checkpoint (model, optimizer, RNG, step/data position)
    latest             text file naming the newest complete checkpoint; written last
A checkpoint is written into `iter_XXXXXXX.tmp` and renamed only after every rank finished,
so a crash never leaves a half-written directory that `latest` points to. Older complete
checkpoints beyond `keep_last` are deleted afterwards. Weights are stored as global
ShardedTensors, so a checkpoint saved under TP2 or PP2 loads under TP1/PP1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

LATEST = "latest"


def iteration_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if path.is_dir() else None


def _metadata() -> dict[str, Any]:
    return {
        "dp_cp_group": ps.get_data_parallel_group(with_context_parallel=True),
        "distrib_optim_sharding_type": "dp_reshardable",
    }


def _model_state(model: list[torch.nn.Module]) -> dict[str, Any]:
    meta = _metadata()
    if len(model) == 1:
        return {"model": model[0].module.sharded_state_dict(metadata=meta)}
    return {
        f"model{i}": chunk.module.sharded_state_dict(metadata=meta) for i, chunk in enumerate(model)
    }


def _layout_key() -> tuple[int, int, int, int]:
    return (
        ps.get_data_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_tensor_model_parallel_world_size(),
        ps.get_expert_model_parallel_world_size(),
    )


def _rng_object() -> ShardedObject:
    state = {"cpu": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    pp, tp = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
             ps.get_data_parallel_world_size())  # fmt: skip
    return ShardedObject(
        "rng_state", state, shape, (pp, tp, ps.get_data_parallel_rank()), replica_id=0
    )


def _full_state(model: list, optimizer: Any, for_loading: bool) -> dict[str, Any]:
    state = _model_state(model)
    state["optimizer"] = optimizer.sharded_state_dict(
        state, is_loading=for_loading, metadata=_metadata()
    )
    state["rng_state"] = _rng_object()
    return state


def save_checkpoint(
    root: str | Path, step: int, model: list, optimizer: Any, extra: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, prune old ones."""
    final = iteration_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    state = _full_state(model, optimizer, for_loading=False)
    state["common"] = {"step": step, "layout": _layout_key(), **extra}
    dist_checkpointing.save(state, str(tmp))
    dist.barrier()
    if rank0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_pointer(Path(root), final.name)
        _prune(Path(root), keep_last)
    dist.barrier()
    return final


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: str | Path, model: list, optimizer: Any | None, strict_layout: bool = False
) -> dict[str, Any]:
    """Load `path` into `model` (and `optimizer`); returns the saved common dict.

    RNG states are restored only when the layout matches the saving run; the optimizer is
    restored when given (its states are resharded like the weights).
    """
    common = dist_checkpointing.load_common_state_dict(str(path))["common"]
    same_layout = tuple(common["layout"]) == _layout_key()
    if strict_layout and not same_layout:
        raise ValueError(f"checkpoint {path} was saved with layout {common['layout']}")
    state = _model_state(model)
    if optimizer is not None:
        _ensure_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            state, is_loading=True, metadata=_metadata()
        )
    if same_layout:
        state["rng_state"] = _rng_object()
    loaded = dist_checkpointing.load(state, str(path))
    _restore_model(model, loaded)
    if optimizer is not None:
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        _sync_adam_steps(optimizer)
    if same_layout:
        _restore_rng(loaded["rng_state"])
    return common


def _ensure_optimizer_state(optimizer: Any) -> None:
    """A fresh DistributedOptimizer has no Adam state; without Apex/TE its state_dict() asserts
    one common 'step' across states, so loading into it fails. Give it placeholder states (the
    load overwrites them; the model weights are loaded after this dummy step)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def _sync_adam_steps(optimizer: Any) -> None:
    """Without Apex/TE (torch Adam), DistributedOptimizer.load_state_dict restores the step
    into param_groups but leaves each parameter's state['step'] (which torch Adam uses for
    bias correction) at its placeholder value; copy the group step into the states."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        inner = opt.optimizer
        for group in inner.param_groups:
            if group.get("step") is None:
                continue
            for param in group["params"]:
                state = inner.state.get(param)
                if state and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype)


def _restore_model(model: list, loaded: dict[str, Any]) -> None:
    if len(model) == 1:
        model[0].module.load_state_dict(loaded["model"])
        return
    for i, chunk in enumerate(model):
        chunk.module.load_state_dict(loaded[f"model{i}"])


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])
