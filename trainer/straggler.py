"""Straggler report: which ranks are slow, and how much slower than their peers.

Every step each rank notes its step time and its compute time: the wall time from the step's
start until the rank enters the data-parallel gradient reduction (on a GPU after a
synchronize), i.e. the work it did before it had to wait for the others. Every `interval`
steps one all-gather of three numbers per rank (summed compute, summed step time, pipeline
stage) lets rank 0 compare each rank with the low median of its pipeline stage (stages differ
in work by design; the low median keeps a 2-rank group's fast rank as the reference). The
report names the slowest ranks, their host and ratio; the loop logs `straggler/*` metrics.

A slow rank drags its tensor-parallel peers (they wait for it inside each layer), so a slow TP
group shows up as several ranks of one replica; the first named is the one to look at.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Report:
    step: int
    ratios: dict[int, float]
    """rank -> compute time / low median of its pipeline stage, slowest first."""
    compute_s: dict[int, float]
    """rank -> mean compute seconds per step over the interval."""
    hosts: list[str]

    def slowest(self, k: int = 3) -> list[int]:
        return list(self.ratios)[:k]

    def line(self) -> str:
        def one(r: int) -> str:
            return f"rank {r} ({self.hosts[r]}) {self.compute_s[r]:.3f} s = {self.ratios[r]:.2f}x"

        return f"step {self.step}: slowest " + "; ".join(one(r) for r in self.slowest())

    def metrics(self) -> dict[str, float]:
        worst = self.slowest(1)[0]
        return {
            "straggler/max_ratio": self.ratios[worst],
            "straggler/slowest_rank": float(worst),
            "straggler/median_compute_s": statistics.median(self.compute_s.values()),
        }


class StragglerMonitor:
    """`begin()` at a step's start, `arrived()` when it reaches the gradient reduction,
    `end(step)` after the optimizer step: a Report every `interval` steps (on every rank)."""

    def __init__(self, interval: int, pp_rank: int, slow_factor: float = 1.0):
        self.interval, self.pp_rank, self.slow_factor = interval, pp_rank, slow_factor
        self._start = self._arrived = 0.0
        self._sums = [0.0, 0.0]
        self._steps = 0
        self.hosts: list[str] = []
        if interval > 0:
            hosts: list = [None] * dist.get_world_size()
            dist.all_gather_object(hosts, socket.gethostname())
            self.hosts = hosts

    def begin(self) -> None:
        self._start = time.perf_counter()
        self._arrived = 0.0

    def arrived(self) -> None:
        if self.interval <= 0 or self._arrived:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.slow_factor > 1.0:  # test hook (resilience.inject_slow_*): this rank is slower
            time.sleep((self.slow_factor - 1.0) * (now - self._start))
            now = time.perf_counter()
        self._arrived = now

    def end(self, step: int) -> Report | None:
        if self.interval <= 0:
            return None
        now = time.perf_counter()
        self._sums[0] += (self._arrived or now) - self._start
        self._sums[1] += now - self._start
        self._steps += 1
        if step % self.interval:
            return None
        mine = torch.tensor([*self._sums, float(self.pp_rank)], dtype=torch.float64)
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else None
        )
        mine = mine.to(device) if device else mine
        every = torch.empty(dist.get_world_size() * 3, dtype=torch.float64, device=mine.device)
        dist.all_gather_into_tensor(every, mine)
        rows = every.view(-1, 3).cpu().tolist()
        steps, self._sums, self._steps = self._steps, [0.0, 0.0], 0
        return _report(step, rows, steps, self.hosts)


def _report(step: int, rows: list[list[float]], steps: int, hosts: list[str]) -> Report:
    compute = {r: row[0] / steps for r, row in enumerate(rows)}
    stages: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        stages.setdefault(int(row[2]), []).append(r)
    ratios = {}
    for ranks in stages.values():
        reference = statistics.median_low([compute[r] for r in ranks]) or 1e-9
        ratios.update({r: compute[r] / reference for r in ranks})
    ordered = dict(sorted(ratios.items(), key=lambda kv: -kv[1]))
    return Report(step, ordered, compute, hosts)
