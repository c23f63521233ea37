"""Multi-step integer arithmetic word problems in English and Chinese: the verifiable reasoning
task of the R1 demo (small enough for a ~1-5M parameter model on CPU).

    python -m posttrain.tasks.arithmetic out=DIR [n_train=2000] [n_test=200] [n_cold_start=64]
        [n_pretrain=0] [seed=0] [min_ops=2] [max_ops=3] [max_operand=20] [max_factor=4]
        [max_value=200] [ops=[add,sub,mul]] [zh_share=0.5] [system_prompt=true]
        [backwards_check=true] [tokenizer=PATH/tokenizer.json]

A problem is a start value and a chain of operations applied left to right (add, subtract,
multiply by a small factor); every intermediate value stays in [0, max_value]. Its key is the
numbers and operations only, so the same chain in the other language or with another name is the
same problem: train, test and cold-start are disjoint by key (and so by normalised prompt text).

Writes `train.jsonl` and `test.jsonl` (prompts: system + user messages and the gold `answer`),
`cold_start.jsonl` (plus an assistant turn: a long worked solution in R1's format, steps then a
backwards check, see posttrain.chat), with `n_pretrain=N` `pretrain.jsonl` (plain-text
documents for the base model: problem and worked solution in prose) and `stats.json` (counts
per split and language, the character set, and with `tokenizer=` its round trip and tokens per
record). An existing `out` is
renamed to OUT.previous-<time>. Prints one JSON line (stats); bad input is one line, exit 2.

Length with the demo's 4k byte-level BPE (defaults): system 44 (en) / 54 (zh) tokens, user ~50
(max ~90), cold-start answer ~135 (max ~160); the tags cost 4-7 tokens each (not special tokens).

Character set: ASCII letters, digits, space, newline, `.,:'?+-*/=<>` and the Chinese characters
and full-width punctuation of the zh templates below (`charset()` lists them all); numbers are
always Arabic digits and operators ASCII in both languages.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from appconf.cli import QUIET_HYDRA, typed
from appconf.strict import check_keys
from posttrain.chat import SYSTEM_PROMPTS, TAGS, format_response

OPS = ("add", "sub", "mul")
LANGS = ("en", "zh")
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
INVERSE = {"add": "-", "sub": "+", "mul": "/"}
NAMES = {
    "en": ("Tom", "Anna", "Sam", "Lucy", "Ben"),
    "zh": ("小明", "小红", "小刚", "小丽", "小军"),
}
ITEMS = {
    "en": ("apples", "coins", "books", "pencils", "stamps"),
    "zh": ("苹果", "橘子", "鸡蛋", "气球", "面包"),
}
STORY = {
    "en": {
        "start": "{name} has {n} {item}.",
        "add": "Then {name} gets {n} more.",
        "sub": "Then {name} gives away {n}.",
        "mul": "Then the number of {item} is multiplied by {n}.",
        "question": "How many {item} does {name} have now?",
    },
    "zh": {
        "start": "{name}有{n}个{item}。",
        "add": "然后又得到{n}个。",
        "sub": "然后送出{n}个。",
        "mul": "然后{item}的数量变成原来的{n}倍。",
        "question": "{name}现在有多少个{item}？",
    },
}
"""Sentence templates of the problems, per language."""
SOLUTION = {
    "en": {
        "start": "{name} starts with {n} {item}.",
        "step": "Step {k}: {what}, so {a} {sym} {b} = {c}.",
        "add": "{name} gets {n} more",
        "sub": "{name} gives away {n}",
        "mul": "the number is multiplied by {n}",
        "check": "Check by working backwards: {chain}. That matches the start.",
        "end": "So {name} has {n} {item}.",
    },
    "zh": {
        "start": "{name}一开始有{n}个{item}。",
        "step": "第{k}步：{what}，{a} {sym} {b} = {c}。",
        "add": "又得到{n}个",
        "sub": "送出{n}个",
        "mul": "变成原来的{n}倍",
        "check": "倒推检查：{chain}，和开始的数量一致。",
        "end": "所以{name}现在有{n}个{item}。",
    },
}
"""Sentence templates of the worked solutions, per language."""
SEPARATOR = {"en": ", ", "zh": "，"}


@dataclass
class ArithmeticConfig:
    out: str = MISSING
    """Folder to write (train.jsonl, test.jsonl, cold_start.jsonl, stats.json)."""
    n_train: int = 2000
    """RL prompts (with gold answers)."""
    n_test: int = 200
    """Held-out prompts (disjoint from train and cold start by problem)."""
    n_cold_start: int = 64
    """Cold-start SFT records with long worked solutions."""
    n_pretrain: int = 0
    """Plain-text documents for pretraining the base model (`pretrain.jsonl`: `text`, `id`,
    `domain`): a problem and its worked solution in prose, no chat markers and no tags, the way
    math appears in web text (a disjoint split: no test problem is in them)."""
    seed: int = 0
    """Seed of everything drawn (same seed and settings: same files)."""
    min_ops: int = 2
    """Fewest operations after the start value."""
    max_ops: int = 3
    """Most operations after the start value."""
    max_operand: int = 20
    """Largest start value and add/sub operand."""
    max_factor: int = 4
    """Largest multiplication factor (factors are 2..max_factor)."""
    max_value: int = 200
    """Largest intermediate value (an operation that would pass it is not drawn)."""
    ops: list[str] = field(default_factory=lambda: list(OPS))
    """Operations to draw from: add, sub, mul."""
    zh_share: float = 0.5
    """Share of problems written in Chinese (the rest in English)."""
    system_prompt: bool = True
    """Start each record with the format instructions as a system message (~45-55 tokens with
    the demo's 4k tokenizer; a tiny model's context may rather go to the reasoning)."""
    backwards_check: bool = True
    """End the cold-start reasoning with a backwards check (longer, R1-style reflection)."""
    tokenizer: str | None = None
    """tokenizer.json to check the records against (round trip, tokens per record)."""

    def __post_init__(self) -> None:
        for key in ("n_train", "n_test", "n_cold_start", "n_pretrain"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(
                f"min_ops={self.min_ops}, max_ops={self.max_ops}: need 1 <= min <= max"
            )
        if self.max_operand < 2 or self.max_value < self.max_operand:
            raise ValueError("need 2 <= max_operand <= max_value")
        if self.max_factor < 2 and "mul" in self.ops:
            raise ValueError(f"max_factor={self.max_factor}: must be >= 2 when mul is drawn")
        unknown = sorted(set(self.ops) - set(OPS))
        if unknown or not ({"add", "sub"} & set(self.ops)):
            raise ValueError(f"ops={self.ops}: choose from {list(OPS)}, including add or sub")
        if not 0.0 <= self.zh_share <= 1.0:
            raise ValueError(f"zh_share={self.zh_share}: must be in [0, 1]")


ConfigStore.instance().store(name="arithmetic_schema", node=ArithmeticConfig)


@dataclass(frozen=True)
class Problem:
    """A start value and operations applied left to right, told in one language."""

    start: int
    steps: tuple[tuple[str, int], ...]
    lang: str
    name: str
    item: str

    @property
    def key(self) -> tuple:
        """What makes two problems the same (language and story words left out)."""
        return (self.start, self.steps)

    @property
    def values(self) -> list[int]:
        """The start value and the value after each step."""
        out = [self.start]
        for op, n in self.steps:
            out.append(apply(op, out[-1], n))
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]


def apply(op: str, value: int, operand: int) -> int:
    """`value op operand`."""
    return {"add": value + operand, "sub": value - operand, "mul": value * operand}[op]


def _operand(op: str, value: int, cfg: ArithmeticConfig, rng: random.Random) -> int | None:
    """An operand for `op` keeping the value in [0, max_value] (None: there is none)."""
    if op == "add":
        high = min(cfg.max_operand, cfg.max_value - value)
        return rng.randint(1, high) if high >= 1 else None
    if op == "sub":
        high = min(cfg.max_operand, value)
        return rng.randint(1, high) if high >= 1 else None
    high = min(cfg.max_factor, cfg.max_value // max(value, 1))
    return rng.randint(2, high) if high >= 2 and value > 0 else None


def sample_problem(cfg: ArithmeticConfig, rng: random.Random) -> Problem | None:
    """One random problem (operations without a valid operand are not drawn; None when no
    operation is left, e.g. add and mul only once the value reaches max_value)."""
    value = rng.randint(2, cfg.max_operand)
    start, steps = value, []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        choices = [(op, n) for op in cfg.ops if (n := _operand(op, value, cfg, rng)) is not None]
        if not choices:
            return None
        op, n = rng.choice(choices)
        steps.append((op, n))
        value = apply(op, value, n)
    lang = "zh" if rng.random() < cfg.zh_share else "en"
    return Problem(start, tuple(steps), lang, rng.choice(NAMES[lang]), rng.choice(ITEMS[lang]))


def distinct_problems(cfg: ArithmeticConfig, count: int, rng: random.Random) -> list[Problem]:
    """`count` problems with distinct keys; ValueError when the settings allow too few."""
    seen: dict[tuple, Problem] = {}
    for _ in range(50 * count + 1000):
        if len(seen) == count:
            break
        problem = sample_problem(cfg, rng)
        if problem is not None:
            seen.setdefault(problem.key, problem)
    if len(seen) < count:
        raise ValueError(
            f"only {len(seen)} distinct problems found for {count} requested: "
            "raise max_operand, max_ops or max_value"
        )
    return list(seen.values())


def prompt_text(p: Problem) -> str:
    """The user message: the story and its question."""
    story = STORY[p.lang]
    parts = [story["start"].format(name=p.name, n=p.start, item=p.item)]
    parts += [story[op].format(name=p.name, n=n, item=p.item) for op, n in p.steps]
    parts.append(story["question"].format(name=p.name, item=p.item))
    return ("" if p.lang == "zh" else " ").join(parts)


def solution_text(p: Problem, check: bool = True) -> str:
    """The reasoning: one line per step and, with `check`, a backwards check."""
    t, values = SOLUTION[p.lang], p.values
    lines = [t["start"].format(name=p.name, n=p.start, item=p.item)]
    for k, ((op, n), a, c) in enumerate(zip(p.steps, values, values[1:], strict=False), 1):
        what = t[op].format(name=p.name, n=n)
        lines.append(t["step"].format(k=k, what=what, a=a, sym=SYMBOL[op], b=n, c=c))
    if check:
        back = reversed(list(zip(p.steps, values, values[1:], strict=False)))
        chain = [f"{c} {INVERSE[op]} {n} = {a}" for (op, n), a, c in back]
        lines.append(t["check"].format(chain=SEPARATOR[p.lang].join(chain)))
    lines.append(t["end"].format(name=p.name, n=p.answer, item=p.item))
    return "\n".join(lines)


def record(p: Problem, index: int, split: str, cfg: ArithmeticConfig) -> dict[str, Any]:
    """The chat JSONL record of a problem (with an assistant turn in the cold_start split)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[p.lang]}] if cfg.system_prompt else []
    messages.append({"role": "user", "content": prompt_text(p)})
    if split == "cold_start":
        content = format_response(solution_text(p, cfg.backwards_check), str(p.answer))
        messages.append({"role": "assistant", "content": content})
    return {
        "id": f"{split}-{index:06d}",
        "lang": p.lang,
        "messages": messages,
        "answer": str(p.answer),
    }


