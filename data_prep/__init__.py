"""Bilingual (zh/en) data cleaning stages on datatrove, each runnable on its own.

    from data_prep import run_stage
    stats = run_stage("minhash_dedup", ["input=raw/", "output=out/minhash"])

CLI: `python -m data_prep stage=NAME input=PATH output=DIR [overrides]`.
"""

from data_prep.errors import DataPrepError, IncompleteRanksError, InputError, OutputBusyError


def run_stage(stage: str, overrides: list[str]) -> dict:
    """Run one stage with Hydra overrides; return its stats dict (see data_prep.runner)."""
    from data_prep.runner import run_stage as _run_stage

    return _run_stage(stage, overrides)


__all__ = ["DataPrepError", "IncompleteRanksError", "InputError", "OutputBusyError", "run_stage"]
