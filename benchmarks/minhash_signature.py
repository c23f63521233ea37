"""MinHash signature step: our FastMinhashSignature vs datatrove's MinhashDedupSignature.

    .venv/bin/python benchmarks/minhash_signature.py [--docs 300] [--pairs 150] [--before REV]

Corpus (templated real text, no network): troff sources of the man pages under /usr/share/man
(man1-8) and Python files of the installed packages, half each, at most 50 KB a document;
plus datatrove's lorem-ipsum test text. Default MinhashConfig (14 buckets x 8 hashes, 5-grams,
64-bit xxhash, seed 1). `--before REV` adds a column for FastMinhashSignature as committed at
REV (e.g. the fast path before the fix), loaded with `git show REV:data_prep/dedup.py`.

1. Speed: the whole step (`run()`: shingles, signatures, writing and sorting the bucket files)
   on N and 10 N documents, CPU seconds of this process; ratio = datatrove s / ours s.
2. Estimate error: true Jaccard of the shingle sets vs the share of equal signature hashes, for
   pairs built as in datatrove's test_signatures (first X% of the text kept, the rest reversed)
   at X = 25/45/65/85%: lorem ipsum at seed 1 (the pair datatrove's test checks) and averaged
   over 200 permutation seeds; man pages and code averaged over --pairs documents at seed 1.
3. LSH recall of 1%, 3%, 5% word-edited copies (mixed zh/en documents: CJK characters and
   ASCII words edited alike) (a pair is a candidate when one bucket of 8
   hashes agrees fully) and the false-positive rate: the share of random pairs of documents of
   the same kind with true Jaccard < 0.5 that become candidates (man pages and code share
   boilerplate; "lorem remixes" are 30 sentences drawn with replacement from the lorem text).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import random
import re
import subprocess
import sys
import tempfile
import time
from math import floor
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from loguru import logger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.dedup import FastMinhashSignature  # noqa: E402
from data_prep.sample_corpus import CorpusError, en_docs, fetch_packages, zh_man  # noqa: E402
from data_prep.scripts import CJK  # noqa: E402

XS = (0.25, 0.45, 0.65, 0.85)
MAX_CHARS = 50_000


def lorem_ipsum() -> str:
    path = ROOT / "tests" / "data_prep" / "test_datatrove_minhash.py"
    src = path.read_text(encoding="utf-8")
    start = src.index('lorem_ipsum = """') + len('lorem_ipsum = """')
    return src[start : src.index('"""', start)]


