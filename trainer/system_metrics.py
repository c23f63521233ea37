"""System metrics per node into the run's MLflow run, off the training thread.

One process per node (local rank 0) runs MLflow's SystemMetricsMonitor (psutil; pynvml for GPUs
where installed): a background thread samples CPU, memory, disk and network every
`logging.system_metrics_interval_s` and logs them in batches as `system/<host>/*`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from trainer.callbacks import tracking_uri
from trainer.config.trainer import LoggingConfig


@contextlib.contextmanager
def system_metrics(cfg: LoggingConfig, run_id: str | None) -> Iterator[None]:
    """Sample this node while the block runs (no-op off rank 0 of the node or without MLflow)."""
    if not (cfg.mlflow and run_id and cfg.system_metrics_interval_s > 0):
        yield
        return
    if int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))) != 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=cfg.system_metrics_interval_s,
        resume_logging=True,
        node_id=socket.gethostname(),
        tracking_uri=tracking_uri(cfg),
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
