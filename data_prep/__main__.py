"""Run one data_prep stage standalone.

    python -m data_prep stage=read input=raw/ output=runs/x/read
    python -m data_prep stage=minhash_dedup input=runs/x/read output=runs/x/minhash executor.tasks=2
    python -m data_prep stage=remix input=... output=... '+remix.weights={zh_man:0.5,en_docs:0.5}'
    python -m data_prep stage=quality --cfg job        # print the resolved config

Stages: the names in data_prep.config.STAGE_TABLE (warc url_filter read ... tokenize).
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

import json
import sys

import hydra
from omegaconf import DictConfig

from data_prep.config import register_configs
from data_prep.errors import DataPrepError

register_configs()


@hydra.main(config_path="../conf", config_name="data_prep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from data_prep.runner import run_config, to_config

    try:
        config = to_config(cfg)
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
    from slurm.sweep import check_sweep, is_sweep

    sweep = is_sweep(argv)
    if sweep is None:  # --cfg, --help, ...: leave them to Hydra
        return argv
    from data_prep.runner import CONF_DIR, compose_config, to_config

    try:
        if sweep:
            return check_sweep(
                "data_prep",
                argv,
                CONF_DIR,
                lambda cfg: to_config(cfg).output,
                "output",
                "output=runs/langid_${langid.threshold}' or 'output=${hydra:runtime.output_dir}",
            )
        compose_config(argv, validate=False)
    except (DataPrepError, ValueError) as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        sys.exit(2)
    return argv


def run_here(argv: list[str]) -> None:
    """Run the stage in this process on `argv`, the app's own overrides."""
    sys.argv[1:] = precheck(argv)
    main()


if __name__ == "__main__":
    from slurm.launch import route  # the launch layer: `cluster=...` is routed before Hydra

    route("data_prep", sys.argv[1:], run_here)
