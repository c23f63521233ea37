"""Exact + MinHash dedup run standalone on a folder of JSONL with planted copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import run_stage
from data_prep.dedup import ngram_hashes, text_shingles


@pytest.fixture(scope="module")
def dedup(planted, corpus_dir, tmp_path_factory, docs_of) -> dict:
    raw = tmp_path_factory.mktemp("dedup_raw")
    for f in [*corpus_dir.glob("*.jsonl"), planted.raw / "planted_copies.jsonl"]:
        (raw / f.name).write_bytes(f.read_bytes())
    base = tmp_path_factory.mktemp("dedup")
    exact = run_stage("exact_dedup", [f"input={raw}", f"output={base / 'exact'}", "progress=false"])
    near = run_stage(
        "minhash_dedup", [f"input={base / 'exact'}", f"output={base / 'minhash'}", "progress=false"]
    )
    docs = {}
    for f in raw.glob("*.jsonl"):
        for line in open(f, encoding="utf-8"):
            rec = json.loads(line)
            docs[rec["id"]] = rec["text"]
    return {
        "exact": exact,
        "minhash": near,
        "inputs": docs,
        "after_exact": {d["id"] for d in docs_of(base / "exact")},
        "after_minhash": {d["id"] for d in docs_of(base / "minhash")},
        "minhash_dir": base / "minhash",
    }


def test_every_exact_copy_is_removed_by_exact_dedup(dedup, planted):
    for g in planted.groups:
        assert len({g["orig"], g["exact"]} & dedup["after_exact"]) == 1, g
    assert dedup["exact"]["removed"]["exact_dedup:duplicate"] >= len(planted.groups)


def test_every_one_percent_copy_is_removed_by_minhash(dedup, planted):
    """At most one of original / exact / 1% copy survives; the cluster always keeps one member
    (possibly the 3% copy, which belongs to the same cluster when MinHash catches it)."""
    for g in planted.groups:
        survivors = {g["orig"], g["exact"], g["near1"]} & dedup["after_minhash"]
        assert len(survivors) <= 1, (g, survivors)
        assert survivors or g["near3"] in dedup["after_minhash"], g
    for lang in ("zh", "en"):
        assert any(g["lang"] == lang for g in planted.groups)


def test_no_distinct_document_is_removed_as_duplicate(dedup, planted):
    """Every removed document that is not a planted copy has a real near-duplicate in the input.

    LSH alone (14 bands x 8 rows) lets a pair with Jaccard 0.4 collide in some band ~1% of the
    time, and the corpus has dozens of templated pages (PostgreSQL drop_view.7 / drop_sequence.7:
    J = 0.46); the verify phase (full-signature agreement >= 0.6) drops such pairs, so every
    removed document must have a neighbour with Jaccard >= 0.5 (estimate noise is +-0.05)."""
    planted_ids = {g[k] for g in planted.groups for k in ("orig", "exact", "near1", "near3")}
    removed = set(dedup["inputs"]) - dedup["after_minhash"] - planted_ids
    assert len(removed) < 0.1 * len(dedup["inputs"])
    shingles = {i: set(text_shingles(t, 5, 5).ravel().tolist()) for i, t in dedup["inputs"].items()}
    for doc_id in removed:
        a = shingles[doc_id]
        best = max(len(a & b) / max(1, len(a | b)) for i, b in shingles.items() if i != doc_id)
        assert best >= 0.5, (doc_id, best)


def test_dedup_accounting_names_the_reason(dedup):
    for stage, reason in (
        ("exact", "exact_dedup:duplicate"),
        ("minhash", "minhash_dedup:near_duplicate"),
    ):
        stats = dedup[stage]
        assert set(stats["removed"]) <= {reason}
        assert stats["documents_in"] == stats["documents_kept"] + stats["removed"].get(reason, 0)


def test_chinese_shingles_are_character_ngrams():
    """Without spaces a Chinese sentence still yields many shingles, and one edit changes few."""
    text = "今天天气很好我们一起去公园散步然后回家吃饭晚上看书学习"
    edited = text[:10] + "雨" + text[11:]
    a, b = set(text_shingles(text, 5, 5).ravel()), set(text_shingles(edited, 5, 5).ravel())
    assert len(a) == len(text) - 4
    assert len(a - b) == 5


def test_ngram_hashes_are_order_sensitive_and_deterministic():
    units = np.array([1, 2, 3, 4], dtype=np.uint64)
    assert ngram_hashes(units, 2).shape == (3, 1)
    assert set(ngram_hashes(units, 2).ravel()) != set(ngram_hashes(units[::-1].copy(), 2).ravel())
    assert np.array_equal(ngram_hashes(units, 3), ngram_hashes(units.copy(), 3))


def test_multi_task_run_matches_single_task(dedup, planted, corpus_dir, tmp_path, docs_of):
    """Sharding the input files over 2 tasks (forked workers) finds the same exact duplicates."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in [*corpus_dir.glob("*.jsonl"), planted.raw / "planted_copies.jsonl"]:
        (raw / f.name).write_bytes(f.read_bytes())
    args = [f"input={raw}", f"output={tmp_path / 'out'}", "progress=false", "executor.tasks=2"]
    stats = run_stage("exact_dedup", args)
    kept = {d["id"] for d in docs_of(tmp_path / "out")}
    assert len(list((tmp_path / "out").glob("*.jsonl.gz"))) == 2
    assert stats["documents_kept"] == dedup["exact"]["documents_kept"] == len(kept)
    assert stats["removed"] == dedup["exact"]["removed"]


def test_verify_phase_drops_weak_candidate_pairs(dedup):
    """The verify phase ran and kept only part of the LSH candidates (templated pages exist)."""
    logs = sorted(Path(dedup["minhash_dir"], ".work", "logs", "verify", "stats").glob("*.json"))
    stats = json.loads(logs[0].read_text())
    counts = next(s["stats"] for s in stats if "MinhashVerifyPairs" in s["name"])
    assert 0 < counts["verified_pairs"]["total"] <= counts["candidate_pairs"]["total"]
