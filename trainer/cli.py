"""The single-process trainer CLIs (export, import_hf, bpb): run the work in a one-rank process
group (megatron's parallel state) and turn user errors into one line, exit 2."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from appconf.cli import typed


def run_one_process(cfg: DictConfig, work: Callable[[Any], Any]) -> Any:
    """`work(typed config)` between single_process_env() and destroy_parallel(); a ValueError
    or a damaged / incompatible checkpoint prints `error: ...` and exits 2."""
    from trainer.checkpoint_store import CheckpointDamaged, CheckpointIncompatible
    from trainer.parallel import destroy_parallel, single_process_env

    warnings.filterwarnings("ignore")
    try:
        config = typed(cfg)
        single_process_env()
        return work(config)
    except (ValueError, CheckpointDamaged, CheckpointIncompatible) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        destroy_parallel()
