"""One owner of posttrain's one-shot Hydra CLIs (accuracy, rejection_sample): the schema
registered, strict keys, quiet Hydra, megatron's warnings off, bad input as one line (exit 2)
and the result as one JSON line."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING

from trainer.config.model import ModelConfig
from trainer.config.precision import PrecisionConfig

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@dataclass
class CheckpointDecodeConfig:
    """What every CLI that decodes prompts with a checkpoint takes (accuracy, rejection_sample)."""

    APP: ClassVar[str] = "posttrain"
    """Names the CLI in its one-line errors."""

    checkpoint: str = MISSING
    """Checkpoint folder (iter_XXXXXXX) or a checkpoint.dir (its newest complete one)."""
    tokenizer: str = MISSING
    """tokenizer.json of the model."""
    max_new_tokens: int = 128
    context: int = 256
    """Longest sequence, prompt + response; longer prompts are skipped and counted."""
    system_prompt: bool = True
    """Keep the records' system message in the prompt."""
    prompts_per_batch: int = 4
    """Prompts decoded together."""
    limit: int | None = None
    """Use only the first this many usable prompts."""
    seed: int = 1234
    eod_token: str = "<|endoftext|>"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The checkpoint's architecture (conf/model/*)."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "prompts_per_batch", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self.APP}: {name} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{self.APP}: limit={self.limit} must be >= 1")


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