def document(p: Problem, index: int, cfg: ArithmeticConfig) -> dict[str, Any]:
    """A pretraining document: the problem, then its worked solution, as plain text."""
    text = f"{prompt_text(p)}\n{solution_text(p, cfg.backwards_check)}"
    return {"id": f"pretrain-{index:06d}", "text": text, "lang": p.lang, "domain": p.lang}


def normalise(text: str) -> str:
    """Text compared for leakage: lower case, runs of whitespace as one space."""
    return re.sub(r"\s+", " ", text).strip().lower()


def user_texts(records: Iterable[dict[str, Any]]) -> set[str]:
    """Normalised user messages of records."""
    return {normalise(m["content"]) for r in records for m in r["messages"] if m["role"] == "user"}


def build_splits(cfg: ArithmeticConfig) -> dict[str, list[dict[str, Any]]]:
    """Records of the test, cold_start, train (and pretrain) splits, disjoint by problem."""
    rng = random.Random(cfg.seed)
    sizes = {
        "test": cfg.n_test,
        "cold_start": cfg.n_cold_start,
        "train": cfg.n_train,
        "pretrain": cfg.n_pretrain,
    }
    problems = distinct_problems(cfg, sum(sizes.values()), rng)
    rng.shuffle(problems)
    splits, start = {}, 0
    for split, size in sizes.items():
        chunk = problems[start : start + size]
        start += size
        if split == "pretrain":
            splits[split] = [document(p, i, cfg) for i, p in enumerate(chunk)] if size else []
        else:
            splits[split] = [record(p, i, split, cfg) for i, p in enumerate(chunk)]
    texts = {split: user_texts(rows) for split, rows in splits.items() if split != "pretrain"}
    assert not texts["test"] & (texts["train"] | texts["cold_start"]), "test leaks into training"
    if not cfg.n_pretrain:
        del splits["pretrain"]
    return splits


