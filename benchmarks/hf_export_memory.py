"""Peak memory of HF import/export against model size, beside transformers' own round trip.

    .venv/bin/python benchmarks/hf_export_memory.py [--sizes tiny,120m,1b]

For each size a LLaMA-shaped model with random weights is made and saved by transformers, then:
- ours: `python -m trainer.import_hf` (HF -> our checkpoint) and `python -m trainer.export`
  (checkpoint -> HF), each a process of its own;
- baseline: `AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst)` in a process.
Prints peak memory (PSS of the process tree, sampled every 50 ms with psutil) minus the RSS of
the same process kind on the tiny model (imports, interpreter), divided by the fp32 weight bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, layers, ffn, heads, kv heads, vocab
    "tiny": (64, 2, 128, 4, 2, 512),
    "120m": (768, 12, 2048, 12, 4, 32000),
    "1b": (2048, 16, 5632, 16, 4, 32000),
}
MAKE = """
import sys, torch
from transformers import AutoModelForCausalLM, LlamaConfig
h, layers, ffn, heads, kv, vocab = map(int, sys.argv[2:8])
cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=512)
AutoModelForCausalLM.from_config(cfg).save_pretrained(sys.argv[1])
"""
BASELINE = """
import sys, torch
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).save_pretrained(sys.argv[2])
"""


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in GiB of the process tree, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
            # PSS: forked writer processes share the parent's pages; summed RSS counts them twice
            peak = max(peak, sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    return peak / 2**30, time.perf_counter() - start


def measure(size: str, tmp: Path, tokenizer: Path, shard_mb: int) -> dict:
    src, ours, back, base = (tmp / f"{size}_{n}" for n in ("src", "ours", "back", "base"))
    shape = [str(v) for v in SIZES[size]]
    subprocess.run([sys.executable, "-c", MAKE, str(src), *shape], check=True, cwd=REPO)
    weight_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    py = sys.executable
    imp = peak_rss([py, "-m", "trainer.import_hf", f"source={src}", f"output={ours}"])
    exp = peak_rss(
        [
            py,
            "-m",
            "trainer.export",
            f"checkpoint.dir={ours}",
            f"output={back}",
            f"tokenizer={tokenizer}",
            f"shard_size_mb={shard_mb}",
        ]
    )
    baseline = peak_rss([py, "-c", BASELINE, str(src), str(base)])
    return {
        "size": size,
        "weights_gib": weight_bytes / 2**30,
        "import": imp,
        "export": exp,
        "baseline": baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,120m")
    parser.add_argument("--shard-mb", type=int, default=2048, help="export shard_size_mb")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    sizes = ["tiny", *[s for s in sizes if s != "tiny"]]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sys.path.insert(0, str(REPO))
        from tests.trainer.test_export import write_tokenizer

        tokenizer = write_tokenizer(tmp / "tokenizer.json")
        rows = [measure(s, tmp, tokenizer, args.shard_mb) for s in sizes]
    floor = rows[0]
    print(f"{'size':>6} {'weights':>9} | {'import':>17} {'export':>17} | {'transformers':>17}")
    for r in rows:
        cells = []
        for key in ("import", "export", "baseline"):
            gib, secs = r[key]
            over = (gib - floor[key][0]) / r["weights_gib"] if r["weights_gib"] > 0.01 else 0.0
            cells.append(f"{gib:5.2f}G x{over:4.2f} {secs:4.0f}s")
        print(
            f"{r['size']:>6} {r['weights_gib']:8.3f}G | "
            f"{cells[0]:>17} {cells[1]:>17} | {cells[2]:>17}"
        )
    print("x = (peak PSS - the same step's peak on the tiny model) / fp32 weight bytes")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
