"""Exact and MinHash dedup phases built from datatrove's multi-step dedup blocks.

`FastMinhashSignature` replaces datatrove's per-n-gram spaCy tokenisation + hashing with one hash
per word (or per character for CJK text) and vectorised n-gram combination in numpy; the rest of
the MinHash chain (buckets, cluster, filter) is datatrove's own.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.pipeline.dedup import exact_dedup as dt_exact
from datatrove.pipeline.dedup import minhash as dt_minhash
from datatrove.utils.text import TextNormConfig, simplify_text

from data_prep.config import MinhashDedupConfig
from data_prep.steps import is_chinese

_WORD = re.compile(r"\S+")
_MUL = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio odd multiplier for the rolling combination
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


_EXACT_NORM = TextNormConfig(norm_numbers=False, norm_weekdays=False, norm_monthnames=False)


def normalized_content(doc: Document) -> str:
    """Content hashed by exact dedup: lowercased, punctuation-free, whitespace-collapsed text
    (numbers, weekdays and months are kept: documents differing only there are distinct)."""
    return simplify_text(doc.text, _EXACT_NORM)


def raw_content(doc: Document) -> str:
    """Content hashed by exact dedup when normalisation is off."""
    return doc.text


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of the rolling combination."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def ngram_hashes(units: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of all length-n windows of `units` (uint64), unique, shape (N, 1)."""
    if units.size == 0:
        return units.reshape((-1, 1))
    if units.size < n:  # a short document is one shingle, as in datatrove's ngrams()
        n = units.size
    with np.errstate(over="ignore"):
        acc = units[: units.size - n + 1].copy()
        for k in range(1, n):
            acc = acc * _MUL + units[k : units.size - n + 1 + k]
        return np.unique(_mix(acc)).reshape((-1, 1))


def text_shingles(text: str, n_words: int, n_chars: int) -> np.ndarray:
    """Shingles of simplified text: character n-grams for CJK text, word n-grams otherwise."""
    simple = simplify_text(text)
    if is_chinese(simple):
        cps = np.frombuffer(simple.replace(" ", "").encode("utf-32-le"), dtype=np.uint32)
        return ngram_hashes(cps.astype(np.uint64) * _MUL, n_chars)
    words = _WORD.findall(simple)
    hashes = np.fromiter(
        (xxhash.xxh64_intdigest(w) for w in words), dtype=np.uint64, count=len(words)
    )
    return ngram_hashes(hashes, n_words)


class FastMinhashSignature(dt_minhash.MinhashDedupSignature):
    """MinHash stage 1 with fast, script-aware shingles (same on-disk format as datatrove's)."""

    name = "FastMinhashSignature"

    def __init__(self, output_folder: str, config: dt_minhash.MinhashConfig, char_n_grams: int):
        super().__init__(output_folder, config=config)
        self.char_n_grams = char_n_grams

    def get_shingles(self, text: str) -> np.ndarray:
        return text_shingles(text, self.config.n_grams, self.char_n_grams)


def minhash_config(cfg: MinhashDedupConfig) -> dt_minhash.MinhashConfig:
    return dt_minhash.MinhashConfig(
        n_grams=cfg.n_grams,
        num_buckets=cfg.num_buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        seed=cfg.seed,
    )


def minhash_phases(cfg: MinhashDedupConfig, work: str, read, finish_tail, tasks: int) -> list:
    """(name, pipeline factory, tasks) for signature -> buckets -> cluster -> filter.

    `read()` returns fresh reader steps; `finish_tail(filter_step_factory)` wraps the filter
    with the accounting/writer steps."""
    mh = minhash_config(cfg)
    sigs, buckets, remove = (
        f"{work}/minhash/sigs",
        f"{work}/minhash/buckets",
        f"{work}/minhash/remove",
    )

    def signature():
        if cfg.fast:
            return [*read(), FastMinhashSignature(sigs, mh, cfg.char_n_grams)]
        return [*read(), dt_minhash.MinhashDedupSignature(sigs, config=mh)]

    return [
        ("signature", signature, tasks),
        (
            "buckets",
            lambda: [dt_minhash.MinhashDedupBuckets(sigs, buckets, config=mh)],
            mh.num_buckets,
        ),
        ("cluster", lambda: [dt_minhash.MinhashDedupCluster(buckets, remove, config=mh)], 1),
        (
            "filter",
            lambda: finish_tail(
                lambda w: dt_minhash.MinhashDedupFilter(remove, exclusion_writer=w)
            ),
            tasks,
        ),
    ]


def exact_phases(normalize: bool, work: str, read, finish_tail, tasks: int) -> list:
    """(name, pipeline factory, tasks) for datatrove's exact dedup: signature -> find -> filter."""
    cfg = dt_exact.ExactDedupConfig(content_getter=normalized_content if normalize else raw_content)
    sigs, dups = f"{work}/exact/sigs", f"{work}/exact/dups"
    return [
        ("signature", lambda: [*read(), dt_exact.ExactDedupSignature(sigs, config=cfg)], tasks),
        ("find", lambda: [dt_exact.ExactFindDedups(sigs, dups, config=cfg)], 1),
        (
            "filter",
            lambda: finish_tail(
                lambda w: dt_exact.ExactDedupFilter(dups, config=cfg, exclusion_writer=w)
            ),
            tasks,
        ),
    ]
