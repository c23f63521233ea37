"""Run the pretraining pipeline DAG on Ray with MLflow tracking.

    python -m pipeline                              # demo: sample corpus -> ... -> tiny V3 model
    python -m pipeline run_dir=runs/exp1 dry_run=true   # show what would run or be skipped, and why
    python -m pipeline ray.address=auto tracking.uri=http://mlflow:5000   # a Ray cluster
        + shared MLflow
    python -m pipeline stages.quality.overrides='[...]'  # any Hydra override of conf/pipeline.yaml
    python -m pipeline --cfg job                    # print the resolved config
    python -m pipeline cluster=slurm cluster.nodes=4 cluster.gpus_per_node=8   # chained Slurm
        jobs (data on a Ray cluster, then training, then a finishing job); dry_run=true prints them
    python -m slurm status runs/demo/slurm          # their states, log tails and MLflow run
    python -m pipeline finalize runs/demo/slurm     # what the finishing job runs: end the MLflow
        runs from the jobs' final states (FINISHED, or FAILED naming the failed job and its log)
    python -m pipeline trash run_dir=runs/exp1 [purge=true]   # earlier outputs moved aside
    python -m pipeline compare runs/exp1 runs/exp2  # eval tables side by side, with differences

Rerunning with the same run_dir skips finished stages and resumes interrupted ones; a stage
that must rerun over finished work moves it aside (run_dir/.trash) after its new config passed
its app's checks. SIGTERM ends the run like Ctrl-C (its MLflow runs KILLED; rerun to resume).
"""

from __future__ import annotations

import json
import signal
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from appconf.strict import UnknownKeyError
from pipeline.config import PipelineConfig, register_schema
from pipeline.engine import PipelineError, PipelinePreempted, RunResult, run_pipeline
from trainer import contract

register_schema()


def _to_config(cfg: DictConfig) -> PipelineConfig:
    from appconf.strict import check_keys

    check_keys(cfg, PipelineConfig, "pipeline")  # UnknownKeyError: a `+key` the schema lacks
    try:
        return OmegaConf.to_object(cfg)
    except Exception as err:  # omegaconf wraps __post_init__ errors in its own types
        raise ValueError(str(err).splitlines()[0]) from None


def print_outcome(result: RunResult, refs: dict[str, str]) -> None:
    """Where the outputs are and how to look at them; with `result:` refs the last line is
    their JSON (pipeline.state.result_values)."""
    print(f"\nPipeline finished: {len(result.ran)} stage(s) ran, outputs in {result.run_dir}")
    for key in result.plan:
        print(f"  {key:28s} {result.run_dir / key}")
    for key in result.plan:  # each training stage, or phase (recipe=...)
        summary = result.run_dir / key / "checkpoints" / contract.SUMMARY_FILE
        if summary.exists():
            _print_training(summary)
    _print_eval(result.run_dir)
    if result.tracking_uri:
        print(f"MLflow parent run: {result.parent_run_id}")
        if result.tracking_uri.startswith(("sqlite:", "/")):
            print(f"Open the MLflow UI:  mlflow ui --backend-store-uri {result.tracking_uri}")
            print("then browse http://127.0.0.1:5000")
    if refs:
        from pipeline.state import result_values

        print(json.dumps(result_values(result.run_dir, refs)), flush=True)


def _print_training(summary) -> None:
    info = json.loads(summary.read_text())
    nan = float("nan")  # no validation (train.eval_interval=0) writes null
    print(f"Training summary ({summary}):")
    if "reward_mean" in info:  # a GRPO stage (posttrain.grpo)
        print(
            f"  steps {info.get('final_step')}, reward {info['reward_mean'] or nan:.3f}, "
            f"accuracy {info.get('accuracy') or 0:.3f}, format {info.get('format') or 0:.3f}, "
            f"KL {info.get('kl') or 0:.4f}, generation {info.get('gen_tokens_per_s') or 0:,.0f} "
            "tokens/s"
        )
        return
    print(
        f"  steps {info.get('final_step')}, validation loss "
        f"{info.get('valid_loss_first') or nan:.3f} -> {info.get('valid_loss_last') or nan:.3f}, "
        f"{info.get('tokens_per_s') or 0:,.0f} tokens/s"
    )


def _print_eval(run_dir) -> None:
    from pipeline.compare import eval_metrics, table

    try:
        metrics = eval_metrics(run_dir)
    except ValueError:
        return  # no eval stage in this pipeline
    print(f"Evaluation (python -m pipeline compare {run_dir} OTHER_RUN_DIR to compare):")
    print("  " + table({run_dir.name: metrics}).replace("\n", "\n  "))


_TERMINATED: list[int] = []


def _terminate(signum: int, frame) -> None:
    """SIGTERM: unwind like Ctrl-C, so the driver stops its stages and ends its MLflow runs
    KILLED (Ray turns an exception raised in its waits into a plain KeyboardInterrupt, hence
    the flag)."""
    _TERMINATED.append(signum)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@hydra.main(config_path="../conf", config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        config = _to_config(cfg)
        result = run_pipeline(config)
    except UnknownKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except PipelinePreempted as err:  # the sbatch script requeues on 75; a rerun resumes
        print(f"stopped for requeue: {err}", file=sys.stderr)
        sys.exit(PipelinePreempted.exit_code)
    except (ValueError, PipelineError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        what = "terminated (SIGTERM)" if _TERMINATED else "interrupted"
        print(f"{what}; rerun the same command to resume", file=sys.stderr)
        sys.exit(143 if _TERMINATED else 130)
    if not cfg.dry_run:
        print_outcome(result, config.result if config.part != "data" else {})


def precheck(argv: list[str]) -> None:
    """An unknown key (`+bogus=1`, `ray.num_cpu=2`): one line, exit 2, before Hydra runs.
    --cfg/--help and other composition errors are left to Hydra."""
    from pathlib import Path

    from appconf.strict import compose_checked

    if any(a.startswith("-") for a in argv):
        return
    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    try:
        compose_checked(conf_dir, "pipeline", argv, PipelineConfig, "pipeline")
    except UnknownKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - bad syntax etc.: Hydra reports it as before
        pass


def run_here(argv: list[str]) -> None:
    """Run the DAG (or its `part`) from this driver on `argv`, the pipeline's own overrides."""
    precheck(argv)
    sys.argv[1:] = argv
    main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["trash"]:
        from pipeline.trash import main as trash_main

        sys.exit(trash_main(sys.argv[2:]))
    if sys.argv[1:2] == ["compare"]:
        from pipeline.compare import main as compare_main

        sys.exit(compare_main(sys.argv[2:]))
    if sys.argv[1:2] == ["finalize"]:  # a submitted run's jobs ended: judge them, end its runs
        from slurm.status import main as status_main

        sys.exit(status_main([*sys.argv[2:], "--finalize"]))
    from slurm.launch import route  # the launch layer: `cluster=...` is routed before Hydra

    route("pipeline", sys.argv[1:], run_here)
