"""Read and write a trainer checkpoint's model weights a layer / a tensor at a time.

A single-process GPTModel is built on the `meta` device (no memory, no initialisation) only for
its `sharded_state_dict()`: the map from each weight's state_dict name to its global,
layout-independent checkpoint entry (key, offsets in stacked tensors, the GLU factory). For one
layer at a time those entries get real tensors and torch's DCP reads just their regions,
whatever TP/PP/VPP/EP/DP layout wrote the files; peak memory is one layer set.
`write_weights` is the other direction: a weights-only checkpoint in megatron's own torch_dist
format (what `dist_checkpointing.save` of the same model writes: DCP `.metadata` + `.distcp`,
`common.pt`, `metadata.json`), each tensor computed only when torch's writer asks for it and
dropped once written, so peak memory is one tensor and its sources, not the model.
Needs megatron's parallel state initialised for one process (trainer.parallel).
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import (
    ShardedObject,
    ShardedTensor,
    ShardedTensorFactory,
)
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from trainer.checkpoint_store import unreadable
from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig

_GROUP = re.compile(r"^((?:decoder|mtp)\.layers\.\d+)\.")


def model_entries(model_cfg: ModelConfig) -> dict[str, Any]:
    """state_dict name -> checkpoint entry of a one-process model, built on the `meta` device."""
    from trainer.model import build_model, build_transformer_config

    config = build_transformer_config(model_cfg, ParallelConfig(), perform_initialization=False)
    with torch.device("meta"):
        model = build_model(model_cfg, config)
    return dict(model.sharded_state_dict())


def weight_entries(model_cfg: ModelConfig) -> dict[str, Any]:
    """The weights' entries of `model_entries` (tensors and GLU factories, no extra state)."""
    return {
        name: entry
        for name, entry in model_entries(model_cfg).items()
        if isinstance(entry, ShardedTensor | ShardedTensorFactory)
    }


class ModuleTensors:
    """`CheckpointReader`'s reading interface over a live one-process model (its state dict
    holds full tensors: no TP or EP sharding), for the same names: what `trainer.export`
    converts, taken from memory instead of a checkpoint."""

    def __init__(self, module: torch.nn.Module, names: Iterable[str]):
        """`names`: `weight_entries(model_cfg)`'s keys (computed once by the caller)."""
        state = module.state_dict()
        self.tensors = {name: state[name].detach() for name in names}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {name: self.tensors[name] for name in names}

    def model_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.tensors.items()


