"""Atomic, resharding-friendly checkpoints through megatron-core dist_checkpointing.

A checkpoint is written into `iter_XXXXXXX.tmp`, gets its completeness marker (step, lineage,
model config, file sizes; trainer.checkpoint_store) as its last file, and is renamed only after
every rank finished, so a crash never leaves a folder that looks complete. `latest` is updated
after the rename; older checkpoints of the same lineage beyond `keep_last` are pruned by step.
Weights are stored as global ShardedTensors, so a checkpoint saved under TP2 or PP2 loads under
TP1/PP1. Loading checks the marker first: a damaged checkpoint raises CheckpointDamaged and an
other model's checkpoint CheckpointIncompatible, each one line naming the folder.
With `checkpoint.async_save` a forked process writes the files while training continues; the
marker, the rename and `latest` follow only once every rank's write finished (AsyncSaves).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import (
    ShardedObject,
    ShardedTensor,
    ShardedTensorFactory,
)
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

from appconf.lifetime import die_with_parent
from trainer.checkpoint_store import (
    Checkpoint,
    CheckpointDamaged,
    CheckpointIncompatible,
    iteration_dir,
    model_differences,
    prune,
    read_marker,
    unreadable,
    verify_files,
    write_marker,
    write_pointer,
)


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
    shape = (
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_tensor_model_parallel_world_size(),
        ps.get_data_parallel_world_size(),
    )
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
    root: str | Path,
    step: int,
    model: list,
    optimizer: Any,
    extra: dict[str, Any],
    keep_last: int,
    identity: dict[str, Any],
    saves: AsyncSaves | None = None,
    write_delay_s: float = 0.0,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, prune old ones of its lineage.

    `identity` = {"lineage": ..., "model": {model config fields}} goes into the marker. With
    `saves` the files are written by a forked process while training goes on: the marker,
    the final name and `latest` come when the write is finalized (`saves.poll/wait`), after
    megatron gathered every rank's write result and wrote `.metadata`."""
    if saves is not None:
        saves.wait()  # at most one save in flight
    final = iteration_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    _orphan_safe_write_queue()
    state = _full_state(model, optimizer, for_loading=False)
    state["common"] = {"step": step, "layout": _layout_key(), **extra}
    finish = functools.partial(_publish, Path(root), final, tmp, step, keep_last, identity)
    if saves is None:
        dist_checkpointing.save(state, str(tmp))
        finish()
        return final
    _own_cpu_copies(state)
    request = dist_checkpointing.save(state, str(tmp), async_sharded_save=True)
    if write_delay_s and request.async_fn is not None:  # test hook: a slow file system
        request = request._replace(async_fn=_delayed(request.async_fn, write_delay_s))
    request.add_finalize_fn(finish)
    saves.schedule(request, step)
    return final


def _publish(
    root: Path, final: Path, tmp: Path, step: int, keep_last: int, identity: dict[str, Any]
) -> None:
    """Every rank's files are written: marker, final name, `latest`, pruning (rank 0)."""
    dist.barrier()
    if dist.get_rank() == 0:
        marker = {"step": step, "layout": list(_layout_key()), "saved_at": time.time(), **identity}
        write_marker(tmp, marker)
        _replace(final, tmp, identity["lineage"])
        write_pointer(root, final.name)
        prune(root, keep_last, identity["lineage"])
    dist.barrier()


def _own_cpu_copies(state: dict[str, Any]) -> None:
    """Give an async save its own copy of every CPU tensor. On a GPU megatron stages tensors to
    host memory before the writer forks; CPU tensors it passes by reference (filesystem_async
    `_clone_if_needed` clones only views), so the next optimizer step would change what the
    writer is still writing."""

    def own(value: Any) -> Any:
        data = getattr(value, "data", None)
        if isinstance(value, ShardedTensor | ShardedTensorFactory) and isinstance(
            data, torch.Tensor
        ):
            if data.device.type == "cpu":
                value.data = data.detach().clone()
        return value

    dict_list_map_inplace(own, state)


def _delayed(fn: Callable[..., Any], delay_s: float) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return fn(*args, **kwargs)

    return run


