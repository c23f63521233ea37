"""Exact and MinHash dedup phases built from datatrove's multi-step dedup blocks.

`FastMinhashSignature` is datatrove's MinHash signature step made fast without changing its values
on non-CJK text: each distinct word is tokenized once (not every document through spaCy), the
diacritics step is one str.translate and the permutation's modulo is a shift-and-add; CJK text
gets vectorised character n-grams. The rest of the MinHash chain (buckets, cluster, filter) is
datatrove's own.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import unicodedata
from dataclasses import replace
from functools import cache
from itertools import accumulate
from pathlib import Path

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.io import DataFolderLike
from datatrove.pipeline.dedup import exact_dedup as dt_exact
from datatrove.pipeline.dedup import minhash as dt_minhash
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import TextNormConfig, simplify_text
from datatrove.utils.typeshelper import Languages
from datatrove.utils.word_tokenizers import (
    SpaCyTokenizer,
    WhitespaceTokenizer,
    WordTokenizer,
    load_word_tokenizer,
)

from data_prep.config import INDEX_FILES, MinhashDedupConfig
from data_prep.scripts import CJK_RUN

_MUL = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio odd multiplier for the rolling combination
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_P = np.uint64((1 << 61) - 1)  # datatrove's Mersenne prime modulus
_P_SHIFT = np.uint64(61)
_SIG_BLOCK = 256  # shingles per block in get_signature: 256 x 112 x 8 B stays in L2
_WORD_CACHE_MAX = 1 << 20  # distinct words remembered per tokenizer before the cache restarts


_HASH, _NORM = HashConfig(), TextNormConfig()  # datatrove's MinhashConfig defaults
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
    if units.size < n:  # a short document is one shingle (datatrove's ngrams() would give none)
        n = units.size
    with np.errstate(over="ignore"):
        acc = units[: units.size - n + 1].copy()
        for k in range(1, n):
            acc = acc * _MUL + units[k : units.size - n + 1 + k]
        return np.unique(_mix(acc)).reshape((-1, 1))


class WordSplitter:
    """Words of simplified text exactly as `tokenizer.word_tokenize(text)` gives them, fast.

    spaCy's rule-based tokenizer splits on spaces first and then handles each space-free chunk
    on its own (special cases such as "cannot" -> "can not", "id" -> "i d", suffixes such as
    "0m" -> "0 m"), so a chunk's tokens never depend on its neighbours: tokenizing each distinct
    chunk once and remembering the answer gives the same token list at the cost of a dict
    look-up per word. Tokenizers that segment across spaces or inside unspaced scripts (spaCy
    zh/ja/ko/vi/th, Thai, Khmer, Lao, Tibetan, Burmese, Stanza, Indic) get the whole text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._chunkwise: bool | None = None
        self._plain: set[str] = set()  # chunks that are one token, themselves
        self._split: dict[str, tuple[str, ...]] = {}  # the other chunks and their tokens

    def _spacy(self):
        """The spaCy pipeline if the tokenizer is spaCy's rule-based one, else None."""
        import spacy.tokenizer

        tok = self.tokenizer
        if isinstance(tok, WhitespaceTokenizer):
            tok = tok._spacy_xx
        if isinstance(tok, SpaCyTokenizer) and type(tok.tokenizer.tokenizer) is (
            spacy.tokenizer.Tokenizer
        ):
            return tok.tokenizer
        return None

    def _learn(self, chunks: list[str]) -> None:
        """Tokenize the new chunks in one spaCy call; each token goes to the chunk it starts in."""
        new = [c for c in dict.fromkeys(chunks) if c not in self._plain and c not in self._split]
        if len(self._plain) + len(self._split) + len(new) > _WORD_CACHE_MAX:
            self._plain.clear()
            self._split.clear()
        starts = list(accumulate((len(c) + 1 for c in new[:-1]), initial=0))
        toks: list[list[str]] = [[] for _ in new]
        with self._nlp.memory_zone():  # as datatrove: no growth of spaCy's string store
            k = 0
            for t in self._nlp.tokenizer(" ".join(new)):
                while k + 1 < len(new) and t.idx >= starts[k + 1]:
                    k += 1
                if text := t.text.strip():
                    toks[k].append(text)
        for c, ts in zip(new, toks, strict=True):
            if ts == [c]:
                self._plain.add(c)
            else:
                self._split[c] = tuple(ts)

    def __call__(self, simple: str) -> list[str]:
        if self._chunkwise is None:
            self._nlp = self._spacy()
            self._chunkwise = self._nlp is not None
        if not self._chunkwise:
            return self.tokenizer.word_tokenize(simple)
        chunks = simple.split(" ")
        plain = self._plain
        if plain.issuperset(chunks):  # the common case, one C-level pass
            return chunks
        if not all(c in plain or c in self._split for c in chunks):
            self._learn(chunks)
            plain = self._plain
        split = self._split
        words: list[str] = []
        for c in chunks:
            if c in plain:
                words.append(c)
            else:
                words.extend(split[c])
        return words


