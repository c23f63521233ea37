"""GRPO's margin over the cold-start SFT checkpoint, over seeds, from a finished r1 run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/r1_seeds.py --run-dir runs/r1 \\
        [--seeds 1234,1,2] [PIPELINE_OVERRIDES...]

Takes the recipe's `grpo1` and `acc_grpo1` stages exactly as the run resolved them (conf/r1.yaml
plus the given overrides, e.g. `vars.grpo_steps=60`), reruns GRPO from the run's `sft`
checkpoint with `train.seed=S` for each seed into `run_dir/seeds/grpo1-S`, and scores each
with the same held-out accuracy stage. Baseline: the run's `acc_sft` accuracy (the checkpoint
every seed starts from). Prints one line per seed (accuracy, margin, format, KL, wall time) and
a final JSON line: margin mean and standard deviation, min/max, and the ratio GRPO / SFT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="a finished `--config-name r1` run")
    p.add_argument("--seeds", default="1234,1,2", help="GRPO train.seed values")
    p.add_argument("overrides", nargs="*", help="the run's pipeline overrides (vars.* ...)")
    return p.parse_args()


def _stage_overrides(run_dir: Path, overrides: list[str]) -> dict[str, list[str]]:
    """Rendered overrides of the grpo1 and acc_grpo1 stages, as the pipeline resolves them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_schema
    from pipeline.dag import build_graph
    from pipeline.engine import load_plugins

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(
            compose(config_name="r1", overrides=[f"run_dir={run_dir}", *overrides])
        )
    load_plugins(cfg.plugins)
    graph = build_graph(cfg)
    return {k: list(graph.nodes[k].overrides) for k in ("grpo1", "acc_grpo1")}


def _run(module: str, args: list[str]) -> str:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def _replace(overrides: list[str], **values: str) -> list[str]:
    """`overrides` with the keys in `values` set to them (dots spelled as __)."""
    keys = {k.replace("__", "."): v for k, v in values.items()}
    kept = [o for o in overrides if o.split("=", 1)[0] not in keys]
    return [*kept, *(f"{k}={v}" for k, v in keys.items())]


def main() -> None:
    a = _args()
    run_dir = Path(a.run_dir).resolve()
    marker = json.loads((run_dir / "acc_sft" / ".complete.json").read_text())
    base = marker["stats"]["accuracy"]
    stages = _stage_overrides(run_dir, a.overrides)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        out = run_dir / "seeds" / f"grpo1-{seed}"
        start = time.perf_counter()
        grpo = _replace(
            stages["grpo1"],
            checkpoint__dir=str(out / "checkpoints"),
            train__seed=str(seed),
            logging__mlflow="false",
        )
        summary = json.loads(_run("posttrain.grpo", grpo))
        acc_args = _replace(
            stages["acc_grpo1"], checkpoint=str(out / "checkpoints"), out=str(out / "acc.json")
        )
        acc = json.loads(_run("posttrain.accuracy", acc_args))
        row = {
            "seed": seed,
            "accuracy": acc["accuracy"],
            "margin": round(acc["accuracy"] - base, 4),
            "format": acc["format"],
            "kl": summary["kl"],
            "wall_s": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    margins = [r["margin"] for r in rows]
    result = {
        "sft_accuracy": base,
        "grpo_accuracy_mean": round(statistics.mean(r["accuracy"] for r in rows), 4),
        "margin_mean": round(statistics.mean(margins), 4),
        "margin_std": round(statistics.stdev(margins), 4) if len(margins) > 1 else 0.0,
        "margin_min": min(margins),
        "margin_max": max(margins),
        "grpo_vs_sft": round(statistics.mean(r["accuracy"] for r in rows) / base, 3)
        if base
        else None,
        "seeds": [r["seed"] for r in rows],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
