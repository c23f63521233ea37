"""Shared pieces of the small Hydra CLIs (trainer.export, trainer.import_hf, trainer.bpb,
evaluation.harness): quiet Hydra, and the typed config with a missing key as one line."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

QUIET_HYDRA = [
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
]
"""Appended to argv: no outputs/ folder, no log files, no Hydra logging."""


def typed(cfg: DictConfig) -> Any:
    """The dataclass instance of `cfg`; a missing required key is a ValueError naming it."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ValueError(f"{err.full_key}=... is required") from None
