"""The one place that initialises torch.distributed and megatron-core's parallel state.

`validate_layout` checks a ParallelConfig against the model and world size before any process
group exists; `initialize_parallel` creates the groups (gloo + CPU patches on CPU, NCCL on GPU)
and seeds megatron's RNG tracker; `destroy_parallel` tears everything down.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig
from trainer.cpu_patches import apply_cpu_patches


@dataclass(frozen=True)
class Layout:
    """Resolved process layout of a run (sizes only; ranks come from parallel_state)."""

    world_size: int
    tensor: int
    pipeline: int
    virtual_pipeline: int | None
    expert: int
    context: int
    data: int

    def describe(self) -> str:
        vpp = f" (x{self.virtual_pipeline} virtual)" if self.virtual_pipeline else ""
        return (
            f"world {self.world_size} = DP{self.data} x TP{self.tensor} x PP{self.pipeline}"
            f"{vpp} x CP{self.context}; EP{self.expert} (experts sharded within DPxCP)"
        )


def validate_layout(model: ModelConfig, parallel: ParallelConfig, world_size: int) -> Layout:
    """Raise ValueError with a clear message if the layout cannot run this model."""
    p = parallel
    data = p.data_parallel_size(world_size)
    stages = p.pipeline_parallel * (p.virtual_pipeline_parallel or 1)
    if model.num_layers % stages and p.pipeline_layout is None:
        raise ValueError(
            f"parallel layout: num_layers={model.num_layers} is not divisible by PP x VPP = "
            f"{p.pipeline_parallel} x {p.virtual_pipeline_parallel or 1} = {stages}"
        )
    if model.is_moe:
        if model.num_experts % p.expert_parallel:
            raise ValueError(
                f"parallel layout: num_experts={model.num_experts} is not divisible by "
                f"expert_parallel={p.expert_parallel}"
            )
        if p.tensor_parallel > 1 and not p.sequence_parallel:
            raise ValueError(
                "parallel layout: MoE with tensor_parallel > 1 needs sequence_parallel=true"
            )
        etp = p.expert_tensor_parallel_size
        expert_world = p.expert_parallel * etp * p.pipeline_parallel
        if world_size % expert_world:
            raise ValueError(
                f"parallel layout: world size {world_size} is not divisible by "
                f"EP x ETP x PP = {p.expert_parallel} x {etp} x {p.pipeline_parallel}"
            )
        if model.moe_ffn_hidden_size % etp:
            raise ValueError(
                f"parallel layout: moe_ffn_hidden_size={model.moe_ffn_hidden_size} is not "
                f"divisible by expert_tensor_parallel={etp}"
            )
    elif p.expert_parallel > 1 or p.expert_tensor_parallel is not None:
        raise ValueError(
            "parallel layout: expert_parallel > 1 / expert_tensor_parallel need a MoE model "
            "(num_experts)"
        )
    if p.sequence_parallel and p.tensor_parallel == 1:
        raise ValueError("parallel layout: sequence_parallel needs tensor_parallel > 1")
    _check_heads(model, p.tensor_parallel)
    return Layout(
        world_size,
        p.tensor_parallel,
        p.pipeline_parallel,
        p.virtual_pipeline_parallel,
        p.expert_parallel,
        p.context_parallel,
        data,
    )


def _check_heads(model: ModelConfig, tp: int) -> None:
    if model.num_attention_heads % tp:
        raise ValueError(
            f"parallel layout: num_attention_heads={model.num_attention_heads} is not "
            f"divisible by tensor_parallel={tp}"
        )
    groups = model.num_query_groups
    if groups and not model.is_mla and groups % tp:
        raise ValueError(
            f"parallel layout: num_query_groups={groups} is not divisible by tensor_parallel={tp}"
        )


def free_port() -> int:
    """A TCP port that is free right now on this host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SLURM_ENV = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID"}


def env_world_size() -> int:
    """World size from torchrun's WORLD_SIZE, else srun's SLURM_NTASKS, else 1."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def _init_process_group(timeout_s: float) -> None:
    if dist.is_initialized():
        return
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:  # launched by srun
        for ours, slurm in _SLURM_ENV.items():
            os.environ.setdefault(ours, os.environ.get(slurm, "0"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank = int(os.environ.get("RANK", "0"))
    world = env_world_size()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=timeout, store=_restart_store(world, timeout)
    )


def _restart_store(world: int, timeout: timedelta) -> dist.Store | None:
    """After a torchrun restart (`--max-restarts`), the agent's store under a fresh prefix:
    torchrun keeps one store across restarts, and the failed attempt's keys (e.g. the gloo
    addresses of its ranks) would otherwise be read by the new ranks. None = the default."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"/trainer/restart_{restart}", store)


RANK_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "GROUP_RANK",
    "ROLE_RANK",
)
"""Variables through which torchrun (or srun via _SLURM_ENV) places a process in a job."""


def single_process_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process' environment, edited in place) without RANK_ENV: a tool
    that builds its own one-rank group (export, import) runs alone even inside a torchrun job."""
    env = os.environ if env is None else env
    for key in RANK_ENV:
        env.pop(key, None)
    return env  # type: ignore[return-value]


def initialize_parallel(model: ModelConfig, parallel: ParallelConfig, seed: int) -> Layout:
    """Validate, create the process groups (env:// rendezvous, `parallel.distributed_timeout_s`
    for every collective) and seed the RNG tracker."""
    if not torch.cuda.is_available():
        apply_cpu_patches()
    world = dist.get_world_size() if dist.is_initialized() else env_world_size()
    layout = validate_layout(model, parallel, world)
    _init_process_group(parallel.distributed_timeout_s)
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_parallel,
        context_parallel_size=parallel.context_parallel,
        expert_model_parallel_size=parallel.expert_parallel,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size,
        distributed_timeout_minutes=parallel.distributed_timeout_s / 60,  # megatron's subgroups
    )
    seed_everything(seed)
    model_parallel_cuda_manual_seed(seed)
    return layout


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's default generator. megatron's tracker seeds only the
    tensor-parallel states; parameters it initialises outside them (norms, router, MTP
    projections) and CPU runs draw from the default generator, so without this two identical
    runs start from different weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def destroy_parallel() -> None:
    """Destroy megatron's groups and the default process group (safe to call twice)."""
    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()  # no rank may leave (and free its store/port) while others still talk
        dist.destroy_process_group()
