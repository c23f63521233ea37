"""SFT data: one conversation per sample, right-padded, loss on the assistant tokens only.

A manifest whose shards carry `loss_mask` (data_prep's `chat_tokenize` stage) holds, next to
each token shard, a uint8 indexed dataset with the same documents: 1 on the tokens the model
must learn to produce (assistant content and its end token), 0 on prompt tokens. megatron-core
has no SFT dataset, so `SFTDataset` builds the samples itself:

- conversation `t[0..L-1]` with mask `m[0..L-1]` (L <= seq_length + 1, checked against the
  manifest): tokens = t[:-1], labels = t[1:], loss_mask = m[1:] (the mask of the predicted
  token), right-padded to seq_length with the end-of-document id and loss_mask 0; position ids
  0..seq_length-1; causal attention (padding comes after every real token, so nothing real
  attends to it). The batch's loss_mask also goes to `GPTModel.forward(loss_mask=...)`, which
  rolls it with the labels, so the MTP loss ignores prompt tokens and padding too.
- The loss (trainer.loop) is megatron's: each micro-batch's loss is the mean over its unmasked
  tokens, micro-batches (and data-parallel replicas) are averaged; the logged `lm_loss` is
  per token over the whole global batch.
- Documents are split train/valid/test by `data.split` per shard as megatron does; sample i
  comes from the shard megatron's blending helper picks for i (exactly the manifest weights),
  and within a shard from a seeded permutation of its documents, reshuffled every epoch.
- No packing: several conversations in one sample need per-document attention
  (`PackedSeqParams`, Transformer Engine's kernels), which this CPU build cannot run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config.data import DataConfig

PACKING_OPTIONS = ("reset_position_ids", "reset_attention_mask", "eod_mask_loss")
"""DataConfig options of packed pretraining samples, refused with SFT data."""


def check_loss_masks(manifest: Any, seq_length: int | None) -> None:
    """SFT manifest checks: every shard or none has a mask; each mask has its token shard's
    documents and lengths; the longest conversation fits data.seq_length."""
    from trainer.data import ManifestError

    where = f"manifest {manifest.path}"
    with_mask = [s.loss_mask is not None for s in manifest.shards]
    if any(with_mask) and not all(with_mask):
        missing = [str(s.prefix.name) for s in manifest.shards if s.loss_mask is None]
        raise ManifestError(f"{where}: some shards have a loss_mask and {missing} do not")
    if not any(with_mask):
        return
    for i, shard in enumerate(manifest.shards):
        _check_mask(shard, f"{where}: shards[{i}]")
    longest = max(s.max_document_tokens or 0 for s in manifest.shards)
    if seq_length is not None and longest > seq_length + 1:
        raise ManifestError(
            f"{where}: conversations of up to {longest} tokens do not fit data.seq_length="
            f"{seq_length} (SFT samples are never cut): raise data.seq_length to {longest - 1} "
            f"or rerun chat_tokenize with chat_tokenize.seq_length={seq_length}"
        )


def _check_mask(shard: Any, where: str) -> None:
    from megatron.core.datasets.indexed_dataset import _IndexReader

    from trainer.data import ManifestError

    for suffix in (".bin", ".idx"):
        if not Path(f"{shard.loss_mask}{suffix}").is_file():
            raise ManifestError(f"{where}: loss mask file {shard.loss_mask}{suffix} is missing")
    tokens = _IndexReader(f"{shard.prefix}.idx", multimodal=False)
    mask = _IndexReader(f"{shard.loss_mask}.idx", multimodal=False)
    if np.dtype(mask.dtype) != np.uint8:
        raise ManifestError(f"{where}: {shard.loss_mask}.idx stores {mask.dtype}, expected uint8")
    same = np.array_equal(tokens.sequence_lengths, mask.sequence_lengths)
    if not same or Path(f"{shard.loss_mask}.bin").stat().st_size != shard.tokens:
        raise ManifestError(
            f"{where}: {shard.loss_mask} does not match {shard.prefix} document for document "
            f"(truncated or from another run?)"
        )


def split_ranges(manifest: Any, split: str) -> list[list[tuple[int, int] | None]]:
    """Per split (train, valid, test), per shard: its document range [begin, end) or None."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    out = []
    for bounds in matrix:
        ranges: list[tuple[int, int] | None] = []
        for shard in manifest.shards:
            if bounds is None:
                ranges.append(None)
                continue
            beg, end = (int(round(b * float(shard.documents))) for b in bounds)
            ranges.append((beg, end) if end > beg else None)
        out.append(ranges)
    return out


