"""Stages `warc` and `url_filter` on real WARC files built from Debian's HTML documentation
(tests/data_prep/warc_corpus.py): main text without navigation, Chinese pages intact whatever
their encoding label, every record that is no page counted with its reason, a broken record a
reject naming file and record; URL block lists with counts per list."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from data_prep import run_stage
from data_prep.sample_corpus import CorpusError

sys.path.insert(0, str(Path(__file__).parent))
from warc_corpus import build_web_corpus  # noqa: E402


@pytest.fixture(scope="module")
def web(tmp_path_factory, docs_of):
    base = tmp_path_factory.mktemp("web")
    try:
        corpus = build_web_corpus(base / "crawl")
    except CorpusError as err:
        pytest.skip(f"Debian documentation packages unavailable: {err}")
    stats = run_stage(
        "warc", [f"input={corpus.folder}", f"output={base / 'text'}", "progress=false"]
    )
    docs = {d["metadata"]["url"]: d for d in docs_of(base / "text")}
    return corpus, stats, docs, base


def test_every_record_is_accounted_for(web):
    corpus, stats, docs, base = web
    # the record cut in half is no document (corpus.responses leaves it out): a reject naming
    # its file and number
    assert stats["documents_in"] == corpus.responses
    assert stats["removed"] == {
        "warc:not_html": corpus.images,
        "warc:redirect": 1,
        "warc:http_error": 1,
    }
    assert stats["documents_kept"] == len(corpus.urls) == len(docs)
    assert stats["counts"] == {"warc:request_records": corpus.requests, "warc:warcinfo_records": 1}
    assert stats["rejected"] == {"broken_warc_record": 1}
    (reject,) = [
        json.loads(x) for f in (base / "text" / "rejects").glob("*.jsonl") for x in open(f)
    ]
    assert (reject["file"], reject["record"]) == (corpus.broken_file, corpus.broken_record)
    assert "before its Content-Length" in reject["detail"]
    redirect = json.loads(
        next((base / "text" / "removed_samples").glob("warc__redirect*"))
        .read_text()
        .splitlines()[0]
    )
    assert redirect["metadata"]["http_status"] == 301


def test_main_text_without_navigation(web):
    corpus, _, docs, _ = web
    text = docs[corpus.urls["en/library/functions.html"]]["text"]
    assert "The Python interpreter has a number of functions and types built into it" in text
    for chrome in ("Previous topic", "Report a Bug", "Show Source", "Navigation"):
        assert chrome not in text, chrome
    assert set(corpus.urls.values()) == set(docs)


def test_chinese_pages_are_intact_whatever_the_label(web):
    corpus, _, docs, _ = web
    for name in ("zh/contributing.zh-cn.html", "zh/gb18030", "zh/meta_gbk"):
        doc = docs[corpus.urls[name]]
        cjk = re.findall(r"[\u4e00-\u9fff]", doc["text"])
        assert len(cjk) > 200, (name, doc["text"][:200])
        assert "\ufffd" not in doc["text"] and "Ã" not in doc["text"], name  # no mojibake
    assert docs[corpus.urls["zh/gb18030"]]["metadata"]["charset"] == "gb18030"  # gb2312 label
    assert docs[corpus.urls["zh/meta_gbk"]]["metadata"]["charset"] == "gb18030"  # <meta> gbk
    assert "Debian 的开发对所有人开放" in docs[corpus.urls["zh/contributing.zh-cn.html"]]["text"]


def test_url_filter_counts_per_list(web, tmp_path, docs_of):
    corpus, _, docs, base = web
    (tmp_path / "mirrors.txt").write_text("# mirrors we never want\nexample.cn\n")
    (tmp_path / "api_pages.txt").write_text("/LIBRARY/JSON\n\n")
    stats = run_stage(
        "url_filter",
        [
            f"input={base / 'text'}",
            f"output={tmp_path / 'out'}",
            "progress=false",
            f"url_filter.block_domains=[{tmp_path / 'mirrors.txt'}]",
            f"url_filter.block_substrings=[{tmp_path / 'api_pages.txt'}]",
        ],
    )
    assert stats["removed"] == {"url_filter:mirrors": 2, "url_filter:api_pages": 1}
    kept = {d["metadata"]["url"] for d in docs_of(tmp_path / "out")}
    assert kept == set(docs) - {
        corpus.urls["zh/gb18030"],
        corpus.urls["zh/meta_gbk"],
        corpus.urls["en/library/json.html"],
    }


def test_url_filter_needs_a_list(tmp_path):
    with pytest.raises(ValueError, match="stage=url_filter needs url_filter.block_domains"):
        run_stage("url_filter", [f"input={tmp_path}", f"output={tmp_path / 'o'}"])


def _same_as_local(web, out, docs_of, *executor: str) -> None:
    corpus, local, docs, _ = web
    stats = run_stage(
        "warc",
        [
            f"input={corpus.folder}",
            f"output={out}",
            "progress=false",
            "executor.tasks=2",
            *executor,
        ],
    )
    for key in ("documents_in", "documents_kept", "removed", "rejected", "counts"):
        assert stats[key] == local[key], key
    assert {d["metadata"]["url"]: d["text"] for d in docs_of(out)} == {
        url: d["text"] for url, d in docs.items()
    }


def test_warc_on_ray_matches_local(ray_session, web, tmp_path, docs_of):
    _same_as_local(web, tmp_path / "ray", docs_of, "executor=ray")


@pytest.mark.usefixtures("dev_cluster")
def test_warc_on_datatrove_slurm_executor_matches_local(web, tmp_path, docs_of):
    _same_as_local(
        web,
        tmp_path / "slurm",
        docs_of,
        "executor=slurm",
        "executor.partition=debug",
        "executor.poll_s=0.5",
    )
