"""Held-out bits per byte of a trainer checkpoint, per domain, with our own model.

    python -m trainer.bpb checkpoint.dir=runs/x/train/checkpoints holdout=runs/x/remix \\
        [step=N] [tokenizer=PATH] [max_docs=N] [seq_length=N] [batch_size=8]
    python -m trainer.bpb ... watch=true [poll_s=30] [mlflow_run_id=ID]   # beside a training run

The checkpoint may come from any TP/PP/VPP/EP/DP layout: its weights are read into one
single-process model (trainer.export.load_single), so every layout gives the same number.
`holdout` is a remix stage's output (its `holdout/<domain>/*.jsonl`, never tokenized into
training shards) or such a holdout folder. The tokenizer and end-of-document token come from the
data manifest the run trained on. Prints one JSON line: `{"bpb": {domain: value, "all": value},
"documents": ..., ...}`; bad input is one line, exit 2, before the model is loaded.

`watch=true` evaluates during training without touching it: every complete checkpoint that
appears in `checkpoint.dir` is scored in step order (one JSON line each) until the run has
written its summary.json and every checkpoint is scored. With `mlflow_run_id` (default: the
MLFLOW_RUN_ID environment variable, e.g. the train stage's run) `bpb/<domain>` is logged at the
checkpoint's step, a curve beside the loss. A checkpoint pruned while it is read is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from appconf.cli import QUIET_HYDRA
from trainer.cli import run_one_process
from trainer.export import SourceConfig


@dataclass
class BpbConfig:
    checkpoint: SourceConfig = field(default_factory=SourceConfig)
    holdout: str = MISSING
    """A remix stage's output folder (or its holdout/ folder)."""
    step: int | None = None
    """Checkpoint step (None: the newest complete one)."""
    tokenizer: str | None = None
    """manifest.json or tokenizer.json (None: the manifest the run trained on)."""
    max_docs: int | None = None
    """At most this many documents per domain (None: all)."""
    seq_length: int | None = None
    """Window length (None: the run's data.seq_length, else the model's position limit)."""
    batch_size: int = 8
    watch: bool = False
    """Score each new checkpoint until the training run ends (see above)."""
    poll_s: float = 30.0
    """watch: seconds between looks at checkpoint.dir."""
    mlflow_run_id: str | None = None
    """MLflow run to log `bpb/<domain>` into at each checkpoint's step (None: $MLFLOW_RUN_ID)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (None: $MLFLOW_TRACKING_URI)."""


ConfigStore.instance().store(name="bpb_schema", node=BpbConfig)


def evaluate(cfg: BpbConfig) -> dict[str, Any]:
    """Bits per byte per domain of `cfg`'s checkpoint; returns what the CLI prints."""
    from tokenizers import Tokenizer

    from evaluation.bpb import bits_per_byte, read_holdout
    from trainer.export import find_checkpoint, load_single, saved_model, tokenizer_files
    from trainer.model import lm_logits

    start = time.perf_counter()
    ckpt = find_checkpoint(cfg.checkpoint.dir, cfg.step)
    model_cfg = saved_model(ckpt)
    tok = tokenizer_files(cfg.tokenizer, ckpt, model_cfg.vocab_size)
    domains = read_holdout(cfg.holdout, cfg.max_docs)
    seq_length = (
        cfg.seq_length or ckpt.marker.get("seq_length") or model_cfg.max_position_embeddings
    )
    if seq_length < 1 or cfg.batch_size < 1:
        raise ValueError(f"seq_length={seq_length} and batch_size={cfg.batch_size} must be >= 1")
    tokenizer = Tokenizer.from_file(str(tok.path))
    model = load_single(ckpt, model_cfg)
    scores = bits_per_byte(
        lambda tokens: lm_logits(model, tokens),
        lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
        domains,
        tok.eod_id,
        seq_length,
        cfg.batch_size,
    )
    seconds = time.perf_counter() - start
    total = scores["all"]
    return {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "seq_length": seq_length,
        "bpb": {domain: s.bpb for domain, s in scores.items()},
        "documents": {domain: s.documents for domain, s in scores.items()},
        "bytes": total.bytes,
        "tokens": total.tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(total.tokens / seconds, 1),
    }


def watch(cfg: BpbConfig, emit) -> int:
    """Score every checkpoint of a (running) training run once, in step order; returns how
    many were scored. Ends when the run's summary.json exists and nothing is left to score."""
    from trainer.checkpoint_store import (
        SUMMARY,
        CheckpointDamaged,
        complete_checkpoints,
        read_marker,
    )

    root = Path(cfg.checkpoint.dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"checkpoint.dir={root} is not a folder")
    if not root.exists():
        print(f"[bpb] waiting for {root} (the training run has not saved yet)", flush=True)
    log = _mlflow_logger(cfg)
    scored: set[int] = set()
    while True:
        ended = (root / SUMMARY).exists()  # read before the scan: no checkpoint comes after it
        for ckpt in complete_checkpoints(root) if root.is_dir() else []:
            if ckpt.step in scored:
                continue
            scored.add(ckpt.step)
            try:
                result = evaluate(dataclasses.replace(cfg, step=ckpt.step))
            except (CheckpointDamaged, ValueError) as err:
                time.sleep(1.0)  # a prune (keep_last) deleting it is done by now
                if read_marker(ckpt.path) is not None:
                    raise
                print(f"[bpb] step {ckpt.step} pruned while read, skipped ({err})", flush=True)
                continue
            emit(result)
            log(result)
        if ended:
            return len(scored)
        time.sleep(cfg.poll_s)


def _mlflow_logger(cfg: BpbConfig):
    """`log(result)`: bpb/<domain> at the result's step into the configured MLflow run."""
    run_id = cfg.mlflow_run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return lambda result: None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    client.get_run(run_id)  # a wrong id is an error now, not after the first checkpoint

    def log(result: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(f"bpb/{d}", v, now, result["step"]) for d, v in result["bpb"].items()]
        client.log_batch(run_id, metrics=metrics)

    return log


@hydra.main(config_path=None, config_name="bpb_schema", version_base="1.3")
def main(cfg: DictConfig) -> None:
    def work(config: BpbConfig) -> dict[str, Any] | None:
        if config.watch:
            watch(config, lambda result: print(json.dumps(result), flush=True))
            return None
        return evaluate(config)

    result = run_one_process(cfg, work)
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    sys.argv[1:] = [*sys.argv[1:], *QUIET_HYDRA]
    main()
