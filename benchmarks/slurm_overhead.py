"""What submitting through Slurm costs: the same command run directly and with `cluster=slurm`.

    bash slurm/dev_cluster.sh start
    python benchmarks/slurm_overhead.py [--steps 30] [--workdir /tmp/slurm_bench]

Side by side on the dev cluster (nothing else should be queued):
  training   baseline: `torchrun --standalone --nproc-per-node 2 -m trainer ...` here;
             slurm:    `python -m trainer ... cluster=slurm cluster.wait=true` (sbatch, srun,
                       torchrun with c10d rendezvous, the USR1 trap, accounting poll);
  data stage baseline: `python -m data_prep stage=read executor=ray` here (a private Ray);
             slurm:    the same with `cluster=slurm cluster.wait=true` (a Ray head started by the
                       job, a wait for the node, the driver, the Ray cluster stopped).
Prints wall seconds per side, the difference and the ratio slurm / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(argv: list[str]) -> float:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def training(work: Path, steps: int) -> tuple[float, float]:
    warnings.filterwarnings("ignore")  # megatron's import-time notes about TE/Apex
    from tests.tiny_corpus import write_tiny_manifest

    manifest = write_tiny_manifest(work)
    common = [
        "model=tiny_v3",
        f"data.manifest={manifest}",
        "data.seq_length=64",
        f"train.steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=0",
    ]
    direct = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "trainer",
        *common,
        f"checkpoint.dir={work / 'direct'}",
    ]
    slurm = [
        sys.executable,
        "-m",
        "trainer",
        *common,
        f"checkpoint.dir={work / 'slurm'}",
        "cluster=slurm",
        "cluster.wait=true",
        "cluster.procs_per_node=2",
    ]
    return timed(direct), timed(slurm)


def data_stage(work: Path, docs: int) -> tuple[float, float]:
    source = work / "docs.jsonl"
    source.write_text(
        "".join(json.dumps({"text": f"Document {i}. " * 80}) + "\n" for i in range(docs))
    )
    base = [sys.executable, "-m", "data_prep", "stage=read", f"input={source}", "executor=ray"]
    direct = timed([*base, f"output={work / 'read_direct'}"])
    slurm = timed([*base, f"output={work / 'read_slurm'}", "cluster=slurm", "cluster.wait=true"])
    return direct, slurm


def report(name: str, direct: float, slurm: float) -> None:
    print(
        f"{name:11s} baseline {direct:7.1f} s   slurm {slurm:7.1f} s   "
        f"+{slurm - direct:5.1f} s   ratio {slurm / direct:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slurm_bench"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    report("training", *training(args.workdir, args.steps))
    report("data stage", *data_stage(args.workdir, args.docs))


if __name__ == "__main__":
    main()
