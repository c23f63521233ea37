"""Word tokenizers handed to datatrove's quality filters (their `language=` accepts a tokenizer).

datatrove's defaults build a spaCy Doc per filter call (about 40% of a CPU-second per 100 KB of
Chinese) and every filter re-tokenizes the same text. `FastWordTokenizer` segments Chinese with
jieba directly and other text on whitespace (the Gopher paper's notion of a word); both kinds memoise the last few texts so a filter
chain tokenizes each document once.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

_SENT_END = re.compile(r"[.!?。！？；;]+[\"'”’)）]*\s*|\n+")
_ZH_CODES = ("cmn", "zh", "zho")


class _Memo:
    def __init__(self, size: int = 4):
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key, compute):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = compute(key[1])
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value

    def __getstate__(self):  # never ship cached texts to worker processes
        return {"size": self.size, "items": OrderedDict()}


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentence spans cut after terminal punctuation (ASCII and CJK) or newlines."""
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        if m.end() > start and text[start : m.end()].strip():
            spans.append((start, m.end()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


class FastWordTokenizer(WordTokenizer):
    """jieba words for Chinese, whitespace-separated words otherwise; memoised."""

    def __init__(self, language: str):
        super().__init__(language)
        self.chinese = language in _ZH_CODES
        self.memo = _Memo()

    def _words(self, text: str) -> list[str]:
        if self.chinese:
            import jieba

            return [w for w in jieba.lcut(text) if not w.isspace()]
        return text.split()  # whitespace words, as in the Gopher paper's rules

    def word_tokenize(self, text: str) -> list[str]:
        return self.memo.get(("w", text), self._words)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.memo.get(("s", text), sentence_spans)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]


class MemoWordTokenizer(WordTokenizer):
    """datatrove's own tokenizer for `language` (spaCy), memoised across the filter chain."""

    def __init__(self, language: str):
        super().__init__(language)
        self.inner = load_word_tokenizer(language)
        self.memo = _Memo()

    def word_tokenize(self, text: str) -> list[str]:
        return self.memo.get(("w", text), self.inner.word_tokenize)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.memo.get(("s", text), self.inner.span_tokenize)

    def sent_tokenize(self, text: str) -> list[str]:
        return self.memo.get(("t", text), self.inner.sent_tokenize)


def word_tokenizer(language: str, fast: bool) -> WordTokenizer:
    return FastWordTokenizer(language) if fast else MemoWordTokenizer(language)
