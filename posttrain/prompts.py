"""Prompts of an RL run: chat JSONL records rendered (posttrain.chat.render_prompt), tokenized,
filtered, and dealt out per step.

A record that cannot be used is skipped and counted per reason, never a crash mid-run:
`bad_record` (not JSON, no user message, no gold answer), `prompt_longer_than_context` (the
prompt leaves no room for `min_response_tokens` in the context). The order is a seeded
shuffle per epoch, so the prompts of step s are a function of (seed, s) alone: a resumed run
draws what the uninterrupted one drew.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.chat import render_prompt


@dataclass(frozen=True)
class Prompt:
    """One usable prompt."""

    index: int
    """Line number in the prompts file (0-based)."""
    token_ids: list[int]
    user: str
    """The user message (what the rewards read as the prompt)."""
    answer: str
    lang: str | None


@dataclass
class PromptSet:
    prompts: list[Prompt]
    skipped: Counter
    """Records left out, per reason."""

    def for_step(self, step: int, count: int, seed: int) -> list[Prompt]:
        """The `count` prompts of global step `step` (0-based), in order."""
        size = len(self.prompts)
        out = []
        for slot in range(step * count, (step + 1) * count):
            epoch, pos = divmod(slot, size)
            out.append(self.prompts[_order(size, seed, epoch)[pos]])
        return out


_ORDERS: dict[tuple[int, int, int], list[int]] = {}


def _order(size: int, seed: int, epoch: int) -> list[int]:
    key = (size, seed, epoch)
    if key not in _ORDERS:
        order = list(range(size))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        _ORDERS[key] = order
    return _ORDERS[key]


def _parse(line: str) -> tuple[list[dict[str, str]], str, str, str | None] | None:
    try:
        record: Any = json.loads(line)
        messages = [m for m in record["messages"] if m["role"] in ("system", "user")]
        user = next(m["content"] for m in messages if m["role"] == "user")
        answer = record["answer"]
    except (ValueError, KeyError, TypeError, StopIteration):
        return None
    if answer is None:
        return None
    return messages, user, str(answer), record.get("lang")


def load_prompts(
    path: str,
    tokenizer: Any,
    context: int,
    min_response_tokens: int = 1,
    system_prompt: bool = True,
) -> PromptSet:
    """Every usable record of the chat JSONL `path`, tokenized with `tokenizer` (a
    `tokenizers.Tokenizer`); raises ValueError when none is usable."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"prompts={path}: no such file")
    prompts, skipped = [], Counter()
    for index, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
        parsed = _parse(line)
        if parsed is None:
            skipped["bad_record"] += 1
            continue
        messages, user, answer, lang = parsed
        if not system_prompt:
            messages = [m for m in messages if m["role"] == "user"]
        ids = tokenizer.encode(render_prompt(messages), add_special_tokens=False).ids
        if len(ids) + min_response_tokens > context:
            skipped["prompt_longer_than_context"] += 1
            continue
        prompts.append(Prompt(index, ids, user, answer, lang))
    if not prompts:
        raise ValueError(f"prompts={path}: no usable prompt ({dict(skipped)})")
    return PromptSet(prompts, skipped)
