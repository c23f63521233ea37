"""Shard manifest validation and blended megatron datasets (trainer.data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.config.data import DataConfig
from trainer.config.model import ModelConfig
from trainer.data import ManifestError, build_datasets, dataset_sizes, load_manifest

VOCAB, EOD = 1000, 0


def _write_shard(prefix: Path, docs: list[list[int]]) -> None:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def _make_corpus(root: Path, weights: dict[str, float], num_docs: int = 60) -> Path:
    """One shard per domain; every token of domain k is in [100k+1, 100k+99] (k = index)."""
    rng = np.random.default_rng(0)
    shards = []
    for k, (domain, weight) in enumerate(weights.items()):
        docs = [
            list(rng.integers(100 * k + 1, 100 * k + 100, size=rng.integers(20, 60))) + [EOD]
            for _ in range(num_docs)
        ]
        _write_shard(root / domain, docs)
        shards.append(
            {
                "prefix": domain,
                "domain": domain,
                "documents": len(docs),
                "tokens": sum(len(d) for d in docs),
                "weight": weight,
            }
        )
    manifest = {
        "format_version": 1,
        "tokenizer": "tokenizer.json",
        "vocab_size": VOCAB,
        "eod_token_id": EOD,
        "dtype": "uint16",
        "shards": shards,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_corpus(tmp_path_factory.mktemp("corpus"), {"web": 0.7, "code": 0.3})


def _rewrite(src: Path, dst_dir: Path, edit) -> Path:
    """Copy a manifest next to the original shards with one field edited."""
    data = json.loads(src.read_text())
    for shard in data["shards"]:
        shard["prefix"] = str(src.parent / shard["prefix"])
    edit(data)
    dst = dst_dir / "manifest.json"
    dst.write_text(json.dumps(data))
    return dst


def test_load_manifest_reads_shards(corpus: Path) -> None:
    manifest = load_manifest(corpus, ModelConfig(vocab_size=4096), 128)
    assert [s.domain for s in manifest.shards] == ["web", "code"]
    assert manifest.blend[1] == [0.7, 0.3]
    assert manifest.shards[0].prefix == (corpus.parent / "web").resolve()
    assert manifest.total_tokens == sum(s.tokens for s in manifest.shards) > 0


def test_missing_manifest_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest .*nope\.json not found"):
        load_manifest(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["shards"][0].update(prefix="/nonexistent/web"),
            r"shards\[0\].*web\.bin is missing",
        ),
        (
            lambda d: d["shards"][1].update(tokens=d["shards"][1]["tokens"] + 1),
            r"shards\[1\]: field 'tokens'",
        ),
        (lambda d: d["shards"][0].update(documents=1), r"shards\[0\]: field 'documents' is 1"),
        (lambda d: d["shards"][0].update(weight=0.9), r"weights sum to 1\.2"),
        (lambda d: d.update(vocab_size=5000), r"'vocab_size' is 5000, larger than the model's"),
        (lambda d: d.update(dtype="int32"), r"stores uint16, manifest says int32"),
        (lambda d: d.pop("eod_token_id"), r"missing field 'eod_token_id'"),
        (lambda d: d["shards"][0].update(tokens="many"), r"field 'tokens' has the wrong type"),
        (  # was: an IndexError in the embedding naming no shard
            lambda d: d.update(vocab_size=150),
            r"shards\[1\]: shard .*code holds token id 199, outside the tokenizer's vocabulary "
            r"of size 150",
        ),
        (  # tokenize records max_token_id: no scan of the .bin
            lambda d: d["shards"][0].update(max_token_id=1000),
            r"shards\[0\]: shard .*web holds token id 1000, outside",
        ),
    ],
)
def test_manifest_errors_name_file_and_field(corpus: Path, tmp_path: Path, edit, message) -> None:
    bad = _rewrite(corpus, tmp_path, edit)
    with pytest.raises(ManifestError, match=message):
        load_manifest(bad, ModelConfig(vocab_size=4096))


def test_truncated_bin_is_detected(corpus: Path, tmp_path: Path) -> None:
    for suffix in (".bin", ".idx"):
        (tmp_path / f"web{suffix}").write_bytes((corpus.parent / f"web{suffix}").read_bytes())
    data = json.loads(corpus.read_text())
    data["shards"] = data["shards"][:1]
    data["shards"][0]["weight"] = 1.0
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with open(tmp_path / "web.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ManifestError, match=r"web\.bin has 10 bytes"):
        load_manifest(tmp_path / "manifest.json")


def test_seq_length_above_rope_limit(corpus: Path) -> None:
    with pytest.raises(
        ManifestError, match="seq_length 1024 exceeds model.max_position_embeddings 512"
    ):
        load_manifest(corpus, ModelConfig(), 1024)


def test_dataset_sizes() -> None:
    assert dataset_sizes(8, 100, 2, 50) == [800, 8 * 2 * 3, 0]
    assert dataset_sizes(8, 100, 2, 0) == [800, 0, 0]  # eval_interval 0: never validate
    with pytest.raises(ValueError):
        dataset_sizes(0, 10, 1, 1)


def _domain_of(sample: np.ndarray) -> np.ndarray:
    """Domain index of every non-EOD token of a sample."""
    tokens = sample[sample != EOD]
    return (tokens - 1) // 100


def test_blend_realises_weights_and_is_deterministic(tmp_path: Path) -> None:
    manifest = _make_corpus(tmp_path, {"web": 0.5, "code": 0.25, "zh": 0.25}, num_docs=80)
    data_cfg = DataConfig(manifest=str(manifest), seq_length=32, split="90,10,0", seed=7)
    model_cfg = ModelConfig(vocab_size=4096)
    train, valid = build_datasets(data_cfg, model_cfg, 8, 50, 1, 25)
    assert len(train) >= 400 and valid is not None and len(valid) >= 24
    # Blended datasets record which shard every sample comes from: the mix follows the weights.
    counts = np.bincount(train.dataset_index[:400], minlength=3) / 400
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.25], atol=0.01)
    # Read back: a sample drawn from shard k only holds shard k's tokens, and is seq+1 long.
    for i in range(20):
        sample = train[i]["tokens"].numpy()
        assert sample.shape == (32,)
        assert np.all(_domain_of(sample) == train.dataset_index[i])
    # Same seed -> same order; another seed -> another order.
    again, _ = build_datasets(data_cfg, model_cfg, 8, 50, 1, 25)
    assert all(np.array_equal(train[i]["tokens"], again[i]["tokens"]) for i in range(10))
    other_cfg = DataConfig(manifest=str(manifest), seq_length=32, split="90,10,0", seed=8)
    other, _ = build_datasets(other_cfg, model_cfg, 8, 50, 1, 25)
    assert not all(np.array_equal(train[i]["tokens"], other[i]["tokens"]) for i in range(10))


def test_build_datasets_needs_manifest() -> None:
    with pytest.raises(ValueError, match="data.manifest is not set"):
        build_datasets(DataConfig(), ModelConfig(), 8, 10, 1, 5)


def test_split_without_documents_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A shard too small to give the valid split one document: megatron would loop forever."""
    manifest = _make_corpus(tmp_path, {"web": 0.5, "tiny": 0.5}, num_docs=20)
    data_cfg = DataConfig(manifest=str(manifest), seq_length=32, split="98,2,0")
    with pytest.raises(ManifestError, match=r"gets no valid documents under data.split=98,2,0"):
        build_datasets(data_cfg, ModelConfig(vocab_size=4096), 8, 10, 1, 5)
    # A split that gives every shard a document builds.
    data_cfg = DataConfig(manifest=str(manifest), seq_length=32, split="90,10,0")
    train, valid = build_datasets(data_cfg, ModelConfig(vocab_size=4096), 8, 10, 1, 5)
    assert len(train) >= 80 and len(valid) >= 8
