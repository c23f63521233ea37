"""decontaminate: planted copies of evaluation items (HumanEval code in en documents, a zh task's
items in zh documents, reformatted and partial) are all removed with their task as the reason;
the clean documents of the real corpus are kept."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from data_prep import run_stage
from data_prep.decontaminate import build_index, units
from evaluation.humaneval import load_problems

HANZI = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜金生丽水"


def _zh_items(count: int = 20) -> list[str]:
    rng = random.Random(7)
    return ["".join(rng.choice(HANZI) for _ in range(40)) + "。" for _ in range(count)]


def _write(path: Path, docs: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def _plant(text: str, insert: str) -> str:
    middle = len(text) // 2
    return text[:middle] + "\n" + insert + "\n" + text[middle:]


@pytest.fixture(scope="module")
def planted_run(chain, docs_of, tmp_path_factory):
    """The chain's deduplicated documents with 12 en and 12 zh documents contaminated."""
    root = tmp_path_factory.mktemp("decontam")
    docs = docs_of(chain["minhash_dedup"][1])
    zh_items = _zh_items()
    (root / "zh_task.jsonl").write_text(
        "".join(
            json.dumps({"question": q, "answer": "甲"}, ensure_ascii=False) + "\n" for q in zh_items
        )
    )
    problems = list(load_problems().values())
    en = [d for d in docs if d["metadata"]["language"] == "en"][:12]
    zh = [d for d in docs if d["metadata"]["language"] == "zh"][:12]
    planted = set()
    for i, doc in enumerate(en):
        code = problems[i].prompt + problems[i].canonical_solution
        words = code.split()
        piece = (
            " ".join(words[5:25]) if i % 2 else "  ".join(code.split("\n"))
        )  # partial / reflowed
        doc["text"] = _plant(doc["text"], piece)
        planted.add(doc["id"])
    for i, doc in enumerate(zh):
        item = zh_items[i]
        piece = item[3:31] if i % 2 else " ".join(item)  # 28 characters / spaced out
        doc["text"] = _plant(doc["text"], piece)
        planted.add(doc["id"])
    _write(root / "input.jsonl.gz", docs)
    stats = run_stage(
        "decontaminate",
        [
            f"input={root / 'input.jsonl.gz'}",
            f"output={root / 'out'}",
            "progress=false",
            f"decontaminate.tasks=[humaneval,{root / 'zh_task.jsonl'}]",
        ],
    )
    return stats, root, docs, planted


def test_every_planted_copy_is_removed_with_its_task(planted_run, docs_of):
    stats, root, docs, planted = planted_run
    kept = {d["id"] for d in docs_of(root / "out")}
    assert not planted & kept
    assert stats["removed"]["decontaminate:humaneval"] >= 12
    assert stats["removed"]["decontaminate:zh_task"] >= 12
    assert stats["decontaminate"]["humaneval"]["items"] == 164
    assert stats["decontaminate"]["zh_task"]["items"] == 20
    samples = (root / "out" / "removed_samples" / "decontaminate__zh_task.jsonl").read_text()
    assert json.loads(samples.splitlines()[0])["id"] in planted


def test_clean_documents_are_kept(planted_run, docs_of):
    stats, root, docs, planted = planted_run
    clean = [d for d in docs if d["id"] not in planted]
    kept = {d["id"] for d in docs_of(root / "out")}
    lost = [d["id"] for d in clean if d["id"] not in kept]
    print(f"decontaminate: {len(clean) - len(lost)} of {len(clean)} clean documents kept")
    # the real corpus (Debian man pages, Python docs, fortunes) shares no 13-word run with
    # HumanEval and no 25-character run with the synthetic zh items
    assert len(lost) <= 0.002 * len(clean), lost[:5]


def test_units_ignore_case_punctuation_and_spacing():
    assert units("Hello,  WORLD!\n你好，世界") == ["hello", "world", "你", "好", "世", "界"]


def test_bad_sources_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="nosuch is neither 'humaneval' nor a file"):
        build_index(["nosuch"], 13, 25)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "a b c d e f"}\n{oops\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: not JSON"):
        build_index([str(bad)], 13, 25)
    short = tmp_path / "short.jsonl"
    short.write_text('{"q": "yes"}\n')
    with pytest.raises(ValueError, match="short.jsonl has no item of 4\\+ words"):
        build_index([str(short)], 13, 25)
    yaml = tmp_path / "t.yaml"
    yaml.write_text("task: t\ndataset_path: cais/mmlu\n")
    with pytest.raises(ValueError, match="only lm-eval tasks with local data"):
        build_index([str(yaml)], 13, 25)
