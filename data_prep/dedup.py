"""Exact and MinHash dedup phases built from datatrove's multi-step dedup blocks.

`FastMinhashSignature` replaces datatrove's per-n-gram spaCy tokenisation + hashing with one hash
per word (or per character for CJK text) and vectorised n-gram combination in numpy; the rest of
the MinHash chain (buckets, cluster, filter) is datatrove's own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


class MinhashVerifyPairs(dt_minhash.PipelineStep):
    """Between buckets and cluster: keep a candidate pair only if its full signature agrees.

    LSH buckets admit pairs that collide in one band (a pair with Jaccard 0.4 does so ~1% of the
    time at 14x8). The share of equal hashes over all bands estimates Jaccard (+-0.05 with 112
    hashes); pairs below `threshold` are dropped. Loads every signature (8 bytes x hashes per doc)."""

    name = "MinhashVerifyPairs"
    type = "DEDUP"

    def __init__(
        self, sigs: str, dups: str, output: str, config: dt_minhash.MinhashConfig, threshold: float
    ):
        super().__init__()
        self.sigs, self.dups, self.output = sigs, dups, output
        self.config = config
        self.threshold = threshold

    def _load_signatures(self) -> dict[int, np.ndarray]:
        """rank -> array (docs, num_buckets * hashes_per_bucket) of full signatures."""
        cfg, hpb = self.config, self.config.hashes_per_bucket
        rec = np.dtype([("h", cfg.hash_config.np_dtype, (hpb,)), ("doc", "<u4")])
        parts: dict[int, dict[int, np.ndarray]] = {}
        for bucket in range(cfg.num_buckets):
            for path in Path(self.sigs, f"bucket_{bucket:03d}").glob("*.minhash.sig"):
                rank = int(path.name.split(".")[0])
                parts.setdefault(rank, {})[bucket] = np.fromfile(path, dtype=rec)
        full = {}
        for rank, by_bucket in parts.items():
            n = max((int(r["doc"].max()) + 1 for r in by_bucket.values() if len(r)), default=0)
            arr = np.zeros((n, cfg.num_buckets * hpb), dtype=cfg.hash_config.np_dtype)
            for bucket, r in by_bucket.items():
                arr[r["doc"], bucket * hpb : (bucket + 1) * hpb] = r["h"]
            full[rank] = arr
        return full

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        full = self._load_signatures()
        os.makedirs(self.output, exist_ok=True)
        for path in sorted(Path(self.dups).glob("*.dups")):
            pairs = np.fromfile(path, dtype="<u4").reshape(-1, 4)
            keep = np.ones(len(pairs), dtype=bool)
            for i, (f1, d1, f2, d2) in enumerate(pairs.tolist()):
                if f1 in full and f2 in full:  # index matches (SENTINEL) are kept as they are
                    keep[i] = np.mean(full[f1][d1] == full[f2][d2]) >= self.threshold
            self.stat_update("candidate_pairs", value=len(pairs))
            self.stat_update("verified_pairs", value=int(keep.sum()))
            pairs[keep].tofile(Path(self.output, path.name))
        return
        yield


def minhash_config(cfg: MinhashDedupConfig) -> dt_minhash.MinhashConfig:
    return dt_minhash.MinhashConfig(
        n_grams=cfg.n_grams,
        num_buckets=cfg.num_buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        seed=cfg.seed,
    )


def minhash_phases(cfg: MinhashDedupConfig, work: str, read, finish_tail, tasks: int) -> list:
    """(name, pipeline factory, tasks) for signature -> buckets -> [verify] -> cluster -> filter.

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

    verified = f"{work}/minhash/verified"
    verify = cfg.verify_threshold > 0

    def verify_step():
        return [MinhashVerifyPairs(sigs, buckets, verified, mh, cfg.verify_threshold)]

    def filter_step():
        return finish_tail(lambda w: dt_minhash.MinhashDedupFilter(remove, exclusion_writer=w))

    pairs = verified if verify else buckets
    return [
        ("signature", signature, tasks),
        (
            "buckets",
            lambda: [dt_minhash.MinhashDedupBuckets(sigs, buckets, config=mh)],
            mh.num_buckets,
        ),
        *([("verify", verify_step, 1)] if verify else []),
        ("cluster", lambda: [dt_minhash.MinhashDedupCluster(pairs, remove, config=mh)], 1),
        ("filter", filter_step, tasks),
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
