"""Deterministic micro-batches for one rank, addressed by global sample index.

Step `s` of a run uses global samples [s*G, (s+1)*G) (G = global batch size); data-parallel
rank `r` takes its contiguous slice and cuts it into micro-batches. The data position is
therefore just the step number, which makes resume exact and layout-independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack GPTDataset-style samples into a micro-batch of tensors."""
    out = {}
    for key in BATCH_KEYS:
        values = [np.asarray(s[key]) for s in samples]
        tensor = torch.from_numpy(np.stack(values))
        out[key] = tensor.float() if key == "loss_mask" else tensor.long()
    return out


def microbatches(
    dataset: Sequence[dict[str, Any]],
    step: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of global batch `step` (wrapping around the dataset)."""
    per_rank = global_batch_size // dp_size
    start = step * global_batch_size + dp_rank * per_rank
    n = len(dataset)
    batches = []
    for m in range(per_rank // micro_batch_size):
        first = start + m * micro_batch_size
        batches.append(collate([dataset[(first + i) % n] for i in range(micro_batch_size)]))
    return batches


class SyntheticDataset:
    """Random token sequences, reproducible per index (tests and benchmarks)."""

    def __init__(self, num_samples: int, seq_length: int, vocab_size: int, seed: int = 0):
        self.num_samples, self.seq_length = num_samples, seq_length
        self.vocab_size, self.seed = vocab_size, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        # A little structure (repeated motifs) so the loss can fall.
        motif = rng.integers(0, self.vocab_size, size=8)
        seq = np.tile(motif, self.seq_length // 8 + 2)[: self.seq_length + 1]
        noise = rng.random(self.seq_length + 1) < 0.1
        seq = np.where(noise, rng.integers(0, self.vocab_size, self.seq_length + 1), seq)
        return {
            "tokens": seq[:-1],
            "labels": seq[1:],
            "loss_mask": np.ones(self.seq_length, dtype=np.float32),
            "position_ids": np.arange(self.seq_length),
        }
