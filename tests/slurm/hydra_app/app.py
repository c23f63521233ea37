"""A trivial Hydra app for the submitit launcher test: writes x*x and its Slurm job id."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> int:
    out = Path(cfg.out_dir) / f"x{cfg.x}.txt"
    out.write_text(f"{cfg.x * cfg.x} {os.environ.get('SLURM_JOB_ID', 'none')}\n")
    return cfg.x * cfg.x


if __name__ == "__main__":
    main()
