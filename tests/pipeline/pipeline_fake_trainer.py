"""A stand-in trainer: `python -m pipeline_fake_trainer checkpoint.dir=D train.steps=N ...`.

Writes one checkpoint per step atomically, resumes from the newest, logs `loss` to the MLflow
run in MLFLOW_RUN_ID and a progress line per step to $PRETRAIN_PROGRESS_FILE (trainer.contract),
writes summary.json at the end (all values deterministic). `dry_run=true`
only checks the config; a bad `train.steps` exits 2 with one `error:` line, as the trainer does.
`checkpoint.init_from=D` (a training phase) starts a fresh run from D's last step: D must hold a
finished run's summary.json; the summary then names D and that step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv)
    ckpt = Path(args["checkpoint.dir"])
    if not args.get("train.steps", "6").isdigit() or int(args.get("train.steps", 6)) < 1:
        print(f"error: train.steps must be >= 1, got {args['train.steps']}", file=sys.stderr)
        return 2  # like the real trainer: bad config is exit 2 and one line
    if args.get("dry_run") == "true":
        print("fake trainer: config ok", flush=True)
        return 0
    steps, sleep_s = int(args.get("train.steps", 6)), float(args.get("sleep_s", 0.0))
    if args.get("fail") == "true":
        print("fake trainer: planted failure", flush=True)
        return 3
    ckpt.mkdir(parents=True, exist_ok=True)
    done = sorted(int(p.stem.split("_")[1]) for p in ckpt.glob("step_*.json"))
    start = done[-1] if done else 0
    init = _init_from(args.get("checkpoint.init_from"))
    if init is None:
        return 2
    print(
        f"fake trainer: {'resumed from step ' + str(start) if start else 'fresh start'}", flush=True
    )
    run = None
    if os.environ.get("MLFLOW_RUN_ID"):
        import mlflow

        run = mlflow.start_run()  # honours MLFLOW_RUN_ID / MLFLOW_TRACKING_URI
    for step in range(start + 1, steps + 1):
        loss = 10.0 / step
        time.sleep(sleep_s)
        tmp = ckpt / f".step_{step}.tmp"
        tmp.write_text(json.dumps({"step": step, "loss": loss}))
        os.replace(tmp, ckpt / f"step_{step:04d}.json")
        if run:
            mlflow.log_metric("loss", loss, step=step)
        print(f"step {step} loss {loss:.4f} tokens_per_s: 1234.0", flush=True)
        if os.environ.get("PRETRAIN_PROGRESS_FILE"):
            with open(os.environ["PRETRAIN_PROGRESS_FILE"], "a") as f:
                f.write(json.dumps({"step": step, "loss": loss, "tokens_per_s": 1234.0 + step}))
                f.write("\n")
    summary = {
        "final_step": steps,
        "train_loss": 10.0 / steps,
        "valid_loss_first": 10.0,
        "valid_loss_last": 10.0 / steps,
        "tokens_per_s": 1234.0,
        "mfu": 0.0,
    }
    (ckpt / "summary.json").write_text(json.dumps({**summary, **init}, sort_keys=True))
    if run:
        mlflow.end_run()
    return 0


def _init_from(source: str | None) -> dict | None:
    """{} without init_from; {"init_from": D, "init_step": N} from a finished run in D; None
    (after an `error:` line) when D holds none."""
    if source is None:
        return {}
    try:
        final = json.loads((Path(source) / "summary.json").read_text())["final_step"]
    except (OSError, ValueError, KeyError):
        print(f"error: checkpoint.init_from={source}: no finished run there", file=sys.stderr)
        return None
    print(f"fake trainer: weights of {source} step {final}", flush=True)
    return {"init_from": source, "init_step": final}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