@cache
def word_splitter(language: str | WordTokenizer = Languages.english) -> WordSplitter:
    return WordSplitter(load_word_tokenizer(language))


@cache
def _mn_table() -> dict[int, None]:
    """str.translate table deleting every nonspacing mark (Unicode category Mn)."""
    return dict.fromkeys(
        cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Mn"
    )


def simplify(text: str, norm_config: TextNormConfig = _NORM) -> str:
    """datatrove's simplify_text(text, norm_config), same output, faster diacritics step.

    datatrove drops diacritics with a Python generator over every character of the NFD form
    (about half of its simplify_text time); here ASCII text skips the step (NFD leaves it as it
    is and it has no marks) and other text deletes the marks with one str.translate."""
    if not norm_config.norm_unicode_diacritics:
        return simplify_text(text, norm_config)
    text = simplify_text(text, replace(norm_config, norm_unicode_diacritics=False))
    if text.isascii():
        return text
    return unicodedata.normalize("NFD", text).translate(_mn_table()).strip()


def _hash_func(hash_config: HashConfig):
    """create_hash_func(hash_config) without datatrove's Python wrapper around xxhash."""
    if hash_config.hash_fc == "xxhash":
        return xxhash.xxh32_intdigest if hash_config.precision == 32 else xxhash.xxh64_intdigest
    return create_hash_func(hash_config)


def text_shingles(
    text: str,
    n_words: int,
    n_chars: int,
    *,
    language: str | WordTokenizer = Languages.english,
    hash_config: HashConfig = _HASH,
    norm_config: TextNormConfig = _NORM,
) -> np.ndarray:
    """Unique shingle hashes of `text`, shape (N, 1), script by script.

    CJK ideographs (written without spaces): character n-grams over the document's ideographs in
    order, hashed with a vectorised rolling hash (datatrove has no counterpart: its English
    tokenizer keeps a Chinese sentence as one word). Everything else (the text with its CJK runs
    cut out): word n-grams with datatrove's exact values - the words of the language's tokenizer
    (see WordSplitter), joined by spaces and hashed with `hash_config`'s function - so
    signatures of text without CJK equal datatrove's MinhashDedupSignature bit for bit. Fewer
    than `n_words` words: one shingle (datatrove gives none and leaves such a document out).

    Both kinds count in a mixed document (Chinese prose with English commands and paths), so a
    1% edit changes about 1% of its shingles whichever script it hits; deciding by the majority
    script made such documents lose whole sentences per edit (a Chinese sentence was one "word").
    """
    simple = simplify(text, norm_config)
    found = CJK_RUN.findall(simple)
    parts = []
    if found:
        cps = np.frombuffer("".join(found).encode("utf-32-le"), dtype=np.uint32)
        parts.append(ngram_hashes(cps.astype(np.uint64) * _MUL, n_chars))
        simple = CJK_RUN.sub(" ", simple)
    parts.append(_word_shingles(simple, n_words, language, hash_config))
    return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts)).reshape((-1, 1))


def _word_shingles(
    simple: str, n_words: int, language: str | WordTokenizer, hash_config: HashConfig
) -> np.ndarray:
    words = word_splitter(language)(simple)
    if not words:
        return np.zeros((0, 1), dtype=np.uint64)
    # n-gram i is " ".join(words[i : i + n]) = joined[starts[i] : starts[i + n] - 1]: slices
    # of one string, hashed in a C-level map chain
    joined = " ".join(words)
    n = min(n_words, len(words))
    starts = list(accumulate((len(w) + 1 for w in words), initial=0))
    m = len(words) - n + 1
    grams = map(joined.__getitem__, map(slice, starts[:m], (e - 1 for e in starts[n:])))
    hashes = np.fromiter(map(_hash_func(hash_config), grams), np.uint64, m)
    return np.unique(hashes).reshape((-1, 1))