class AsyncSaves:
    """Checkpoint writes in flight (megatron's AsyncCallsQueue: one forked writer per save).
    `poll()` and `wait()` are collective: call them on every rank together."""

    def __init__(self) -> None:
        self.queue = AsyncCallsQueue(persistent=False)
        self.steps: list[int] = []

    @property
    def pending(self) -> bool:
        return self.queue.get_num_unfinalized_calls() > 0

    def schedule(self, request: Any, step: int) -> None:
        self.queue.schedule_async_request(request)
        self.steps.append(step)

    def poll(self) -> list[int]:
        """Finalize the saves whose writes ended on every rank; their steps."""
        return (
            self._finalized(self.queue.maybe_finalize_async_calls(blocking=False))
            if self.pending
            else []
        )

    def wait(self) -> list[int]:
        """Block until every save in flight is written and finalized; their steps."""
        return (
            self._finalized(self.queue.maybe_finalize_async_calls(blocking=True))
            if self.pending
            else []
        )

    def _finalized(self, calls: list[int]) -> list[int]:
        done, self.steps = self.steps[: len(calls)], self.steps[len(calls) :]
        return done


def save_weights(
    root: str | Path, identity: dict[str, Any], write: Callable[[Path, dict[str, Any]], None]
) -> Path:
    """A weights-only checkpoint `root/iter_0000000` of one full model in a single process (an
    imported model): what `checkpoint.init_from` loads under any layout. `write(folder, extra)`
    writes the model's weights and `extra` (rng_state, common) into `folder` as
    `dist_checkpointing.save` would (trainer.hf.stream.write_weights streams them)."""
    final = iteration_dir(root, 0)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp, {"rng_state": _rng_object(), "common": {"step": 0, "layout": _layout_key()}})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_marker(
        tmp, {"step": 0, "layout": list(_layout_key()), "saved_at": time.time(), **identity}
    )
    _replace(final, tmp, identity["lineage"])
    write_pointer(Path(root), final.name)
    return final


def _replace(final: Path, tmp: Path, lineage: str) -> None:
    """Give `tmp` its final name. An existing folder of that name is replaced only if it is
    this lineage's (the same step saved again); another run's is moved aside, not deleted."""
    if final.exists():
        old = read_marker(final)
        if old is not None and old.get("lineage") != lineage:
            os.replace(final, final.with_name(f"{final.name}.lineage-{old.get('lineage')}"))
        else:
            shutil.rmtree(final)
    os.replace(tmp, final)


def _orphan_safe_write_queue() -> None:
    """megatron-core (dist_checkpointing/strategies/filesystem_async.py `_get_write_results_queue`)
    starts a `multiprocessing.Manager()` server process for its write results on the first save
    and never stops it; when the trainer is SIGKILLed that ~300 MB process lives on forever.
    Pre-create the queue on a manager whose server dies with its parent (PR_SET_PDEATHSIG)."""
    if filesystem_async._results_queue is not None:
        return
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=die_with_parent)
    filesystem_async._results_queue = manager.Queue()


def load_checkpoint(
    ckpt: Checkpoint,
    model: list,
    optimizer: Any | None,
    model_config: dict[str, Any],
    strict_layout: bool = False,
    tolerate: Collection[str] = (),
) -> dict[str, Any]:
    """Load `ckpt` into `model` (and `optimizer`); returns the saved common dict.

    RNG states are restored only when the layout matches the saving run; the optimizer is
    restored when given (its states are resharded like the weights). Model config fields in
    `tolerate` may differ (a training phase changing weightless fields, e.g. rope scaling).
    Raises CheckpointDamaged (missing/truncated/unreadable files) or CheckpointIncompatible
    (another model), one line."""
    path = ckpt.path
    saved_model = ckpt.marker.get("model", {})
    differences = model_differences(saved_model, model_config, tolerate)
    if differences:
        raise CheckpointIncompatible(
            f"checkpoint {path} was saved with model {saved_model.get('name')!r}, this run is "
            f"{model_config.get('name')!r}: {'; '.join(differences[:6])}"
            + (f" (+{len(differences) - 6} more)" if len(differences) > 6 else "")
        )
    verify_files(ckpt)
    try:
        return _load(path, model, optimizer, strict_layout)
    except (CheckpointDamaged, CheckpointIncompatible):
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - any read failure is damage
        raise unreadable(path, err) from None


def _load(path: Path, model: list, optimizer: Any | None, strict_layout: bool) -> dict[str, Any]:
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
