"""Run a function in N spawned gloo processes on CPU (tests' multi-process helper).

`run_distributed(fn, world_size, *args)` starts `world_size` processes with the torchrun
environment variables set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free
port), calls `fn(*args)` in each, and returns the per-rank return values. An exception on any
rank is re-raised here with that rank's traceback; a hung group fails after `timeout_s`.
`fn` must be importable (defined at module level) because processes are spawned.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any


class DistributedTestError(RuntimeError):
    """A rank raised (message holds the rank and its traceback)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable, rank: int, world_size: int, port: int, results: Any, args: tuple):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch

    torch.set_num_threads(1)
    try:
        results.put((rank, True, fn(*args)))
    except BaseException:  # noqa: BLE001 - forwarded to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable, world_size: int, *args: Any, timeout_s: float = 300.0
) -> list[Any]:
    """Run `fn(*args)` on `world_size` gloo ranks; return the results ordered by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, r, world_size, port, results, args))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        while len(out) < world_size:
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue.Empty:
                msg = f"timed out after {timeout_s}s; got ranks {sorted(out)}"
                raise DistributedTestError(msg) from None
            if not ok:
                raise DistributedTestError(f"rank {rank} failed:\n{value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]