class FastMinhashSignature(dt_minhash.MinhashDedupSignature):
    """MinHash stage 1 with fast, script-aware shingles (same on-disk format as datatrove's).

    Takes every argument of datatrove's MinhashDedupSignature with its meaning (`language` picks
    the word tokenizer, `skip_existing_sigs` resumes from complete signature files, the config's
    norm_config / hash_config shape the text and the hashes) plus `char_n_grams` for CJK text.
    Non-CJK documents get datatrove's signatures exactly (documents with fewer than n_grams words
    get one shingle instead of none); the speed comes from tokenizing each distinct word once
    (WordSplitter), a faster diacritics step (simplify), hashing n-grams as slices of one string,
    and an exact shift-and-add reduction modulo 2^61-1 (get_signature).

    Why exact values rather than our own hashes: the earlier fast path hashed words with xxhash64
    and combined them with a rolling multiply-add + splitmix64. Its estimates were unbiased
    (averaged over 200 permutation seeds the error on datatrove's lorem-ipsum pairs is within
    +-0.006, like datatrove's), but datatrove's test_signatures checks one pair at one seed with a
    margin of ~1 standard deviation at X=45%, so any other shingle hash passes or fails it by luck
    (the earlier one drew -2 sd). Producing datatrove's shingle values makes the result of every
    check, and the signature files, the same as datatrove's (benchmarks/minhash_signature.py)."""

    name = "FastMinhashSignature"

    def __init__(
        self,
        output_folder: DataFolderLike,
        config: dt_minhash.MinhashConfig | None = None,
        language: str | WordTokenizer = Languages.english,
        skip_existing_sigs: bool = False,
        *,
        char_n_grams: int = 5,
    ):
        super().__init__(
            output_folder, config=config, language=language, skip_existing_sigs=skip_existing_sigs
        )
        self.char_n_grams = char_n_grams

    def get_shingles(self, text: str) -> np.ndarray:
        cfg = self.config
        return text_shingles(
            text,
            cfg.n_grams,
            self.char_n_grams,
            language=self.language,
            hash_config=cfg.hash_config,
            norm_config=cfg.norm_config,
        )

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """datatrove's get_signature, same values, ~2-4x faster on long documents.

        Per shingle x and hash (a, b): y = x * a + b wrapping mod 2^64, then y mod (2^61-1).
        With p = 2^61-1, y = (y & p) + (y >> 61) (mod p) lands in [0, p + 7]: no integer
        division. The rows are processed in cache-sized blocks with a running minimum."""
        a, b = self.parameters
        hc = self.config.hash_config
        mins = np.full(a.shape[1], np.iinfo(np.uint64).max, dtype=np.uint64)
        rows = min(len(shingles), _SIG_BLOCK)
        y = np.empty((rows, a.shape[1]), dtype=np.uint64)
        hi = np.empty_like(y)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), _SIG_BLOCK):
                x = shingles[start : start + _SIG_BLOCK]
                yy, hh = y[: len(x)], hi[: len(x)]
                np.multiply(x, a, out=yy)
                yy += b
                np.right_shift(yy, _P_SHIFT, out=hh)
                yy &= _P
                yy += hh  # in [0, p + 7], congruent to x * a + b mod p
                if hc.precision == 32:
                    np.subtract(yy, _P, out=yy, where=yy >= _P)
                    yy &= np.uint64(hc.max)
                else:
                    # wrap [p, p+7] to [0, 7] and [0, p) to [2^64-p, 2^64): order is kept
                    # within each range, the first range (the true residues 0..7) sorts first
                    yy -= _P
                np.minimum(mins, yy.min(axis=0), out=mins)
            if hc.precision != 32:
                if (mins < 8).any():  # a residue 0..7 (p ~ 2^61: about never) - redo exactly
                    mins = ((shingles * a + b) % _P).min(axis=0)
                else:
                    mins += _P
        return [x.tolist() for x in np.split(mins.astype(hc.np_dtype), self.config.num_buckets)]


