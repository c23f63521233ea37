"""A tiny real-text corpus for trainer tests: Debian's license texts (two 'domains'),
tokenized with a byte-level BPE trained on the spot, written as megatron .bin/.idx shards
plus the manifest.json contract of data_prep's tokenize stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LICENSES = Path("/usr/share/common-licenses")
DOMAINS = {
    "gpl": ("GPL-2", "GPL-3", "LGPL-2.1", "LGPL-3"),
    "other": ("Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic"),
}


def _documents(names: tuple[str, ...]) -> list[str]:
    docs = []
    for name in names:
        text = (LICENSES / name).read_text(errors="replace")
        docs += [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]
    return docs


def build_corpus(root: Path, vocab_size: int = 2048) -> Path:
    """Write shards + tokenizer.json + manifest.json under `root`; return the manifest path."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root.mkdir(parents=True, exist_ok=True)
    texts = {d: _documents(names) for d, names in DOMAINS.items()}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eod>"])
    tok.train_from_iterator([t for docs in texts.values() for t in docs], trainer)
    tok.save(str(root / "tokenizer.json"))
    eod = tok.token_to_id("<eod>")
    shards = []
    for domain, docs in texts.items():
        builder = IndexedDatasetBuilder(str(root / f"{domain}.bin"), dtype=np.uint16)
        total = 0
        for doc in docs:
            ids = tok.encode(doc).ids + [eod]
            total += len(ids)
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
        builder.finalize(str(root / f"{domain}.idx"))
        shards.append(
            {
                "prefix": domain,
                "domain": domain,
                "documents": len(docs),
                "tokens": total,
                "weight": 0.5,
            }
        )
    manifest = {
        "format_version": 1,
        "tokenizer": "tokenizer.json",
        "vocab_size": tok.get_vocab_size(),
        "eod_token_id": eod,
        "dtype": "uint16",
        "shards": shards,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path