def charset() -> list[str]:
    """Every character the task's records can contain (templates, names, items, tags, digits)."""
    texts = [*SYSTEM_PROMPTS.values(), *TAGS, "0123456789 \n+-*/=", *SEPARATOR.values()]
    for table in (STORY, SOLUTION, NAMES, ITEMS):
        for entries in table.values():
            texts += entries.values() if isinstance(entries, dict) else entries
    placeholders = re.compile(r"\{[a-z]+\}")
    return sorted(set("".join(placeholders.sub("", t) for t in texts)))


def tokenizer_report(path: str, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Whether every character and record round-trips through a tokenizer; tokens per record."""
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise ValueError(f"tokenizer={path}: no such file")
    tok = Tokenizer.from_file(path)
    bad = [c for c in charset() if tok.decode(tok.encode(c, add_special_tokens=False).ids) != c]
    lengths, failed = [], 0
    for rows in splits.values():
        for r in rows:
            text = r["text"] if "text" in r else "\n".join(m["content"] for m in r["messages"])
            ids = tok.encode(text, add_special_tokens=False).ids
            failed += tok.decode(ids) != text
            lengths.append(len(ids))
    return {
        "chars_not_round_tripped": bad,
        "records_not_round_tripped": failed,
        "tokens_per_record_mean": round(sum(lengths) / max(len(lengths), 1), 1),
        "tokens_per_record_max": max(lengths, default=0),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def generate(cfg: ArithmeticConfig) -> dict[str, Any]:
    """Write the task's files into cfg.out (built in a temporary folder, renamed at the end)."""
    splits = build_splits(cfg)
    stats: dict[str, Any] = {
        "config": asdict(cfg),
        "records": {s: len(rows) for s, rows in splits.items()},
        "languages": {s: dict(Counter(r["lang"] for r in rows)) for s, rows in splits.items()},
        "charset": "".join(charset()),
    }
    if cfg.tokenizer:
        stats["tokenizer"] = tokenizer_report(cfg.tokenizer, splits)
    out = Path(cfg.out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    for split, rows in splits.items():
        write_jsonl(tmp / f"{split}.jsonl", rows)
    (tmp / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1))
    if out.exists():  # an earlier set: kept beside, never deleted
        os.replace(out, out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.replace(tmp, out)
    return stats


@hydra.main(config_path=None, config_name="arithmetic_schema", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        check_keys(cfg, ArithmeticConfig, "posttrain.tasks.arithmetic")  # `+key=...` too
        stats = generate(typed(cfg))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}, ensure_ascii=False))


if __name__ == "__main__":
    sys.argv[1:] = [*sys.argv[1:], *QUIET_HYDRA]
    main()
