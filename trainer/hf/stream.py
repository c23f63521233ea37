"""Read a trainer checkpoint's model weights one layer at a time.

A single-process GPTModel is built on the `meta` device (no memory, no initialisation) only for
its `sharded_state_dict()`: the map from each weight's state_dict name to its global,
layout-independent checkpoint entry (key, offsets in stacked tensors, the GLU factory). For one
layer at a time those entries get real tensors and megatron's dist_checkpointing loads just
them, whatever TP/PP/VPP/EP/DP layout wrote the files. Peak memory is one layer set, or for
tensors megatron stores stacked over layers (the dense local spec) one parameter over all layers.
Needs megatron's parallel state initialised for one process (trainer.parallel).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from trainer.checkpoint_store import unreadable
from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig

_GROUP = re.compile(r"^((?:decoder|mtp)\.layers\.\d+)\.")


class CheckpointReader:
    """The model tensors of checkpoint folder `path`, saved for a model `model_cfg`."""

    def __init__(self, path: str | Path, model_cfg: ModelConfig):
        from trainer.model import build_model, build_transformer_config

        self.path = str(path)
        config = build_transformer_config(model_cfg, ParallelConfig(), perform_initialization=False)
        with torch.device("meta"):
            model = build_model(model_cfg, config)
        self.entries: dict[str, Any] = {
            name: entry for name, entry in model.sharded_state_dict().items()
            if isinstance(entry, ShardedTensor | ShardedTensorFactory)
        }  # fmt: skip

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Full tensors (as a one-process model holds them) for state_dict `names`."""
        subset = {name: _materialized(self.entries[name]) for name in names}
        # A subset of the model is a partial read by design: skip the check that the
        # requested shards cover every tensor of the checkpoint.
        try:
            return dist_checkpointing.load(subset, self.path, validate_access_integrity=False)
        except Exception as err:  # noqa: BLE001 - any read failure of the folder is damage
            raise unreadable(self.path, err) from None

    def groups(self) -> list[list[str]]:
        """Names to load together: one layer's tensors, except that entries stored as one
        stacked tensor (megatron's dense local spec stacks all layers under one key) must be
        read together, so they form one group per key."""
        by_key: dict[str, list[str]] = {}
        for name, entry in self.entries.items():
            by_key.setdefault(entry.key, []).append(name)
        groups: dict[str, list[str]] = {}
        for key, names in by_key.items():
            if len(names) > 1:
                groups[key] = names
                continue
            layer = _GROUP.match(names[0])
            groups.setdefault(layer.group(1) if layer else names[0], []).extend(names)
        return list(groups.values())

    def model_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(state_dict name, full tensor), one layer in memory at a time."""
        for names in self.groups():
            loaded = self.read(names)
            for name in names:
                yield name, loaded.pop(name)


def _materialized(entry: Any) -> Any:
    """A copy of a checkpoint entry whose tensor is real (empty), to be loaded into."""
    meta = entry.data
    return dataclasses.replace(entry, data=torch.empty(meta.shape, dtype=meta.dtype))
