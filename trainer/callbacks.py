"""Metric callbacks: the loop calls them, and knows nothing of consoles or MLflow.

Only rank 0 gets callbacks (`build_callbacks` returns [] elsewhere). Metric names: loss,
lm_loss, mtp_loss, load_balancing_loss, expert_share/<i>, expert_imbalance_max_over_mean,
grad_norm, lr, tokens_per_s, mfu, step_time_s; valid_loss from validation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any

from trainer import attempts, contract
from trainer.config.trainer import LoggingConfig, TrainerConfig


class Callback:
    """Hooks of a training run (all optional)."""

    def on_train_start(self, cfg: TrainerConfig, info: dict[str, Any]) -> None: ...

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, valid_loss: float) -> None: ...

    def on_straggler(self, step: int, line: str) -> None:
        """A straggler report found a rank slower than `resilience.straggler_ratio`."""

    def on_train_end(self, summary: dict[str, Any]) -> None: ...

    def on_stop(self, step: int, reason: str) -> None:
        """The run stops early to be resumed later (checkpoint saved; no summary)."""


class ConsoleCallback(Callback):
    """One rich-formatted line per logged step."""

    KEYS = (
        "loss",
        "lm_loss",
        "mtp_loss",
        "load_balancing_loss",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "mfu",
        "expert_imbalance_max_over_mean",
    )

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)  # no hard wraps in job logs

    def on_train_start(self, cfg: TrainerConfig, info: dict[str, Any]) -> None:
        for key, value in info.items():
            self.console.print(f"[bold]{key}[/bold]: {value}")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        parts = [f"{k}={metrics[k]:.4g}" for k in self.KEYS if k in metrics]
        self.console.print(f"[cyan]step {step}[/cyan] " + " ".join(parts))

    def on_eval(self, step: int, valid_loss: float) -> None:
        self.console.print(f"[green]step {step} valid_loss={valid_loss:.4f}[/green]")

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.console.print(f"[bold green]done[/bold green] {summary}")


class ProgressCallback(Callback):
    """One JSON line per logged step in the file `$PRETRAIN_PROGRESS_FILE` names (the program
    that runs the trainer reads it with trainer.contract.read_progress)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.time()}
        record.update({k: metrics[k] for k in ("tokens_per_s", "loss") if k in metrics})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def tracking_uri(cfg: LoggingConfig) -> str:
    """Config, else env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


class MLflowCallback(Callback):
    """Logs the resolved config as params and every metric per step to MLflow.

    Uses the run in env MLFLOW_RUN_ID when set (a pipeline's stage run), else `resume_run_id`
    (the run an interrupted attempt logged to), else starts one in `experiment`; tracking URI
    from config, env MLFLOW_TRACKING_URI, or sqlite:///mlflow.db.
    """

    def __init__(self, cfg: LoggingConfig, resume_run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri(cfg))
        run_id = os.environ.get("MLFLOW_RUN_ID") or resume_run_id
        if not os.environ.get("MLFLOW_RUN_ID"):
            mlflow.set_experiment(cfg.experiment)
        try:
            self.run = mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException as err:
            if run_id != resume_run_id:
                raise
            print(f"warning: MLflow run {run_id} not resumed ({str(err).splitlines()[0]})")
            self.run = mlflow.start_run()

    def on_train_start(self, cfg: TrainerConfig, info: dict[str, Any]) -> None:
        self._log_attempts()
        params = _flatten("", asdict(cfg), {})
        try:
            self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        except self.mlflow.exceptions.MlflowException as err:
            # A resumed run (or the pipeline's stage run) may already hold other values.
            print(f"warning: MLflow params not logged: {str(err).splitlines()[0]}")

    def _log_attempts(self) -> None:
        """This attempt's number, the earlier ones' causes (tags, `attempts.json` table) and
        the restart count; records this run in the launch layer's ledger."""
        ledger, torchrun = attempts.read(), attempts.torchrun_restarts()
        ended = ledger.get("attempts", [])
        run_id = self.run.info.run_id
        attempts.record_run(self.mlflow.get_tracking_uri(), run_id)
        self.mlflow.set_tag("attempt", str(len(ended) + torchrun + 1))
        for a in ended:
            self.mlflow.set_tag(
                f"attempt.{a['attempt']}", f"{a['cause']}: {a['detail']} ({a['action']})"[:5000]
            )
        if torchrun:
            self.mlflow.set_tag(
                f"attempt.torchrun_restart.{torchrun}",
                "torchrun restarted the workers after a failure",
            )
        restarts = sum(a["action"] == "restart" for a in ended) + torchrun
        requeues = sum(a["action"] == "requeue" for a in ended)
        self.mlflow.log_metrics({"restarts": restarts, "requeues": requeues})
        if ended:
            self.mlflow.log_table(attempts.table(ledger), artifact_file="attempts.json")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Queued (MLflow's async logging): a V3 step has ~260 keys; the step does not wait."""
        clean = {k.replace("/", "."): float(v) for k, v in metrics.items()}
        self.mlflow.log_metrics(clean, step=step, synchronous=False)

    def on_straggler(self, step: int, line: str) -> None:
        self.mlflow.set_tag("straggler", line[:5000])

    def on_eval(self, step: int, valid_loss: float) -> None:
        self.mlflow.log_metric("valid_loss", valid_loss, step=step)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.mlflow.log_dict(summary, "summary.json")
        self.mlflow.flush_async_logging()
        self.mlflow.end_run()

    def on_stop(self, step: int, reason: str) -> None:
        self.mlflow.set_tag("trainer.stopped", reason)
        self.mlflow.flush_async_logging()
        self.mlflow.end_run(status="KILLED")


def build_callbacks(
    cfg: LoggingConfig, rank: int, resume_run_id: str | None = None
) -> list[Callback]:
    """Callbacks for this rank: console, MLflow and/or the progress file on rank 0, none
    elsewhere."""
    if rank != 0:
        return []
    callbacks: list[Callback] = []
    if cfg.console:
        callbacks.append(ConsoleCallback())
    if cfg.mlflow:
        callbacks.append(MLflowCallback(cfg, resume_run_id))
    if os.environ.get(contract.PROGRESS_ENV):
        callbacks.append(ProgressCallback(os.environ[contract.PROGRESS_ENV]))
    return callbacks


def mlflow_run_id(callbacks: list[Callback]) -> str | None:
    """The MLflow run the callbacks log to (None without an MLflow callback)."""
    found = [cb.run.info.run_id for cb in callbacks if isinstance(cb, MLflowCallback)]
    return found[0] if found else None
