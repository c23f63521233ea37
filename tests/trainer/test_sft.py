"""SFT on chat_tokenize shards with tiny V3 (MLA + MoE + MTP) on CPU over gloo.

One rank: the reference losses from saved initial weights (the loss falls), and a direct check
that targets under loss_mask 0 (prompt tokens, padding) change nothing (LM loss, MTP loss,
gradient norm) while a changed assistant target does. Two ranks: TP2+SP, PP2 and EP2 from the
same weights match the single process step for step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.distributed import run_distributed

SEQ = 64
STEPS = 4
LAYOUTS = {
    "tp2": {"tensor_parallel": 2, "sequence_parallel": True},
    "pp2": {"pipeline_parallel": 2},
    "ep2": {"expert_parallel": 2},
}


def _trainer(manifest: str, parallel: dict[str, Any], init: str | None = None) -> Any:
    from trainer.config.model import ModelConfig
    from trainer.config.optim import OptimConfig
    from trainer.config.parallel import ParallelConfig
    from trainer.config.precision import PrecisionConfig
    from trainer.config.trainer import TrainConfig, TrainerConfig
    from trainer.data import build_datasets
    from trainer.loop import Trainer
    from trainer.parallel import initialize_parallel

    cfg = TrainerConfig(
        model=ModelConfig(),
        parallel=ParallelConfig(**parallel),
        precision=PrecisionConfig(name="fp32", params_dtype="fp32"),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=0),
        train=TrainConfig(steps=STEPS, global_batch_size=8, micro_batch_size=2, eval_iters=1),
    )
    cfg.data.manifest, cfg.data.seq_length = manifest, SEQ
    initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    train, valid = build_datasets(cfg.data, cfg.model, 8, STEPS, 1, 0)
    trainer = Trainer(cfg, train, valid)
    if init:
        trainer.load(init, weights_only=True)
    return trainer


class _Relabel:
    """The dataset with targets replaced where the loss mask is `where` (0: prompt and
    padding, 1: assistant tokens)."""

    def __init__(self, data: Any, where: float):
        self.data, self.where = data, where

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.data[i])
        hit = s["loss_mask"] == self.where
        s["labels"] = np.where(hit, (s["labels"] * 7 + 3) % 500 + 1, s["labels"])
        return s


def _step(trainer: Any) -> tuple[float, float, float]:
    m = trainer.train_step()
    return m["lm_loss"], m["mtp_loss"], m["grad_norm"]


def _one_rank(manifest: str, root: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    trainer = _trainer(manifest, {})
    trainer.save(f"{root}/init", keep_last=1)
    init = f"{root}/init/iter_0000000"
    sample = trainer.train_data[0]
    reference = [_step(trainer) for _ in range(STEPS)]
    out = {"reference": reference, "masked_share": float(sample["loss_mask"].mean())}
    for name, where in (("prompt_relabelled", 0.0), ("answer_relabelled", 1.0)):
        other = _trainer(manifest, {}, init)
        other.train_data = _Relabel(other.train_data, where)
        out[name] = _step(other)
    return out


def _two_ranks(manifest: str, root: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    init = f"{root}/init/iter_0000000"
    out = {}
    for name, layout in LAYOUTS.items():
        trainer = _trainer(manifest, layout, init)
        out[name] = [_step(trainer)[:2] for _ in range(STEPS)]
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chat_tokenize output of the generated zh/en chats; returns its manifest."""
    from data_prep import run_stage
    from tests.chat_corpus import write_chats

    root = tmp_path_factory.mktemp("sft")
    write_chats(root)
    run_stage(
        "chat_tokenize",
        [
            f"input={root / 'chats'}",
            f"output={root / 'shards'}",
            f"chat_tokenize.tokenizer={root / 'tok' / 'tokenizer.json'}",
            f"chat_tokenize.seq_length={SEQ}",
            "progress=false",
        ],
    )
    return root / "shards" / "manifest.json"


@pytest.fixture(scope="module")
def runs(shards: Path) -> dict[str, Any]:
    root = shards.parent.parent
    one = run_distributed(_one_rank, 1, str(shards), str(root))[0]
    two = run_distributed(_two_ranks, 2, str(shards), str(root))[0]
    return {"one": one, "two": two, "root": root}


