"""tokenize stage vs the raw `tokenizers` batch encoder on the same text.

    .venv/bin/python benchmarks/tokenize_speed.py [--docs-per-domain 800] [--copies 4] [--rounds 3]

Corpus: the bilingual Debian sample corpus (`--copies` times, to get past start-up costs) after
the read stage; tokenizer: a 4096-token BPE trained by the train_tokenizer stage. Both sides
use the same tokenizer and every core (the Rust encoder's thread pool), best wall time of
`--rounds`:
  raw   = texts already in memory -> Tokenizer.encode_batch (and encode_batch_fast: ids
          without character offsets, what the stage calls) in batches of tokenize.batch_size
  stage = `python -m data_prep stage=tokenize` in-process: read .jsonl.gz, encode, write
          .bin/.idx shards, manifest, stats (executor.tasks=1)
ratio = stage tokens/s / raw tokens/s (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path


def prepare(work: Path, docs_per_domain: int, copies: int) -> tuple[Path, Path]:
    from data_prep import run_stage
    from data_prep.sample_corpus import build

    corpus = work / "corpus"
    if not corpus.exists():
        build(corpus, docs_per_domain=docs_per_domain)
        for f in list(corpus.glob("*.jsonl")):
            text = f.read_text(encoding="utf-8")
            for c in range(1, copies):
                (corpus / f"{f.stem}_copy{c}.jsonl").write_text(text, encoding="utf-8")
    run_stage("read", [f"input={corpus}", f"output={work / 'read'}", "progress=false"])
    run_stage(
        "train_tokenizer", [f"input={work / 'read'}", f"output={work / 'tok'}", "progress=false"]
    )
    return work / "read", work / "tok" / "tokenizer.json"


def raw(texts: list[str], tokenizer: Path, batch: int, method: str) -> tuple[float, int]:
    from tokenizers import Tokenizer

    encode = getattr(Tokenizer.from_file(str(tokenizer)), method)
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), batch):
        tokens += sum(len(e.ids) for e in encode(texts[i : i + batch], add_special_tokens=False))
    return time.perf_counter() - start, tokens


def stage(inp: Path, tokenizer: Path, out: Path) -> tuple[float, int, int]:
    from data_prep import run_stage

    start = time.perf_counter()
    s = run_stage(
        "tokenize",
        [
            f"input={inp}",
            f"output={out}",
            "progress=false",
            "force=true",
            f"tokenize.tokenizer={tokenizer}",
        ],
    )
    return time.perf_counter() - start, s["tokens"], s["documents_in"]


def main() -> None:
    from data_prep.config import TokenizeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs-per-domain", type=int, default=800)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tokenize_speed_"))
    inp, tokenizer = prepare(work, args.docs_per_domain, args.copies)
    texts = [
        json.loads(line)["text"]
        for f in sorted(inp.glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt", encoding="utf-8")
    ]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    batch = TokenizeConfig().batch_size
    best = {"encode_batch": float("inf"), "encode_batch_fast": float("inf"), "stage": float("inf")}
    for _ in range(args.rounds):
        for method in ("encode_batch", "encode_batch_fast"):
            t, raw_tokens = raw(texts, tokenizer, batch, method)
            best[method] = min(best[method], t)
        t, stage_tokens, docs = stage(inp, tokenizer, work / "shards")
        best["stage"] = min(best["stage"], t)
    # the stage appends one end-of-document token per document
    assert stage_tokens == raw_tokens + docs, (stage_tokens, raw_tokens, docs)
    print(
        f"tokenize: {docs} documents, {mb:.1f} MB, {raw_tokens} tokens (+{docs} EOD), "
        f"best of {args.rounds}"
    )
    for name, t in best.items():
        print(
            f"  {name:20s} {t:6.2f} s  {raw_tokens / t / 1e6:5.2f} M tokens/s  {mb / t:5.1f} MB/s"
        )
    for method in ("encode_batch", "encode_batch_fast"):
        print(f"  ratio stage / raw {method}: {best[method] / best['stage']:.2f}x")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
