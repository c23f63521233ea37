"""Stage `pii`: every planted item of each kind is replaced in zh and en text, checksums and
context keep look-alikes, counts per kind reach stats.json, and on the clean Debian sample
corpus no document is touched by a kind it does not contain."""

from __future__ import annotations

import json
import random

import pytest

from data_prep import run_stage
from data_prep.pii import PLACEHOLDER, luhn, redact, valid_id_number

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_number(rng: random.Random) -> str:
    body = f"{rng.randint(110000, 659999)}{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}"
    body += f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11]


def card(rng: random.Random) -> str:
    digits = [rng.choice("3456")] + [str(rng.randint(0, 9)) for _ in range(14)]
    for check in "0123456789":
        if luhn("".join(digits) + check):
            number = "".join(digits) + check
            return (
                " ".join(number[i : i + 4] for i in range(0, 16, 4))
                if rng.random() < 0.5
                else number
            )
    raise AssertionError("no Luhn digit")


def planted(rng: random.Random) -> dict[str, list[str]]:
    return {
        "id_number": [id_number(rng) for _ in range(5)],
        "card": [card(rng) for _ in range(5)],
        "email": ["zhang.wei@example.com.cn", "j-doe+news@mail.example.org", "li_na88@163.com"],
        "phone": [
            "13812345678",
            "+86 139 1234 5678",
            "0086-15912345678",
            "(555) 123-4567",
            "+44 20 7946 0958",
            "186-0000-1111",
        ],
        "ip": ["8.8.8.8", "101.6.6.6", "2606:4700:4700::1111"],
    }


CONTEXTS = {
    "en": "Please contact our customer {item} today. Thanks, the support team.",
    "zh": "如需帮助，请联系客服{item}，我们会尽快回复您。谢谢！",
}


def test_every_planted_item_is_replaced_in_zh_and_en():
    items = planted(random.Random(1))
    for lang, context in CONTEXTS.items():
        for kind, values in items.items():
            for value in values:
                text, counts = redact(context.format(item=value))
                assert counts == {kind: 1}, (lang, value, text)
                assert PLACEHOLDER[kind] in text and value not in text


@pytest.mark.parametrize(
    "text",
    [
        "ID 110105194912310021 has a wrong check digit",  # checksum
        "ID 110105199913310028 has no such birth date",  # date
        "card 4111111111111112 fails Luhn",
        "0.1000000000000000055511151231257827021181583404541015625 in binary",  # decimal digits
        "827.5950000000001 and 351364.18288201344",
        "版本号由一个或多个用点号分隔的十进制数组成，比如 2 或 1.162 或 3.1.13.1",  # a version
        "Python version 3.11.2.1 released",
        "LAN 192.168.1.1, loopback 127.0.0.1, docs 2001:db8::1, MAC f9:2a:c2:77:29:f9:5c:00",
        "at 12:30:45 in std::vector, pi = 3.14159265359, 14159265359",
    ],
)
def test_look_alikes_stay(text):
    assert redact(text) == (text, {})


def test_checksums():
    assert valid_id_number("11010519491231002X") and not valid_id_number("110105194912310021")
    assert luhn("4111 1111 1111 1111") and not luhn("4111 1111 1111 1112")


def test_stage_counts_kinds_and_keeps_every_document(tmp_path, docs_of):
    rng = random.Random(2)
    items = planted(rng)
    rows = [
        {"id": f"{kind}/{i}/{lang}", "text": CONTEXTS[lang].format(item=value)}
        for kind, values in items.items()
        for i, value in enumerate(values)
        for lang in CONTEXTS
    ]
    rows.append(
        {"id": "clean", "text": "Nothing personal here, just version 3.1.4.1 and 2 + 2 = 4."}
    )
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    stats = run_stage(
        "pii",
        [
            f"input={tmp_path / 'in.jsonl'}",
            f"output={tmp_path / 'out'}",
            "progress=false",
            "pii.kinds=[email,phone,ip,card,id_number]",
        ],
    )
    assert stats["documents_in"] == stats["documents_kept"] == len(rows)
    want = {f"pii:{kind}": 2 * len(values) for kind, values in items.items()}
    assert stats["counts"] == want | {"pii:documents_redacted": len(rows) - 1}
    out = {d["id"]: d for d in docs_of(tmp_path / "out")}
    assert out["email/0/zh"]["text"] == CONTEXTS["zh"].format(item="[EMAIL]")
    assert out["email/0/zh"]["metadata"]["pii"] == {"email": 1}
    assert out["clean"]["text"] == rows[-1]["text"]


def test_bad_kind_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"pii.kinds: unknown \['passport'\]"):
        run_stage("pii", [f"input={tmp_path}", f"output={tmp_path / 'o'}", "pii.kinds=[passport]"])


def test_clean_corpus_is_touched_only_where_it_holds_such_data(chain):
    """The Debian sample corpus holds authors' e-mail addresses and example IPs of manuals, and
    no ID or card numbers: those kinds touch nothing, phones under 0.1% of documents."""
    stats, _ = chain["pii"]
    counts, docs = stats.get("counts", {}), stats["documents_in"]
    assert counts.get("pii:id_number", 0) == counts.get("pii:card", 0) == 0, counts
    assert counts.get("pii:phone", 0) <= 0.001 * docs, counts
    print(f"\npii on the clean corpus ({docs} documents): {counts}")
