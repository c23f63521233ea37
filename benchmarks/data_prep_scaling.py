"""How the cleaning chain's cost grows with documents: time and peak RSS per stage at N docs.

    .venv/bin/python benchmarks/data_prep_scaling.py --docs 10000 100000 [--tasks 2]
        [--stages read,normalize,langid,quality,exact_dedup,minhash_dedup,pii] [--work DIR]

Corpus (generated, deterministic): each document is 3-8 paragraphs drawn at random from one
language's paragraph pool of the Debian sample corpus (zh man pages and poems, Python docs and
fortunes; ~10^4 paragraphs per language), so documents are distinct but real text; then 5% are
exact copies of earlier documents and 5% are near copies (1% of words / CJK characters
replaced). At least 4 files per task (at most 10,000 documents each), so every task works.

Each stage runs as its own `python -m data_prep` process (executor.tasks = executor.workers =
--tasks); the figures per stage: wall seconds, documents in per second, and the peak RSS of the
largest process of that stage (the driver or a task; the process tree is sampled every 0.1 s).
Linear cost: docs/s flat across sizes; bounded memory: peak RSS flat (it is set by batch sizes
and per-task state, not corpus size).
Also printed: planted copies found (exact_dedup removals vs exact copies planted, minhash_dedup
removals vs near copies planted).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = "read,normalize,langid,quality,exact_dedup,minhash_dedup,pii"
_CJK = re.compile(r"[\u4e00-\u9fff]")
_MEASURE = """
import subprocess, sys, time
import psutil
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
root, peak = psutil.Process(proc.pid), 0
while proc.poll() is None:  # the tasks run under a fork server: sample the whole tree
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        break
    for p in tree:
        try:
            peak = max(peak, p.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    time.sleep(0.1)
print(proc.returncode, time.perf_counter() - start, peak // 1024)
"""


def paragraph_pools(corpus: Path) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {"zh": [], "en": []}
    for f in sorted(corpus.glob("*.jsonl")):
        lang = "zh" if f.stem.startswith("zh") else "en"
        for line in open(f, encoding="utf-8"):
            for para in json.loads(line)["text"].split("\n\n"):
                if len(para.strip()) >= 40:
                    pools[lang].append(para.strip())
    return pools


def _edit(text: str, rng: random.Random) -> str:
    if len(_CJK.findall(text)) > len(text) / 4:
        chars = list(text)
        idx = [i for i, c in enumerate(chars) if _CJK.match(c)]
        for i in rng.sample(idx, max(1, len(idx) // 100)):
            chars[i] = rng.choice("的一是在不了有和人这中大为上个国我以要他时来用们生到作地")
        return "".join(chars)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    return " ".join(words)


def generate(pools: dict[str, list[str]], n: int, out: Path, files: int) -> dict:
    """n documents in `files` files; returns the planted counts."""
    per_file = -(-n // files)
    rng = random.Random(n)
    out.mkdir(parents=True, exist_ok=True)
    docs: list[dict] = []
    planted = {"exact": 0, "near": 0}
    for i in range(n):
        r = rng.random()
        if docs and r < 0.05:
            text, planted["exact"] = rng.choice(docs)["text"], planted["exact"] + 1
        elif docs and r < 0.10:
            text, planted["near"] = _edit(rng.choice(docs)["text"], rng), planted["near"] + 1
        else:
            lang = "zh" if rng.random() < 0.5 else "en"
            text = "\n\n".join(rng.sample(pools[lang], rng.randint(3, 8)))
        docs.append({"id": f"doc/{i}", "text": text})
    for k in range(0, n, per_file):
        with open(out / f"part_{k // per_file:05d}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs[k : k + per_file])
    return planted


def run_stage(stage: str, inp: Path, out: Path, tasks: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "data_prep",
        f"stage={stage}",
        f"input={inp}",
        f"output={out}",
        "progress=false",
        f"executor.tasks={tasks}",
        f"executor.workers={tasks}",
    ]
    res = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True)
    code, wall, rss_kb = res.stdout.strip().splitlines()[-1].split()
    if code != "0":
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {"wall_s": float(wall), "rss_mb": int(rss_kb) / 1024, "stats": stats}


def main() -> None:
    from data_prep.sample_corpus import build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--stages", default=STAGES)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dp_scaling_"))
    if not (work / "corpus").exists():
        build(work / "corpus", docs_per_domain=800)
    pools = paragraph_pools(work / "corpus")
    print(f"paragraph pools: zh {len(pools['zh'])}, en {len(pools['en'])}; tasks {args.tasks}")
    rows = []
    for n in args.docs:
        base = work / f"n{n}"
        t = time.perf_counter()
        # at least 4 files per task so every task works; at most 10,000 documents per file
        planted = generate(pools, n, base / "raw", max(4 * args.tasks, -(-n // 10_000)))
        mb = sum(f.stat().st_size for f in (base / "raw").glob("*.jsonl")) / 1e6
        print(
            f"\n{n} documents ({mb:.0f} MB, generated in {time.perf_counter() - t:.0f} s), "
            f"planted {planted['exact']} exact + {planted['near']} near copies"
        )
        prev, total = base / "raw", 0.0
        for stage in args.stages.split(","):
            r = run_stage(stage, prev, base / stage, args.tasks)
            s = r["stats"]
            total += r["wall_s"]
            rows.append(
                {
                    "docs": n,
                    "stage": stage,
                    "in": s["documents_in"],
                    "wall_s": r["wall_s"],
                    "docs_per_s": s["documents_in"] / r["wall_s"],
                    "rss_mb": r["rss_mb"],
                    "removed": sum(s["removed"].values()),
                }
            )
            x = rows[-1]
            print(
                f"  {stage:14s} in {x['in']:>8d}  {x['wall_s']:7.1f} s  {x['docs_per_s']:7.0f} "
                f"docs/s  peak RSS {x['rss_mb']:6.0f} MB  removed {x['removed']}"
            )
            prev = base / stage
        print(f"  chain: {total:.0f} s, {n / total:.0f} docs/s end to end")
    print(
        "\nscaling per stage vs the smallest size: time per document (x1.00 = linear; start-up"
        " costs make small sizes dearer) and peak RSS (x1.00 = flat)"
    )
    first = {r["stage"]: r for r in rows if r["docs"] == args.docs[0]}
    for r in rows:
        f = first[r["stage"]]
        per_doc = (r["wall_s"] / r["in"]) / (f["wall_s"] / f["in"])
        print(
            f"  {r['docs']:>8d} {r['stage']:14s} s/doc x{per_doc:.2f}  "
            f"RSS x{r['rss_mb'] / f['rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