class CheckpointReader:
    """The model tensors of checkpoint folder `path`, saved for a model `model_cfg`."""

    def __init__(self, path: str | Path, model_cfg: ModelConfig):
        self.path = str(path)
        self.entries = weight_entries(model_cfg)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Full tensors (as a one-process model holds them) for state_dict `names`: only their
        regions of the checkpoint are read, whatever layout split them into chunks."""
        planner = _RegionPlanner()
        out = {}
        for name in names:
            entry = self.entries[name]
            full = torch.empty(entry.data.shape, dtype=entry.data.dtype)
            for piece in _pieces(entry, full):
                planner.want(piece)
            out[name] = full
        try:
            dcp_load({}, storage_reader=FileSystemReader(self.path), planner=planner, no_dist=True)
        except BaseException as err:  # noqa: BLE001 - torch wraps any read failure (BaseException)
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            raise unreadable(self.path, err) from None
        return out

    def groups(self) -> list[list[str]]:
        """Names to load together: one layer's tensors (or one tensor outside the layers)."""
        groups: dict[str, list[str]] = {}
        for name in self.entries:
            layer = _GROUP.match(name)
            groups.setdefault(layer.group(1) if layer else name, []).append(name)
        return list(groups.values())

    def model_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(state_dict name, full tensor), one layer in memory at a time."""
        for names in self.groups():
            loaded = self.read(names)
            for name in names:
                yield name, loaded.pop(name)


def _pieces(entry: Any, full: torch.Tensor) -> list[ShardedTensor]:
    """The checkpoint chunks of a one-process entry, their data views of `full` (a factory,
    e.g. megatron's SwiGLU fc1, stores its tensor as two chunks of one key)."""
    real = dataclasses.replace(entry, data=full)
    if isinstance(entry, ShardedTensorFactory):
        return list(nested_values([real.build()]))
    return [real]


def _chunk_view(piece: ShardedTensor) -> tuple[ChunkStorageMetadata, torch.Tensor]:
    """(chunk of the global tensor, the piece's data shaped like it): megatron stacks tensors
    of several layers/experts under one key with leading axes of size one per piece."""
    sizes = torch.Size((1,) * piece.prepend_axis_num + tuple(piece.local_shape))
    chunk = ChunkStorageMetadata(offsets=torch.Size(piece.global_offset), sizes=sizes)
    return chunk, piece.data.view(sizes)


class _RegionPlanner(LoadPlanner):
    """A DCP load of chosen regions (chunks) of chosen keys into given tensors: torch's
    resharding (`create_read_items_for_chunk_list`) maps them onto the stored chunks. megatron's
    own load cannot read part of a key (its ShardedTensor metadata must list every chunk)."""

    def __init__(self) -> None:
        self._wanted: dict[str, list[tuple[ChunkStorageMetadata, torch.Tensor]]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def want(self, piece: ShardedTensor) -> None:
        """Read `piece` (a ShardedTensor with real data) from the checkpoint into its data."""
        self._wanted.setdefault(piece.key, []).append(_chunk_view(piece))
        self._shapes[piece.key] = tuple(piece.global_shape)

    def set_up_planner(self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False):
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, views in self._wanted.items():
            stored = self.metadata.state_dict_metadata.get(key)
            if stored is None:
                raise KeyError(f"no tensor {key} in the checkpoint")
            if tuple(stored.size) != self._shapes[key]:
                raise ValueError(
                    f"{key} has shape {list(stored.size)} in the checkpoint, the model needs "
                    f"{list(self._shapes[key])}"
                )
            for i, (chunk, _) in enumerate(views):
                for item in create_read_items_for_chunk_list(key, stored, [chunk]):
                    dest = MetadataIndex(key, item.dest_index.offset, i)
                    items.append(dataclasses.replace(item, dest_index=dest))
        return LoadPlan(items)

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise KeyError(f"{read_item.dest_index.fqn} is not a tensor")

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        _, view = self._wanted[read_item.dest_index.fqn][read_item.dest_index.index]
        for dim, (start, length) in enumerate(
            zip(read_item.dest_offsets, read_item.lengths, strict=True)
        ):
            view = view.narrow(dim, start, length)
        return view

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass


def write_weights(
    folder: Path,
    model_cfg: ModelConfig,
    tensor_of: Callable[[str], torch.Tensor],
    extra: dict[str, Any],
) -> None:
    """Write the model's weights into `folder` as megatron's torch_dist checkpoint.

    `tensor_of(name)` gives the full tensor of state_dict `name` (as a one-process model holds
    it); it is called while torch writes, one name at a time. `extra` holds what
    `dist_checkpointing.save` would get beside the model: ShardedObjects (rng_state) are written
    into the checkpoint, everything else into common.pt."""
    entries = model_entries(model_cfg)
    objects = [e for e in nested_values(extra) if isinstance(e, ShardedObject)]
    common = {k: v for k, v in extra.items() if not isinstance(v, ShardedObject)}
    planner = _StreamingPlanner(entries, objects, tensor_of)
    # One thread and no copy-ahead: items are resolved (computed) one at a time, in plan order.
    writer = FileSystemWriter(folder, thread_count=1, per_thread_copy_ahead=0)
    try:
        dcp_save({}, storage_writer=writer, planner=planner, no_dist=True)
    except BaseException:
        if planner.error is not None:  # torch wraps it in a CheckpointException: unwrap
            raise planner.error from None
        raise
    torch.save(common, folder / "common.pt")
    save_config(CheckpointingConfig("torch_dist", 1, "torch", 1), str(folder))


class _StreamingPlanner(DefaultSavePlanner):
    """A DCP save plan laid out as megatron's torch_dist strategy lays out the model's sharded
    state dict (one chunk per ShardedTensor, ShardedObjects as bytes under their unique key),
    whose data is computed by `resolve_data` when the writer reaches each item."""

    def __init__(self, entries: dict[str, Any], objects: list[ShardedObject], tensor_of) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._tensor_of = tensor_of
        self._sources: dict[MetadataIndex, tuple[str, Any, Any]] = {}
        self._items: list[WriteItem] = []
        for name, entry in entries.items():
            if isinstance(entry, ShardedObject):
                self._add_object(name, entry)
                continue
            for piece in _pieces(entry, entry.data):
                self._add_tensor(name, entry, piece)
        for obj in objects:
            self._add_object(obj.key, obj)
        self._cached: tuple[str, torch.Tensor] | None = None
        self.error: ValueError | None = None

    def _add_tensor(self, name: str, entry: Any, piece: ShardedTensor) -> None:
        chunk, _ = _chunk_view(piece)
        index = MetadataIndex(piece.key, chunk.offsets)
        self._items.append(
            WriteItem(
                index=index,
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=chunk,
                    properties=TensorProperties(dtype=piece.dtype),
                    size=torch.Size(piece.global_shape),
                ),
            )
        )
        self._sources[index] = (name, entry, piece)

    def _add_object(self, name: str, obj: ShardedObject) -> None:
        index = MetadataIndex(obj.unique_key)
        self._items.append(WriteItem(index=index, type=WriteItemType.BYTE_IO))
        self._sources[index] = (name, obj, None)

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        name, entry, piece = self._sources[write_item.index]
        if piece is None:  # a ShardedObject, serialised as megatron does
            data = io.BytesIO()
            torch.save([entry.data], data)
            return data
        full = self._full(name).to(piece.dtype)
        real = next(p for p in _pieces(entry, full) if p.global_offset == piece.global_offset)
        return _chunk_view(real)[1]

    def _full(self, name: str) -> torch.Tensor:
        """`tensor_of(name)`, kept until the next name (a factory's pieces share one tensor)."""
        if self._cached is None or self._cached[0] != name:
            self._cached = None  # drop the previous tensor before computing the next
            try:
                self._cached = (name, self._tensor_of(name))
            except ValueError as err:  # bad input (a truncated file): one line for the caller
                self.error = err
                raise
        return self._cached[1]
