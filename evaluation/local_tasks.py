"""Local benchmark tasks built from the held-out documents, zh and en, as lm-evaluation-harness
task files (no download: the harness reads them from a folder).

`next_sentence_<domain>`: a passage of up to three consecutive sentences of a held-out document,
then four candidate continuations: the sentence that follows it in the document and three
sentences drawn (seeded) from other held-out documents of the same domain. A model that has
learnt the domain's language and its discourse gives the true continuation a higher likelihood
than sentences from elsewhere; chance is 25%. The harness scores it as `acc` (summed log
likelihood) and `acc_norm` (per byte, fairer to long candidates). Sentences end at 。！？ for
zh (candidates joined without a space) and at . ! ? followed by a space for en.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from data_prep.scripts import CJK

_EN_END = re.compile(r"(?<=[.!?])\s+")
_ZH_END = re.compile(r"(?<=[。！？])")
MIN_CHARS, MAX_CHARS = 8, 300
CHOICES, CONTEXT_SENTENCES = 4, 3


@dataclass(frozen=True)
class LocalTask:
    name: str
    yaml: Path
    items: int


def is_chinese(texts: list[str]) -> bool:
    sample = "".join(texts[:50])
    return len(CJK.findall(sample)) > 0.3 * max(len(sample.replace(" ", "")), 1)


def sentences(text: str, zh: bool) -> list[str]:
    if zh:
        return [p.strip() for p in _ZH_END.split(text) if p.strip()]
    return [p for p in _EN_END.split(" ".join(text.split())) if p]


def next_sentence_items(texts: list[str], seed: int = 0, max_items: int = 200) -> list[dict]:
    """Items `{context, choices, label}`: at most one per document, documents in a seeded order."""
    zh = is_chinese(texts)
    docs = [sentences(t, zh) for t in texts]
    usable = [[s for s in doc if MIN_CHARS <= len(s) <= MAX_CHARS] for doc in docs]
    pool = [(d, s) for d, doc in enumerate(usable) for s in doc]
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    joiner = "" if zh else " "
    items: list[dict] = []
    for d in order:
        doc = docs[d]
        spots = [k for k in range(1, len(doc)) if MIN_CHARS <= len(doc[k]) <= MAX_CHARS]
        others = [s for e, s in pool if e != d and s not in doc]
        if not spots or len(set(others)) < CHOICES - 1:
            continue
        k = rng.choice(spots)
        answer = doc[k]
        choices = [answer, *rng.sample(sorted(set(others)), CHOICES - 1)]
        rng.shuffle(choices)
        context = joiner.join(doc[max(0, k - CONTEXT_SENTENCES) : k])
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
        if len(items) >= max_items:
            break
    return items


def task_name(domain: str) -> str:
    return "next_sentence_" + re.sub(r"[^0-9A-Za-z_]+", "_", domain)


def write_next_sentence(
    domains: dict[str, list[str]], folder: Path, seed: int = 0, max_items: int = 200
) -> list[LocalTask]:
    """One task per domain under `folder` (`<task>.jsonl` + `<task>.yaml`); ValueError for a
    domain that yields no item."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = []
    for domain, texts in domains.items():
        items = next_sentence_items(texts, seed, max_items)
        name = task_name(domain)
        if not items:
            raise ValueError(
                f"task {name}: the {len(texts)} held-out documents of domain {domain!r} give no "
                "item (each needs two sentences, and other documents to draw distractors from)"
            )
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
        yaml = folder / f"{name}.yaml"
        yaml.write_text(_task_yaml(name, data, is_chinese(texts)))
        tasks.append(LocalTask(name, yaml, len(items)))
    return tasks


def _task_yaml(name: str, data: Path, zh: bool) -> str:
    spec = {
        "task": name,
        "tag": ["local_next_sentence"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.absolute())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": "" if zh else " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    return json.dumps(spec, ensure_ascii=False, indent=1) + "\n"  # JSON is valid YAML
