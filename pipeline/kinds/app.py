"""Stage kind `app`: a one-shot app CLI that ends with a JSON line, e.g. the R1 recipe's task
generator, rejection sampling and held-out accuracy:

    task:
      kind: app
      options: {module: posttrain.tasks.arithmetic}
      overrides: ["out={output}/task", "n_train=600"]

Runs `python -m MODULE overrides...` in a process of its own (pipeline.kinds.app_process); the
JSON line is the stage's stats (MLflow metrics: its numeric leaves). `options.artifacts` names
files under the stage folder to log as MLflow artifacts (e.g. stats.json); `options.code` the
packages whose source is the stage's code version (default: the module's top-level package).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline.kinds.app_process import run_app
from pipeline.registry import TaskContext, register_kind


@dataclass
class AppOptions:
    module: str = ""
    """Python module to run (`python -m MODULE`); it prints a JSON line last."""
    artifacts: list[str] = field(default_factory=list)
    """Files under the stage folder to log as MLflow artifacts (missing ones are skipped)."""
    code: list[str] = field(default_factory=list)
    """Importable packages whose source is the stage's code version (default: the module's
    top-level package)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the app (e.g. OMP_NUM_THREADS)."""

    def __post_init__(self) -> None:
        if not self.module or not all(part.isidentifier() for part in self.module.split(".")):
            raise ValueError(f"app option module={self.module!r}: a Python module name is needed")


def code_of(options: AppOptions) -> tuple[str, ...]:
    return tuple(options.code) or (options.module.split(".")[0],)


@register_kind("app", options=AppOptions, code=code_of)
def app(ctx: TaskContext) -> dict:
    """Run the app; its JSON line (a dict) plus the wall time are the stage's stats."""
    opts: AppOptions = ctx.options
    started = time.time()
    result = run_app(opts.module, ctx.overrides, dict(opts.env))
    if not isinstance(result, dict):
        raise RuntimeError(f"{opts.module} printed {type(result).__name__}, not a JSON object")
    for name in opts.artifacts:
        path = ctx.output / name
        if path.is_file():
            ctx.artifacts.append(path)
    ctx.params["app_module"] = opts.module
    return {**result, "wall_s": round(time.time() - started, 3)}
