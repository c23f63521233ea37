"""A tiny pre-tokenized corpus for tests that need a real manifest but not real text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

VOCAB, EOD = 512, 0


def write_tiny_manifest(root: Path) -> Path:
    """One uint16 Megatron shard of random documents and its manifest (DESIGN contract)."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(str(root / "web.bin"), dtype=np.uint16)
    docs = [
        list(rng.integers(1, VOCAB, size=int(rng.integers(40, 120)))) + [EOD] for _ in range(200)
    ]
    for doc in docs:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(str(root / "web.idx"))
    shard = {
        "prefix": "web",
        "domain": "web",
        "documents": len(docs),
        "tokens": sum(map(len, docs)),
        "weight": 1.0,
    }
    manifest = {
        "format_version": 1,
        "tokenizer": "tokenizer.json",
        "vocab_size": VOCAB,
        "eod_token_id": EOD,
        "dtype": "uint16",
        "shards": [shard],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "manifest.json"


def dp2_train_cmd(root: Path, steps: int, *overrides: str, seq_length: int = 64) -> list[str]:
    """`torchrun` of the trainer over 2 CPU ranks (tiny dense model, DP2) on root's tiny manifest,
    batch 4 x micro 1, no validation; `overrides` follow (and win)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "trainer",
        f"data.manifest={root / 'manifest.json'}",
        f"data.seq_length={seq_length}",
        "model=tiny_dense",
        "parallel=dp2",
        f"train.steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=0",
        *overrides,
    ]
