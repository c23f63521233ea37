"""Train a DeepSeek-style model with megatron-core.

    python -m trainer data.manifest=runs/x/tokenize/manifest.json            # one process
    torchrun --nproc-per-node 2 -m trainer parallel=tp2 data.manifest=...    # TP2 (+SP)
    python -m trainer model=deepseek_v3 parallel=v3_h100_1024 precision=fp8_blockwise \\
        dry_run=true world_size=1024                                         # plan only
    python -m trainer --cfg job                                              # resolved config
    python -m trainer cluster=slurm cluster.nodes=2 cluster.gpus_per_node=8 parallel=... \
        data.manifest=...          # submit this command as a Slurm job (dry_run=true: print it)

Rerunning with the same checkpoint.dir resumes from its latest complete checkpoint. When the
file checkpoint.stop_file (env PRETRAIN_STOP_FILE) appears, the trainer saves a checkpoint and
exits with code 75 (Slurm's pre-timeout signal: the job requeues and resumes).

Sweeps (Hydra multirun), one Slurm job per point via hydra-submitit-launcher (conf/hydra/launcher);
each job needs its own checkpoint.dir (checked before anything is submitted):
    python -m trainer -m hydra/launcher=slurm_dev optim.lr=1e-3,3e-3 data.manifest=... \\
        'checkpoint.dir=runs/lr_sweep/${hydra:job.num}'
Sweep folder: runs/sweeps/trainer/<time>/ (Slurm logs in its logs/<job id>/).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from trainer.config.trainer import TrainerConfig

ConfigStore.instance().store(name="trainer_schema", node=TrainerConfig)


def _to_config(cfg: DictConfig) -> TrainerConfig:
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainerConfig)
    return obj


def _submit(cfg: DictConfig, config: TrainerConfig) -> int:
    """cluster=slurm: this same command as a Slurm training job (dry_run=true prints it)."""
    from hydra.core.hydra_config import HydraConfig

    from slurm.app import job_overrides, submit_app
    from slurm.config import TrainJob

    job = TrainJob(
        overrides=job_overrides(list(HydraConfig.get().overrides.task)),
        run_dir=str(Path(config.checkpoint.dir).absolute() / "slurm"),
    )
    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    return submit_app(job, config.cluster, config_yaml=yaml, dry_run=config.dry_run)


@hydra.main(config_path="../conf", config_name="trainer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", module="megatron")
    try:
        config = _to_config(cfg)
        if config.cluster.executor != "local":
            sys.exit(_submit(cfg, config))
        if config.dry_run:
            from trainer.dry_run import plan, print_plan

            print_plan(plan(config))
            return
        from trainer.parallel import destroy_parallel
        from trainer.preemption import EXIT_CODE, TrainingStopped
        from trainer.run import train

        try:
            train(config)
        except TrainingStopped:  # checkpoint saved, line printed; every rank stops here
            destroy_parallel()
            sys.exit(EXIT_CODE)
        destroy_parallel()  # only after success: a failed rank must exit, not wait in a barrier
    except ValueError as err:  # bad user input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def precheck(argv: list[str]) -> list[str]:
    """For a sweep (-m): compose and validate every job as its Slurm job will (so
    `${hydra:job.num}` resolves), check each has its own checkpoint.dir, and pin the sweep
    folder (printed). Returns argv; bad input exits with one line."""
    flags = {a for a in argv if a.startswith("-")}
    if not flags or flags - {"-m", "--multirun"}:
        return argv
    try:
        sweep, jobs = compose_sweep([a for a in argv if not a.startswith("-")])
        dirs = [str(Path(_to_config(cfg).checkpoint.dir).absolute()) for cfg in jobs]
    except Exception as err:  # unknown key, bad syntax, invalid value
        cause = f" ({str(err.__cause__).split('full_key:')[0].strip()})" if err.__cause__ else ""
        print(f"error: {' '.join(f'{err}{cause}'.split())}", file=sys.stderr)
        sys.exit(2)
    if len(set(dirs)) < len(dirs):
        print(
            f"error: sweep jobs share checkpoint.dir={dirs[0]}: give each job its own, e.g. "
            "'checkpoint.dir=runs/lr_sweep/${hydra:job.num}'",
            file=sys.stderr,
        )
        sys.exit(2)
    print(f"trainer: {len(jobs)} sweep jobs; sweep folder {sweep} (Slurm logs: {sweep}/logs/)")
    pinned = any(a.startswith("hydra.sweep.dir=") for a in argv)
    return argv if pinned else [*argv, f"hydra.sweep.dir={sweep}"]


def compose_sweep(overrides: list[str]) -> tuple[str, list[DictConfig]]:
    """The sweep folder and each job's resolved config (without its hydra node), composed the
    way Hydra's basic sweeper and the submitit launcher compose them."""
    import copy

    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict, read_write

    parsed = OverridesParser.create().parse_overrides(overrides)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    configs, sweep_dir = [], None
    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for num, job in enumerate(jobs):
            cfg = compose("trainer", overrides=job, return_hydra_config=True)
            sweep_dir = sweep_dir or cfg.hydra.sweep.dir  # ${now:...} as the first job saw it
            with open_dict(cfg):
                cfg.hydra.job.num = num
                out = Path(sweep_dir, str(cfg.hydra.sweep.subdir))
                cfg.hydra.runtime.output_dir = str(out.absolute())
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
