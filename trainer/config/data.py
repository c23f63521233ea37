"""Typed schema of the training data (the `data:` config group).

The trainer reads only the shard manifest written by data_prep's tokenize stage
(`manifest.json`: tokenizer, vocab size, EOD id, shards with domain, token/document counts and
blend weights). `trainer.data.load_manifest` validates it; `trainer.data.build_datasets` builds
megatron-core blended GPT datasets from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    manifest: str | None = None
    """Path to the tokenize stage's manifest.json (required to train; `data.manifest=PATH`)."""
    seq_length: int = 128
    """Tokens per training sample (must not exceed the model's max_position_embeddings)."""
    split: str = "98,2,0"
    """Train/valid/test proportions of every shard's documents (megatron's split string)."""
    seed: int = 1234
    """Seed of the sample shuffling (the order is deterministic for a given seed)."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    cache_dir: str | None = None
    """Where megatron caches its sample indices (shared by all ranks; used only under
    torch.distributed); None = rebuild them in memory every run."""
    reset_position_ids: bool = False
    """Restart position ids after each EOD token."""
    reset_attention_mask: bool = False
    """Block attention across documents packed into one sample."""
    eod_mask_loss: bool = False
    """Exclude the loss on EOD tokens."""

    def __post_init__(self) -> None:
        if self.seq_length < 1:
            raise ValueError(f"data config: seq_length must be positive, got {self.seq_length}")
        if self.num_workers < 0:
            raise ValueError("data config: num_workers must be >= 0")
        parts = self.split.replace("/", ",").split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"data config: split must look like '98,2,0', got {self.split!r}"
            ) from None
        if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(
                f"data config: split needs three non-negative train,valid,test weights, "
                f"got {self.split!r}"
            )

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        """Normalised (train, valid, test) fractions."""
        values = [float(p) for p in self.split.replace("/", ",").split(",")]
        total = sum(values)
        return values[0] / total, values[1] / total, values[2] / total
