"""Gopher repetition and quality filters with datatrove's exact results, several times faster.

datatrove's GopherRepetitionFilter builds every n-gram with `str.join` inside Python loops
(top 2/3/4-grams: `" ".join`, duplicated 5..10-grams: `"".join`), which is most of the quality
stage's time after segmentation. Here, for words without whitespace (what FastWordTokenizer
yields): top n-grams are counted as word tuples (same partition as the space-joined strings, same
first-seen tie order) from word numbers packed into integers; duplicated n-grams are first told
apart by numpy span hashes of the concatenated words, and only those sharing a hash are compared
as strings and walked in datatrove's order. Paragraph and line rules are datatrove's own code.
The quality filter
checks each distinct word once instead of every occurrence (`any()` over characters per word).
"""

from __future__ import annotations

import bisect
from collections import Counter

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    GopherRepetitionFilter,
    find_duplicates,
)
from datatrove.utils.text import PUNCTUATION_SET, split_into_words


def word_ids(words: list[str]) -> np.ndarray:
    """Each word's number, words numbered in order of first occurrence."""
    index: dict[str, int] = {}
    return np.fromiter(
        (index.setdefault(w, len(index)) for w in words), dtype=np.int64, count=len(words)
    )


def top_ngram_chars(words: list[str], n: int, ids: np.ndarray, lengths: np.ndarray) -> int | None:
    """datatrove's find_top_duplicate(get_n_grams(words, n)): len(top n-gram joined with
    spaces) x its count, the first seen among equally frequent ones; None when there is no
    n-gram. n-grams are told apart by their word numbers (`ids`), packed into one integer."""
    last = len(words) - n + 1
    if last <= 0:
        return None
    vocab = int(ids.max()) + 1
    if vocab**n >= 1 << 62:  # the packed key would overflow: count tuples instead
        grams = zip(*(words[i:] for i in range(n)), strict=False)
        gram, count = Counter(grams).most_common(1)[0]
        return (sum(map(len, gram)) + n - 1) * count
    keys = ids[:last].copy()
    for i in range(1, n):
        keys = keys * vocab + ids[i : i + last]
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best = np.flatnonzero(counts == counts.max())
    pos = int(first[best].min())  # Counter.most_common keeps the first seen among ties
    return (int(lengths[pos : pos + n].sum()) + n - 1) * int(counts.max())


_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))


class SpanHashes:
    """Polynomial hashes (mod 2**64) of any span of a string, vectorised with numpy: equal
    spans always hash equal, so spans with a unique (hash, length) are certainly unique."""

    def __init__(self, text: str):
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(len(codes), _BASE, dtype=np.uint64))
            self.inv = np.cumprod(np.full(len(codes) + 1, _BASE_INV, dtype=np.uint64))
            self.prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
            np.cumsum(codes * powers, out=self.prefix[1:])

    def __call__(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            h = (self.prefix[ends] - self.prefix[starts]) * self.inv[starts]
            return h ^ ((ends - starts).astype(np.uint64) * np.uint64(0xFF51AFD7ED558CCD))


def duplicate_ngram_chars(
    words: list[str], n: int, joined: str, offsets: np.ndarray, hashes: SpanHashes
) -> int:
    """datatrove's find_all_duplicate: characters in n-grams (joined without separator) seen
    before, skipping the next n-1 n-grams after each repeat. `joined`/`offsets` are the words
    concatenated, `hashes` its span hashes: only n-grams whose hash occurs twice are compared
    as strings, and only positions whose n-gram occurred earlier are walked (every other
    visited position is a first occurrence, which datatrove's loop just adds to its set)."""
    last = len(words) - n + 1
    if last <= 0:
        return 0
    starts, ends = offsets[:last], offsets[n : n + last]
    keys = hashes(starts, ends)
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    if not same.any():
        return 0
    shared = np.zeros(last, dtype=bool)
    shared[order[1:][same]] = True
    shared[order[:-1][same]] = True
    index: dict[str, int] = {}
    first: list[int] = []  # first[k]: where n-gram k (numbered by first occurrence) occurs
    repeats: list[tuple[int, int]] = []  # (position, n-gram) of every later occurrence
    for pos in np.flatnonzero(shared).tolist():
        gram = index.setdefault(joined[offsets[pos] : offsets[pos + n]], len(index))
        if gram == len(first):
            first.append(pos)
        else:
            repeats.append((pos, gram))
    repeated, resume = 0, 0  # positions < resume were skipped over
    skip_starts: list[int] = []  # skipped ranges [s, s + n - 1), increasing
    late: set[int] = set()  # n-grams added at a later occurrence (the first one skipped over)
    for pos, gram in repeats:
        if pos < resume:
            continue
        f = first[gram]
        k = bisect.bisect_right(skip_starts, f) - 1
        if k < 0 or f >= skip_starts[k] + n - 1 or gram in late:
            repeated += int(offsets[pos + n] - offsets[pos])
            skip_starts.append(pos + 1)
            resume = pos + n
        else:
            late.add(gram)
    return repeated


class FastGopherRepetition(GopherRepetitionFilter):
    """GopherRepetitionFilter for tokenizers whose words hold no whitespace (same decisions)."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        dup, chars = find_duplicates(paragraphs)
        if self.dup_para_frac and dup / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        dup, chars = find_duplicates(lines)
        if self.dup_line_frac and dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"

        words = split_into_words(text, self.language)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        ids = word_ids(words)
        for n, n_frac in self.top_n_grams:
            top = top_ngram_chars(words, n, ids, lengths)
            if top is not None and top / len(text) > n_frac:
                return False, f"top_{n}_gram"
        joined = "".join(words)
        offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        hashes = SpanHashes(joined)
        for n, n_frac in self.dup_n_grams:
            if duplicate_ngram_chars(words, n, joined, offsets, hashes) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True


_PUNCTUATION = "".join(PUNCTUATION_SET)


class FastGopherQuality(GopherQualityFilter):
    """GopherQualityFilter with per-distinct-word checks (same decisions)."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        words = split_into_words(text, self.language)
        n_words = len(words)
        counts = Counter(words)
        # a word is a "non-symbol" word if one character is not punctuation: strip() of the
        # punctuation characters leaves something exactly then
        wordy = [(w, c) for w, c in counts.items() if w.strip(_PUNCTUATION)]
        n_wordy = sum(c for _, c in wordy)
        if self.min_doc_words and n_wordy < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_wordy > self.max_doc_words:
            return False, "gopher_long_doc"
        # exact integer sum over one division: the float np.mean gives for these lengths
        avg = sum(len(w) * c for w, c in wordy) / n_wordy if n_wordy else float("nan")
        if self.min_avg_word_length and avg < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if (
            self.max_symbol_word_ratio
            and (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio
        ):
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        bullets = sum(s.lstrip().startswith(("•", "-")) for s in lines)
        if self.max_bullet_lines_ratio and bullets / len(lines) > self.max_bullet_lines_ratio:
            return False, "gopher_too_many_bullets"
        ellipses = sum(s.rstrip().endswith(("...", "…")) for s in lines)
        if self.max_ellipsis_lines_ratio and ellipses / len(lines) > self.max_ellipsis_lines_ratio:
            return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio:
            alpha = sum(c for w, c in counts.items() if any(ch.isalpha() for ch in w))
            if alpha / n_words < self.max_non_alpha_words_ratio:
                return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and len(self.stop_words.intersection(counts)) < self.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True
