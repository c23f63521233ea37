"""Exact + MinHash dedup run standalone on a folder of JSONL with planted copies."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from data_prep import run_stage
from data_prep.dedup import ngram_hashes, text_shingles
from data_prep.scripts import CJK


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
        "raw": raw,
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


MIXED_ORIGINALS = 12


def _mixed_docs(corpus_dir: Path) -> list[str]:
    """Chinese manual pages behind a block of English commands and code (debian-reference's
    kind of text): the first 2000 characters say "English", the rest is Chinese prose."""
    zh = [json.loads(line)["text"] for line in open(corpus_dir / "zh_man.jsonl", encoding="utf-8")]
    en = [json.loads(line)["text"] for line in open(corpus_dir / "en_docs.jsonl", encoding="utf-8")]
    lines = [ln for t in en for ln in t.splitlines() if 20 < len(ln) < 100 and ln.startswith(" ")]
    rng = random.Random(11)
    long = [t for t in zh if len(CJK.findall(t)) >= 1500]
    return [
        "\n".join(rng.sample(lines, 40)) + "\n" + t for t in rng.sample(long, 2 * MIXED_ORIGINALS)
    ]


def _edit_mixed(text: str, frac: float, rng: random.Random) -> str:
    """Replace `frac` of the units: CJK characters and ASCII words alike."""
    toks = re.findall(r"[\u3400-\u9fff]|[A-Za-z0-9]+|\s+|.", text)
    units = [i for i, t in enumerate(toks) if CJK.match(t) or t[0].isascii() and t[0].isalnum()]
    for i in rng.sample(units, max(1, round(frac * len(units)))):
        toks[i] = rng.choice("的一是在不了有和人这") if CJK.match(toks[i]) else "zqxw"
    return "".join(toks)


def test_mixed_script_copies_are_near_duplicates_whatever_the_mix(corpus_dir, tmp_path, docs_of):
    """A 1% edit of a Chinese page behind English commands keeps ~90% of its shingles (deciding
    by the first 2000 characters made whole Chinese sentences single "words": as low as 0%),
    and the MinHash stage removes every such copy and no distinct page."""
    docs = _mixed_docs(corpus_dir)
    rng = random.Random(3)
    rows = [{"id": f"orig/{i}", "text": t} for i, t in enumerate(docs)]
    for i, text in enumerate(docs[:MIXED_ORIGINALS]):
        copy = _edit_mixed(text, 0.01, rng)
        a, b = (set(text_shingles(x, 5, 5).ravel().tolist()) for x in (text, copy))
        assert len(a & b) / len(a | b) >= 0.85, i
        rows.append({"id": f"copy/{i}", "text": copy})
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "mixed.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    run_stage("minhash_dedup", [f"input={raw}", f"output={tmp_path / 'out'}", "progress=false"])
    kept = {d["id"] for d in docs_of(tmp_path / "out")}
    copies = {f"copy/{i}" for i in range(MIXED_ORIGINALS)}
    pairs = {f"orig/{i}" for i in range(MIXED_ORIGINALS)}
    assert not copies & kept and len(pairs & kept) == MIXED_ORIGINALS  # one of each pair stays
    assert {f"orig/{i}" for i in range(MIXED_ORIGINALS, len(docs))} <= kept


def test_parallel_tasks_remove_the_same_documents(dedup, tmp_path):
    """3 tasks: exact `find` runs as 3 hash-range merges and MinHash `verify` as 3 streams;
    the same number of documents goes for the same reasons as with 1 task."""
    exact = run_stage(
        "exact_dedup",
        [
            f"input={dedup['raw']}",
            f"output={tmp_path / 'exact'}",
            "progress=false",
            "executor.tasks=3",
        ],
    )
    assert exact["removed"] == dedup["exact"]["removed"]
    assert exact["documents_kept"] == dedup["exact"]["documents_kept"]
    near = run_stage(
        "minhash_dedup",
        [
            f"input={tmp_path / 'exact'}",
            "progress=false",
            f"output={tmp_path / 'minhash'}",
            "executor.tasks=3",
        ],
    )
    assert near["removed"] == dedup["minhash"]["removed"]
    assert len(list((tmp_path / "exact" / ".work" / "exact" / "dups").iterdir())) == 3


def test_verify_reads_only_the_signatures_of_candidate_documents(dedup):
    stats = json.loads(
        next((dedup["minhash_dir"] / ".work").glob("logs/verify/stats.json")).read_text()
    )
    verify = next(s for s in stats if s["name"].endswith("MinhashVerifyPairs"))["stats"]
    loaded = verify["signatures_loaded"]["total"]
    assert 0 < loaded < 0.5 * dedup["minhash"]["documents_in"]
    assert verify["verified_pairs"]["total"] <= verify["candidate_pairs"]["total"]
