"""Small deterministic stage kinds for engine tests (registered as plugin `pipeline_fakes`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.registry import TaskContext, register_kind


@dataclass
class FakeOptions:
    docs: int = 20
    """fake_source: lines per domain."""
    sleep_s: float = 0.0
    """Pause after each written line (makes a stage slow enough to kill mid-way)."""
    suffix: str = ""
    """fake_map: text appended to every line."""
    fail: bool = False
    """Raise after writing half of the output."""


def _write_lines(ctx: TaskContext, lines: list[str]) -> dict:
    # per-domain variations come as overrides ("fail=true", "sleep_s=0.1")
    extra = dict(o.split("=", 1) for o in ctx.overrides if "=" in o)
    opts = FakeOptions(**{**vars(ctx.options), **_typed(extra)})
    started = time.time()
    with open(ctx.output / "data.jsonl", "w") as fh:
        for i, line in enumerate(lines):
            if opts.fail and i == len(lines) // 2:
                raise RuntimeError(f"planted failure in {ctx.key}")
            fh.write(line + "\n")
            fh.flush()
            time.sleep(opts.sleep_s)
    stats = {"documents_in": len(lines), "documents_kept": len(lines), "removed": {"none": 0}}
    (ctx.output / "stats.json").write_text(json.dumps(stats, sort_keys=True))
    elapsed = max(time.time() - started, 1e-6)
    # timing fields go to the marker/MLflow only, never into compared output files
    return stats | {
        "docs_per_s": len(lines) / elapsed,
        "t_start": started,
        "t_end": time.time(),
        "pid": os.getpid(),
    }


def _typed(extra: dict[str, str]) -> dict:
    out: dict = {}
    if "fail" in extra:
        out["fail"] = extra["fail"] == "true"
    if "sleep_s" in extra:
        out["sleep_s"] = float(extra["sleep_s"])
    return out


def _read_inputs(ctx: TaskContext) -> list[str]:
    lines: list[str] = []
    for folders in ctx.inputs.values():
        for folder in sorted(folders):
            lines += Path(folder, "data.jsonl").read_text().splitlines()
    return lines


@register_kind("fake_source", options=FakeOptions, code=("pipeline_fakes",))
def fake_source(ctx: TaskContext) -> dict:
    n = ctx.options.docs
    return _write_lines(
        ctx, [json.dumps({"text": f"{ctx.domain} doc {i}", "id": i}) for i in range(n)]
    )


@register_kind("fake_map", options=FakeOptions, code=("pipeline_fakes",))
def fake_map(ctx: TaskContext) -> dict:
    lines = [
        json.dumps({**json.loads(x), "s": ctx.name + ctx.options.suffix}) for x in _read_inputs(ctx)
    ]
    return _write_lines(ctx, lines)
