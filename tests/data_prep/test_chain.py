"""The full stage chain on the planted bilingual corpus.

Accounting, rejects, remix, shards, rerun.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import run_stage
from data_prep.config import TEXT_STAGES
from data_prep.remix import approx_tokens

STAGES = tuple(s for s in TEXT_STAGES if s != "chat_tokenize")
"""The text chain the `chain` fixture runs; chat_tokenize reads chat records instead (its
accounting: tests/data_prep/test_chat.py)."""


@pytest.mark.parametrize("stage", STAGES)
def test_accounting_identity_holds_for_every_stage(chain, stage, docs_of):
    stats, out = chain[stage]
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["documents_in"] > 0
    assert on_disk["documents_in"] == on_disk["documents_kept"] + sum(on_disk["removed"].values())
    for key in ("docs_per_s", "mb_per_s", "elapsed_s", "rejected"):
        assert key in on_disk
    if stage not in ("train_tokenizer", "tokenize"):
        written = len(docs_of(out))
        assert written == on_disk["documents_kept"] + on_disk.get("added", 0)


def test_stages_chain_document_counts(chain):
    """Each stage's input is exactly the previous stage's kept (plus added) documents."""
    order = list(STAGES[: STAGES.index("remix") + 1])
    for prev, cur in zip(order, order[1:], strict=False):
        p, c = chain[prev][0], chain[cur][0]
        assert c["documents_in"] == p["documents_kept"] + p.get("added", 0), (prev, cur)


def test_bad_records_are_rejected_with_file_line_and_reason(chain, planted, docs_of):
    stats, out = chain["read"]
    assert stats["rejected"] == planted.bad_lines
    rejects = [json.loads(line) for f in (out / "rejects").glob("*.jsonl") for line in open(f)]
    by_reason = {r["reason"]: r for r in rejects}
    assert set(by_reason) == set(planted.bad_lines)
    assert by_reason["bad_json"]["file"] == planted.bad_file
    assert by_reason["bad_json"]["line"] == 4  # after the three German documents
    assert by_reason["doc_too_large"]["line"] == 9
    assert by_reason["truncated_gzip"]["file"] == planted.gz_file
    # the records before the cut in the truncated .gz are kept, not lost
    ids = {d["id"] for d in docs_of(out)}
    recovered = sum(i.startswith("truncated/") for i in ids)
    assert 1000 < recovered < 3000
    assert by_reason["truncated_gzip"]["line"] == recovered + 1


def test_read_tags_every_document_with_a_domain(chain, docs_of):
    docs = docs_of(chain["read"][1])
    domains = {d["metadata"]["domain"] for d in docs}
    assert {"zh_man", "zh_poems", "en_docs", "en_fortunes"} <= domains
    planted = [d for d in docs if d["id"].startswith("planted/")]
    assert planted and all(d["metadata"]["domain"] in ("zh_man", "en_docs") for d in planted)


def test_langid_removes_other_languages_and_tags_the_rest(chain, planted, docs_of):
    stats, out = chain["langid"]
    kept = docs_of(out)
    assert not {d["id"] for d in kept} & set(planted.german_ids)
    assert stats["removed"].get("langid:other_language", 0) >= len(planted.german_ids)
    assert {d["metadata"]["language"] for d in kept} == {"en", "zh"}


def test_removed_samples_are_kept_per_reason(chain):
    stats, out = chain["quality"]
    files = {p.name for p in (out / "removed_samples").glob("*.jsonl")}
    assert files == {f"{r.replace(':', '__')}.jsonl" for r in stats["removed"]}
    sample = json.loads((out / "removed_samples" / sorted(files)[0]).read_text().splitlines()[0])
    assert sample["text"] and sample["id"]


def test_remix_reaches_target_token_mixture(chain, docs_of):
    stats, out = chain["remix"]
    target = {"zh_man": 0.4, "zh_poems": 0.1, "en_docs": 0.4, "en_fortunes": 0.1}
    tokens: dict[str, int] = {}
    for d in docs_of(out):
        tokens[d["metadata"]["domain"]] = tokens.get(d["metadata"]["domain"], 0) + approx_tokens(
            d["text"]
        )
    total = sum(tokens.values())
    for domain, share in target.items():
        assert abs(tokens[domain] / total - share) <= 0.02, (domain, tokens[domain] / total)
        assert abs(stats["remix"][domain]["realised_token_share"] - tokens[domain] / total) < 1e-9
    assert stats["added"] > 0 and stats["removed"]["remix:downsampled"] > 0


def test_remix_is_deterministic(chain, tmp_path, docs_of):
    _, out = chain["remix"]
    prev = chain["minhash_dedup"][1]
    weights = "remix.weights={zh_man:0.4,zh_poems:0.1,en_docs:0.4,en_fortunes:0.1}"
    run_stage(
        "remix",
        [f"input={prev}", f"output={tmp_path}", "progress=false", weights, "remix.holdout=0.05"],
    )
    assert [d["id"] for d in docs_of(tmp_path)] == [d["id"] for d in docs_of(out)]


def _holdout(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for f in sorted(folder.glob("holdout/*/*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def test_held_out_documents_never_reach_training_shards(chain, docs_of):
    """remix.holdout: ~5% of each domain's documents, kept apart with their text, counted in
    the ledger, and absent from the remix output and from every tokenized shard (by id and by
    text hash)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    stats, out = chain["remix"]
    held = _holdout(out)
    entering = docs_of(chain["minhash_dedup"][1])
    assert stats["removed"]["remix:holdout"] == len(held)
    for domain in ("zh_man", "zh_poems", "en_docs", "en_fortunes"):
        total = sum(d["metadata"]["domain"] == domain for d in entering)
        mine = [d for d in held if d["metadata"]["domain"] == domain]
        assert {d["metadata"]["domain"] for d in mine} <= {domain}
        assert 0.01 * total <= len(mine) <= 0.12 * total + 1, (domain, len(mine), total)
    digest = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    held_ids, held_hashes = {d["id"] for d in held}, {digest(d["text"]) for d in held}
    trained = docs_of(out)
    assert not held_ids & {d["id"].split("#rep")[0] for d in trained}
    assert not held_hashes & {digest(d["text"]) for d in trained}
    tok_out = chain["tokenize"][1]
    manifest = json.loads((tok_out / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(tok_out / manifest["tokenizer"]))
    shard_texts = set()
    for shard in manifest["shards"]:
        ds = IndexedDataset(str(tok_out / shard["prefix"]))
        shard_texts |= {digest(tok.decode(np.asarray(ds[i]).tolist()[:-1])) for i in range(len(ds))}
    assert len(shard_texts) >= len({digest(d["text"]) for d in trained}) * 0.99
    assert not held_hashes & shard_texts


def test_tokenizer_is_byte_level_bpe_with_tiny_vocab(chain):
    from tokenizers import Tokenizer

    stats, out = chain["train_tokenizer"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() <= 4096 and tok.token_to_id("<|endoftext|>") == 0
    text = "混合 text, 中文与English! \n\t tabs"
    assert tok.decode(tok.encode(text).ids) == text


def test_shards_round_trip_through_megatron_indexed_dataset(chain, docs_of):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    stats, out = chain["tokenize"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["dtype"] == "uint16"
    assert abs(sum(s["weight"] for s in manifest["shards"]) - 1) < 1e-9
    assert {s["domain"] for s in manifest["shards"]} == {
        "zh_man",
        "zh_poems",
        "en_docs",
        "en_fortunes",
    }
    tok = Tokenizer.from_file(str(out / manifest["tokenizer"]))
    source = docs_of(chain["remix"][1])
    by_domain: dict[str, list[str]] = {}
    for d in source:
        by_domain.setdefault(d["metadata"]["domain"], []).append(d["text"])
    for shard in manifest["shards"]:
        ds = IndexedDataset(str(out / shard["prefix"]))
        assert len(ds) == shard["documents"] == len(by_domain[shard["domain"]])
        assert int(ds.sequence_lengths.sum()) == shard["tokens"]
        for i in (0, len(ds) // 2, len(ds) - 1):
            ids = np.asarray(ds[i]).tolist()
            assert ids[-1] == manifest["eod_token_id"]
            assert tok.decode(ids[:-1]) == by_domain[shard["domain"]][i]


def test_rerun_of_a_finished_stage_does_no_work(chain):
    stats, out = chain["quality"]
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    again = run_stage("quality", [f"input={chain['langid'][1]}", f"output={out}", "progress=false"])
    after = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    assert again["skipped"] is True and before == after
    assert {k: again[k] for k in ("documents_in", "documents_kept")} == {
        k: stats[k] for k in ("documents_in", "documents_kept")
    }


def test_config_change_reruns_the_stage(chain, tmp_path):
    args = [f"input={chain['exact_dedup'][1]}", f"output={tmp_path}", "progress=false"]
    first = run_stage("minhash_dedup", args)
    second = run_stage("minhash_dedup", [*args, "minhash.seed=3"])
    assert first["skipped"] is False and second["skipped"] is False


def test_tokenize_weights_override_blend(chain, tmp_path):
    args = [
        f"input={chain['remix'][1]}",
        f"output={tmp_path}",
        "progress=false",
        f"tokenize.tokenizer={chain['train_tokenizer'][1]}/tokenizer.json",
        "tokenize.weights={zh_man:0.4,zh_poems:0.1,en_docs:0.4,en_fortunes:0.1}",
    ]
    run_stage("tokenize", args)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    by_domain = {s["domain"]: s["weight"] for s in manifest["shards"]}
    assert by_domain == pytest.approx(
        {"zh_man": 0.4, "zh_poems": 0.1, "en_docs": 0.4, "en_fortunes": 0.1}
    )
