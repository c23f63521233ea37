"""quality_model: a fastText classifier trained on a reference set vs the raw input keeps the
held-out reference documents and drops planted junk (SEO spam, boilerplate, keyword lists)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data_prep import run_stage
from data_prep.quality_model import BINS, fasttext_line

EN_SPAM = [
    "cheap",
    "best",
    "price",
    "buy",
    "online",
    "discount",
    "free",
    "shipping",
    "sale",
    "deal",
    "casino",
    "bonus",
    "loan",
    "viagra",
    "replica",
    "watches",
    "top",
    "rated",
    "click",
    "here",
    "now",
    "limited",
    "offer",
    "win",
    "cash",
    "fast",
    "guaranteed",
]
ZH_SPAM = [
    "免费",
    "下载",
    "最新",
    "电影",
    "高清",
    "在线",
    "观看",
    "优惠",
    "促销",
    "代购",
    "正品",
    "低价",
    "包邮",
    "彩票",
    "娱乐",
    "注册",
    "送",
    "彩金",
    "点击",
    "进入",
    "官网",
    "秒杀",
]
NAV = [
    "Home",
    "About us",
    "Contact",
    "Privacy Policy",
    "Terms of Use",
    "Login",
    "Sign up",
    "Cart",
    "FAQ",
    "Sitemap",
    "Careers",
    "Blog",
    "首页",
    "关于我们",
    "联系我们",
    "登录",
    "注册",
    "隐私政策",
    "网站地图",
    "Cookie settings",
    "Accept all cookies",
    "Subscribe",
]


def junk_documents(n_per_kind: int, seed: int = 0) -> list[dict]:
    """SEO spam (en, zh), navigation/cookie boilerplate and keyword lists."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_per_kind):
        words = [rng.choice(EN_SPAM) for _ in range(rng.randint(40, 120))]
        docs.append(("seo_en", " ".join(words).capitalize() + "!!!"))
        docs.append(("seo_zh", "".join(rng.choice(ZH_SPAM) for _ in range(rng.randint(40, 120)))))
        nav = [rng.choice(NAV) for _ in range(rng.randint(15, 40))]
        year = rng.randint(2005, 2025)
        docs.append(("boilerplate", " | ".join(nav) + f"\nCopyright © {year} All rights reserved."))
        item = rng.choice(["shoes", "phone", "laptop", "hotel", "flights", "dress", "bag"])
        keys = [f"{rng.choice(EN_SPAM)} {item} {rng.choice(EN_SPAM)}" for _ in range(30)]
        docs.append(("keywords", ", ".join(keys)))
    return [{"id": f"junk/{kind}/{i}", "text": text} for i, (kind, text) in enumerate(docs)]


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _write(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)


@pytest.fixture(scope="module")
def data(corpus_dir, tmp_path_factory) -> dict:
    """Reference = 70% of the Python docs and Chinese man pages; the input = the other 30%
    (held-out positives), fortunes and poems, and 200 junk documents."""
    base = tmp_path_factory.mktemp("quality_model")
    rng = random.Random(0)
    reference, heldout = [], []
    for domain in ("en_docs", "zh_man"):
        docs = _load(corpus_dir / f"{domain}.jsonl")
        rng.shuffle(docs)
        cut = int(0.7 * len(docs))
        reference += docs[:cut]
        heldout += [{**d, "id": f"heldout/{d['id']}"} for d in docs[cut:]]
    junk = junk_documents(50)
    _write(base / "reference" / "ref.jsonl", reference)
    inputs = heldout + junk
    for domain in ("en_fortunes", "zh_poems"):
        inputs += _load(corpus_dir / f"{domain}.jsonl")
    rng.shuffle(inputs)
    _write(base / "input" / "mixed.jsonl", inputs)
    return {
        "base": base,
        "heldout": {d["id"] for d in heldout},
        "junk": {d["id"] for d in junk},
        "n_input": len(inputs),
    }


def _run(data: dict, name: str, *overrides: str) -> tuple[dict, list[dict]]:
    out = data["base"] / name
    stats = run_stage(
        "quality_model",
        [
            f"input={data['base'] / 'input'}",
            f"output={out}",
            "progress=false",
            f"quality_model.positives=[{data['base'] / 'reference'}]",
            *overrides,
        ],
    )
    from tests.data_prep.conftest import read_docs

    return stats, read_docs(out)


@pytest.fixture(scope="module")
def trained(data) -> tuple[dict, list[dict]]:
    return _run(data, "trained", "executor.tasks=2")


def test_keeps_heldout_reference_documents_and_drops_junk(trained, data):
    stats, docs = trained
    kept = {d["id"] for d in docs}
    heldout_kept = len(kept & data["heldout"]) / len(data["heldout"])
    junk_dropped = 1 - len(kept & data["junk"]) / len(data["junk"])
    print(f"held-out reference kept {heldout_kept:.3f}, junk dropped {junk_dropped:.3f}")
    assert heldout_kept >= 0.9
    assert junk_dropped > 0.5


def test_heldout_precision_and_recall_are_reported(trained):
    info = trained[0]["quality_model"]
    held = info["heldout"]
    assert held["positives"] > 0 and held["negatives"] > 0
    assert held["precision"] >= 0.7 and held["recall"] >= 0.8, held
    assert info["train"]["positives"] == info["train"]["negatives"]  # balanced, as DCLM trains
    assert Path(info["model"]).is_file()


def test_scores_are_stored_and_the_histogram_accounts_for_every_document(trained, data):
    stats, docs = trained
    assert all(d["metadata"]["quality_score"] >= stats["quality_model"]["threshold"] for d in docs)
    hist = {k: v for k, v in stats["counts"].items() if k.startswith("score_")}
    assert sum(hist.values()) == stats["documents_in"] == data["n_input"]
    assert set(hist) <= {f"score_{b / BINS:.1f}" for b in range(BINS)}
    assert stats["documents_in"] == stats["documents_kept"] + sum(stats["removed"].values())
    assert set(stats["removed"]) <= {"quality_model:low_score"}


def test_keep_top_keeps_that_share_with_a_given_model(trained, data):
    """A trained model is reused with `model=` (no training) and `keep_top` sets the cut."""
    model = trained[0]["quality_model"]["model"]
    stats, docs = _run(data, "top", f"quality_model.model={model}", "quality_model.keep_top=0.3")
    assert "train" not in stats["quality_model"]
    assert abs(len(docs) / data["n_input"] - 0.3) < 0.05
    first = {d["id"]: d["metadata"]["quality_score"] for d in trained[1]}
    assert all(first[d["id"]] == d["metadata"]["quality_score"] for d in docs if d["id"] in first)


def test_chinese_is_cut_into_words_for_the_classifier():
    assert fasttext_line("使用 man 命令查看手册页。Run `ls -l`!", 100).split() == [
        "使用",
        "man",
        "命令",
        "查看",
        "手册",
        "页",
        "。",
        "run",
        "`",
        "ls",
        "-",
        "l",
        "`",
        "!",
    ]


def test_missing_reference_set_is_one_clear_error(data):
    with pytest.raises(ValueError, match="stage=quality_model needs quality_model.positives"):
        run_stage("quality_model", [f"input={data['base'] / 'input'}", "output=/tmp/x"])
