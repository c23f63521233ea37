"""Where an app runs: the door `python -m trainer|data_prep|pipeline` passes through first.

The apps describe what runs and know no cluster. Their `__main__` hands the command line here:
the launch overrides (`cluster=NAME`, `cluster.KEY=VALUE`, the pipeline's `data_cluster...`)
are taken out before the app's schema sees them and composed from conf/launch.yaml. With no
cluster, or one whose `scheduler` is `local`, the app runs here on the rest of the command line;
otherwise this module validates the app's config (bad input: one line, exit 2) and submits the
same command as Slurm job(s) that run it in place (`cluster=local`):

- trainer: a training job (torchrun over the allocation), run_dir `checkpoint.dir/slurm`;
- data_prep: a Ray cluster over the allocation with the stage on it (`executor=ray`);
- pipeline: chained jobs (slurm.pipeline_jobs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from slurm.config import CONF_DIR, LaunchConfig, RayJob, TrainJob, register_configs

LAUNCH_KEYS = ("cluster", "data_cluster")
"""Top-level keys this layer owns on an app's command line."""


class LaunchError(ValueError):
    """Bad launch or app input, reported as one line (exit 2)."""


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launch overrides, the app's own arguments), each in the given order."""
    launch, app = [], []
    for arg in argv:
        key = arg.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        (launch if not arg.startswith("-") and key in LAUNCH_KEYS else app).append(arg)
    return launch, app


CONFIG_NAME_FLAGS = ("--config-name", "-cn")


def config_name(args: list[str], default: str) -> tuple[str, list[str]]:
    """(the primary config `--config-name NAME` / `-cn NAME` / `--config-name=NAME` picks, or
    `default`; the other arguments), e.g. `python -m pipeline --config-name r1`."""
    name, rest, i = default, [], 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in CONFIG_NAME_FLAGS:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            if not value:
                raise LaunchError(f"{flag} needs a config name")
            name = value
        else:
            rest.append(args[i])
        i += 1
    return name, rest


def compose_launch(overrides: list[str]) -> LaunchConfig:
    """conf/launch.yaml with the launch overrides, validated (LaunchError with one line)."""
    from appconf.strict import compose_checked

    register_configs()
    try:
        cfg = compose_checked(CONF_DIR, "launch", overrides, LaunchConfig, "launch")
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except Exception as err:  # noqa: BLE001 - Hydra/omegaconf/ClusterConfig errors: one line
        line = _one_line(err).removeprefix("In 'launch': ")
        if "Could not find 'cluster/" in line:
            known = sorted(p.stem for p in (CONF_DIR / "cluster").glob("*.yaml"))
            line += f" (clusters in conf/cluster: {', '.join(known)})"
        raise LaunchError(line) from None


def _one_line(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        first += f" ({str(cause).strip().splitlines()[0]})"
    return first


def route(app: str, argv: list[str], run_here: Callable[[list[str]], None]) -> None:
    """Run `app` here (run_here gets its own arguments) or submit it; exits with the code."""
    launch_args, app_args = split(argv)
    try:
        flags = [a for a in config_name(app_args, app)[1] if a.startswith("-")]
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not launch_args or (flags and not {"-m", "--multirun"} & set(flags)):
        run_here(app_args)  # --cfg/--help/...: the app's own config, wherever it would run
        return
    try:
        if flags:
            raise LaunchError(
                "cluster=... submits one command; a sweep (-m) goes to Slurm through "
                "hydra/launcher=slurm|slurm_dev (conf/hydra/launcher), without cluster="
            )
        launch = compose_launch(launch_args)
        if launch.cluster.scheduler != "local":
            code = SUBMITTERS[app](launch, app_args)
            if code is not None:
                sys.exit(code)
    except ValueError as err:  # LaunchError, or a job the cluster config cannot express
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    run_here(app_args)


def _compose_app(name: str, schema: type, overrides: list[str]) -> tuple[Any, str]:
    """The app's typed config and its resolved YAML, composed as its CLI does (`name`: its
    primary config in conf/)."""
    from appconf.strict import compose_checked

    try:
        cfg = compose_checked(CONF_DIR, name, overrides, schema, name)
        return OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001 - unknown key, bad value, __post_init__ checks
        raise LaunchError(_one_line(err)) from None


def _with_cluster(yaml: str, launch: LaunchConfig) -> str:
    """The submitted config: the app's, plus where it was sent."""
    return yaml + OmegaConf.to_yaml({"cluster": OmegaConf.structured(launch.cluster)})


def _trainer(launch: LaunchConfig, args: list[str]) -> int:
    from slurm.app import job_overrides, submit_app
    from trainer.config.trainer import TrainerConfig

    config, yaml = _compose_app("trainer", TrainerConfig, args)
    job = TrainJob(
        overrides=job_overrides(args),
        run_dir=str(Path(config.checkpoint.dir).absolute() / "slurm"),
    )
    yaml = _with_cluster(yaml, launch)
    return submit_app(job, launch.cluster, config_yaml=yaml, dry_run=config.dry_run)


def _data_prep(launch: LaunchConfig, args: list[str]) -> int:
    from data_prep.config import DataPrepConfig
    from slurm.app import job_overrides, submit_app

    config, yaml = _compose_app("data_prep", DataPrepConfig, args)
    if config.executor.kind == "slurm":
        raise LaunchError(
            "cluster=slurm and executor=slurm both submit to Slurm: use executor=slurm (datatrove "
            "job arrays, from here) or cluster=slurm (one job with a Ray cluster), not both"
        )
    overrides = job_overrides(args)
    if config.executor.kind == "local":
        overrides.insert(0, "executor=ray")  # group default first, the user's executor.* after
    job = RayJob(
        command=[sys.executable, "-m", "data_prep", *overrides],
        run_dir=str(Path(config.output).absolute() / "slurm"),
    )
    cluster = launch.cluster
    if cluster.job_name is None:
        cluster.job_name = f"data_prep-{config.stage}"
    yaml = _with_cluster(yaml, launch)
    return submit_app(job, cluster, config_yaml=yaml, dry_run=config.dry_run)


def _pipeline(launch: LaunchConfig, args: list[str]) -> int | None:
    """The DAG as chained jobs; a part of it (`part=data|train`, inside a job) runs here."""
    from pipeline.config import PipelineConfig, register_schema

    register_schema()
    name, overrides = config_name(args, "pipeline")  # e.g. --config-name r1 (conf/r1.yaml)
    config, yaml = _compose_app(name, PipelineConfig, overrides)
    if config.part != "all":
        return None
    from slurm.pipeline_jobs import submit_pipeline

    try:
        return submit_pipeline(config, launch, yaml, args)
    except ValueError as err:
        raise LaunchError(str(err)) from None


SUBMITTERS: dict[str, Callable[[LaunchConfig, list[str]], int | None]] = {
    "trainer": _trainer,
    "data_prep": _data_prep,
    "pipeline": _pipeline,
}
"""app -> how `cluster=slurm` submits it (None: run it here after all)."""
