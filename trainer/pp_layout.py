"""Which decoder layers, embedding, MTP and loss each pipeline stage builds.

An even split follows megatron's layer offsets (virtual stage-major, then pipeline rank); an
uneven one is given in megatron's `pipeline_layout` syntax (E embedding, t decoder layer, m MTP,
L loss, | between virtual stages, "(...)*n" repeats), e.g. "Ett|(tt|)*29t|mL" for DeepSeek-V3's
61 layers on PP8 x VPP4. Parsed here without importing megatron (dry runs stay light).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig


@dataclass(frozen=True)
class Stage:
    """What one model chunk (virtual pipeline stage) of one pipeline rank builds."""

    layers: tuple[int, ...]
    """Decoder layer indices."""
    embedding: bool
    """Holds the input embedding (first stage)."""
    mtp: bool
    """Holds the MTP modules (and, when it is not the first stage, a copy of the embedding)."""
    last: bool
    """Holds the final norm, output head and loss."""
    first: bool
    """Is the first virtual stage of pipeline rank 0."""


def pipeline_stages(model_cfg: ModelConfig, parallel_cfg: ParallelConfig) -> list[list[Stage]]:
    """stages[pp_rank][chunk]: an even split (megatron's offsets), or megatron's uneven
    `pipeline_layout` string (E embedding, t decoder layer, m MTP, L loss, | between stages)."""
    pp, vpp = parallel_cfg.pipeline_parallel, parallel_cfg.virtual_pipeline_parallel or 1
    layout = getattr(parallel_cfg, "pipeline_layout", None)
    if layout:
        flat = parse_pipeline_layout(layout)
        if len(flat) % pp:
            raise ValueError(f"pipeline_layout has {len(flat)} stages, not a multiple of PP {pp}")
        chunks = len(flat) // pp
        kinds = [[flat[c * pp + r] for c in range(chunks)] for r in range(pp)]
    else:
        stages = pp * vpp
        if model_cfg.num_layers % stages:
            raise ValueError(
                f"num_layers {model_cfg.num_layers} is not divisible by PP x VPP = {stages} "
                f"(set parallel.pipeline_layout for an uneven split)"
            )
        per = model_cfg.num_layers // stages
        kinds = [[["decoder"] * per for _ in range(vpp)] for _ in range(pp)]
        kinds[0][0].insert(0, "embedding")
        kinds[-1][-1] += ["mtp"] * bool(model_cfg.mtp_num_layers) + ["loss"]
    return _number_layers(kinds, pp, len(kinds[0]))


_LAYOUT_CHARS = {"E": "embedding", "t": "decoder", "m": "mtp", "L": "loss"}


def parse_pipeline_layout(layout: str) -> list[list[str]]:
    """Megatron's layout string as a list of virtual stages (same rules as megatron-core's
    PipelineParallelLayerLayout.parse_str_to_list: "(...)*n" and "x*n" repeat, "," is cosmetic)."""
    text = layout.replace(",", "")
    for pattern in (r"\(([^)]+)\)\*(\d+)", r"(.)\*(\d+)"):
        text = re.sub(pattern, lambda m: m.group(1) * int(m.group(2)), text)
    stages = []
    for stage in text.split("|"):
        unknown = set(stage) - set(_LAYOUT_CHARS)
        if unknown:
            raise ValueError(f"pipeline_layout {layout!r}: unknown characters {sorted(unknown)}")
        stages.append([_LAYOUT_CHARS[ch] for ch in stage])
    return stages


def _number_layers(kinds: list[list[list[str]]], pp: int, vpp: int) -> list[list[Stage]]:
    """Decoder layer ids follow megatron's order: chunk-major, then pipeline rank."""
    stages: list[list[Stage | None]] = [[None] * vpp for _ in range(pp)]
    next_layer = 0
    for chunk in range(vpp):
        for rank in range(pp):
            k = kinds[rank][chunk]
            n = k.count("decoder")
            stages[rank][chunk] = Stage(
                layers=tuple(range(next_layer, next_layer + n)),
                embedding="embedding" in k,
                mtp="mtp" in k,
                last=rank == pp - 1 and chunk == vpp - 1,
                first=rank == 0 and chunk == 0,
            )
            next_layer += n
    return stages  # type: ignore[return-value]


def chunk_layers(num_layers: int, pp: int, vpp: int | None, pp_rank: int, chunk: int) -> range:
    """Decoder layers of model chunk `chunk` on pipeline rank `pp_rank` (even split)."""
    cfg = ModelConfig(num_layers=num_layers, num_experts=None, router_enable_expert_bias=False)
    par = ParallelConfig(pipeline_parallel=pp, virtual_pipeline_parallel=vpp)
    layers = pipeline_stages(cfg, par)[pp_rank][chunk].layers
    return range(layers[0], layers[-1] + 1) if layers else range(0)
