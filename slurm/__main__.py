"""Render or submit a training job for a cluster in conf/cluster/.

    python -m slurm render cluster=slurm_h100 cluster.nodes=128 -- \\
        model=deepseek_v3 parallel=v3_h100_1024 precision=fp8_blockwise
    python -m slurm submit cluster=slurm_dev run_dir=runs/try1 -- train.steps=5 data.manifest=...
    python -m slurm submit cluster=slurm_dev --cfg job        # print the resolved config
    python -m slurm status runs/try1 [--lines 20]             # jobs, states, log tails, MLflow

Arguments before `--` are Hydra overrides of conf/slurm.yaml (cluster=..., cluster.nodes=4,
run_dir=..., wait=false); arguments after `--` are passed to `python -m trainer`.
`submit` writes <run_dir>/<job_name>.sbatch, submits it (or runs it with bash for
cluster=local), waits and exits non-zero with the log path if the job fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from slurm.app import new_record, submit_job
from slurm.config import CONF_DIR, SlurmAppConfig, TrainJob, register_configs
from slurm.jobs import SlurmError, run_job
from slurm.render import render_sbatch

ACTIONS = ("render", "submit", "status")
_state: dict[str, object] = {}
register_configs()


def _split_argv(argv: list[str]) -> tuple[str, list[str], list[str]]:
    if not argv or argv[0] not in ACTIONS:
        raise ValueError(
            f"usage: python -m slurm {{{'|'.join(ACTIONS)}}} [overrides] -- [trainer overrides]"
        )
    rest = argv[1:]
    if "--" in rest:
        i = rest.index("--")
        return argv[0], rest[:i], rest[i + 1 :]
    return argv[0], rest, []


def _submit(cfg: SlurmAppConfig, job: TrainJob) -> int:
    if not cfg.wait and cfg.cluster.scheduler == "slurm":
        new_record(Path(job.run_dir).absolute())
        sub = submit_job(job, cfg.cluster, config_yaml=OmegaConf.to_yaml(cfg))
        print(f"submitted job {sub.job_id}; script {sub.script}; log {sub.stdout}")
        print(f"status: {sys.executable} -m slurm status {Path(sub.script).parent}")
        return 0
    result = run_job(
        job,
        cfg.cluster,
        poll_s=cfg.poll_s,
        timeout_s=cfg.timeout_s,
        on_submit=lambda job_id, log: print(f"submitted job {job_id}; log {log}", flush=True),
    )
    print(f"job {result.job_id} {result.state} in {result.elapsed_s:.1f} s; log {result.log_path}")
    return 0


# An absolute config path (= ../conf) so that the app also works when called in-process from
# another working directory (Hydra would otherwise look for an importable `conf` package).
@hydra.main(config_path=str(CONF_DIR), config_name="slurm", version_base="1.3")
def _app(dcfg: DictConfig) -> None:
    try:  # inside the task: Hydra would print a traceback for anything that escapes
        cfg: SlurmAppConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        overrides = list(_state["trainer_overrides"])  # type: ignore[call-overload]
        job = TrainJob(overrides=overrides, run_dir=cfg.run_dir)
        if _state["action"] == "render":
            print(render_sbatch(job, cfg.cluster), end="")
        else:
            _state["rc"] = _submit(cfg, job)
    except (ValueError, SlurmError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        _state["rc"] = 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. Bad input and failed jobs print one clear message."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        from slurm.status import main as status_main

        return status_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    saved_argv = sys.argv
    try:
        action, hydra_args, trainer_args = _split_argv(argv)
        _state.update(action=action, trainer_overrides=trainer_args, rc=0)
        if action == "render":  # print only: no output dir, no log file
            hydra_args += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none"]
        sys.argv = [sys.argv[0], *hydra_args]
        _app()
    except (ValueError, SlurmError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
    return int(_state.get("rc", 0))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
