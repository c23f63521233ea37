"""The read stage: Parquet and JSONL.gz input, field mapping, domain tags, globs."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import run_stage


def test_parquet_with_custom_fields_and_domain(tmp_path, docs_of):
    table = pa.table(
        {
            "content": ["第一篇文档。", "Second document.", None, "   "],
            "uid": ["a", "b", "c", "d"],
            "lang": ["zh", "en", "en", "en"],
            "junk": [1, 2, 3, 4],
        }
    )
    pq.write_table(table, tmp_path / "part.parquet")
    out = tmp_path / "out"
    args = [
        "read.text_field=content",
        "read.id_field=uid",
        "read.metadata_fields=[lang]",
        "read.domain=web",
    ]
    stats = run_stage(
        "read", [f"input={tmp_path}/*.parquet", f"output={out}", "progress=false", *args]
    )
    docs = docs_of(out)
    assert [(d["id"], d["text"]) for d in docs] == [
        ("a", "第一篇文档。"),
        ("b", "Second document."),
    ]
    assert docs[0]["metadata"] == {"lang": "zh", "domain": "web"}
    assert stats["rejected"] == {"non_string_text": 1, "empty_text": 1}
    rejects = [json.loads(line) for line in open(out / "rejects" / "00000.jsonl")]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "non_string_text"),
        (4, "empty_text"),
    ]


def test_jsonl_gz_keeps_metadata_and_takes_domain_from_record_or_file(tmp_path, docs_of):
    rows = [
        {"text": "one", "id": 1, "metadata": {"url": "u1"}},
        {"text": "two", "domain": "news", "score": 0.5},
    ]
    with gzip.open(tmp_path / "forum_posts.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    out = tmp_path / "out"
    run_stage(
        "read", [f"input={tmp_path / 'forum_posts.jsonl.gz'}", f"output={out}", "progress=false"]
    )
    docs = docs_of(out)
    assert docs[0]["id"] == "1" and docs[0]["metadata"] == {"url": "u1", "domain": "forum_posts"}
    assert docs[1]["id"] == "forum_posts/2" and docs[1]["metadata"] == {
        "domain": "news",
        "score": 0.5,
    }
