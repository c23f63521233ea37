"""Bits per byte of held-out text: tokenizer-independent, so runs with different tokenizers and
mixes compare (the DeepSeek LLM paper's held-out metric).

    bpb = (sum of -log2 p(token | earlier tokens) over a document's tokens)
          / UTF-8 bytes of its text

summed over all documents of a domain. A document is scored as the model saw documents in
training: the end-of-document token, then its tokens. One longer than the context is cut into
disjoint windows of `seq_length` predicted tokens, each conditioned only on its own window (the
rolling log-likelihood of lm-evaluation-harness with one token of context). `logits_fn` is any
causal LM (ours, or transformers on the exported folder), so both give the same number.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""tokens [batch, seq] (int64) -> next-token logits [batch, seq, vocab]."""


@dataclass
class Score:
    """Totals of one domain."""

    documents: int = 0
    bytes: int = 0
    tokens: int = 0
    nll_nats: float = 0.0

    @property
    def bpb(self) -> float:
        return self.nll_nats / math.log(2) / self.bytes if self.bytes else float("nan")


def windows(ids: Sequence[int], eod: int, seq_length: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) pairs covering every token of `ids` once as a target."""
    full = [eod, *ids]
    return [
        (full[start : start + seq_length], full[start + 1 : start + seq_length + 1])
        for start in range(0, len(ids), seq_length)
    ]


def score_texts(
    logits_fn: LogitsFn,
    encode: Callable[[str], list[int]],
    texts: Sequence[str],
    eod: int,
    seq_length: int,
    batch_size: int = 8,
) -> Score:
    """Summed negative log-likelihood of `texts` (one domain) under `logits_fn`."""
    score = Score()
    pending: list[tuple[list[int], list[int]]] = []
    for text in texts:
        ids = encode(text)
        if not ids:
            continue
        score.documents += 1
        score.bytes += len(text.encode("utf-8"))
        score.tokens += len(ids)
        pending.extend(windows(ids, eod, seq_length))
    pending.sort(key=lambda w: len(w[0]))  # similar lengths together: little padding
    for start in range(0, len(pending), batch_size):
        score.nll_nats += _batch_nll(logits_fn, pending[start : start + batch_size], eod)
    return score


def _batch_nll(logits_fn: LogitsFn, batch: list[tuple[list[int], list[int]]], pad: int) -> float:
    """-sum log p(target) of a batch of windows, right-padded (causal: padding is never seen
    by the positions that are scored)."""
    width = max(len(inputs) for inputs, _ in batch)
    tokens = torch.full((len(batch), width), pad, dtype=torch.long)
    targets = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (inputs, target) in enumerate(batch):
        tokens[row, : len(inputs)] = torch.tensor(inputs)
        targets[row, : len(target)] = torch.tensor(target)
        mask[row, : len(target)] = True
    with torch.no_grad():
        logprobs = torch.log_softmax(logits_fn(tokens).float(), dim=-1)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(-picked[mask].double().sum())


def read_holdout(folder: str | Path, max_docs: int | None = None) -> dict[str, list[str]]:
    """domain -> texts of a remix stage's held-out documents (`<folder>/holdout/<domain>/*.jsonl`
    or `<folder>/<domain>/*.jsonl`), in a stable order; ValueError when there are none."""
    root = Path(folder)
    base = root / "holdout" if (root / "holdout").is_dir() else root
    out: dict[str, list[str]] = {}
    for domain_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        texts = []
        for path in sorted(domain_dir.glob("*.jsonl")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    texts.append(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(
                        f"{path}:{number}: not a JSON record with a 'text' field"
                    ) from None
        if texts:
            out[domain_dir.name] = texts[:max_docs] if max_docs else texts
    if not out:
        raise ValueError(f"holdout={folder}: no held-out documents (<domain>/*.jsonl) there")
    return out


def bits_per_byte(
    logits_fn: LogitsFn,
    encode: Callable[[str], list[int]],
    domains: dict[str, list[str]],
    eod: int,
    seq_length: int,
    batch_size: int = 8,
) -> dict[str, Score]:
    """Score per domain, plus `all` (every domain's documents together)."""
    scores: dict[str, Score] = {}
    start = time.perf_counter()
    for domain, texts in domains.items():
        scores[domain] = score_texts(logits_fn, encode, texts, eod, seq_length, batch_size)
    total = Score()
    for s in scores.values():
        total.documents += s.documents
        total.bytes += s.bytes
        total.tokens += s.tokens
        total.nll_nats += s.nll_nats
    scores["all"] = total
    print(
        f"bits per byte: {total.documents} documents, {total.tokens} tokens in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    return scores
