"""The arithmetic reasoning task (posttrain.tasks.arithmetic): seeded, disjoint splits, correct
answers and worked solutions in R1's format, difficulty knobs, tokenizer coverage, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.rewards import REWARDS, Sample
from posttrain.tasks.arithmetic import (
    ArithmeticConfig,
    build_splits,
    charset,
    generate,
    normalise,
    tokenizer_report,
    user_texts,
)

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = {
    "en": [
        (re.compile(r"has (\d+) "), "start"),
        (re.compile(r"gets (\d+) more"), "add"),
        (re.compile(r"gives away (\d+)"), "sub"),
        (re.compile(r"multiplied by (\d+)"), "mul"),
    ],
    "zh": [
        (re.compile(r"有(\d+)个"), "start"),
        (re.compile(r"又得到(\d+)个"), "add"),
        (re.compile(r"送出(\d+)个"), "sub"),
        (re.compile(r"原来的(\d+)倍"), "mul"),
    ],
}


def chain_from_text(text: str, lang: str) -> tuple[tuple[str, int], ...]:
    """The start value and operations read back from a prompt's words alone."""
    found = sorted(
        (m.start(), op, int(m[1])) for pat, op in PATTERNS[lang] for m in pat.finditer(text)
    )
    assert found[0][1] == "start", text
    return tuple((op, n) for _, op, n in found)


def solve_from_text(text: str, lang: str) -> tuple[int, int]:
    """(answer, number of operations) of a prompt, from its words alone."""
    chain = chain_from_text(text, lang)
    value = chain[0][1]
    for op, n in chain[1:]:
        value = {"add": value + n, "sub": value - n, "mul": value * n}[op]
    return value, len(chain) - 1


def user(record: dict) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return build_splits(ArithmeticConfig(out="unused", n_train=600, n_test=100, n_cold_start=40))


def test_splits_are_seeded_sized_bilingual_and_disjoint(splits: dict[str, list[dict]]) -> None:
    assert {k: len(v) for k, v in splits.items()} == {"test": 100, "cold_start": 40, "train": 600}
    again = build_splits(ArithmeticConfig(out="x", n_train=600, n_test=100, n_cold_start=40))
    assert again == splits
    other = build_splits(
        ArithmeticConfig(out="x", n_train=600, n_test=100, n_cold_start=40, seed=1)
    )
    assert other["test"] != splits["test"]
    for rows in splits.values():
        assert {r["lang"] for r in rows} == {"en", "zh"}
    texts = {k: user_texts(v) for k, v in splits.items()}
    assert not texts["test"] & texts["train"] and not texts["test"] & texts["cold_start"]
    assert not texts["cold_start"] & texts["train"]
    # disjoint by problem, not only by text: the same chain told in zh and en counts once
    chains = {k: {chain_from_text(user(r), r["lang"]) for r in v} for k, v in splits.items()}
    assert not chains["test"] & (chains["train"] | chains["cold_start"])
    assert normalise("  A\n b ") == "a b"


def test_gold_answers_follow_from_the_prompt_text(splits: dict[str, list[dict]]) -> None:
    for rows in splits.values():
        for r in rows:
            answer, num_ops = solve_from_text(user(r), r["lang"])
            assert str(answer) == r["answer"] and 2 <= num_ops <= 3
            assert [m["role"] for m in r["messages"]][:2] == ["system", "user"]


def test_cold_start_solutions_are_correct_well_formed_and_in_language(
    splits: dict[str, list[dict]],
) -> None:
    step = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
    for r in splits["cold_start"]:
        assert r["messages"][-1]["role"] == "assistant"
        sample = Sample(user(r), r["messages"][-1]["content"], r["answer"], r["lang"])
        for name in ("format", "exact_match", "language"):
            assert REWARDS[name](sample) == 1.0, (name, sample.response)
        lines = step.findall(sample.response)
        assert len(lines) >= 4  # steps and the backwards check
        for a, sym, b, c in lines:
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}.get(
                sym, int(a) // int(b)
            ) == int(c)
    assert all(len(r["messages"]) == 2 for r in splits["train"] + splits["test"])


