"""data_prep throughput per stage vs plain datatrove doing the same step with its defaults.

    .venv/bin/python benchmarks/data_prep_throughput.py [--docs-per-domain 800] [--work DIR]

Corpus: the bilingual Debian sample corpus (data_prep.sample_corpus) plus planted 1%- and
3%-edited near copies in zh and en (for MinHash recall). Everything runs in one process
(executor.workers=1) so CPU seconds are comparable even on a shared machine. Columns:
  plain   = datatrove JsonlReader -> the step with default settings -> JsonlWriter
  same    = our stage with datatrove's algorithms (quality.fast_words=false, minhash.fast=false,
            minhash.verify_threshold=0,
            exact_dedup.normalize=false):
            what the chain machinery (tolerant reader, rejects, accounting, stats) costs
  ours    = our stage with its defaults
ratio = plain CPU s / ours CPU s (>1: ours is faster); overhead = same / plain - 1.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.dedup import exact_dedup as dt_exact
from datatrove.pipeline.dedup import minhash as dt_minhash
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
)
from datatrove.pipeline.formatters import FTFYFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from data_prep import run_stage
from data_prep.sample_corpus import build
from data_prep.steps import LocalFT176, default_lid_model

_CJK = re.compile(r"[\u4e00-\u9fff]")
STAGES = ("read", "normalize", "langid", "quality", "exact_dedup", "minhash_dedup")


def plant(corpus: Path, n: int = 30) -> list[dict]:
    """Append 1% and 3% edited copies of n long zh and en documents; return the groups."""
    rng, groups, rows = random.Random(3), [], []
    for lang, domain in (("zh", "zh_man"), ("en", "en_docs")):
        docs = [json.loads(line) for line in open(corpus / f"{domain}.jsonl", encoding="utf-8")]
        size = (lambda t: len(_CJK.findall(t))) if lang == "zh" else (lambda t: len(t.split()))
        for k, doc in enumerate(rng.sample([d for d in docs if 300 <= size(d["text"]) <= 5000], n)):
            g = {"orig": doc["id"]}
            for frac, kind in ((0.01, "near1"), (0.03, "near3")):
                text = _edit(doc["text"], frac, lang, rng)
                g[kind] = f"planted/{kind}/{lang}/{k}"
                rows.append({"text": text, "id": g[kind], "domain": domain})
            groups.append(g)
    with open(corpus / "planted.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return groups


def _edit(text: str, frac: float, lang: str, rng: random.Random) -> str:
    if lang == "zh":
        chars = list(text)
        idx = [i for i, c in enumerate(chars) if _CJK.match(c)]
        for i in rng.sample(idx, max(1, round(frac * len(idx)))):
            chars[i] = rng.choice("的一是在不了有和人这中大为上个国我以要他时来用们生到作地")
        return "".join(chars)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(frac * len(words)))):
        words[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    return " ".join(words)


def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def plain_steps(stage: str, work: Path) -> list[list]:
    """Plain datatrove pipelines (phases) for a stage, defaults everywhere."""
    if stage == "read":
        return [[]]
    if stage == "normalize":
        return [[FTFYFormatter()]]
    if stage == "langid":
        lid = LanguageFilter(languages=["en", "zh"])
        lid.model = LocalFT176(default_lid_model(), ["en", "zh"])  # lid.176.bin needs a download
        return [[lid]]
    if stage == "quality":
        return [
            [
                GopherRepetitionFilter(),
                GopherQualityFilter(),
                C4QualityFilter(),
                FineWebQualityFilter(),
            ]
        ]
    if stage == "exact_dedup":
        cfg = dt_exact.ExactDedupConfig(content_getter=_text)
        return [
            ["READ", dt_exact.ExactDedupSignature(f"{work}/sigs", config=cfg)],
            [dt_exact.ExactFindDedups(f"{work}/sigs", f"{work}/dups", config=cfg)],
            [dt_exact.ExactDedupFilter(f"{work}/dups", config=cfg)],
        ]
    mh = dt_minhash.MinhashConfig()
    return [
        ["READ", dt_minhash.MinhashDedupSignature(f"{work}/sigs", config=mh)],
        [dt_minhash.MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=mh)],
        [dt_minhash.MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=mh)],
        [dt_minhash.MinhashDedupFilter(f"{work}/remove")],
    ]


def _text(doc) -> str:
    return doc.text


def run_plain(stage: str, inp: str, out: Path) -> None:
    phases = plain_steps(stage, out / "work")
    for i, steps in enumerate(phases):
        last = i == len(phases) - 1
        reads = not steps or steps[0] == "READ" or last
        steps = [s for s in steps if s != "READ"]
        pipeline = [JsonlReader(inp, glob_pattern="*.jsonl*")] if reads else []
        pipeline += steps + ([JsonlWriter(str(out / "docs"))] if last else [])
        tasks = 14 if isinstance(steps[0] if steps else None, dt_minhash.MinhashDedupBuckets) else 1
        LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=1, logging_dir=str(out / f"logs{i}")
        ).run()


SAME_OPTS = {  # our stage configured to do exactly what plain datatrove does
    "quality": ["quality.fast_words=false"],
    "exact_dedup": ["exact_dedup.normalize=false"],
    "minhash_dedup": ["minhash.fast=false", "minhash.verify_threshold=0"],
}


def _ours(stage: str, inp: str, out: str, extra: list[str]) -> dict:
    return run_stage(
        stage, [f"input={inp}", f"output={out}", "progress=false", "executor.workers=1", *extra]
    )


def bench(corpus: Path, work: Path) -> list[dict]:
    rows, prev = [], str(corpus)
    for stage in STAGES:
        stats: dict = {}
        ours = timed(
            lambda s=stage, p=prev, st=stats: st.update(_ours(s, p, f"{work}/ours/{s}", []))
        )
        same = timed(lambda s=stage, p=prev: _ours(s, p, f"{work}/same/{s}", SAME_OPTS.get(s, [])))
        plain = timed(lambda s=stage, p=prev: run_plain(s, p, work / "plain" / s))
        mb = stats["bytes_in"] / 1e6
        rows.append(
            {
                "stage": stage,
                "docs": stats["documents_in"],
                "mb": mb,
                "ours": ours,
                "same": same,
                "plain": plain,
            }
        )
        prev = f"{work}/ours/{stage}"
    return rows


def signature_only(corpus_out: Path, groups: list[dict]) -> dict:
    """Signature step alone (CPU s and docs/s) and recall of planted near copies, ours vs plain."""
    from data_prep.accounting import Ledger
    from data_prep.config import ReadConfig
    from data_prep.dedup import FastMinhashSignature
    from data_prep.reader import RecordReader, resolve_inputs, write_paths_file

    tmp = Path(tempfile.mkdtemp())
    paths = write_paths_file(resolve_inputs(str(corpus_out)), tmp / "p.txt")
    docs = list(RecordReader(paths, ReadConfig(), Ledger(str(tmp / "l")), str(tmp / "r")).run())
    mh, res = dt_minhash.MinhashConfig(), {}
    for name, step in (
        ("ours", FastMinhashSignature(str(tmp / "a"), mh, char_n_grams=5)),
        ("plain", dt_minhash.MinhashDedupSignature(str(tmp / "b"), config=mh)),
    ):
        step.get_shingles(docs[0].text)  # load spaCy / jieba outside the timing
        _, cpu = timed(lambda s=step: s.run(iter(docs)))
        res[name] = {"cpu_s": cpu, "docs_per_s": len(docs) / cpu}
    shutil.rmtree(tmp)
    return res


def recall(corpus: Path, work: Path, groups: list[dict], variant: str) -> dict:
    """Full MinHash dedup of the raw corpus; share of planted pairs collapsed to one document."""
    import gzip

    out_dir = work / "recall" / variant
    if variant == "ours":
        run_stage(
            "minhash_dedup",
            [f"input={corpus}", f"output={out_dir}", "progress=false", "executor.workers=1"],
        )
    else:
        run_plain("minhash_dedup", str(corpus), out_dir)
    kept = set()
    for f in out_dir.rglob("*.jsonl.gz"):
        kept.update(json.loads(line)["id"] for line in gzip.open(f, "rt"))
    out = {}
    for kind in ("near1", "near3"):
        # a pair is caught when original and copy were not both kept
        out[kind] = round(
            sum(len({g["orig"], g[kind]} & kept) < 2 for g in groups) / len(groups), 3
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs-per-domain", type=int, default=800)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dp_bench_"))
    corpus = work / "corpus"
    build(corpus, docs_per_domain=args.docs_per_domain)
    groups = plant(corpus)
    warm = work / "warmup_corpus"
    warm.mkdir()
    for f in corpus.glob("*.jsonl"):  # load models/imports once, outside the measured runs
        (warm / f.name).write_text(
            "".join(open(f, encoding="utf-8").readlines()[:20]), encoding="utf-8"
        )
    bench(warm, work / "warmup")
    rows = bench(corpus, work)
    print(
        f"\n{'stage':<14}{'docs':>6}{'MB':>7} | {'ours docs/s':>11}{'MB/s':>7} | "
        f"{'same':>7}{'plain':>7} CPU s | ratio plain/ours  overhead same/plain"
    )
    tot = {"ours": 0.0, "same": 0.0, "plain": 0.0}
    like = {"ours": 0.0, "same": 0.0, "plain": 0.0}  # stages where plain does the same work
    for r in rows:
        cpu = {k: r[k][1] for k in tot}
        for k in tot:
            tot[k] += cpu[k]
            like[k] += cpu[k] if r["stage"] != "quality" else 0.0
        print(
            f"{r['stage']:<14}{r['docs']:>6}{r['mb']:>7.2f} | "
            f"{r['docs'] / cpu['ours']:>11.0f}{r['mb'] / cpu['ours']:>7.2f} | "
            f"{cpu['same']:>7.2f}{cpu['plain']:>7.2f}       | "
            f"{cpu['plain'] / cpu['ours']:>6.2f}x           "
            f"{cpu['same'] / cpu['plain'] - 1:>+7.1%}"
        )
    for name, t in (("chain total", tot), ("chain w/o quality", like)):
        print(
            f"{name:<27} | ours {t['ours']:.2f} s, same {t['same']:.2f} s, "
            f"plain {t['plain']:.2f} s CPU | "
            f"ratio {t['plain'] / t['ours']:.2f}x, overhead {t['same'] / t['plain'] - 1:+.1%}"
        )
    print(
        "(plain quality applies English rules to Chinese too - a CJK sentence is one 'word' - "
        "so it is"
    )
    print(" cheaper but not the same work; the like-for-like chain overhead excludes it)")
    sig = signature_only(work / "ours" / "exact_dedup", groups)
    rec_ours = recall(corpus, work, groups, "ours")
    rec_plain = recall(corpus, work, groups, "plain")
    print(
        f"\nMinHash signature step: ours {sig['ours']['docs_per_s']:.0f} docs/s, plain datatrove "
        f"{sig['plain']['docs_per_s']:.0f} docs/s -> "
        f"{sig['ours']['docs_per_s'] / sig['plain']['docs_per_s']:.2f}x"
    )
    print(
        f"near-copy recall (pairs collapsed): ours {rec_ours}, plain {rec_plain}  "
        f"({len(groups)} groups, zh+en)"
    )
    print(f"work dir: {work}")


if __name__ == "__main__":
    main()
