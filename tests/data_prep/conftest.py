"""Session fixtures: a real bilingual corpus (Debian packages) with planted duplicates, bad lines.

Planted per language (zh from zh_man, en from en_docs): exact copies, 1%-edited and 3%-edited near
copies of long documents, plus German documents (for language ID) and one file of bad records.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from data_prep.sample_corpus import CorpusError, build

DOCS_PER_DOMAIN = 150
NUM_PLANTED = 12  # originals per language
GERMAN = [
    "Die Katze sitzt auf der Matte und schaut aus dem Fenster. Draußen regnet es seit dem Morgen, "
    "und die Vögel haben sich unter dem Dach versteckt. Niemand weiß, wann der Regen aufhört.",
    "Der Zug nach Berlin fährt um acht Uhr ab. Wir müssen früh aufstehen, damit wir ihn nicht "
    "verpassen, denn der nächste fährt erst am Nachmittag und dann ist es zu spät für das Treffen.",
    "Im Herbst fallen die Blätter von den Bäumen, und die Tage werden kürzer. Viele Menschen gehen "
    "dann gern im Wald spazieren, sammeln Pilze und trinken danach einen heißen Tee zu Hause.",
]
_CJK = re.compile(r"[\u4e00-\u9fff]")
_ZH_POOL = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"  # noqa: E501


@dataclass
class Planted:
    """What was planted where, so tests can check the stages' decisions."""

    raw: Path
    groups: list[dict] = field(default_factory=list)  # {lang, orig, exact, near1, near3}
    german_ids: list[str] = field(default_factory=list)
    bad_lines: dict[str, int] = field(default_factory=dict)  # reason -> count
    bad_file: str = ""
    gz_file: str = ""


def edit_words(text: str, frac: float, rng: random.Random) -> str:
    """Replace `frac` of the whitespace-separated words with random lowercase words."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(frac * len(words)))):
        words[i] = "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))
        )
    return " ".join(words)


def edit_chars(text: str, frac: float, rng: random.Random) -> str:
    """Replace `frac` of the CJK characters with other common characters."""
    chars = list(text)
    cjk = [i for i, c in enumerate(chars) if _CJK.match(c)]
    for i in rng.sample(cjk, max(1, round(frac * len(cjk)))):
        chars[i] = rng.choice(_ZH_POOL)
    return "".join(chars)


def _originals(corpus: Path, domain: str, lang: str, n: int) -> list[dict]:
    docs = [json.loads(line) for line in open(corpus / f"{domain}.jsonl", encoding="utf-8")]
    size = (
        (lambda d: len(_CJK.findall(d["text"])))
        if lang == "zh"
        else (lambda d: len(d["text"].split()))
    )
    long = [d for d in docs if 400 <= size(d) <= 5000]
    return random.Random(1).sample(long, n)


def _plant_copies(corpus: Path, planted: Planted) -> None:
    rng = random.Random(7)
    rows = []
    for lang, domain, edit in (("zh", "zh_man", edit_chars), ("en", "en_docs", edit_words)):
        for k, doc in enumerate(_originals(corpus, domain, lang, NUM_PLANTED)):
            group = {"lang": lang, "orig": doc["id"]}
            for kind, text in (
                ("exact", doc["text"]),
                ("near1", edit(doc["text"], 0.01, rng)),
                ("near3", edit(doc["text"], 0.03, rng)),
            ):
                group[kind] = f"planted/{kind}/{lang}/{k}"
                rows.append({"text": text, "id": group[kind], "domain": domain})
            planted.groups.append(group)
    rng.shuffle(rows)
    with open(planted.raw / "planted_copies.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _plant_bad(planted: Planted) -> None:
    german = [{"text": t, "id": f"german/{i}", "domain": "en_docs"} for i, t in enumerate(GERMAN)]
    planted.german_ids = [g["id"] for g in german]
    lines = [json.dumps(g, ensure_ascii=False).encode() for g in german]
    bad = {
        "bad_json": b'{"text": "unterminated',
        "invalid_utf8": b'{"text": "caf\xe9 au lait \xff"}',
        "missing_text": b'{"body": "no text field here"}',
        "non_string_text": b'{"text": ["a", "list"]}',
        "empty_text": b'{"text": "   \\n  "}',
        "doc_too_large": json.dumps({"text": "x" * 10_500_000}).encode(),
    }
    lines.extend(bad.values())
    planted.bad_file = str(planted.raw / "mixed_bad.jsonl")
    Path(planted.bad_file).write_bytes(b"\n".join(lines) + b"\n")
    planted.bad_lines = {reason: 1 for reason in bad}
    # a truncated gzip: 3000 good records, cut in the middle of the stream
    rng = random.Random(0)
    good = "".join(
        json.dumps({"text": f"Sentence {i} of a truncated file, value {rng.random()}."}) + "\n"
        for i in range(3000)
    )
    blob = gzip.compress(good.encode())
    planted.gz_file = str(planted.raw / "truncated.jsonl.gz")
    Path(planted.gz_file).write_bytes(blob[: len(blob) // 2])
    planted.bad_lines["truncated_gzip"] = 1


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    try:
        build(out, docs_per_domain=DOCS_PER_DOMAIN)
    except CorpusError as e:
        pytest.skip(f"sample corpus unavailable: {e}")
    return out


@pytest.fixture(scope="session")
def planted(corpus_dir, tmp_path_factory) -> Planted:
    raw = tmp_path_factory.mktemp("raw")
    for f in corpus_dir.glob("*.jsonl"):
        (raw / f.name).write_bytes(f.read_bytes())
    p = Planted(raw=raw)
    _plant_copies(corpus_dir, p)
    _plant_bad(p)
    return p


def read_docs(folder: Path) -> list[dict]:
    """All documents of a stage output folder, in file order."""
    docs = []
    for f in sorted(Path(folder).glob("*.jsonl.gz")):
        docs.extend(json.loads(line) for line in gzip.open(f, "rt", encoding="utf-8"))
    return docs


@pytest.fixture(scope="session")
def docs_of():
    """`docs_of(folder)`: all documents of a stage output folder."""
    return read_docs


@pytest.fixture(scope="session")
def chain(planted, corpus_dir, tmp_path_factory) -> dict:
    """Every stage in order on the planted corpus; returns {stage: (stats, output folder)}."""
    from data_prep import run_stage
    from data_prep.config import TEXT_STAGES as STAGES

    base = tmp_path_factory.mktemp("chain")
    extra = {
        "remix": [
            "remix.weights={zh_man:0.4,zh_poems:0.1,en_docs:0.4,en_fortunes:0.1}",
            "remix.holdout=0.05",
        ],
        "tokenize": [f"tokenize.tokenizer={base}/train_tokenizer/tokenizer.json"],
        # scores only (threshold 0): later stages' tests count the planted documents
        "quality_model": [
            f"quality_model.positives=[{corpus_dir}/en_docs.jsonl,{corpus_dir}/zh_man.jsonl]",
            "quality_model.threshold=0",
        ],
    }
    results, prev = {}, str(planted.raw)
    for stage in STAGES[: STAGES.index("remix") + 1]:
        out = base / stage
        results[stage] = (
            run_stage(
                stage, [f"input={prev}", f"output={out}", "progress=false", *extra.get(stage, [])]
            ),
            out,
        )
        prev = str(out)
    for stage in ("train_tokenizer", "tokenize"):
        out = base / stage
        results[stage] = (
            run_stage(
                stage, [f"input={prev}", f"output={out}", "progress=false", *extra.get(stage, [])]
            ),
            out,
        )
    return results
