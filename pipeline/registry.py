"""The stage-kind registry: one entry per kind of stage the DAG can run.

A kind is a function `run(ctx: TaskContext) -> dict` (the stage's stats) registered under a
short name that `conf/pipeline.yaml` uses as `stages.<name>.kind`. Adding a stage to the DAG
is a config entry naming a kind; adding a kind is a module that calls `register_kind` (list
it in `plugins` if it lives outside this package).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


@dataclass
class TaskContext:
    """What a stage kind gets when it runs (built by the engine inside the stage's Ray task)."""

    key: str
    """Unique stage id in the DAG: NAME or NAME/DOMAIN."""
    name: str
    """Stage name (the key of `stages` in the config)."""
    domain: str | None
    """Domain of a per-domain stage, else None."""
    output: Path
    """The stage's output folder (empty unless the kind is resumable)."""
    run_dir: Path
    """Folder of the whole pipeline run."""
    inputs: dict[str, list[Path]]
    """Output folders of the upstream stages: stage name -> folders (one per domain)."""
    overrides: list[str]
    """The stage's Hydra overrides with placeholders filled in."""
    options: Any
    """The kind's typed options object (or a plain dict when the kind has no schema)."""
    log_path: Path
    """The stage's log file (stdout and stderr of the stage go there)."""
    mlflow_run_id: str | None = None
    """The stage's nested MLflow run, when tracking is on."""
    tracking_uri: str | None = None
    """Absolute MLflow tracking URI, when tracking is on."""
    artifacts: list[Path] = field(default_factory=list)
    """Extra files or folders the kind wants logged as MLflow artifacts."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra MLflow params the kind resolved (e.g. the stage's fully composed config)."""
    echo: Callable[[str], Any] = print
    """Writes text to the console (the stage's stdout/stderr go to its log file)."""

    def report(self, **progress: Any) -> None:
        """Publish live progress (e.g. throughput=..., unit='tok/s') for the terminal view."""
        path = self.output / ".progress.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, path)


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind."""

    name: str
    run: Callable[[TaskContext], dict]
    options: type | None = None
    """Dataclass schema of `stages.<name>.options` (unknown keys fail); None = no options."""
    code: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    """Importable packages/modules whose source files make up the kind's code version (or a
    function of the typed options returning them, e.g. the trainer module option)."""
    conf: tuple[str, ...] = ()
    """Globs under the conf/ tree the kind composes (part of its code version)."""
    resumable: bool = False
    """Keep the output folder of an interrupted attempt (the kind resumes, e.g. training)."""
    live_run: bool = False
    """Open the stage's MLflow run before it starts (it logs into it while running, e.g. the
    trainer's curves); other kinds are recorded by the driver when they end."""
    describe: Callable[[Any], dict] | None = None
    """`describe(node)` -> the stage's fully resolved config (pipeline.dag.Node in), logged as
    MLflow params by the driver, off the stage's critical path."""
    validate: Callable[[Any], None] | None = None
    """`validate(node)` composes and checks the stage's config with its app (pipeline.dag.Node
    in) and raises ValueError with one line when the app would reject it. Called before any
    earlier output of the stage is touched, so a bad override never costs finished work."""
    default_overrides: tuple[str, ...] = ()
    """Overrides every stage of the kind gets unless it sets the same key itself (e.g.
    `output={output}`); one whose placeholder has no value (`{input}` without upstream stages)
    is left out. They take the place of the stage's own override of their key, in this order,
    before its other overrides (pipeline.dag.with_defaults)."""
    extends: tuple[str, ...] = ()
    """Override keys that only extend a finished run (`train.steps`, `logging.*`): when they are
    all that changed, a resumable kind continues from its checkpoints instead of restarting.
    A key may end in `.*` (any key under it) or in `+` (only a larger number extends, e.g.
    `train.steps+`: fewer steps restart)."""
    role: str = "data"
    """`data` or `training`: a training kind and what depends on it form the pipeline's training
    part (`part=train`; on Slurm the training job, where its options get `launcher=srun` and
    `cluster=PATH`)."""

    def code_modules(self, options: Any) -> tuple[str, ...]:
        return tuple(self.code(options)) if callable(self.code) else self.code

    def build_options(self, raw: dict) -> Any:
        """Check `raw` against the kind's schema and return the typed options object."""
        if self.options is None:
            if raw:
                raise ValueError(f"stage kind {self.name!r} takes no options, got {sorted(raw)}")
            return {}
        try:
            merged = OmegaConf.merge(OmegaConf.structured(self.options), raw)
            return OmegaConf.to_object(merged)
        except Exception as err:  # omegaconf raises several types for bad keys/values
            raise ValueError(f"bad options for stage kind {self.name!r}: {err}") from None


_KINDS: dict[str, StageKind] = {}
ROLES = ("data", "training")


def register_kind(
    name: str,
    *,
    options: type | None = None,
    code: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = (),
    conf: tuple[str, ...] = (),
    resumable: bool = False,
    live_run: bool = False,
    describe: Callable[[Any], dict] | None = None,
    validate: Callable[[Any], None] | None = None,
    default_overrides: tuple[str, ...] = (),
    extends: tuple[str, ...] = (),
    role: str = "data",
) -> Callable[[Callable[[TaskContext], dict]], Callable[[TaskContext], dict]]:
    """Decorator: register `fn(ctx) -> stats` as stage kind `name`."""

    if role not in ROLES:
        raise ValueError(f"stage kind {name!r}: role must be one of {ROLES}, got {role!r}")

    def wrap(fn: Callable[[TaskContext], dict]) -> Callable[[TaskContext], dict]:
        code_spec = code if callable(code) else tuple(code)
        _KINDS[name] = StageKind(
            name,
            fn,
            options,
            code_spec,
            tuple(conf),
            resumable,
            live_run,
            describe,
            validate,
            tuple(default_overrides),
            tuple(extends),
            role,
        )
        return fn

    return wrap


def get_kind(name: str) -> StageKind:
    """The kind registered as `name`; ValueError naming the known kinds otherwise."""
    import pipeline.kinds  # noqa: F401  (registers the built-in kinds)

    if name not in _KINDS:
        raise ValueError(
            f"unknown stage kind {name!r}; registered kinds: {', '.join(sorted(_KINDS))}"
        )
    return _KINDS[name]


def kind_names() -> list[str]:
    import pipeline.kinds  # noqa: F401

    return sorted(_KINDS)
