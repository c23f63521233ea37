"""A small generated zh/en chat set (SFT tests), a byte-level BPE trained on it, and the
planted bad records with the reason each must be counted under."""

from __future__ import annotations

import json
import random
from pathlib import Path

EOD = "<|endoftext|>"
_EN = [
    ("What is {a} plus {b}?", "{a} plus {b} is {c}."),
    ("Name a colour of the number {a}.", "The number {a} is blue."),
    ("Repeat the word {w} twice.", "{w} {w}"),
]
_ZH = [
    ("{a} 加 {b} 等于多少？", "{a} 加 {b} 等于 {c}。"),
    ("请把“{w}”说两遍。", "{w}，{w}。"),
    ("今天的天气怎么样？第{a}天。", "第{a}天是晴天，适合出门散步。"),
]
_WORDS = ["apple", "river", "cloud", "stone", "苹果", "河流", "云朵", "石头"]


def _turn(rng: random.Random, pool: list) -> tuple[str, str]:
    q, a = rng.choice(pool)
    x, y = rng.randint(1, 99), rng.randint(1, 99)
    w = rng.choice(_WORDS)
    return q.format(a=x, b=y, w=w), a.format(a=x, b=y, c=x + y, w=w)


def conversations(num: int, lang: str, seed: int = 0) -> list[dict]:
    """`num` chats (1-2 exchanges, a system prompt on every third) of one language."""
    rng = random.Random(seed)
    pool = _EN if lang == "en" else _ZH
    out = []
    for i in range(num):
        msgs = [{"role": "system", "content": "You are helpful."}] if i % 3 == 0 else []
        for _ in range(1 + i % 2):
            q, a = _turn(rng, pool)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append({"messages": msgs, "id": f"{lang}/{i}"})
    return out


BAD_LINES = {  # raw line -> the reject or removal reason it must be counted under
    '{"messages": [{"role": "user", "content": "hi"}]}': "chat_tokenize:no_assistant_turn",
    '{"messages": "not a list"}': "bad_record",
    '{"text": "no messages field"}': "bad_record",
    '{"messages": [{"role": "robot", "content": "x"}]}': "bad_record",
    '{"messages": [{"role": "user", "content": 3}]}': "bad_record",
    '{"messages": [': "bad_json",
}


def write_chats(root: Path, num_per_lang: int = 60, long_words: int = 400) -> dict:
    """`root/chats/`: en.jsonl, zh.jsonl (domains by file stem), bad.jsonl (BAD_LINES plus one
    conversation of `long_words` words: too_long at small seq_length); `root/tok/tokenizer.json`
    trained on them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    (root / "chats").mkdir(parents=True, exist_ok=True)
    (root / "tok").mkdir(exist_ok=True)
    chats = {lang: conversations(num_per_lang, lang, seed=i) for i, lang in enumerate(("en", "zh"))}
    for lang, rows in chats.items():
        with open(root / "chats" / f"{lang}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    long_chat = {
        "messages": [
            {"role": "user", "content": " ".join(["story"] * long_words)},
            {"role": "assistant", "content": "ok"},
        ]
    }
    lines = [*BAD_LINES, json.dumps(long_chat)]
    (root / "chats" / "bad.jsonl").write_text("\n".join(lines) + "\n")
    texts = [m["content"] for rows in chats.values() for r in rows for m in r["messages"]]
    texts += ["User: ", "Assistant: ", "\n\n"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=[EOD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(root / "tok" / "tokenizer.json"))
    return chats