def corpus(n: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    man = sorted(Path("/usr/share/man").glob("man[1-8]/*.gz"))
    site = Path(np.__file__).resolve().parents[1]
    code = sorted(p for p in site.rglob("*.py") if p.stat().st_size > 2000)
    out = {
        "man": [gzip.open(p, "rt", errors="replace").read() for p in rng.sample(man, n)]
        if len(man) >= n
        else [],
        "code": [p.read_text(errors="replace") for p in rng.sample(code, n)],
    }
    return {k: [t[:MAX_CHARS] for t in v] for k, v in out.items()}


def load_before(rev: str):
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:data_prep/dedup.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "dedup_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("dedup_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FastMinhashSignature


def steps(folder: Path, cfg: MinhashConfig, before) -> dict:
    out = {
        "ours": FastMinhashSignature(str(folder / "ours"), cfg, char_n_grams=5),
        "datatrove": MinhashDedupSignature(str(folder / "dt"), config=cfg),
    }
    if before is not None:
        out["before"] = before(str(folder / "before"), cfg, char_n_grams=5)
    return out


def sim(a, b) -> float:
    return float(np.mean(np.array(a) == np.array(b)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.ravel().tolist()), set(b.ravel().tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def reversed_tail(text: str, x: float) -> str:
    end = floor(len(text) * x)
    return text[:end] + text[len(text) - 1 : end : -1]


def edit(text: str, frac: float, rng: random.Random) -> str:
    words = text.split(" ")
    real = [i for i, w in enumerate(words) if w.strip()]  # not the empty runs of indentation
    for i in rng.sample(real, max(1, round(len(real) * frac))):
        words[i] = rng.choice(("alpha", "beta", "gamma", "delta", "omega")) + str(rng.randrange(99))
    return " ".join(words)


def edit_mixed(text: str, frac: float, rng: random.Random) -> str:
    """Replace `frac` of the units of a mixed document: CJK characters and ASCII words alike."""
    toks = re.findall(r"[\u3400-\u9fff]|[A-Za-z0-9]+|\s+|.", text)
    units = [i for i, t in enumerate(toks) if CJK.match(t) or t[0].isascii() and t[0].isalnum()]
    for i in rng.sample(units, max(1, round(frac * len(units)))):
        toks[i] = rng.choice("的一是在不了有和人这") if CJK.match(toks[i]) else "zqxw"
    return "".join(toks)


def mixed_docs(n: int) -> list[str]:
    """Chinese manual pages (Debian manpages-zh) behind 40 lines of English commands and code
    (Python's docs): the mix of Chinese technical text, English for its first 2000 characters."""
    try:
        root = fetch_packages()
    except CorpusError as err:
        print(f"(no mixed zh/en documents: {err})")
        return []
    rng = random.Random(11)
    lines = [
        ln
        for _, t in en_docs(root)
        for ln in t.splitlines()
        if 20 < len(ln) < 100 and ln.startswith(" ")
    ]
    zh = [t for _, t in zh_man(root) if len(CJK.findall(t)) >= 1500]
    return ["\n".join(rng.sample(lines, 40)) + "\n" + t for t in rng.sample(zh, min(n, len(zh)))]


def bench_speed(texts: list[str], n: int, cfg: MinhashConfig, before, scale: int) -> None:
    """`texts`: scale * n distinct documents; the first n are the N run."""
    print(
        f"\n1. Signature step, whole run(), CPU s (N = {n} documents, mean "
        f"{np.mean([len(t) for t in texts[:n]]):.0f} chars; {scale}N = {len(texts)} distinct ones)"
    )
    rows = {}
    for size in (n, len(texts)):
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts[:size])]
        with tempfile.TemporaryDirectory() as tmp:
            for name, step in steps(Path(tmp), cfg, before).items():
                step.get_shingles(texts[0])  # load the tokenizer outside the timing
                t0 = time.process_time()
                step.run(iter(docs), rank=0)
                rows.setdefault(name, []).append(time.process_time() - t0)
    print(f"{'':10} {'N s':>8} {'docs/s':>8} {f'{scale}N s':>8} {'docs/s':>8} {f'{scale}N/N':>6}")
    for name, (t1, t10) in rows.items():
        print(
            f"{name:10} {t1:8.2f} {n / t1:8.0f} {t10:8.2f} {scale * n / t10:8.0f} {t10 / t1:6.1f}"
        )
    dt = rows["datatrove"]
    print(
        f"ratio datatrove/ours: {dt[0] / rows['ours'][0]:.2f}x at N, "
        f"{dt[1] / rows['ours'][1]:.2f}x at {scale}N"
    )
    if "before" in rows:
        print(f"ratio datatrove/before: {dt[0] / rows['before'][0]:.2f}x at N")


def estimates(step, texts: list[str]) -> np.ndarray:
    """(len(XS), 2): mean true Jaccard and mean estimate over texts."""
    out = np.zeros((len(XS), 2))
    for text in texts:
        s0 = step.get_shingles(text)
        sig0 = step.get_signature(s0)
        for k, x in enumerate(XS):
            s1 = step.get_shingles(reversed_tail(text, x))
            out[k] += (jaccard(s0, s1), sim(sig0, step.get_signature(s1)))
    return out / len(texts)


def bench_estimates(data: dict[str, list[str]], cfg: MinhashConfig, before, pairs: int) -> None:
    print("\n2. Estimate vs true Jaccard, pairs built as in datatrove's test_signatures")
    with tempfile.TemporaryDirectory() as tmp:
        st = steps(Path(tmp), cfg, before)
        names = list(st)
        head = "".join(f" {n:>9} {'err':>6}" for n in names)
        lorem = lorem_ipsum()
        sets = {"lorem, seed 1": [lorem]} | {
            f"{k}, mean of {min(pairs, len(v))}": v[:pairs] for k, v in data.items() if v
        }
        for label, texts in sets.items():
            print(f"\n{label:24} {'X':>4} {'true J':>7}{head}")
            res = {n: estimates(s, texts) for n, s in st.items()}
            for k, x in enumerate(XS):
                cells = "".join(
                    f" {res[n][k, 1]:9.3f} {res[n][k, 1] - res[n][k, 0]:+6.3f}" for n in names
                )
                print(f"{'':24} {x:4.2f} {res['datatrove'][k, 0]:7.3f}{cells}")
        # lorem over many seeds: the shingle values stay, the permutations change
        print(f"\n{'lorem, mean of 200 seeds':24} {'X':>4} {'true J':>7}{head}")
        acc = {n: np.zeros((len(XS), 2)) for n in names}
        for seed in range(200):
            c = MinhashConfig(seed=seed)
            for n, s in steps(Path(tmp), c, before).items():
                acc[n] += estimates(s, [lorem]) / 200
        for k, x in enumerate(XS):
            cells = "".join(
                f" {acc[n][k, 1]:9.3f} {acc[n][k, 1] - acc[n][k, 0]:+6.3f}" for n in names
            )
            print(f"{'':24} {x:4.2f} {acc['datatrove'][k, 0]:7.3f}{cells}")


def band_hit(a, b) -> bool:
    return any(x == y for x, y in zip(a, b, strict=True))


def bench_recall(data: dict[str, list[str]], cfg: MinhashConfig, before, pairs: int) -> None:
    print("\n3. LSH candidates (one of 14 buckets of 8 hashes equal)")
    rng = random.Random(5)
    sentences = [s.strip() + "." for s in lorem_ipsum().split(".") if s.strip()]
    lorem_docs = [" ".join(rng.choices(sentences, k=30)) for _ in range(pairs)]
    sets = {k: v[:pairs] for k, v in data.items() if v} | {"lorem remixes": lorem_docs}
    sets["mixed zh/en"] = mixed_docs(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        st = steps(Path(tmp), cfg, before)
        print(f"{'':14} {'':10} {'1% recall':>9} {'3% recall':>9} {'5% recall':>9} {'FP rate':>8}")
        for label, texts in sets.items():
            mixed = label == "mixed zh/en"
            texts = [t for t in texts if mixed or len(t.split()) >= 100]
            if len(texts) < 2:
                continue
            editor = edit_mixed if mixed else edit
            edited = {
                f: [editor(t, f, random.Random(i)) for i, t in enumerate(texts)]
                for f in (0.01, 0.03, 0.05)
            }
            others = [tuple(rng.sample(range(len(texts)), 2)) for _ in range(2000)]
            ref = st["ours" if mixed else "datatrove"]  # datatrove keeps zh sentences as words
            shingles = [ref.get_shingles(t) for t in texts]
            # a false positive: a candidate pair whose true Jaccard is under 0.5
            others = [(i, j) for i, j in others if jaccard(shingles[i], shingles[j]) < 0.5]
            for name, step in st.items():
                sig = [step.get_signature(step.get_shingles(t)) for t in texts]
                rec = []
                for ed in edited.values():
                    hits = [
                        band_hit(s, step.get_signature(step.get_shingles(e)))
                        for s, e in zip(sig, ed, strict=True)
                    ]
                    rec.append(np.mean(hits))
                fp = np.mean([band_hit(sig[i], sig[j]) for i, j in others])
                print(f"{label:14} {name:10} {rec[0]:9.3f} {rec[1]:9.3f} {rec[2]:9.3f} {fp:8.4f}")
            print(f"{'':14} ({len(texts)} docs, {len(others)} random pairs with true J < 0.5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=300, help="N for the speed test")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=150, help="documents per kind for 2. and 3.")
    ap.add_argument("--before", help="git revision whose FastMinhashSignature to add as a column")
    ap.add_argument(
        "--skip", default="", help="comma list of sections to skip: speed,estimate,recall"
    )
    args = ap.parse_args()
    logger.disable("datatrove")
    cfg = MinhashConfig()
    before = load_before(args.before) if args.before else None
    data = corpus(max(args.scale * args.docs // 2, args.pairs))
    if not data["man"]:
        print("(no man pages under /usr/share/man: code files only)")
    skip = set(args.skip.split(","))
    if "speed" not in skip:
        # interleaved man/code, so that the first N are half of each
        texts = [
            t for pair in zip(data["man"] or data["code"], data["code"], strict=True) for t in pair
        ]
        bench_speed(texts[: args.scale * args.docs], args.docs, cfg, before, args.scale)
    if "estimate" not in skip:
        bench_estimates(data, cfg, before, args.pairs)
    if "recall" not in skip:
        bench_recall(data, cfg, before, args.pairs)


if __name__ == "__main__":
    main()
