"""The mix the trainer samples is the remix target, in tokenizer tokens (issue 16).

remix reaches its targets in a word / CJK-character proxy; a byte-level BPE splits Chinese and
English text very differently, so the shards of an en/zh 0.5/0.5 remix held ~0.62/0.38 of the
tokenizer tokens, and the manifest blend (token shares) made the trainer sample that mix. The
tokenize stage now writes the remix targets as blend weights and records target vs held vs
sampled shares; the trainer's blended dataset then draws the targets (fixed-length samples).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import InputError, run_stage

TARGET = {"en": 0.5, "zh": 0.5}


@pytest.fixture(scope="module")
def bilingual(corpus_dir, tmp_path_factory) -> dict[str, Path]:
    """sample corpus -> read (domain en / zh) -> remix 0.5/0.5 -> train_tokenizer -> tokenize."""
    base = tmp_path_factory.mktemp("mix")
    quiet = ["progress=false"]
    for lang in TARGET:
        run_stage(
            "read",
            [f"input={corpus_dir}/{lang}_*.jsonl", f"output={base / lang}", f"read.domain={lang}"]
            + quiet,
        )
    weights = [f"+remix.weights.{d}={w}" for d, w in TARGET.items()]
    remix_in = f"input={base}/*/*.jsonl.gz"  # en/ and zh/ (nothing else exists yet)
    run_stage("remix", [remix_in, f"output={base / 'remix'}", *weights, *quiet])
    run_stage("train_tokenizer", [f"input={base / 'remix'}", f"output={base / 'tok'}", *quiet])
    tok = f"tokenize.tokenizer={base / 'tok'}/tokenizer.json"
    run_stage("tokenize", [f"input={base / 'remix'}", f"output={base / 'shards'}", tok, *quiet])
    return {"base": base, "remix": base / "remix", "shards": base / "shards", "tok": base / "tok"}


def _domain_weights(manifest: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in manifest["shards"]:
        out[s["domain"]] = out.get(s["domain"], 0.0) + s["weight"]
    return out


def test_manifest_blend_is_the_remix_target_in_tokenizer_tokens(bilingual):
    manifest = json.loads((bilingual["shards"] / "manifest.json").read_text())
    mix = manifest["mix"]
    assert mix["source"].startswith("remix targets (") and "stats.json" in mix["source"]
    for domain, share in TARGET.items():
        assert _domain_weights(manifest)[domain] == pytest.approx(share, abs=0.01)
        d = mix["domains"][domain]
        assert d["target_share"] == pytest.approx(share) and d["sampled_share"] == pytest.approx(
            share, abs=0.01
        )
    # What the shards hold differs from the target (that was the blend before): the manifest
    # records it, and the stage's stats carry the same numbers.
    held = {d: mix["domains"][d]["corpus_token_share"] for d in TARGET}
    print("tokenizer-token shares held by the shards:", held)
    stats = json.loads((bilingual["shards"] / "stats.json").read_text())
    assert stats["mix"]["en"]["corpus_token_share"] == held["en"]
    assert stats["mix_source"] == mix["source"]


def test_trainer_samples_the_target_mix(bilingual, capsys):
    from trainer.config.data import DataConfig
    from trainer.config.model import ModelConfig
    from trainer.data import build_datasets, data_mix, load_manifest

    path = bilingual["shards"] / "manifest.json"
    data_cfg = DataConfig(manifest=str(path), seq_length=64, split="98,2,0", seed=3)
    train, _ = build_datasets(data_cfg, ModelConfig(vocab_size=4096), 8, 250, 1, 50)
    logged = [line for line in capsys.readouterr().out.splitlines() if "data mix" in line]
    assert logged == ["[trainer] data mix: en 0.500 (target 0.500) zh 0.500 (target 0.500)"]
    mix = data_mix(train, load_manifest(path), 8 * 250)
    for domain, share in TARGET.items():
        assert mix[domain]["realised"] == pytest.approx(share, abs=0.01)
        assert mix[domain]["target"] == pytest.approx(share, abs=1e-6)


def test_blend_tokens_keeps_token_shares_and_target_needs_a_remix_input(bilingual, tmp_path):
    tok = f"tokenize.tokenizer={bilingual['tok']}/tokenizer.json"
    args = [f"input={bilingual['remix']}", tok, "progress=false"]
    run_stage("tokenize", [*args, f"output={tmp_path / 'tokens'}", "tokenize.blend=tokens"])
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    held = {d: x["corpus_token_share"] for d, x in manifest["mix"]["domains"].items()}
    assert manifest["mix"]["source"] == "tokens"
    assert _domain_weights(manifest) == pytest.approx(held, abs=1e-5)
    not_remix = [f"input={bilingual['base'] / 'en'}", tok, "progress=false"]
    with pytest.raises(InputError, match="tokenize.blend=target: the input is not a remix"):
        run_stage("tokenize", [*not_remix, f"output={tmp_path / 't'}", "tokenize.blend=target"])
