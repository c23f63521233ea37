"""Tokenizer training (byte-level BPE, HF tokenizers) and Megatron .bin/.idx shards + manifest.

Shards are written with datatrove's `MegatronTokenizedFile` (the format megatron-core's
`IndexedDataset` reads), one prefix per domain and task: `<domain>_<rank>`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.tokens.megatron_tokenizer import MegatronTokenizedFile

from data_prep.config import TokenizeConfig, TrainTokenizerConfig

MANIFEST_VERSION = 1


def reservoir(data: DocumentsPipeline, sample: list[str], size: int, seed: int, rank: int):
    """Pass documents through while keeping a seeded uniform sample of `size` texts (Algorithm
    R, seeded per task) in `sample`."""
    rng = random.Random(seed * 100_003 + rank)
    for i, doc in enumerate(data):
        if len(sample) < size:
            sample.append(doc.text)
        elif (j := rng.randint(0, i)) < size:
            sample[j] = doc.text
        yield doc


class TokenizerSample(PipelineStep):
    """Seeded reservoir sample of document texts per task (passes documents through)."""

    name = "TokenizerSample"
    type = "TOKENIZER"

    def __init__(self, folder: str, size: int, seed: int):
        super().__init__()
        self.folder = folder
        self.size = size
        self.seed = seed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        sample: list[str] = []
        yield from reservoir(data, sample, self.size, self.seed, rank)
        os.makedirs(self.folder, exist_ok=True)
        with open(Path(self.folder) / f"{rank:05d}.jsonl", "w") as f:
            f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in sample)


def train_bpe(cfg: TrainTokenizerConfig, sample_folder: str, out_path: str) -> dict:
    """Train a byte-level BPE on the union of the task samples; save tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [
        json.loads(line) for p in sorted(Path(sample_folder).glob("*.jsonl")) for line in open(p)
    ]
    random.Random(cfg.seed).shuffle(texts)
    texts = texts[: cfg.sample_docs]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[cfg.eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(out_path)
    return {"documents_sampled": len(texts), "vocab_size": tok.get_vocab_size()}


def open_tokenizer(path: str, eod_token: str) -> tuple[Any, int, int]:
    """(tokenizer, end-of-document id, bytes per token in the shards) of a tokenizer.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    eod = tok.token_to_id(eod_token)
    if eod is None:
        raise ValueError(f"tokenizer {path} has no token {eod_token!r}")
    return tok, eod, 4 if tok.get_vocab_size() > 65536 else 2


def write_shard_info(
    folder: str, rank: int, eod: int, tok: Any, token_size: int, shards: Iterable[dict]
) -> None:
    """One task's shard list (`<folder>/<rank>.json`), which write_manifest gathers."""
    os.makedirs(folder, exist_ok=True)
    info = {
        "eod": eod,
        "vocab_size": tok.get_vocab_size(),
        "token_size": token_size,
        "shards": list(shards),
    }
    (Path(folder) / f"{rank:05d}.json").write_text(json.dumps(info))


def _slug(domain: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", domain) or "unknown"


class MegatronShards(PipelineStep):
    """Tokenize documents and append them to the shard of their domain (one per task)."""

    name = "MegatronShards"
    type = "TOKENIZER"

    def __init__(
        self, cfg: TokenizeConfig, tokenizer_path: str, output_folder: str, info_folder: str
    ):
        super().__init__()
        self.cfg = cfg
        self.tokenizer_path = tokenizer_path
        self.output_folder = output_folder
        self.info_folder = info_folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from concurrent.futures import ThreadPoolExecutor

        from datatrove.utils.batching import batched

        tok, eod, self.token_size = open_tokenizer(self.tokenizer_path, self.cfg.eod_token)
        self.eod, self.rank = eod, rank
        self.files: dict[str, MegatronTokenizedFile] = {}
        self.info: dict[str, dict] = {}
        # ids only (no character offsets): ~20% less encoding work than encode_batch
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        # the encoder releases the GIL: batch k+1 is read and encoded while batch k is written
        with ThreadPoolExecutor(1) as pool:
            pending = None
            for batch in batched(data, self.cfg.batch_size):
                texts = [d.text for d in batch]
                future = pool.submit(encode, texts, add_special_tokens=False)
                if pending is not None:
                    yield from self._write(*pending)
                pending = (batch, future)
            if pending is not None:
                yield from self._write(*pending)
        for f in self.files.values():
            f.close()
        write_shard_info(self.info_folder, rank, eod, tok, self.token_size, self.info.values())

    def _write(self, batch: list, future) -> DocumentsPipeline:
        """Append each document's ids + EOD to the shard of its domain."""
        for doc, enc in zip(batch, future.result(), strict=True):
            domain = doc.metadata.get("domain", "unknown")
            prefix = f"{_slug(domain)}_{self.rank:05d}"
            if prefix not in self.files:
                self.files[prefix] = MegatronTokenizedFile(
                    self.output_folder, prefix, token_size=self.token_size
                )
                self.info[prefix] = {
                    "prefix": prefix,
                    "domain": domain,
                    "documents": 0,
                    "tokens": 0,
                    "max_token_id": self.eod,
                }
            ids = enc.ids
            ids.append(self.eod)
            self.files[prefix].write(ids)
            rec = self.info[prefix]
            rec["documents"] += 1
            rec["tokens"] += len(ids)
            rec["max_token_id"] = max(rec["max_token_id"], max(ids))
            yield doc


def _set_weights(
    shards: list[dict], weights: dict | None, source: str = "tokenize.weights", by: str = "tokens"
) -> None:
    """Shard blend weights: shares of `by` (tokens or documents), or per-domain weights split
    over a domain's shards by `by`."""
    total = sum(s[by] for s in shards)
    if not weights:
        for s in shards:
            s["weight"] = s[by] / total
        return
    domain_tokens: dict[str, int] = {}
    for s in shards:
        domain_tokens[s["domain"]] = domain_tokens.get(s["domain"], 0) + s[by]
    unknown = sorted(set(weights) - set(domain_tokens))
    if unknown:
        raise ValueError(
            f"{source} name domains without shards: {unknown}; present: {sorted(domain_tokens)}"
        )
    wsum = sum(weights.get(d, 0.0) for d in domain_tokens)
    if wsum <= 0:
        raise ValueError(f"{source} give every present domain weight 0")
    for s in shards:
        s["weight"] = weights.get(s["domain"], 0.0) / wsum * s[by] / domain_tokens[s["domain"]]


def remix_targets(files: list[str]) -> tuple[dict[str, float], str] | None:
    """(target token share per domain, its stats.json) when `files` are one remix stage's output."""
    folders = {Path(f).parent for f in files}
    if len(folders) != 1:
        return None
    path = folders.pop() / "stats.json"
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    plan = stats.get("remix") if isinstance(stats, dict) and stats.get("stage") == "remix" else None
    if not isinstance(plan, dict):
        return None
    targets = {d: float(p.get("target_token_share", 0.0)) for d, p in plan.items()}
    return {d: t for d, t in targets.items() if t > 0}, str(path)


def blend_weights(cfg: TokenizeConfig, files: list[str]) -> tuple[dict | None, str]:
    """(per-domain blend weights or None for token shares, where they come from)."""
    if cfg.weights:
        return dict(cfg.weights), "tokenize.weights"
    found = remix_targets(files) if cfg.blend != "tokens" else None
    if found:
        return found[0], f"remix targets ({Path(found[1]).parent.name}/stats.json)"
    if cfg.blend == "target":
        raise ValueError(
            "tokenize.blend=target: the input is not a remix stage output (no stats.json with "
            "remix targets next to its files); set tokenize.weights or tokenize.blend=tokens"
        )
    return None, "tokens"


def _mix(shards: list[dict], weights: dict | None, source: str) -> dict:
    """Per domain: target share, share of sampled training tokens (the blend weight) and share of
    the tokenizer tokens the shards hold."""
    total = sum(s["tokens"] for s in shards)
    domains: dict[str, dict] = {}
    for s in shards:
        d = domains.setdefault(s["domain"], {"tokens": 0, "sampled_share": 0.0})
        d["tokens"] += s["tokens"]
        d["sampled_share"] += s["weight"]
    wsum = sum((weights or {}).get(d, 0.0) for d in domains)
    for name, d in domains.items():
        d["corpus_token_share"] = round(d["tokens"] / total, 6)
        d["sampled_share"] = round(d["sampled_share"], 6)
        d["target_share"] = round(weights.get(name, 0.0) / wsum, 6) if weights else None
    return {"source": source, "domains": dict(sorted(domains.items()))}


def mix_report(mix: dict) -> str | None:
    """One loud line when the shards' tokenizer-token shares are more than 1% off the targets."""
    doms = mix["domains"]
    if any(d["target_share"] is None for d in doms.values()):
        return None
    off = {n: d for n, d in doms.items() if abs(d["corpus_token_share"] - d["target_share"]) > 0.01}
    if not off:
        return None
    held = " ".join(f"{n} {d['corpus_token_share']:.3f}" for n, d in doms.items())
    target = " ".join(f"{n} {d['target_share']:.3f}" for n, d in doms.items())
    sampled = " ".join(f"{n} {d['sampled_share']:.3f}" for n, d in doms.items())
    return (
        f"tokenize: the shards hold {held} of tokenizer tokens, the targets are {target} "
        f"({mix['source']}; remix counts words and CJK characters, not tokenizer tokens): the "
        f"manifest blend follows the targets, so training samples {sampled}"
    )


def write_manifest(
    info_folder: str,
    out_dir: str,
    tokenizer_path: str,
    weights: dict | None = None,
    source: str | None = None,
    by: str = "tokens",
    extra: dict | None = None,
) -> dict:
    """Merge the per-task shard records into `manifest.json` (weights: per-domain blend weights,
    None = shares of `by`); `mix` records target vs sampled vs held shares per domain; `extra`:
    more top-level fields (the chat_tokenize stage's `sft` section)."""
    shards, meta = [], {}
    for path in sorted(Path(info_folder).glob("*.json")):
        rec = json.loads(path.read_text())
        meta = rec
        shards.extend(rec["shards"])
    if not shards:
        raise ValueError("tokenize: no documents, no shards written")
    local_tok = Path(out_dir) / "tokenizer.json"
    if Path(tokenizer_path).resolve() != local_tok.resolve():
        shutil.copyfile(tokenizer_path, local_tok)
    shards = sorted(shards, key=lambda s: s["prefix"])
    source = source or ("tokenize.weights" if weights else "tokens")
    _set_weights(shards, weights, source, by)
    manifest = {
        "format_version": MANIFEST_VERSION,
        "tokenizer": "tokenizer.json",
        "vocab_size": meta["vocab_size"],
        "eod_token_id": meta["eod"],
        "dtype": "int32" if meta["token_size"] == 4 else "uint16",
        "shards": shards,
        "mix": _mix(shards, weights, source),
        **(extra or {}),
    }
    tmp = Path(out_dir) / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, Path(out_dir) / "manifest.json")
    return manifest
