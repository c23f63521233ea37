"""Stage kind `data_prep`: run one data_prep stage through `data_prep.run_stage`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.registry import TaskContext, register_kind

DEFAULT_OVERRIDES = ("input={input}", "output={output}")
"""What every data_prep stage gets unless it sets `input=`/`output=` itself: the upstream
stages' outputs in, its own folder out (so conf/pipeline.yaml names only what differs)."""


@dataclass
class DataPrepOptions:
    stage: str | None = None
    """data_prep stage to run (read, normalize, ...); null = the pipeline stage's own name."""


def describe(node) -> dict:
    """The stage's composed data_prep config (what `python -m data_prep ... --cfg job` shows)."""
    try:
        from data_prep.runner import compose_config
    except ImportError:  # a data_prep without it: params stay the pipeline's view of the stage
        return {}
    stage = node.options.stage or node.name
    return {"resolved": dataclasses.asdict(compose_config([f"stage={stage}", *node.overrides]))}


def validate(node) -> None:
    """Compose and check the stage's config as `python -m data_prep` would (in-process, ~0.1 s);
    ValueError with data_prep's one line (unknown key, bad value) otherwise."""
    from data_prep.errors import DataPrepError
    from data_prep.runner import compose_config

    try:
        compose_config([f"stage={node.options.stage or node.name}", *node.overrides])
    except DataPrepError as err:
        raise ValueError(str(err)) from None


@register_kind(
    "data_prep",
    options=DataPrepOptions,
    code=("data_prep",),
    conf=("data_prep.yaml", "executor/**"),
    default_overrides=DEFAULT_OVERRIDES,
    describe=describe,
    validate=validate,
)
def data_prep_stage(ctx: TaskContext) -> dict:
    """Run the stage in this Ray task; its files land in ctx.output; returns its stats."""
    from data_prep import run_stage

    stats = run_stage(ctx.options.stage or ctx.name, list(ctx.overrides))
    for name in ("manifest.json", "tokenizer.json", "removed_samples", "rejects"):
        ctx.artifacts.append(ctx.output / name)
    return stats
