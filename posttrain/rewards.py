"""Rule-based reward plugins (DeepSeek-R1), keyed by the short names that appear in YAML.

    rewards = RewardConfig(weights={"accuracy": 1.0, "format": 0.5, "language": 0.5}).build()
    scores = rewards([Sample(prompt, response, answer="42", lang="en")])
    rewards.errors  # Counter: "accuracy: ValueError" -> 3

- `accuracy`: the last `<answer>...</answer>` checked against the gold answer with math-verify
  (`math-verify[antlr4_9_3]` installs cleanly on Python 3.11 next to hydra's antlr 4.9.3; its
  signal-based timeouts are off so it runs in threads and Ray workers: answers longer than
  MAX_ANSWER_CHARS score 0 instead).
- `exact_match`: the same answer compared as a number (`42`, `42.0`, `-7`), no parser.
- `format`: `<think>...</think>` then `<answer>...</answer>` and nothing after (posttrain.chat).
- `language`: R1's language-consistency reward, the share of the reasoning's language units in
  the prompt's language; a unit is a CJK character (data_prep.scripts.CJK) or an ASCII word.

A plugin that raises, or returns a non-finite number, scores 0 and is counted per reason in
`CombinedReward.errors` (with one example message per reason): a run never stops for it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from data_prep.scripts import CJK
from posttrain.chat import TAGS, THINK_CLOSE, THINK_OPEN, final_answer, parse_response

MAX_ANSWER_CHARS = 64
"""Longer `<answer>` contents are not parsed (score 0): bounds math-verify's work."""


@dataclass(frozen=True)
class Sample:
    """One response to score and what it answers."""

    prompt: str
    """The user message (its language is the target of `language` when `lang` is None)."""
    response: str
    """The generated assistant text."""
    answer: str | None = None
    """Gold answer (needed by accuracy / exact_match)."""
    lang: str | None = None
    """Prompt language, "zh" or "en" (None: guessed from the prompt)."""


RewardFn = Callable[[Sample], float]
REWARDS: dict[str, RewardFn] = {}
"""Reward plugins by name."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn(sample) -> float` available as reward `name`."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return add


def _gold(sample: Sample) -> str:
    if sample.answer is None:
        raise ValueError("sample has no gold answer")
    return str(sample.answer)


@lru_cache(maxsize=4096)
def _parsed(text: str) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=None)


@register_reward("accuracy")
def accuracy(sample: Sample) -> float:
    """1 when the final answer equals the gold one by math-verify, else 0."""
    from math_verify import verify

    gold, predicted = _gold(sample), final_answer(sample.response)
    if not predicted or len(predicted) > MAX_ANSWER_CHARS:
        return 0.0
    return float(verify(_parsed(gold), _parsed(predicted), timeout_seconds=None))


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def as_number(text: str) -> Fraction | None:
    """`text` as an exact number when it is one (commas and spaces ignored), else None."""
    text = text.replace(",", "").replace(" ", "")
    return Fraction(text) if _NUMBER.fullmatch(text) else None


@register_reward("exact_match")
def exact_match(sample: Sample) -> float:
    """1 when the final answer is numerically the gold answer, else 0."""
    gold, predicted = as_number(_gold(sample)), final_answer(sample.response)
    if gold is None:
        raise ValueError(f"gold answer {sample.answer!r} is not a number")
    return float(predicted is not None and as_number(predicted) == gold)


@register_reward("format")
def format_reward(sample: Sample) -> float:
    """1 for `<think>...</think>` then `<answer>...</answer>` and nothing after, else 0."""
    return float(parse_response(sample.response) is not None)


_WORD = re.compile(r"[A-Za-z]+")


def language_units(text: str) -> tuple[int, int]:
    """(CJK characters, ASCII words) of `text` without the format's tags."""
    for tag in TAGS:
        text = text.replace(tag, " ")
    return len(CJK.findall(text)), len(_WORD.findall(text))


def prompt_language(sample: Sample) -> str:
    """`sample.lang`, or "zh" when the prompt has more CJK characters than ASCII words."""
    if sample.lang is not None:
        if sample.lang not in ("zh", "en"):
            raise ValueError(f"language {sample.lang!r}: expected zh or en")
        return sample.lang
    cjk, words = language_units(sample.prompt)
    return "zh" if cjk > words else "en"


def reasoning(response: str) -> str:
    """The `<think>` block's content when there is one (R1 scores the CoT), else the response."""
    start, end = response.find(THINK_OPEN), response.find(THINK_CLOSE)
    return response[start + len(THINK_OPEN) : end] if 0 <= start < end else response


@register_reward("language")
def language(sample: Sample) -> float:
    """Share of the reasoning's units (CJK characters, ASCII words) in the prompt's language;
    0 when it has none."""
    cjk, words = language_units(reasoning(sample.response))
    target = cjk if prompt_language(sample) == "zh" else words
    return target / (cjk + words) if cjk + words else 0.0


@dataclass(frozen=True)
class Score:
    """The weighted total of one sample and each plugin's own score."""

    total: float
    parts: dict[str, float]


class CombinedReward:
    """The weighted sum of reward plugins; a failing plugin scores 0 and is counted."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self.errors: Counter[str] = Counter()
        """Failures per reason ("name: ExceptionType" or "name: non-finite")."""
        self.examples: dict[str, str] = {}
        """The first message seen per failure reason."""

    def _part(self, name: str, sample: Sample) -> float:
        try:
            value = float(REWARDS[name](sample))
        except Exception as err:  # noqa: BLE001 - a plugin's failure is counted, not raised
            return self._failed(f"{name}: {type(err).__name__}", str(err))
        if not math.isfinite(value):
            return self._failed(f"{name}: non-finite", repr(value))
        return value

    def _failed(self, reason: str, message: str) -> float:
        self.errors[reason] += 1
        self.examples.setdefault(reason, message[:200])
        return 0.0

    def score(self, sample: Sample) -> Score:
        parts = {name: self._part(name, sample) for name in self.weights}
        return Score(sum(w * parts[n] for n, w in self.weights.items()), parts)

    def __call__(self, samples: Iterable[Sample]) -> list[Score]:
        return [self.score(s) for s in samples]


DEFAULT_WEIGHTS = {"accuracy": 1.0, "format": 0.5, "language": 0.5}
"""R1 sums accuracy and format, and adds language consistency in its reasoning RL stage."""


@dataclass
class RewardConfig:
    weights: Any = None
    """Reward plugin name -> weight of its score in the total; null = DEFAULT_WEIGHTS. Set as
    `rewards.weights={accuracy: 1.0, format: 0.5}` (a mapping typed Any, so an override replaces
    the default mapping instead of failing on a key it lacks in struct mode)."""

    def __post_init__(self) -> None:
        self.weights = dict(DEFAULT_WEIGHTS if self.weights is None else self.weights)
        unknown = sorted(set(self.weights) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown reward {unknown[0]!r}: choose from {sorted(REWARDS)}")
        if not self.weights:
            raise ValueError("rewards.weights is empty: name at least one reward")

    def build(self) -> CombinedReward:
        return CombinedReward(self.weights)
