"""Which characters are CJK ideographs: one definition for every place that treats Chinese text
apart (word-less segmentation, shingles, n-gram units, the zh/en guess)."""

from __future__ import annotations

import re

CJK_CLASS = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""CJK Unified Ideographs, Extension A and the Compatibility Ideographs (a regex class body)."""
CJK = re.compile(f"[{CJK_CLASS}]")
CJK_RUN = re.compile(f"[{CJK_CLASS}]+")


def cjk_share(text: str) -> float:
    """Share of `text`'s characters that are CJK ideographs."""
    return len(CJK.findall(text)) / len(text) if text else 0.0
