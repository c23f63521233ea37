"""Run one data_prep stage standalone.

    python -m data_prep stage=read input=raw/ output=runs/x/read
    python -m data_prep stage=minhash_dedup input=runs/x/read output=runs/x/minhash executor.tasks=2
    python -m data_prep stage=remix input=... output=... '+remix.weights={zh_man:0.5,en_docs:0.5}'
    python -m data_prep stage=quality --cfg job        # print the resolved config

Stages: read normalize langid quality exact_dedup minhash_dedup remix train_tokenizer tokenize.
Executors: executor=local (default) | executor=ray | executor=slurm executor.partition=NAME.
    python -m data_prep stage=minhash_dedup ... cluster=slurm cluster.nodes=4   # one Slurm job:
        Ray head + workers over 4 nodes, the stage on it (dry_run=true prints the script)
Bad input gives a one-line error on stderr and exit code 2.
"""

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

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


def precheck(argv: list[str]) -> None:
    """Report bad overrides (unknown key, bad syntax) in one line instead of Hydra's block."""
    if any(a.startswith("-") for a in argv):  # --cfg, --help, ...: leave them to Hydra
        return
    from data_prep.runner import compose_config

    try:
        compose_config(argv, validate=False)
    except DataPrepError as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
