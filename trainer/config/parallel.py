"""Typed schema of a parallel layout (the `parallel:` group of conf/parallel/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

# Choices of str fields (OmegaConf does not accept typing.Literal), checked in __post_init__.
TOKEN_DISPATCHERS = ("alltoall", "allgather", "flex")


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
    expert_tensor_parallel: int | None = None
    """TP size inside the routed experts (megatron's ETP); None = tensor_parallel. The
    DeepSeek-V3 recipes use 1: each expert is whole on its rank, TP splits attention and the
    dense MLPs only, and a TP rank routes just its own sequence shard's tokens."""
    sequence_parallel: bool = False
    """Shard activations along the sequence in TP regions (required for MoE with TP > 1)."""
    context_parallel: int = 1
    """CP size (sequence split for attention); 1 = off."""
    use_distributed_optimizer: bool = False
    """Shard optimizer states across data-parallel ranks (ZeRO-1)."""
    moe_token_dispatcher: str = "alltoall"
    """MoE token dispatcher: alltoall, allgather, or flex (DeepEP's fused dispatch/combine
    kernels over NVLink + RDMA; needs the deep_ep package and CUDA)."""
    moe_permute_fusion: bool = False
    """Fused token permute/unpermute kernels (Transformer Engine >= 2.1)."""
    moe_a2a_overlap: bool = False
    """Overlap the expert-parallel all-to-all of one micro-batch with another's compute
    (megatron's combined 1F1B schedule, `overlap_moe_expert_parallel_comm`): needs CUDA, EP > 1,
    the alltoall or flex dispatcher, bf16/fp16, VPP when PP > 1, no full recompute, at most one
    MTP layer. Holds one more micro-batch's activations in flight."""
    distributed_timeout_s: float = 600.0
    """Timeout of every collective (torch.distributed process groups). The V3 recipe uses
    3600: the first steps of a 1024-GPU job (CUDA graph capture, DeepEP buffers) are slow."""
    device_memory_gib: float | None = None
    """Memory of one GPU the layout is planned for (H100 / H800 SXM: 80). The dry run prints
    the headroom of the memory estimate against it; None = not checked."""
    pipeline_layout: str | None = None
    """Uneven pipeline split in megatron's layout syntax (E embedding, t layer, m MTP, L loss,
    | between virtual stages), e.g. "Ett|(tt|)*29t|mL" for 61 layers on PP8 x VPP4; None = even."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "expert_parallel", "context_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel config: {name} must be >= 1")
        if self.expert_tensor_parallel is not None and self.expert_tensor_parallel < 1:
            raise ValueError("parallel config: expert_tensor_parallel must be >= 1 (or null)")
        if self.moe_token_dispatcher not in TOKEN_DISPATCHERS:
            raise ValueError(
                f"parallel config: moe_token_dispatcher={self.moe_token_dispatcher!r} is not one "
                f"of {list(TOKEN_DISPATCHERS)}"
            )
        if self.distributed_timeout_s <= 0:
            raise ValueError("parallel config: distributed_timeout_s must be > 0")
        if self.device_memory_gib is not None and self.device_memory_gib <= 0:
            raise ValueError("parallel config: device_memory_gib must be > 0 (or null)")
        if self.virtual_pipeline_parallel is not None and self.pipeline_parallel < 2:
            raise ValueError(
                "parallel config: virtual_pipeline_parallel needs pipeline_parallel >= 2"
            )

    @property
    def expert_tensor_parallel_size(self) -> int:
        """ETP in effect (tensor_parallel when not set)."""
        return self.expert_tensor_parallel or self.tensor_parallel

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
