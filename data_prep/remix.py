"""Remix: reach target domain weights (token shares) by seeded, deterministic sampling.

Phase 1 (`RemixCount`) records (domain, hash(seed, id), approx tokens) per document. The driver
then plans per domain: `copies` full repetitions plus the documents with the smallest hashes up to
the remaining token budget (`cutoff` hash). Phase 2 (`RemixSample`) applies the plan; the same
seed and inputs always give the same output.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_prep.accounting import Ledger
from data_prep.config import RemixConfig
from data_prep.scripts import CJK_CLASS

_TOKEN = re.compile(f"[{CJK_CLASS}]|[^\\s{CJK_CLASS}]+")
REASON = "remix:downsampled"
HOLDOUT = "remix:holdout"
_HOLDOUT_SALT = 0x5EED_0FF


def approx_tokens(text: str) -> int:
    """Token proxy before a tokenizer exists: CJK characters plus whitespace-separated words."""
    return len(_TOKEN.findall(text))


def doc_hash(doc_id: str, seed: int) -> int:
    return xxhash.xxh64_intdigest(doc_id, seed=seed)


def held_out(doc_id: str, seed: int, share: float) -> bool:
    """Whether the document goes to the held-out set (a hash independent of the sampling's)."""
    return share > 0 and doc_hash(doc_id, seed ^ _HOLDOUT_SALT) < share * 2.0**64


class RemixCount(PipelineStep):
    """Phase 1: write (hash, tokens) arrays per domain for this task."""

    name = "RemixCount"
    type = "REMIX"

    def __init__(self, folder: str, seed: int, holdout: float = 0.0):
        super().__init__()
        self.folder = folder
        self.seed = seed
        self.holdout = holdout

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        per_domain: dict[str, tuple[list, list]] = {}
        for doc in data:
            if held_out(doc.id, self.seed, self.holdout):
                continue
            hashes, tokens = per_domain.setdefault(doc.metadata["domain"], ([], []))
            hashes.append(doc_hash(doc.id, self.seed))
            tokens.append(approx_tokens(doc.text))
        os.makedirs(self.folder, exist_ok=True)
        arrays = {}
        for domain, (hashes, tokens) in per_domain.items():
            arrays[f"h::{domain}"] = np.array(hashes, dtype=np.uint64)
            arrays[f"t::{domain}"] = np.array(tokens, dtype=np.int64)
        np.savez(Path(self.folder) / f"{rank:05d}.npz", **arrays)
        return
        yield


def _load_counts(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts: dict[str, tuple[list, list]] = {}
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as z:
            for key in z.files:
                kind, domain = key.split("::", 1)
                parts.setdefault(domain, ([], []))[0 if kind == "h" else 1].append(z[key])
    return {d: (np.concatenate(h), np.concatenate(t)) for d, (h, t) in parts.items()}


def _plan_domain(hashes: np.ndarray, tokens: np.ndarray, target: float) -> dict:
    total = int(tokens.sum())
    copies = int(target // total) if total else 0
    order = np.argsort(hashes, kind="stable")
    cum = np.cumsum(tokens[order])
    remaining = target - copies * total
    take = int(np.searchsorted(cum, remaining, side="right"))  # cum[take-1] <= remaining
    if take < len(cum) and abs(cum[take] - remaining) < abs(
        (cum[take - 1] if take else 0) - remaining
    ):
        take += 1  # closer to the budget with one more document
    cutoff = int(hashes[order[take - 1]]) if take else -1
    extra_tokens = int(cum[take - 1]) if take else 0
    return {
        "copies": copies,
        "cutoff": cutoff,
        "input_docs": int(len(hashes)),
        "input_tokens": total,
        "output_docs": copies * len(hashes) + take,
        "output_tokens": copies * total + extra_tokens,
        "distinct_docs_kept": len(hashes) if copies else take,
    }


def plan_remix(cfg: RemixConfig, counts_folder: str) -> dict:
    """Per-domain sampling plan plus target vs realised shares in tokens and documents."""
    counts = _load_counts(counts_folder)
    if not counts:
        raise ValueError("remix: no documents in input")
    weights = dict(cfg.weights or {}) or {d: float(t.sum()) for d, (_, t) in counts.items()}
    missing = sorted(set(weights) - set(counts))
    if missing:
        raise ValueError(
            f"remix.weights names domains absent from the input: {missing}; "
            f"present: {sorted(counts)}"
        )
    wsum = sum(weights.values())
    total = cfg.total_tokens or sum(int(t.sum()) for _, t in counts.values())
    plan = {
        d: _plan_domain(h, t, total * weights.get(d, 0.0) / wsum) for d, (h, t) in counts.items()
    }
    out_tokens = sum(p["output_tokens"] for p in plan.values()) or 1
    out_docs = sum(p["output_docs"] for p in plan.values()) or 1
    for d, p in plan.items():
        p["target_token_share"] = weights.get(d, 0.0) / wsum
        p["realised_token_share"] = p["output_tokens"] / out_tokens
        p["realised_doc_share"] = p["output_docs"] / out_docs
    return plan


def save_plan(plan: dict, path: str) -> None:
    Path(path).write_text(json.dumps(plan, indent=1))


class RemixSample(PipelineStep):
    """Phase 2: emit each document 0..k times according to the plan."""

    name = "RemixSample"
    type = "REMIX"

    def __init__(
        self, plan_path: str, seed: int, ledger: Ledger, holdout: float = 0.0, holdout_dir: str = ""
    ):
        super().__init__()
        self.plan_path = plan_path
        self.seed = seed
        self.ledger = ledger
        self.holdout = holdout
        self.holdout_dir = holdout_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        plan = json.loads(Path(self.plan_path).read_text())
        with HoldoutWriter(self.holdout_dir, rank) as holdout:
            for doc in data:
                if held_out(doc.id, self.seed, self.holdout):
                    holdout.write(doc)
                    self.ledger.remove(HOLDOUT, doc)
                    continue
                yield from self._sampled(plan, doc)

    def _sampled(self, plan: dict, doc: Document) -> DocumentsPipeline:
        """The document 0..k times, as the plan says."""
        p = plan[doc.metadata["domain"]]
        n = p["copies"] + (1 if doc_hash(doc.id, self.seed) <= p["cutoff"] else 0)
        if n == 0:
            self.ledger.remove(REASON, doc)
            return
        yield doc
        for i in range(1, n):
            self.ledger.added += 1
            yield Document(text=doc.text, id=f"{doc.id}#rep{i}", metadata=dict(doc.metadata))


class HoldoutWriter:
    """`<folder>/<domain>/<rank>.jsonl` files of held-out documents (id, text, metadata),
    opened on first use; plain JSONL so that evaluation tools read them directly."""

    def __init__(self, folder: str, rank: int):
        self.folder, self.rank = folder, rank
        self._files: dict[str, object] = {}

    def __enter__(self) -> HoldoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            f.close()

    def write(self, doc: Document) -> None:
        domain = doc.metadata.get("domain", "default")
        if domain not in self._files:
            path = Path(self.folder) / domain / f"{self.rank:05d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._files[domain] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        record = {"id": doc.id, "text": doc.text, "metadata": doc.metadata}
        self._files[domain].write(json.dumps(record, ensure_ascii=False) + "\n")
