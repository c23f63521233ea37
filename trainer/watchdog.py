"""Hang watchdog: a rank that makes no progress for `resilience.hang_timeout_s` says where it is
and exits, instead of sitting silent until the collective's own timeout (if ever).

Progress is a `beat()` from the training loop (every step, eval and save). When a rank's last
beat is older than the timeout, its watchdog thread
- prints a header and the stacks of all its threads (faulthandler) into the rank's log;
- writes `<checkpoint.dir>/hang/rank_<r>.json`: the last completed step, seconds idle, the main
  thread's stack and whether it is inside torch.distributed (waiting in a collective);
- exits the process with HANG_EXIT (76), so torchrun ends the other ranks and Slurm sees a
  failure it can requeue.
A hang stops every rank's beats at once, so all watchdogs fire within a poll of each other.
Rank 0 waits up to `grace_s` for the other ranks' files and writes `hang/report.json` and one
line naming the suspects: ranks whose main thread is not inside torch.distributed. The ranks
waiting in a collective are victims; the one doing something else (a slow or stuck computation,
I/O, a sleep) is the cause.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

HANG_EXIT = 76
"""Process exit code of a rank stopped by the watchdog (75 is a requested stop)."""
REPORT_ENV = "PRETRAIN_HANG_REPORT"
"""Set by the batch script: rank 0 writes the hang report there too."""
_SAME_HANG_S = 60.0
"""Records fired this close together belong to one hang (the ranks' timers differ by a poll)."""
_COLLECTIVES = (
    f"torch{os.sep}distributed{os.sep}",
    f"megatron{os.sep}core{os.sep}distributed{os.sep}",
    f"tensor_parallel{os.sep}mappings",
    f"pipeline_parallel{os.sep}p2p_communication",
)
"""Where a main-thread stack shows a rank waiting for the others."""


class HangWatchdog:
    """`with HangWatchdog(...) as dog: ... dog.beat(step) ...`; timeout <= 0 turns it off."""

    def __init__(
        self, timeout_s: float, rank: int, world: int, folder: Path, grace_s: float = 10.0
    ):
        self.timeout_s, self.rank, self.world = timeout_s, rank, world
        self.folder, self.grace_s = Path(folder), grace_s
        self._last, self._step = time.monotonic(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)

    def __enter__(self) -> HangWatchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self, step: int) -> None:
        self._last, self._step = time.monotonic(), step

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(poll):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        print(
            f"[watchdog] rank {self.rank}: no progress for {idle:.0f} s after step "
            f"{self._step} (resilience.hang_timeout_s={self.timeout_s:g}); stacks of all "
            f"threads follow",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        record = self._record(idle)
        _write_json(self.folder / f"rank_{self.rank}.json", record)
        if self.rank == 0:
            report = self._report(record["fired_at"])
            _write_json(self.folder / "report.json", report)
            if os.environ.get(REPORT_ENV):  # where the launch layer looks (slurm.recover)
                _write_json(Path(os.environ[REPORT_ENV]), report)
            print(f"[watchdog] {report['summary']}", file=sys.stderr, flush=True)
        else:  # stay until rank 0 reported: once one rank is gone the others' collectives fail
            self._wait_for_report(record["fired_at"])
        sys.stderr.flush()
        os._exit(HANG_EXIT)

    def _wait_for_report(self, fired_at: float) -> None:
        deadline = time.monotonic() + self.grace_s + 2 * self.timeout_s
        report = self.folder / "report.json"
        while time.monotonic() < deadline:
            try:
                if json.loads(report.read_text()).get("fired_at", 0) >= fired_at - _SAME_HANG_S:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)

    def _record(self, idle: float) -> dict[str, Any]:
        frame = sys._current_frames().get(threading.main_thread().ident)
        stack = traceback.format_stack(frame) if frame is not None else []
        return {
            "rank": self.rank,
            "host": socket.gethostname(),
            "step": self._step,
            "idle_s": round(idle, 1),
            "fired_at": time.time(),
            "in_collective": any(m in line for line in stack for m in _COLLECTIVES),
            "where": stack[-1].strip().splitlines()[0] if stack else "?",
            "stack": stack,
        }

    def _report(self, fired_at: float) -> dict[str, Any]:
        """Every rank's record of this hang (waiting up to grace_s for them), suspects and a
        summary line; records of an earlier hang in the same folder are ignored."""
        deadline = time.monotonic() + self.grace_s
        records: dict[int, dict] = {}
        while time.monotonic() < deadline and len(records) < self.world:
            for r in range(self.world):
                try:
                    rec = json.loads((self.folder / f"rank_{r}.json").read_text())
                except (OSError, ValueError):
                    continue
                if rec.get("fired_at", 0) >= fired_at - _SAME_HANG_S:
                    records[r] = rec
            time.sleep(0.2)
        missing = [r for r in range(self.world) if r not in records]
        suspects = sorted(r for r, rec in records.items() if not rec["in_collective"])
        waiting = sorted(r for r, rec in records.items() if rec["in_collective"])
        where = "; ".join(f"rank {r} at {records[r]['where']}" for r in suspects)
        summary = (
            f"hang after step {self._step}: suspects {suspects or 'none'}"
            + (f" ({where})" if where else "")
            + f"; waiting in a collective: {waiting}"
            + (f"; no report from ranks {missing} (dead or stuck harder)" if missing else "")
        )
        return {
            "timeout_s": self.timeout_s,
            "step": self._step,
            "fired_at": fired_at,
            "suspects": suspects,
            "waiting": waiting,
            "missing": missing,
            "summary": summary,
            "ranks": {str(r): rec for r, rec in sorted(records.items())},
        }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def first_attempt() -> bool:
    """Neither Slurm nor torchrun has restarted this job."""
    return all(
        os.environ.get(v, "0") == "0" for v in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
    )


def inject_fault(cfg: Any, rank: int, step: int) -> None:
    """Test-only hooks (`resilience.inject_hang_*`, `inject_kill_*`), first attempt only: this
    rank sleeps inside the step, or SIGKILLs itself, at the start of the given step."""
    if not first_attempt():
        return
    if (rank, step) == (cfg.inject_hang_rank, cfg.inject_hang_step):
        print(
            f"[watchdog] test hook: rank {rank} sleeps in step {step}", file=sys.stderr, flush=True
        )
        time.sleep(10**6)
    if (rank, step) == (cfg.inject_kill_rank, cfg.inject_kill_step):
        print(
            f"[watchdog] test hook: rank {rank} kills itself in step {step}",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGKILL)
