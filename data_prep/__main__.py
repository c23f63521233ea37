"""Run one data_prep stage standalone.

    python -m data_prep stage=read input=raw/ output=runs/x/read
    python -m data_prep stage=minhash_dedup input=runs/x/read output=runs/x/minhash executor.tasks=2
    python -m data_prep stage=remix input=... output=... '+remix.weights={zh_man:0.5,en_docs:0.5}'
    python -m data_prep stage=quality --cfg job        # print the resolved config

Stages: read normalize langid quality exact_dedup minhash_dedup remix train_tokenizer tokenize.
Executors: executor=local (default) | executor=ray | executor=slurm executor.partition=NAME.
    python -m data_prep stage=minhash_dedup ... cluster=slurm cluster.nodes=4   # one Slurm job:
        Ray head + workers over 4 nodes, the stage on it (dry_run=true prints the script)
Sweeps (Hydra multirun), one Slurm job per point, through hydra-submitit-launcher
(conf/hydra/launcher/); each job needs its own output, e.g. named by the swept value:
    python -m data_prep -m hydra/launcher=slurm_dev stage=langid input=raw/ \
        'output=runs/langid_${langid.threshold}' langid.threshold=0.5,0.8
Sweep folder: runs/sweeps/data_prep/<time>/ (Slurm logs in its logs/<job id>/).
Bad input gives a one-line error on stderr and exit code 2.
"""

import copy
import json
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from data_prep.config import register_configs
from data_prep.errors import DataPrepError

register_configs()


def _submit(cfg: DictConfig, config) -> int:
    """cluster=slurm: this same command as a Slurm job with a Ray cluster over its nodes."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from slurm.app import job_overrides, submit_app
    from slurm.config import RayJob

    overrides = job_overrides(list(HydraConfig.get().overrides.task))
    if config.executor.kind == "local":
        overrides.append("executor=ray")  # group default first, the user's executor.* after it
        overrides.sort(key=lambda o: o != "executor=ray")
    job = RayJob(
        command=[sys.executable, "-m", "data_prep", *overrides],
        run_dir=str(Path(config.output).absolute() / "slurm"),
    )
    if config.cluster.job_name is None:
        config.cluster.job_name = f"data_prep-{config.stage}"
    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    return submit_app(job, config.cluster, config_yaml=yaml, dry_run=config.dry_run)


@hydra.main(config_path="../conf", config_name="data_prep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from data_prep.runner import run_config, to_config

    try:
        config = to_config(cfg)
        if config.cluster.executor != "local":
            sys.exit(_submit(cfg, config))
        stats = run_config(config)
    except DataPrepError as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        sys.exit(2)
    summary = {
        k: stats[k]
        for k in ("stage", "documents_in", "documents_kept", "removed", "rejected", "skipped")
    }
    print(json.dumps(summary, ensure_ascii=False))


def precheck(argv: list[str]) -> list[str]:
    """Report bad overrides (unknown key, bad syntax) in one line instead of Hydra's block;
    for a sweep (-m) validate every job first. Returns argv (a sweep's folder pinned)."""
    flags = {a for a in argv if a.startswith("-")}
    if flags - {"-m", "--multirun"}:  # --cfg, --help, ...: leave them to Hydra
        return argv
    from data_prep.runner import compose_config

    try:
        if flags:
            return check_sweep(argv)
        compose_config(argv, validate=False)
    except DataPrepError as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        sys.exit(2)
    return argv


def check_sweep(argv: list[str]) -> list[str]:
    """Compose and validate every job of the sweep as its Slurm job will (so `${hydra:job.num}`
    resolves), check each writes its own `output`, and pin the sweep folder (printed)."""
    from data_prep.errors import InputError
    from data_prep.runner import one_line, to_config

    try:
        sweep, jobs = compose_sweep([a for a in argv if not a.startswith("-")])
    except Exception as e:  # unknown key, bad override syntax
        cause = f" ({one_line(e.__cause__).split(' full_key:')[0]})" if e.__cause__ else ""
        raise InputError(one_line(e) + cause) from None
    outputs = [os.path.abspath(to_config(cfg).output) for cfg in jobs]
    if len(set(outputs)) < len(outputs):
        raise InputError(
            f"sweep jobs share the output folder {outputs[0]}: give each job its own, e.g. "
            "'output=runs/langid_${langid.threshold}' or 'output=${hydra:runtime.output_dir}'"
        )
    print(f"data_prep: {len(jobs)} sweep jobs; sweep folder {sweep} (Slurm logs: {sweep}/logs/)")
    pinned = any(a.startswith("hydra.sweep.dir=") for a in argv)
    return argv if pinned else [*argv, f"hydra.sweep.dir={sweep}"]


def compose_sweep(overrides: list[str]) -> tuple[str, list[DictConfig]]:
    """The sweep folder and each job's resolved config (without its hydra node), composed the
    way Hydra's basic sweeper and the submitit launcher compose them."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from data_prep.runner import CONF_DIR

    parsed = OverridesParser.create().parse_overrides(overrides)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    configs, sweep_dir = [], None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for num, job in enumerate(jobs):
            cfg = compose("data_prep", overrides=job, return_hydra_config=True)
            sweep = cfg.hydra.sweep
            sweep_dir = sweep_dir or sweep.dir  # ${now:...} as the first job resolved it
            with open_dict(cfg):
                cfg.hydra.job.num = num
                out = os.path.join(sweep_dir, str(sweep.subdir))
                cfg.hydra.runtime.output_dir = os.path.abspath(out)
            HydraConfig.instance().set_config(cfg)  # what `${hydra:...}` reads
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            OmegaConf.resolve(task)
            configs.append(task)
    return sweep_dir, configs


if __name__ == "__main__":
    sys.argv[1:] = precheck(sys.argv[1:])
    main()