class MinhashVerifyPairs(dt_minhash.PipelineStep):
    """Between buckets and cluster: keep a candidate pair only if its full signature agrees.

    LSH buckets admit pairs that collide in one band (a pair with Jaccard 0.4 does so ~1% of the
    time at 14x8). The share of equal hashes over all bands estimates Jaccard (+-0.05 with 112
    hashes); pairs below `threshold` are dropped. Streams: each task takes every world_size-th
    `.dups` file and reads, chunk by chunk, only the signatures of documents in its pairs, so
    memory grows with the candidate pairs, not the corpus (8 bytes x hashes per candidate)."""

    name = "MinhashVerifyPairs"
    type = "DEDUP"
    CHUNK = 1 << 20  # signature records read at a time

    def __init__(
        self, sigs: str, dups: str, output: str, config: dt_minhash.MinhashConfig, threshold: float
    ):
        super().__init__()
        self.sigs, self.dups, self.output = sigs, dups, output
        self.config = config
        self.threshold = threshold

    def gather(self, keys: np.ndarray) -> np.ndarray:
        """Full signatures (len(keys), bands * rows) of documents `keys` (sorted rank<<32|doc)."""
        cfg, hpb = self.config, self.config.hashes_per_bucket
        rec = np.dtype([("h", cfg.hash_config.np_dtype, (hpb,)), ("doc", "<u4")])
        out = np.zeros((len(keys), cfg.num_buckets * hpb), dtype=cfg.hash_config.np_dtype)
        ranks = np.unique(keys >> np.uint64(32))
        for bucket in range(cfg.num_buckets):
            for rank in ranks.tolist():
                path = Path(self.sigs, f"bucket_{bucket:03d}", f"{rank:05d}.minhash.sig")
                if not path.exists() or path.stat().st_size == 0:
                    continue
                sigs = np.memmap(path, dtype=rec, mode="r")
                for start in range(0, len(sigs), self.CHUNK):
                    chunk = sigs[start : start + self.CHUNK]
                    k = (np.uint64(rank) << np.uint64(32)) | chunk["doc"].astype(np.uint64)
                    pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
                    hit = keys[pos] == k
                    out[pos[hit], bucket * hpb : (bucket + 1) * hpb] = chunk["h"][hit]
                del sigs
        return out

    def verify(self, pairs: np.ndarray) -> np.ndarray:
        """Which candidate pairs (rows f1, d1, f2, d2) agree on >= threshold of their hashes;
        pairs with an index document (SENTINEL: no full signature there) are kept."""
        keep = np.ones(len(pairs), dtype=bool)
        ours = (pairs[:, 0] != dt_minhash.SENTINEL) & (pairs[:, 2] != dt_minhash.SENTINEL)
        p = pairs[ours].astype(np.uint64)
        a, b = (p[:, 0] << np.uint64(32)) | p[:, 1], (p[:, 2] << np.uint64(32)) | p[:, 3]
        keys = np.unique(np.concatenate([a, b]))
        self.stat_update("signatures_loaded", value=len(keys))
        if len(keys):
            sig = self.gather(keys)
            ia, ib = np.searchsorted(keys, a), np.searchsorted(keys, b)
            agree = np.empty(len(p), dtype=bool)
            for s in range(0, len(p), 1 << 16):  # bounded temporaries
                e = s + (1 << 16)
                agree[s:e] = (sig[ia[s:e]] == sig[ib[s:e]]).mean(axis=1) >= self.threshold
            keep[ours] = agree
        return keep

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        os.makedirs(self.output, exist_ok=True)
        files = sorted(Path(self.dups).glob("*.dups"))[rank::world_size]
        if not files:
            return
        parts = [np.fromfile(path, dtype="<u4").reshape(-1, 4) for path in files]
        keep = self.verify(np.concatenate(parts))
        self.stat_update("candidate_pairs", value=len(keep))
        self.stat_update("verified_pairs", value=int(keep.sum()))
        start = 0
        for path, pairs in zip(files, parts, strict=True):
            pairs[keep[start : start + len(pairs)]].tofile(Path(self.output, path.name))
            start += len(pairs)
        return
        yield


def minhash_config(cfg: MinhashDedupConfig) -> dt_minhash.MinhashConfig:
    return dt_minhash.MinhashConfig(
        n_grams=cfg.n_grams,
        num_buckets=cfg.num_buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        seed=cfg.seed,
    )


INDEX = "index"
"""Sub-folder of a dedup stage's output holding its index (what a later run names in `against`)."""


def index_name(output: str) -> str:
    """This run's index file name: the output folder's name (not its path, so the same run in
    another folder writes the same files; `gather_indexes` numbers the runs it links)."""
    return re.sub(r"[^0-9A-Za-z]+", "-", Path(output).name).strip("-") or "run"


def gather_indexes(against: list[str], dest: Path, pattern: str) -> str | None:
    """One folder of links to every index file (`pattern`, relative paths kept) of the
    `against` folders (checked by the config), for datatrove's steps that read one index
    folder; None if none."""
    if not against:
        return None
    shutil.rmtree(dest, ignore_errors=True)
    for i, folder in enumerate(against):
        for f in sorted(Path(folder).glob(pattern)):
            rel = f.relative_to(folder)
            link = dest / rel.parent / f"r{i:02d}-{rel.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.absolute())
    return str(dest)


