"""Train a DeepSeek-style model with megatron-core.

    python -m trainer data.manifest=runs/x/tokenize/manifest.json            # one process
    torchrun --nproc-per-node 2 -m trainer parallel=tp2 data.manifest=...    # TP2 (+SP)
    python -m trainer model=deepseek_v3 parallel=v3_h100_1024 precision=fp8_blockwise \\
        dry_run=true world_size=1024                                         # plan only
    python -m trainer --cfg job                                              # resolved config
    python -m trainer cluster=slurm cluster.nodes=2 cluster.gpus_per_node=8 parallel=... \
        data.manifest=...          # submit this command as a Slurm job (dry_run=true: print it)

Rerunning with the same checkpoint.dir resumes from its latest complete checkpoint (the newest
complete one if `latest` is missing or damaged; checkpoint.resume=false starts over and moves
the old checkpoints to checkpoint.dir/previous/). SIGTERM, SIGINT (Ctrl-C) or the file
checkpoint.stop_file (env PRETRAIN_STOP_FILE, touched on Slurm's pre-timeout signal) make the
trainer save a checkpoint after the current step and exit with code 75; a second signal exits at
once. Exit codes: 0 done, 2 bad input (one line on stderr), 75 stopped with a checkpoint saved
(rerun to resume), 130 interrupted before the first step.

Sweeps (Hydra multirun), one Slurm job per point via hydra-submitit-launcher (conf/hydra/launcher);
each job needs its own checkpoint.dir (checked before anything is submitted):
    python -m trainer -m hydra/launcher=slurm_dev optim.lr=1e-3,3e-3 data.manifest=... \\
        'checkpoint.dir=runs/lr_sweep/${hydra:job.num}'
Sweep folder: runs/sweeps/trainer/<time>/ (Slurm logs in its logs/<job id>/).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from trainer.config.trainer import TrainerConfig

ConfigStore.instance().store(name="trainer_schema", node=TrainerConfig)


def _to_config(cfg: DictConfig) -> TrainerConfig:
    from appconf.strict import check_keys

    check_keys(cfg, TrainerConfig, "trainer")  # a `+key` the schema lacks is no silent no-op
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainerConfig)
    return obj


@hydra.main(config_path="../conf", config_name="trainer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", module="megatron")
    try:
        config = _to_config(cfg)
        if config.dry_run:
            from trainer.dry_run import plan, print_plan

            print_plan(plan(config))
            return
        from trainer.parallel import destroy_parallel
        from trainer.preemption import EXIT_CODE, TrainingStopped
        from trainer.run import train

        if "LOCAL_RANK" in os.environ:  # a torchrun rank: stop (saving) if torchrun dies
            from appconf.lifetime import stop_with_parent

            stop_with_parent()
        try:
            train(config)
        except TrainingStopped:  # checkpoint saved, line printed; every rank stops here
            destroy_parallel()
            sys.exit(EXIT_CODE)
        destroy_parallel()  # only after success: a failed rank must exit, not wait in a barrier
    except ValueError as err:  # bad user input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
        print("interrupted before the first step: nothing to save", file=sys.stderr)
        sys.exit(130)


def precheck(argv: list[str]) -> list[str]:
    """For a sweep (-m): validate every job as its Slurm job will compose it, check each has
    its own checkpoint.dir, and pin the sweep folder (printed). Bad input exits with one line."""
    from slurm.sweep import check_sweep, is_sweep

    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    sweep = is_sweep(argv)
    if sweep is None:  # --cfg, --help, ...: leave them to Hydra
        return argv
    if not sweep:
        _check_input(argv, conf_dir)
        return argv
    try:
        return check_sweep(
            "trainer",
            argv,
            conf_dir,
            lambda cfg: _to_config(cfg).checkpoint.dir,
            "checkpoint.dir",
            "checkpoint.dir=runs/lr_sweep/${hydra:job.num}",
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _check_input(argv: list[str], conf_dir: Path) -> None:
    """What fails before Hydra can report it well, one line and exit 2: an unknown key
    (`train.stepz=5`, `+train.stepz=5`, `++bogus=1`) and a checkpoint.dir that is a file or not
    writable (Hydra would first fail to create its run folder inside it). Other composition
    errors are left to Hydra."""
    from appconf.strict import UnknownKeyError, compose_checked
    from trainer.checkpoint_store import check_dir_usable

    try:
        cfg = compose_checked(conf_dir, "trainer", argv, TrainerConfig, "trainer")
    except UnknownKeyError as err:
        _fail(err)
    except Exception:  # noqa: BLE001 - bad syntax etc.: Hydra reports it as before
        return
    try:
        check_dir_usable(str(cfg.checkpoint.dir))
    except ValueError as err:
        _fail(err)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: Hydra reports it
        return


def _fail(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def run_here(argv: list[str]) -> None:
    """Train in this process (or as this torchrun rank) on `argv`, the app's own overrides."""
    sys.argv[1:] = precheck(argv)
    main()


if __name__ == "__main__":
    from slurm.launch import route  # the launch layer: `cluster=...` is routed before Hydra

    route("trainer", sys.argv[1:], run_here)
