"""Check a Hydra multirun sweep before hydra-submitit-launcher submits it: compose every job's
config as its Slurm job will (so `${hydra:job.num}` and `${hydra:runtime.output_dir}` resolve),
let the app validate each, refuse jobs that would share an output folder, and pin the sweep
folder so the printed path is the one Hydra uses. Hydra itself only checks that the jobs
compose, after it has created the sweep folder."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def compose_sweep(conf_dir: Path, config_name: str, overrides: list[str]) -> tuple[str, list]:
    """The sweep folder and each job's resolved config (without its hydra node), composed the
    way Hydra's basic sweeper and the submitit launcher compose them."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    configs: list[DictConfig] = []
    sweep_dir = None
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for num, job in enumerate(jobs):
            cfg = compose(config_name, overrides=job, return_hydra_config=True)
            sweep_dir = sweep_dir or cfg.hydra.sweep.dir  # ${now:...} as the first job saw it
            with open_dict(cfg):
                cfg.hydra.job.num = num
                out = os.path.join(sweep_dir, str(cfg.hydra.sweep.subdir))
                cfg.hydra.runtime.output_dir = os.path.abspath(out)
            HydraConfig.instance().set_config(cfg)  # what `${hydra:...}` reads
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            OmegaConf.resolve(task)
            configs.append(task)
    return str(sweep_dir), configs


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    cause = err.__cause__
    if cause is not None:
        text += f" ({' '.join(str(cause).split()).split(' full_key:')[0]})"
    return text


def check_sweep(
    app: str,
    argv: list[str],
    conf_dir: Path,
    output_of: Callable[[DictConfig], str],
    what: str,
    example: str,
) -> list[str]:
    """Validate every job of a sweep; returns argv with `hydra.sweep.dir` pinned.

    output_of(cfg) validates a job's config (raising ValueError) and returns its output folder;
    `what` names that key and `example` shows a per-job value. Raises ValueError in one line.
    """
    try:
        sweep, jobs = compose_sweep(conf_dir, app, [a for a in argv if not a.startswith("-")])
        outputs = [os.path.abspath(output_of(cfg)) for cfg in jobs]
    except Exception as err:  # unknown key, bad syntax, invalid value: one line
        raise ValueError(_one_line(err)) from None
    if len(set(outputs)) < len(outputs):
        raise ValueError(
            f"sweep jobs share {what}={outputs[0]}: give each job its own, e.g. '{example}'"
        )
    print(f"{app}: {len(jobs)} sweep jobs; sweep folder {sweep} (Slurm logs: {sweep}/logs/)")
    pinned = any(a.startswith("hydra.sweep.dir=") for a in argv)
    return argv if pinned else [*argv, f"hydra.sweep.dir={sweep}"]


def is_sweep(argv: list[str]) -> bool | None:
    """True for `-m`/`--multirun`, False for a plain run, None when other flags (--cfg, --help)
    are present (left to Hydra)."""
    flags = {a for a in argv if a.startswith("-")}
    if flags - {"-m", "--multirun"}:
        return None
    return bool(flags)
