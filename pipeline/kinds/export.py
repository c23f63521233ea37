"""Stage kind `export`: the train stage's newest checkpoint as a Hugging Face folder.

Runs `python -m trainer.export` (one process of its own: it builds a single-rank process
group) with the stage's overrides, e.g. `checkpoint.dir={deps[train]}/checkpoints` and
`output={output}/hf`. The MLflow run records the folder's path (param `hf_folder`) and its
config, generation config, index and tokenizer files as artifacts (the weights stay on disk).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.kinds.app_process import run_app
from pipeline.registry import TaskContext, register_kind

SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@register_kind("export", code=("trainer.export", "trainer.hf"))
def export_stage(ctx: TaskContext) -> dict:
    """Export, then return the CLI's summary (step, bytes, seconds) as the stage's stats."""
    result = run_app("trainer.export", ctx.overrides)
    folder = Path(result["output"])
    ctx.params["hf_folder"] = str(folder)
    ctx.params["hf_model_type"] = result["model_type"]
    ctx.artifacts.extend(folder / name for name in SMALL_FILES if (folder / name).is_file())
    return {"step": result["step"], "bytes": result["bytes"], "seconds": result["seconds"]}