def minhash_phases(
    cfg: MinhashDedupConfig, work: str, read, finish_tail, tasks: int, output: str
) -> list:
    """(name, pipeline factory, tasks) for signature -> index -> buckets -> [verify] -> cluster
    -> filter; `index` writes this run's index to `<output>/index`, and `buckets` also matches
    against `cfg.against`.

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
            return [*read(), FastMinhashSignature(sigs, mh, char_n_grams=cfg.char_n_grams)]
        return [*read(), dt_minhash.MinhashDedupSignature(sigs, config=mh)]

    verified = f"{work}/minhash/verified"
    verify = cfg.verify_threshold > 0

    def verify_step():
        return [MinhashVerifyPairs(sigs, buckets, verified, mh, cfg.verify_threshold)]

    def filter_step():
        return finish_tail(lambda w: dt_minhash.MinhashDedupFilter(remove, exclusion_writer=w))

    pairs = verified if verify else buckets
    name = index_name(output)

    def index():
        return [dt_minhash.MinhashBuildIndex(sigs, f"{output}/{INDEX}", name, config=mh)]

    def bucket_step():
        against = gather_indexes(
            cfg.against, Path(work, "minhash", "against"), INDEX_FILES["minhash_dedup"]
        )
        return [
            dt_minhash.MinhashDedupBuckets(
                sigs, buckets, config=mh, index_folder=against, only_dedup_in_index=False
            )
        ]

    return [
        ("signature", signature, tasks),
        ("index", index, mh.num_buckets),
        ("buckets", bucket_step, mh.num_buckets),
        *([("verify", verify_step, min(tasks, mh.num_buckets))] if verify else []),
        ("cluster", lambda: [dt_minhash.MinhashDedupCluster(pairs, remove, config=mh)], 1),
        ("filter", filter_step, tasks),
    ]


class ExactIndex(dt_exact.ExactDedupBuildIndex):
    """datatrove's ExactDedupBuildIndex, but a signature file with no hashes (a task that got no
    documents, an empty hash range) is skipped instead of ending the phase with StopIteration."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import heapq
        import struct

        assert world_size == 1, "the exact index is written by one task"
        with self.stats.time_stats:
            files = self.data_folder.list_files(glob_pattern="*/*.c4_sig")
            readers = [
                dt_exact.read_sigs(
                    f, i, self.config.hash_config, lines_to_buffer=self.lines_to_buffer
                )
                for i, f in enumerate(self.data_folder.open_files(files))
            ]
            pq = [x for x in (next(r, None) for r in readers) if x is not None]
            heapq.heapify(pq)
            fmt = f"<{self.config.hash_config.struct_format}"
            with self.output_folder.open(f"{self.index_name}.c4_index", mode="wb") as out:
                last = None
                while pq:
                    v = heapq.heappop(pq)
                    if last != v.hash_value:
                        out.write(struct.pack(fmt, v.hash_value))
                    last = v.hash_value
                    if (nxt := next(readers[v.file_id], None)) is not None:
                        heapq.heappush(pq, nxt)


def exact_phases(
    normalize: bool, against: list[str], work: str, read, finish_tail, tasks: int, output: str
) -> list:
    """(name, pipeline factory, tasks) for datatrove's exact dedup: signature -> index -> find
    -> filter; `index` writes this run's index to `<output>/index`, `find` also matches
    against the indexes of `against` (and within this run: only_dedup_in_index off).
    Signatures are split into `tasks` hash ranges, so `find` runs as `tasks` parallel merges
    (each streams its range's sorted files; with `against`, each also reads the old indexes)."""
    cfg = dt_exact.ExactDedupConfig(
        content_getter=normalized_content if normalize else raw_content, only_dedup_in_index=False
    )
    sigs, dups = f"{work}/exact/sigs", f"{work}/exact/dups"

    def signature():
        return [*read(), dt_exact.ExactDedupSignature(sigs, config=cfg, finder_workers=tasks)]

    def index():
        return [ExactIndex(sigs, f"{output}/{INDEX}", index_name(output), config=cfg)]

    def find():
        folder = gather_indexes(against, Path(work, "exact", "against"), INDEX_FILES["exact_dedup"])
        return [dt_exact.ExactFindDedups(sigs, dups, index_folder=folder, config=cfg)]

    return [
        ("signature", signature, tasks),
        ("index", index, 1),
        ("find", find, tasks),
        (
            "filter",
            lambda: finish_tail(
                lambda w: dt_exact.ExactDedupFilter(dups, config=cfg, exclusion_writer=w)
            ),
            tasks,
        ),
    ]
