"""Resumable Ray DAG of data_prep and trainer stages with MLflow lineage (`python -m pipeline`)."""

from pipeline.engine import PipelineError, RunResult, run_pipeline
from pipeline.registry import TaskContext, register_kind

__all__ = ["PipelineError", "RunResult", "TaskContext", "register_kind", "run_pipeline"]
