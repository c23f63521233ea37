"""chat_tokenize: chat records -> token shards + loss masks (assistant tokens only), bad records
counted per reason, bad templates refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import DataPrepError, run_stage
from tests.chat_corpus import BAD_LINES, EOD, write_chats

SEQ = 128


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chat")
    chats = write_chats(root)
    tok = str(root / "tok" / "tokenizer.json")
    args = [f"input={root / 'chats'}", f"output={root / 'out'}", "progress=false"]
    stats = run_stage(
        "chat_tokenize",
        [*args, f"chat_tokenize.tokenizer={tok}", f"chat_tokenize.seq_length={SEQ}"],
    )
    return {"root": root, "chats": chats, "stats": stats, "out": root / "out", "tok": tok}


def _docs(prefix: Path) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix), mmap=True)
    return [np.array(ds[i], copy=True) for i in range(len(ds))]  # copies: ds unmaps on exit


def test_mask_covers_exactly_the_assistant_turns_and_their_end_token(sft) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(sft["tok"])
    manifest = json.loads((sft["out"] / "manifest.json").read_text())
    assert manifest["sft"]["seq_length"] == SEQ and manifest["eod_token_id"] == tok.token_to_id(EOD)
    for shard in manifest["shards"]:
        tokens = _docs(sft["out"] / shard["prefix"])
        masks = _docs(sft["out"] / shard["loss_mask"])
        chats = sft["chats"][shard["domain"]]
        assert len(tokens) == len(masks) == len(chats) == shard["documents"]
        assert sum(int(m.sum()) for m in masks) == shard["loss_tokens"]
        for ids, mask, chat in zip(tokens, masks, chats, strict=True):
            assert ids.shape == mask.shape and set(np.unique(mask)) <= {0, 1}
            answers = [m["content"] for m in chat["messages"] if m["role"] == "assistant"]
            runs = np.split(ids, np.flatnonzero(np.diff(mask)) + 1)
            masked = [
                r
                for r, m in zip(
                    runs, np.split(mask, np.flatnonzero(np.diff(mask)) + 1), strict=True
                )
                if m[0]
            ]
            decoded = [tok.decode(r.tolist(), skip_special_tokens=False) for r in masked]
            assert decoded == [f" {a}{EOD}" for a in answers]
            prompt = tok.decode(ids[mask == 0].tolist(), skip_special_tokens=False)
            assert prompt.startswith(EOD) and "User: " in prompt and prompt.endswith("Assistant:")


def test_bad_records_are_counted_per_reason(sft) -> None:
    stats = sft["stats"]
    assert stats["removed"] == {
        "chat_tokenize:no_assistant_turn": 1,
        "chat_tokenize:too_long": 1,
    }
    want = {}
    for reason in BAD_LINES.values():
        if not reason.startswith("chat_tokenize:"):
            want[reason] = want.get(reason, 0) + 1
    assert stats["rejected"] == want
    assert stats["documents_in"] == stats["documents_kept"] + 2 == 120 + 2
    rejects = [json.loads(x) for f in (sft["out"] / "rejects").glob("*.jsonl") for x in open(f)]
    assert all(r["file"].endswith("bad.jsonl") and r["line"] >= 1 for r in rejects)
    assert {r["detail"] for r in rejects if r["reason"] == "bad_record"} >= {"no 'messages' field"}
    samples = sft["out"] / "removed_samples" / "chat_tokenize__too_long.jsonl"
    assert json.loads(samples.read_text().splitlines()[0])["metadata"]["tokens"] > SEQ + 1


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}{{ m.content }", "does not render"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "marks no assistant text"),
        ("tokenizer", "has no chat_template"),
        ("no_such_template", "not a template name"),
    ],
)
def test_bad_template_is_one_line_before_any_output(sft, tmp_path, template, message) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataPrepError, match=message) as err:
        run_stage(
            "chat_tokenize",
            [
                f"input={sft['root'] / 'chats'}",
                f"output={out}",
                f"chat_tokenize.tokenizer={sft['tok']}",
                f"chat_tokenize.chat_template='{template}'",
            ],
        )
    assert "\n" not in str(err.value) and not out.exists()


def test_template_from_the_tokenizer_config(sft, tmp_path) -> None:
    """`chat_template=tokenizer` reads tokenizer_config.json (an imported HF model's) and its
    bos/eos; a ChatML-style template marks the assistant content only."""
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_bytes(Path(sft["tok"]).read_bytes())
    chatml = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
        "{% endgeneration %}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    config = {"chat_template": chatml, "eos_token": {"content": EOD}}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    stats = run_stage(
        "chat_tokenize",
        [
            f"input={sft['root'] / 'chats' / 'en.jsonl'}",
            f"output={tmp_path / 'out'}",
            f"chat_tokenize.tokenizer={tok_dir / 'tokenizer.json'}",
            "chat_tokenize.chat_template=tokenizer",
            "progress=false",
        ],
    )
    assert stats["documents_kept"] == 60
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sft"]["chat_template"] == chatml


def test_mask_equals_transformers_assistant_mask(sft, tmp_path) -> None:
    """The same template in a tokenizer folder: transformers' apply_chat_template(
    return_assistant_tokens_mask=True) gives the same ids and mask as the shards."""
    from transformers import PreTrainedTokenizerFast

    manifest = json.loads((sft["out"] / "manifest.json").read_text())
    hf = PreTrainedTokenizerFast(
        tokenizer_file=sft["tok"], bos_token=EOD, eos_token=EOD, pad_token=EOD
    )
    hf.chat_template = manifest["sft"]["chat_template"]
    shard = manifest["shards"][1]  # zh
    tokens, masks = _docs(sft["out"] / shard["prefix"]), _docs(sft["out"] / shard["loss_mask"])
    for chat, ids, mask in zip(sft["chats"][shard["domain"]], tokens, masks, strict=True):
        out = hf.apply_chat_template(
            chat["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert out["input_ids"] == ids.tolist() and out["assistant_masks"] == mask.tolist()
