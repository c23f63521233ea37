"""Step time with the resilience features on vs off, and what an async save costs the loop.

Runs the trainer (tiny DeepSeek-V3-style dense model, 2 ranks DP2 over gloo, torchrun) in
alternating rounds so machine noise hits every variant:
- `off`:  hang watchdog, straggler report and system metrics off (MLflow logging on);
- `on`:   watchdog (1800 s), straggler report every 10 steps, system metrics every 10 s (the
  default); `on_sys1s` the same with system metrics every second;
and times the gaps between consecutive step lines (the loop's wall time per step, logging
and saving included). Then the checkpoint cost: saves every 5 steps, synchronous vs
`checkpoint.async_save`: the gap of a step that saves, and of the steps while a save is in
flight, against a step without a save.

    .venv/bin/python benchmarks/resilience_overhead.py [--steps 40] [--rounds 2] [--seq 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "off": [
        "resilience.hang_timeout_s=0",
        "resilience.straggler_interval=0",
        "logging.system_metrics_interval_s=0",
    ],
    "on": [
        "resilience.hang_timeout_s=1800",
        "resilience.straggler_interval=10",
        "logging.system_metrics_interval_s=10",
    ],
    "on_sys1s": [
        "resilience.hang_timeout_s=1800",
        "resilience.straggler_interval=10",
        "logging.system_metrics_interval_s=1",
    ],
    "sync_save": ["checkpoint.save_interval=5"],
    "async_save": ["checkpoint.save_interval=5", "checkpoint.async_save=true"],
}


def _run(tmp: Path, name: str, steps: int, seq: int, extra: list[str]) -> dict[int, float]:
    """Step -> seconds since the previous step's line (first step: none)."""
    from tests.tiny_corpus import dp2_train_cmd, write_tiny_manifest

    write_tiny_manifest(tmp)
    ck = tmp / f"ck-{name}-{time.monotonic_ns()}"
    cmd = dp2_train_cmd(
        tmp,
        steps,
        "train.global_batch_size=8",
        "train.micro_batch_size=2",
        f"checkpoint.dir={ck}",
        "checkpoint.save_interval_s=0",
        "logging.mlflow=true",
        f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db",
        "logging.experiment=bench",
        *extra,
        seq_length=seq,
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    gaps, last = {}, None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step ") and " loss=" in line:
            now, step = time.monotonic(), int(line.split()[1])
            if last is not None:
                gaps[step] = now - last
            last = now
    if proc.wait() != 0:
        raise SystemExit(f"{name}: trainer failed ({' '.join(cmd[-6:])})")
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    gaps: dict[str, list[dict[int, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, extra in VARIANTS.items():
                gaps[name].append(_run(Path(tmp), name, args.steps, args.seq, extra))
    warm = 3  # the first steps include warm-up

    def steps(name: str, pick) -> list[float]:
        return [g for run in gaps[name] for s, g in run.items() if s > warm and pick(s)]

    off = statistics.median(steps("off", lambda s: True))
    print(f"2 ranks DP2, tiny_dense, seq {args.seq}, {args.steps} steps x {args.rounds} rounds")
    print(f"step time, resilience off : {1000 * off:8.1f} ms (median)")
    for name in ("on", "on_sys1s"):
        on = statistics.median(steps(name, lambda s: True))
        print(
            f"step time, {name:14s} : {1000 * on:8.1f} ms (median); ratio {on / off:.3f} "
            f"(overhead {100 * (on / off - 1):+.1f}%)"
        )
    for name in ("sync_save", "async_save"):
        plain = statistics.median(steps(name, lambda s: s % 5 not in (1, 2)))
        saving = statistics.mean(steps(name, lambda s: s % 5 == 1))  # the gap after a save step
        during = statistics.mean(steps(name, lambda s: s % 5 == 2))  # save in flight (async)
        print(
            f"{name:10s}: step {1000 * plain:7.1f} ms; step that saved {1000 * saving:7.1f} ms "
            f"(x{saving / plain:.2f}); next step {1000 * during:7.1f} ms (x{during / plain:.2f})"
        )


if __name__ == "__main__":
    main()
