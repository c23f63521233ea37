"""One owner of posttrain's one-shot Hydra CLIs (accuracy, rejection_sample): the schema
registered, strict keys, quiet Hydra, megatron's warnings off, bad input as one line (exit 2)
and the result as one JSON line."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def run_cli(name: str, schema: type, work: Callable[[Any], dict[str, Any]]) -> None:
    """`python -m posttrain.<name>`: compose conf/<name>.yaml over `schema`, run `work` on the
    typed config in one process and print its JSON result."""
    import hydra
    from hydra.core.config_store import ConfigStore

    from appconf.cli import QUIET_HYDRA, typed
    from appconf.strict import check_keys

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)

    @hydra.main(config_path=CONF, config_name=name, version_base="1.3")
    def app(cfg: Any) -> None:
        warnings.filterwarnings("ignore", module="megatron")
        try:
            check_keys(cfg, schema, f"posttrain.{name}")
            result = work(typed(cfg))
            from trainer.parallel import destroy_parallel  # megatron: after the input checks

            destroy_parallel()
        except ValueError as err:  # bad user input: one clear line, no traceback
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps(result))

    sys.argv[1:] = [*sys.argv[1:], *QUIET_HYDRA]
    app()
