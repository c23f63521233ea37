"""The fast quality path decides exactly as datatrove + jieba: the same words (JiebaWords vs
jieba.lcut), the same n-gram figures, the same filter results and reasons on the real corpus."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    GopherRepetitionFilter,
    find_all_duplicate,
    find_top_duplicate,
    get_n_grams,
)

from data_prep.config import QualityConfig
from data_prep.fast_filters import (
    FastGopherQuality,
    FastGopherRepetition,
    SpanHashes,
    duplicate_ngram_chars,
    top_ngram_chars,
    word_ids,
)
from data_prep.steps import _filter_kwargs
from data_prep.wordtok import FastWordTokenizer, jieba_words

# words whose concatenations collide across different splits ("ab"+"c" == "a"+"bc")
VOCAB = ["a", "b", "ab", "ba", "c", "bc", "abc", "中", "国", "中国", "人", "国人", "𠀀x"]


def _texts(corpus_dir, domains=("zh_man", "zh_poems", "en_docs", "en_fortunes")) -> list[str]:
    return [
        json.loads(line)["text"]
        for name in domains
        for line in open(corpus_dir / f"{name}.jsonl", encoding="utf-8")
    ]


def test_jieba_words_are_jieba_lcut_on_every_chinese_document(corpus_dir):
    import jieba

    texts = _texts(corpus_dir, ("zh_man", "zh_poems"))
    texts.append("WIDGET-SPECIFIC 选项 a-b.c 3.14% 卡拉OK T恤 中国人\r\n  x.org 𠀀 　全角")
    for text in texts:
        assert jieba_words(text) == jieba.lcut(text)
        assert jieba_words(text, spaces=False) == [w for w in jieba.lcut(text) if not w.isspace()]


def test_ngram_figures_match_datatrove_on_random_words():
    rng = random.Random(0)
    for _ in range(2000):
        words = [rng.choice(VOCAB[: rng.randint(1, len(VOCAB))]) for _ in range(rng.randint(0, 50))]
        joined = "".join(words)
        offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum([len(w) for w in words], out=offsets[1:])
        ids, lengths = word_ids(words), offsets[1:] - offsets[:-1]
        hashes = SpanHashes(joined)
        for n in range(1, 11):
            want = find_all_duplicate(words, n)
            assert duplicate_ngram_chars(words, n, joined, offsets, hashes) == want, (words, n)
            grams = get_n_grams(words, n)
            want_top = find_top_duplicate(grams) if grams else None
            assert top_ngram_chars(words, n, ids, lengths) == want_top, (words, n)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_fast_filters_decide_as_datatrove_on_the_corpus(corpus_dir, lang):
    """Every document of the sample corpus (both languages' text) through both filter pairs
    under `lang`'s settings: identical (keep, reason)."""
    cfg = getattr(QualityConfig(), lang)
    words = FastWordTokenizer(cfg.word_tokenizer)
    pairs = [
        (GopherRepetitionFilter, FastGopherRepetition, "gopher_repetition"),
        (GopherQualityFilter, FastGopherQuality, "gopher_quality"),
    ]
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(_texts(corpus_dir))]
    docs.append(Document(text="spam spam spam " * 200, id="repeats"))
    for slow_cls, fast_cls, key in pairs:
        kwargs = _filter_kwargs(key, dict(getattr(cfg, key)))
        slow, fast = slow_cls(**kwargs, language=words), fast_cls(**kwargs, language=words)
        results = [(slow.filter(d), fast.filter(d)) for d in docs]
        assert all(a == b for a, b in results), [
            d.id for d, (a, b) in zip(docs, results, strict=True) if a != b
        ]
        assert len({str(a) for a, _ in results}) > 2  # both keeps and several reasons occur