def test_sample_is_one_padded_conversation_with_shifted_mask(shards: Path) -> None:
    from trainer.config.data import DataConfig
    from trainer.data import load_manifest
    from trainer.sft_data import build_sft_datasets

    manifest = load_manifest(shards, None, SEQ)
    data = DataConfig(seq_length=SEQ, split="90,10,0")
    train, valid = build_sft_datasets(data, manifest, [40, 8])
    assert len(train) == 40 and len(valid) == 8
    shard, doc = train.document(0)
    ids = np.array(train.tokens[shard][doc], dtype=np.int64)
    mask = np.array(train.masks[shard][doc], dtype=np.float32)
    s, n = train[0], len(ids) - 1
    assert (s["tokens"][:n] == ids[:-1]).all() and (s["labels"][:n] == ids[1:]).all()
    assert (s["loss_mask"][:n] == mask[1:]).all() and s["loss_mask"][n:].sum() == 0
    assert (s["labels"][n:] == manifest.eod_token_id).all() and s["labels"][n - 1] == 0  # eod
    train_docs = {train.document(i) for i in range(len(train))}
    assert not train_docs & {valid.document(i) for i in range(len(valid))}
    with pytest.raises(ValueError, match="data.eod_mask_loss: options for packed"):
        build_sft_datasets(DataConfig(seq_length=SEQ, eod_mask_loss=True), manifest, [8, 0])


def _edit(shards: Path, tmp: Path, edit) -> Path:
    import json
    import shutil

    dst = tmp / "m"
    shutil.copytree(shards.parent, dst)
    data = json.loads((dst / "manifest.json").read_text())
    edit(data["shards"])
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst / "manifest.json"


@pytest.mark.parametrize(
    ("edit", "seq", "message"),
    [
        (lambda s: None, 40, "conversations of up to 5[0-9] tokens do not fit data.seq_length=40"),
        (lambda s: s[1].pop("loss_mask"), SEQ, "some shards have a loss_mask"),
        (
            lambda s: s[0].update(loss_mask=s[1]["loss_mask"]),
            SEQ,
            "does not match .*en_00000 document for document",
        ),
    ],
)
def test_bad_sft_manifest_is_one_line(shards: Path, tmp_path: Path, edit, seq, message) -> None:
    from trainer.data import ManifestError, load_manifest

    with pytest.raises(ManifestError, match=message):
        load_manifest(_edit(shards, tmp_path, edit), None, seq)


def test_sft_loss_falls(runs: dict) -> None:
    lm = [s[0] for s in runs["one"]["reference"]]
    assert 0 < runs["one"]["masked_share"] < 0.5, "a sample mixes prompt, answer and padding"
    assert all(math.isfinite(x) for x in lm) and lm[-1] < lm[0], lm


def test_targets_under_mask_zero_change_nothing_lm_and_mtp(runs: dict) -> None:
    first = runs["one"]["reference"][0]
    assert runs["one"]["prompt_relabelled"] == first  # LM loss, MTP loss, gradient norm
    changed = runs["one"]["answer_relabelled"]
    assert changed[0] != first[0] and changed[1] != first[1], (changed, first)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sft_layout_matches_single_process(runs: dict, layout: str) -> None:
    want = [s[:2] for s in runs["one"]["reference"]]
    for step, (got, ref) in enumerate(zip(runs["two"][layout], want, strict=True)):
        for a, b in zip(got, ref, strict=True):
            assert math.isclose(a, b, rel_tol=2e-5), f"{layout} step {step}: {got} != {ref}"


def test_export_carries_the_chat_template(tmp_path: Path) -> None:
    """A model trained on chat_tokenize data exports with its chat template, so transformers
    (and evaluation, GRPO rollouts) prompt it in the format it learned."""
    import json

    from tests.chat_corpus import write_chats
    from trainer.export import tokenizer_files

    write_chats(tmp_path, num_per_lang=2)
    manifest = tmp_path / "manifest.json"
    data = {"shards": [], "eod_token_id": 0, "tokenizer": "tok/tokenizer.json"}
    manifest.write_text(json.dumps({**data, "sft": {"chat_template": "{{ x }}"}}))
    assert tokenizer_files(str(manifest), None, 4096).chat_template == "{{ x }}"
    manifest.write_text(json.dumps(data))
    assert tokenizer_files(str(manifest), None, 4096).chat_template is None
