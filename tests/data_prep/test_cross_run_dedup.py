"""Cross-run dedup: a second crawl deduplicated `against` the first run's indexes keeps only
what is new (exact copies and near copies of run 1's documents go, with their reason)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data_prep import run_stage
from data_prep.dedup import INDEX
from tests.data_prep.conftest import edit_words

OLD, NEAR, NEW = 15, 15, 40


def _long_en(corpus: Path) -> list[dict]:
    docs = [json.loads(line) for line in open(corpus / "en_docs.jsonl", encoding="utf-8")]
    return [d for d in docs if 50 <= len(d["text"].split()) <= 4000]


def _write(path: Path, docs: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return path


def _dedup(src: Path, out: Path, against: list[Path] = ()) -> tuple[dict, dict]:
    exact = run_stage(
        "exact_dedup",
        [
            f"input={src}",
            f"output={out / 'exact'}",
            "progress=false",
            f"exact_dedup.against=[{','.join(str(a / 'exact' / INDEX) for a in against)}]",
        ],
    )
    near = run_stage(
        "minhash_dedup",
        [
            f"input={out / 'exact'}",
            f"output={out / 'minhash'}",
            "progress=false",
            f"minhash.against=[{','.join(str(a / 'minhash' / INDEX) for a in against)}]",
        ],
    )
    return exact, near


@pytest.fixture(scope="module")
def runs(corpus_dir, tmp_path_factory, docs_of) -> dict:
    pool = _long_en(corpus_dir)
    rng = random.Random(3)
    rng.shuffle(pool)
    first, fresh = pool[:40], pool[40 : 40 + NEW]
    assert len(fresh) == NEW, "corpus too small for the cross-run test"
    base = tmp_path_factory.mktemp("xrun")
    run1 = base / "run1"
    _dedup(_write(base / "crawl1", first), run1)
    second = (
        [{**d, "id": f"old/{i}"} for i, d in enumerate(first[:OLD])]
        + [
            {**d, "id": f"near/{i}", "text": edit_words(d["text"], 0.01, rng)}
            for i, d in enumerate(first[OLD : OLD + NEAR])
        ]
        + [{**d, "id": f"new/{i}"} for i, d in enumerate(fresh)]
    )
    run2 = base / "run2"
    exact, near = _dedup(_write(base / "crawl2", second), run2, [run1])
    alone = base / "alone"  # the same crawl without `against`: nothing of it is a duplicate
    _dedup(base / "crawl2", alone)
    return {
        "run1": run1,
        "exact": exact,
        "near": near,
        "kept": {d["id"] for d in docs_of(run2 / "minhash")},
        "kept_alone": {d["id"] for d in docs_of(alone / "minhash")},
    }


def test_second_run_keeps_only_what_the_first_did_not_have(runs):
    kept = runs["kept"]
    assert not {k for k in kept if k.startswith("old/")}
    # 1% word edits leave Jaccard 0.78-0.92 on these pages: LSH (14 x 8) catches each with p >= 0.89
    assert len({k for k in kept if k.startswith("near/")}) <= 3
    new = {k for k in kept if k.startswith("new/")}
    assert new == {k for k in runs["kept_alone"] if k.startswith("new/")}
    assert len(new) >= NEW - 2  # a templated page may have a near twin within the crawl


def test_cross_run_removals_are_counted_with_their_reason(runs):
    assert runs["exact"]["removed"]["exact_dedup:duplicate"] == OLD
    assert runs["near"]["removed"]["minhash_dedup:near_duplicate"] >= NEAR - 3


def test_without_against_the_same_crawl_keeps_the_old_documents(runs):
    """The removals come from the first run's index, not from within the second crawl."""
    alone = runs["kept_alone"]
    assert {f"old/{i}" for i in range(OLD)} <= alone
    assert len({k for k in alone if k.startswith("near/")}) >= NEAR - 1


def test_every_run_writes_its_index(runs):
    assert list((runs["run1"] / "exact" / INDEX).glob("*.c4_index"))
    assert list((runs["run1"] / "minhash" / INDEX).glob("bucket_*/*.minhash.index"))


def test_against_a_folder_without_index_is_one_clear_error(runs, tmp_path):
    src = _write(tmp_path / "crawl", [{"id": "a", "text": "one two three four five six"}])
    with pytest.raises(ValueError, match=r"against .*: no \*\.c4_index index files"):
        run_stage(
            "exact_dedup",
            [
                f"input={src}",
                f"output={tmp_path / 'out'}",
                "progress=false",
                f"exact_dedup.against=[{tmp_path}]",
            ],
        )
