"""A tiny pre-tokenized corpus for tests that need a real manifest but not real text."""

from __future__ import annotations

import json
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
