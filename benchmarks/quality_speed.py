"""Quality stage: ours vs the previous implementation (jieba.lcut + datatrove's Gopher filters).

    .venv/bin/python benchmarks/quality_speed.py [--docs-per-domain 800] [--rounds 3] [--work DIR]

Corpus: the bilingual Debian sample corpus through read -> normalize -> langid. Each round runs
the quality stage once per variant, each in a fresh process (executor.workers=1), alternating
so both see the same machine load; the figure is the best CPU time of each. Baseline = the
same stage with `jieba.lcut` for Chinese words, a 4-entry word memo and datatrove's
GopherRepetitionFilter / GopherQualityFilter (what the stage ran before data_prep.fast_filters
and JiebaWords). The outputs must be byte-identical (same documents kept, same reasons).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import json, sys, time
variant, inp, out = sys.argv[1:4]
import jieba
from data_prep import run_stage, wordtok, fast_filters
if variant == "baseline":
    from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
    from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter
    wordtok.jieba_words = lambda t, spaces=True: [
        w for w in jieba.lcut(t) if spaces or not w.isspace()
    ]
    wordtok._Memo.__init__.__defaults__ = (4,)
    fast_filters.FastGopherRepetition = GopherRepetitionFilter
    fast_filters.FastGopherQuality = GopherQualityFilter
cpu, wall = time.process_time(), time.perf_counter()
s = run_stage("quality", [f"input={inp}", f"output={out}", "progress=false", "force=true",
                          "executor.workers=1"])
print(json.dumps({"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                  "docs": s["documents_in"], "kept": s["documents_kept"], "removed": s["removed"]}))
"""


def prepare(work: Path, docs_per_domain: int) -> Path:
    from data_prep import run_stage
    from data_prep.sample_corpus import build

    if not (work / "corpus").exists():
        build(work / "corpus", docs_per_domain=docs_per_domain)
    prev = str(work / "corpus")
    for stage in ("read", "normalize", "langid"):
        run_stage(stage, [f"input={prev}", f"output={work / stage}", "progress=false"])
        prev = str(work / stage)
    return Path(prev)


def run_variant(variant: str, inp: Path, out: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", RUN, variant, str(inp), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def same_outputs(a: Path, b: Path) -> bool:
    files = sorted(p.name for p in a.glob("*.jsonl.gz"))
    return files == sorted(p.name for p in b.glob("*.jsonl.gz")) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs-per-domain", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="quality_speed_"))
    inp = prepare(work, args.docs_per_domain)
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for variant in ("baseline", "ours"):
            r = run_variant(variant, inp, work / variant)
            if variant not in best or r["cpu_s"] < best[variant]["cpu_s"]:
                best[variant] = r
    base, ours = best["baseline"], best["ours"]
    assert base["removed"] == ours["removed"] and base["kept"] == ours["kept"]
    identical = same_outputs(work / "baseline", work / "ours")
    print(f"quality stage, {ours['docs']} documents (zh+en), best of {args.rounds}, 1 process")
    for name, r in (("baseline (jieba.lcut + datatrove)", base), ("ours", ours)):
        print(f"  {name:34s} {r['cpu_s']:7.2f} CPU s  {r['docs'] / r['cpu_s']:7.1f} docs/s")
    print(
        f"  speed-up: {base['cpu_s'] / ours['cpu_s']:.2f}x; kept {ours['kept']} in both; "
        f"outputs byte-identical: {identical}"
    )


if __name__ == "__main__":
    main()