class SFTDataset:
    """`num_samples` padded conversations drawn from the shards by the manifest weights."""

    def __init__(
        self,
        manifest: Any,
        ranges: list[tuple[int, int] | None],
        num_samples: int,
        seq_length: int,
        seed: int,
    ):
        from megatron.core.datasets import helpers
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.seq_length, self.seed, self.pad = seq_length, seed, manifest.eod_token_id
        self.ranges = ranges
        self.tokens = [IndexedDataset(str(s.prefix), mmap=True) for s in manifest.shards]
        self.masks = [IndexedDataset(str(s.loss_mask), mmap=True) for s in manifest.shards]
        weights = np.array(
            [s.weight if r else 0.0 for s, r in zip(manifest.shards, ranges, strict=True)]
        )
        assert weights.sum() > 0, "no shard has documents in this split"
        self.shard_index = np.zeros(num_samples, dtype=np.int16)
        self.shard_sample = np.zeros(num_samples, dtype=np.int64)
        helpers.build_blending_indices(
            self.shard_index,
            self.shard_sample,
            weights / weights.sum(),
            len(weights),
            num_samples,
            False,
        )
        self._perms: dict[int, tuple[int, np.ndarray]] = {}
        """Per shard: (epoch, its document permutation); samples come in epoch order."""

    def __len__(self) -> int:
        return len(self.shard_index)

    def document(self, index: int) -> tuple[int, int]:
        """(shard, document) of sample `index`."""
        k, j = int(self.shard_index[index]), int(self.shard_sample[index])
        beg, end = self.ranges[k]
        epoch, offset = divmod(j, end - beg)
        cached = self._perms.get(k)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, k, epoch])
            cached = self._perms[k] = (epoch, rng.permutation(end - beg))
        return k, beg + int(cached[1][offset])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        k, doc = self.document(index)
        ids = np.asarray(self.tokens[k][doc], dtype=np.int64)
        mask = np.asarray(self.masks[k][doc], dtype=np.float32)
        n = len(ids) - 1
        assert 1 <= n <= self.seq_length, f"conversation of {len(ids)} tokens in an SFT sample"
        tokens = np.full(self.seq_length, self.pad, dtype=np.int64)
        labels = np.full(self.seq_length, self.pad, dtype=np.int64)
        loss_mask = np.zeros(self.seq_length, dtype=np.float32)
        tokens[:n], labels[:n], loss_mask[:n] = ids[:-1], ids[1:], mask[1:]
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": np.arange(self.seq_length),
        }


def build_sft_datasets(data_cfg: DataConfig, manifest: Any, sizes: list[int]) -> tuple[Any, Any]:
    """(train, valid) SFTDatasets of `sizes[0]` and `sizes[1]` samples (valid: None if 0)."""
    from trainer.data import ManifestError

    packing = [k for k in PACKING_OPTIONS if getattr(data_cfg, k)]
    if packing:
        raise ValueError(
            f"data.{'/'.join(packing)}: options for packed pretraining samples; SFT data holds one "
            f"conversation per sample and its loss mask comes from the data: unset them"
        )
    train_ranges, valid_ranges, _ = split_ranges(manifest, data_cfg.split)
    if not any(r and s.weight > 0 for r, s in zip(train_ranges, manifest.shards, strict=True)):
        raise ManifestError(
            f"{manifest.path}: no shard has training conversations under data.split="
            f"{data_cfg.split}"
        )
    train = SFTDataset(manifest, train_ranges, sizes[0], data_cfg.seq_length, data_cfg.seed)
    valid = None
    if sizes[1] and any(valid_ranges):
        valid = SFTDataset(manifest, valid_ranges, sizes[1], data_cfg.seq_length, data_cfg.seed + 1)
    _log_sft(manifest, train)
    return train, valid


def _log_sft(manifest: Any, train: SFTDataset) -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    counts = np.bincount(train.shard_index, minlength=len(manifest.shards))
    share: dict[str, float] = {}
    for shard, c in zip(manifest.shards, counts, strict=True):
        share[shard.domain] = share.get(shard.domain, 0.0) + float(c) / max(len(train), 1)
    mix = " ".join(f"{d} {v:.3f}" for d, v in sorted(share.items()))
    print(f"[trainer] SFT data: one conversation per sample, padded; mix {mix}", flush=True)