def test_difficulty_knobs() -> None:
    cfg = ArithmeticConfig(
        out="x",
        n_train=300,
        n_test=0,
        n_cold_start=5,
        min_ops=4,
        max_ops=5,
        max_value=60,
        ops=["add", "mul"],
        zh_share=0.0,
        system_prompt=False,
        backwards_check=False,
    )
    splits = build_splits(cfg)
    rows = splits["train"]
    assert all([m["role"] for m in r["messages"]] == ["user"] for r in rows)
    for r in splits["cold_start"]:  # steps only, no backwards check
        assert "Check" not in r["messages"][-1]["content"]
        num_ops = solve_from_text(user(r), "en")[1]
        assert r["messages"][-1]["content"].count("Step") == num_ops
    assert {r["lang"] for r in rows} == {"en"}
    for r in rows:
        answer, num_ops = solve_from_text(user(r), "en")
        assert 4 <= num_ops <= 5 and 0 <= answer <= 60 and "gives away" not in user(r)
    with pytest.raises(ValueError, match="distinct problems"):
        build_splits(ArithmeticConfig(out="x", n_train=500, max_operand=2, max_ops=1, min_ops=1))
    with pytest.raises(ValueError, match="ops="):
        ArithmeticConfig(out="x", ops=["mul"])


def test_a_byte_level_bpe_like_data_prep_trains_round_trips_every_record(
    splits: dict[str, list[dict]], tmp_path: Path
) -> None:
    from data_prep.config import TrainTokenizerConfig
    from data_prep.shards import train_bpe

    sample = tmp_path / "sample"
    sample.mkdir()
    text = ["The quick brown fox jumps over the lazy dog.", "今天天气很好，我们去公园散步。"]
    (sample / "00000.jsonl").write_text("".join(json.dumps(t) + "\n" for t in text * 20))
    train_bpe(TrainTokenizerConfig(vocab_size=300), str(sample), str(tmp_path / "tok.json"))
    report = tokenizer_report(str(tmp_path / "tok.json"), splits)
    assert report["chars_not_round_tripped"] == [] and report["records_not_round_tripped"] == 0
    assert report["tokens_per_record_max"] > report["tokens_per_record_mean"] > 0
    assert {"<", ">", "*", "=", "倍", "，", "\n"} <= set(charset())


def test_cli_writes_the_files_and_moves_an_old_set_aside(tmp_path: Path) -> None:
    out = tmp_path / "task"
    cmd = [sys.executable, "-m", "posttrain.tasks.arithmetic", f"out={out}", "n_train=30"]
    proc = subprocess.run(
        [*cmd, "n_test=10", "n_cold_start=5"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["records"] == {"test": 10, "cold_start": 5, "train": 30}
    assert sorted(p.name for p in out.iterdir()) == [
        "cold_start.jsonl",
        "stats.json",
        "test.jsonl",
        "train.jsonl",
    ]
    assert len((out / "train.jsonl").read_text().splitlines()) == 30
    generate(ArithmeticConfig(out=str(out), n_train=3, n_test=1, n_cold_start=1))
    assert len(list(tmp_path.glob("task.previous-*"))) == 1
    bad = subprocess.run(
        [*cmd, "zh_share=2"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert bad.returncode == 2 and "zh_share=2.0" in bad.stderr and not bad.stdout
    typo = subprocess.run(
        [*cmd, "+n_trian=3"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert typo.returncode == 2 and "did you mean 'n_train'" in typo.stderr


def test_pretrain_documents_are_prose_in_their_language_and_hold_no_held_out_problem() -> None:
    """The base model's corpus (`n_pretrain`): problem + worked solution, no chat markers or
    tags, disjoint from every other split."""
    cfg = ArithmeticConfig(out="x", n_train=100, n_test=100, n_cold_start=20, n_pretrain=300)
    splits = build_splits(cfg)
    docs = splits["pretrain"]
    assert len(docs) == 300 and {d["domain"] for d in docs} == {"en", "zh"}
    assert all(d["lang"] == d["domain"] for d in docs)
    assert not any(tag in d["text"] for d in docs for tag in ("<think>", "<answer>", "User:"))
    firsts = {normalise(d["text"].splitlines()[0]) for d in docs}
    for split in ("test", "train", "cold_start"):
        assert not firsts & user_texts(splits[split]), split
    assert "pretrain" not in build_splits(ArithmeticConfig(out="x", n_train=10, n_test=5))
