"""The response format every post-training piece agrees on (R1's template).

A response is `<think>reasoning</think>` followed by `<answer>N</answer>` and nothing after:

    <think>Step 1: 12 + 7 = 19. ...</think>
    <answer>42</answer>

`<answer>` (not `\\boxed{}`) because it is the R1-Zero template, tokenizes the same in zh and
en, and needs no LaTeX; the accuracy reward still checks its content with math-verify.
Records are chat JSONL: `{"id", "lang", "messages": [{"role", "content"}], "answer"}` with the
gold answer as a string (what math-verify parses).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
"""Every markup string of the format (used by the tokenizer check and the rewards)."""

SYSTEM_PROMPTS = {
    "en": (
        "Solve the problem. Think step by step inside <think></think>, "
        "then give only the final number inside <answer></answer>."
    ),
    "zh": (
        "请解答这道题。先在<think></think>中逐步思考，然后在<answer></answer>中只写出最终的数字。"
    ),
}
"""The system message of each language's prompts."""

_RESPONSE = re.compile(
    r"\A\s*<think>(?P<think>(?:(?!<think>|</think>).)+)</think>"
    r"\s*<answer>(?P<answer>[^<]+)</answer>\s*\Z",
    re.DOTALL,
)
_LAST_ANSWER = re.compile(r"<answer>([^<]*)</answer>(?!.*<answer>)", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    """A well-formed response split into its parts."""

    think: str
    answer: str


def format_response(think: str, answer: str) -> str:
    """The response text for a reasoning and a final answer."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def parse_response(text: str) -> Parsed | None:
    """The parts of a well-formed response (one think block, one answer, nothing after), or None."""
    match = _RESPONSE.match(text)
    if match is None or not match["think"].strip() or not match["answer"].strip():
        return None
    return Parsed(match["think"].strip(), match["answer"].strip())


def final_answer(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` in `text` (None: there is none)."""
    match = _LAST_ANSWER.search(text)
    return match[1].strip() if match else None


def render_prompt(messages: list[dict[str, str]], bos: str = "") -> str:
    """The generation prompt of a chat record's system/user messages in DeepSeek-LLM's chat
    format (`{system}\\n\\nUser: {user}\\n\\nAssistant:`): rendered by the SFT stage's own
    `deepseek` template (data_prep.chat, its one owner), so prompts are the SFT data's prefixes
    and no special tokens are needed. The model continues with ` <think>...` and ends its
    response with the tokenizer's EOD token."""
    for message in messages:
        if message["role"] not in ("system", "user"):
            raise ValueError(f"prompt message role {message['role']!r}: expected system or user")
    return _deepseek(bos).generation_prompt(messages)


@functools.lru_cache(maxsize=4)
def _deepseek(bos: str) -> Any:
    from data_prep.chat import DEEPSEEK_TEMPLATE, ChatRenderer

    return ChatRenderer(DEEPSEEK_TEMPLATE, bos, "")
