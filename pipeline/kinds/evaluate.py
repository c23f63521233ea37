"""Stage kind `eval`: judge the trained model.

Two apps, each a process of its own, configured by override prefix:
- `bpb.KEY=VALUE` -> `python -m trainer.bpb KEY=VALUE`: held-out bits per byte per domain of the
  train stage's checkpoint (`bpb.checkpoint.dir=...`, `bpb.holdout={deps[remix]}`);
- `harness.KEY=VALUE` -> `python -m evaluation.harness KEY=VALUE output=<stage folder>`:
  lm-evaluation-harness on the exported folder (`harness.hf=...`, `harness.tasks=[...]`).
A part without overrides is skipped. Results are MLflow metrics with stable keys,
`bpb/<domain>` and `eval/<task>/<metric>`, on the stage's run and on the pipeline's parent run
(so MLflow's run comparison shows two pipelines side by side), an `eval_table.json` table
artifact, and `results.json` in the stage folder (what `python -m pipeline compare` reads).

Periodic evaluation while training runs: a second stage of this kind with only
`bpb.watch=true` overrides, `after` the data stages but not `train`, and
`bpb.checkpoint.dir={run_dir}/train/checkpoints`, scores each checkpoint as it appears and logs
`bpb/<domain>` curves (by step) on its run, ending with the training run. Ray starts it beside
training when the cluster has a CPU to spare.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.kinds.app_process import run_app
from pipeline.registry import TaskContext, register_kind

APPS = {"bpb": "trainer.bpb", "harness": "evaluation.harness"}
RESULTS = "results.json"


def split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """`bpb.x=1` -> {"bpb": ["x=1"]}; ValueError for an override of neither app."""
    parts: dict[str, list[str]] = {name: [] for name in APPS}
    for override in overrides:
        prefix, _, rest = override.partition(".")
        if prefix not in APPS or not rest:
            raise ValueError(
                f"eval override {override!r}: start it with bpb. or harness. (the app it is for)"
            )
        parts[prefix].append(rest)
    return parts


def _run_app(module: str, args: list[str], ctx: TaskContext) -> dict[str, Any]:
    """The app's result (watch=true: the last checkpoint's); trainer.bpb watch=true logs its
    curve into the stage's MLflow run."""
    env = {}
    if ctx.mlflow_run_id and ctx.tracking_uri:
        env = {"MLFLOW_RUN_ID": ctx.mlflow_run_id, "MLFLOW_TRACKING_URI": ctx.tracking_uri}
    return run_app(module, args, env)


def metrics_of(bpb: dict | None, harness: dict | None) -> dict[str, float]:
    """The stable metric keys of both apps' results."""
    out: dict[str, float] = {}
    for domain, value in (bpb or {}).get("bpb", {}).items():
        out[f"bpb/{domain}"] = value
    for task, values in (harness or {}).get("results", {}).items():
        for metric, value in values.items():
            if not metric.endswith("_stderr"):
                out[f"eval/{task}/{metric}"] = value
    return out


def format_table(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{'metric':<{width}}  value"]
    lines += [f"{key:<{width}}  {value:.4f}" for key, value in sorted(metrics.items())]
    return "\n".join(lines)


def _log_to_mlflow(ctx: TaskContext, metrics: dict[str, float]) -> None:
    """The table on the stage's run and its parent, the metrics on the parent (the driver logs
    the stage's own from the returned stats)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    parent = client.get_run(ctx.mlflow_run_id).data.tags.get("mlflow.parentRunId")
    table = {"metric": list(metrics), "value": [metrics[k] for k in metrics]}
    client.log_table(ctx.mlflow_run_id, data=table, artifact_file="eval_table.json")
    if parent is None:
        return
    batch = [Metric(k, v, 0, 0) for k, v in metrics.items()]
    for start in range(0, len(batch), 900):
        client.log_batch(parent, metrics=batch[start : start + 900])
    client.log_table(parent, data=table, artifact_file="eval_table.json")


@register_kind("eval", code=("trainer.bpb", "evaluation"), live_run=True)
def eval_stage(ctx: TaskContext) -> dict:
    """Run the configured parts; the metrics (and throughputs) are the stage's stats."""
    parts = split_overrides(ctx.overrides)
    bpb = _run_app(APPS["bpb"], parts["bpb"], ctx) if parts["bpb"] else None
    harness = None
    if parts["harness"]:
        out = ctx.output / "harness"
        harness = _run_app(APPS["harness"], [*parts["harness"], f"output={out}"], ctx)
    metrics = metrics_of(bpb, harness)
    results = {"metrics": metrics, "bpb": bpb, "harness": harness}
    (ctx.output / RESULTS).write_text(json.dumps(results, indent=1) + "\n")
    ctx.echo(f"\n[eval] {ctx.key}:\n{format_table(metrics)}\n")
    if ctx.mlflow_run_id and ctx.tracking_uri:
        _log_to_mlflow(ctx, metrics)
    throughput = {}
    if bpb:
        throughput["bpb_tokens_per_s"] = bpb["tokens_per_s"]
    if harness:
        throughput["harness_items_per_s"] = harness["items_per_s"]
    return {**metrics, **throughput}
