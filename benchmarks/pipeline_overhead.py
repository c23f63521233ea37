"""Orchestration overhead of the pipeline (Ray tasks, markers, MLflow) on the data stages.

    python benchmarks/pipeline_overhead.py [--docs-per-domain 200] [--workdir /tmp/pipeline_bench]

Side by side on the same sample corpus, one CPU each (so neither side gains from parallelism):
  baseline: every data stage of conf/pipeline.yaml called directly, in order, in this process
            (`data_prep.run_stage(stage, overrides)`, the same overrides the pipeline renders);
  pipeline: `run_pipeline` on the same DAG (Ray tasks + fingerprints + markers + MLflow).
Also times a no-op rerun of the finished run (in-process, and as `python -m pipeline`).
Prints seconds per side and the ratio pipeline / baseline (target <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def compose(run_dir: Path, docs: int, uri: str, *extra: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_schema

    register_schema()
    overrides = [
        f"run_dir={run_dir}",
        "live=false",
        "ray.num_cpus=1",
        "stages.train.enabled=false",
        f"stages.sample_corpus.options.docs_per_domain={docs}",
        f"tracking.uri={uri}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose(config_name="pipeline", overrides=overrides))


def baseline(cfg) -> float:
    """The same stage calls, in topological order, without the pipeline."""
    from data_prep import run_stage
    from data_prep.sample_corpus import build
    from pipeline.dag import build_graph

    graph = build_graph(cfg)
    start = time.perf_counter()
    for node in graph.nodes.values():
        node.output.mkdir(parents=True, exist_ok=True)
        if node.kind.name == "sample_corpus":
            build(node.output, node.options.docs_per_domain, node.options.seed)
        else:
            run_stage(node.options.stage or node.name, list(node.overrides))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs-per-domain", type=int, default=200)
    ap.add_argument("--workdir", default="/tmp/pipeline_bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    uri = f"sqlite:///{work}/mlflow.db"
    import ray
    from mlflow import MlflowClient

    from pipeline import run_pipeline

    MlflowClient(uri).search_experiments()  # create the store's tables once (a one-time cost)
    t_direct = baseline(compose(work / "direct", args.docs_per_domain, uri))
    t0 = time.perf_counter()
    ray.init(
        include_dashboard=False, num_cpus=1, object_store_memory=80 * 2**20, configure_logging=False
    )
    t_ray = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_pipeline(compose(work / "untracked", args.docs_per_domain, uri, "tracking.enabled=false"))
    t_untracked = time.perf_counter() - t0
    cfg = compose(work / "pipeline", args.docs_per_domain, uri)
    t0 = time.perf_counter()
    result = run_pipeline(cfg)
    t_pipe = time.perf_counter() - t0
    ray.shutdown()
    t0 = time.perf_counter()
    again = run_pipeline(cfg)
    t_noop = time.perf_counter() - t0
    if again.ran:  # e.g. a stage's source changed while the benchmark ran
        print(f"warning: the rerun was not a no-op, it ran {again.ran}")
    cli = [
        sys.executable,
        "-m",
        "pipeline",
        f"run_dir={cfg.run_dir}",
        "live=false",
        "ray.num_cpus=1",
        "stages.train.enabled=false",
        f"stages.sample_corpus.options.docs_per_domain={args.docs_per_domain}",
        f"tracking.uri={uri}",
    ]
    t0 = time.perf_counter()
    subprocess.run(cli, cwd=REPO, check=True, capture_output=True)
    t_noop_cli = time.perf_counter() - t0
    n = len(result.plan)
    print(f"data stages: {n} ({args.docs_per_domain} docs per source), one CPU each side")
    print(f"baseline (direct data_prep.run_stage calls): {t_direct:8.2f} s")
    print(
        f"pipeline (Ray tasks + markers + MLflow):     {t_pipe:8.2f} s  (+ Ray start {t_ray:.2f} s)"
    )
    print(
        f"ratio pipeline / baseline:                   {t_pipe / t_direct:8.3f}  (target <= 1.05)"
    )
    print(
        f"pipeline without MLflow (tracking off):      {t_untracked:8.2f} s  "
        f"(ratio {t_untracked / t_direct:.3f})"
    )
    print(f"no-op rerun, in process:                     {t_noop:8.2f} s  (Ray not started)")
    print(
        f"no-op rerun, python -m pipeline:             {t_noop_cli:8.2f} s  "
        "(target < 2 s + Ray start)"
    )


if __name__ == "__main__":
    main()
