"""Typed schema of a parallel layout (the `parallel:` group of conf/parallel/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    """TP size: shards attention heads and FFN columns/rows across ranks."""
    pipeline_parallel: int = 1
    """PP size: number of pipeline stages (1F1B schedule)."""
    virtual_pipeline_parallel: int | None = None
    """Virtual stages per pipeline rank (interleaved 1F1B); None = not interleaved."""
    expert_parallel: int = 1
    """EP size: routed experts are split across this many ranks."""
    sequence_parallel: bool = False
    """Shard activations along the sequence in TP regions (required for MoE with TP > 1)."""
    context_parallel: int = 1
    """CP size (sequence split for attention); 1 = off."""
    use_distributed_optimizer: bool = False
    """Shard optimizer states across data-parallel ranks (ZeRO-1)."""
    moe_token_dispatcher: str = "alltoall"
    """MoE token dispatcher: alltoall or allgather."""
    pipeline_layout: str | None = None
    """Uneven pipeline split in megatron's layout syntax (E embedding, t layer, m MTP, L loss,
    | between virtual stages), e.g. "Ett|(tt|)*29t|mL" for 61 layers on PP8 x VPP4; None = even."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "expert_parallel", "context_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel config: {name} must be >= 1")
        if self.virtual_pipeline_parallel is not None and self.pipeline_parallel < 2:
            raise ValueError(
                "parallel config: virtual_pipeline_parallel needs pipeline_parallel >= 2"
            )

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    def data_parallel_size(self, world_size: int) -> int:
        """DP size implied by the world size; raises if the layout does not divide it."""
        if world_size % self.model_parallel_size:
            raise ValueError(
                f"parallel config: world size {world_size} is not divisible by "
                f"TP*PP*CP = {self.model_parallel_size}"
            )
        return world_size // self.model_parallel_size
