"""No orphans: processes of a training run end when the process that started them ends.

Linux delivers a chosen signal to a process when its parent dies (prctl PR_SET_PDEATHSIG).
torchrun starts each rank in its own session and, when the agent itself is SIGKILLed, never
tells the ranks: they would train on, write checkpoints and hold the GPUs. A rank therefore
asks for SIGTERM on its parent's death (its handler saves at the next step and exits); helper
processes that megatron starts get SIGKILL (they hold no state of their own), and so do the
processes data_prep forks while a phase runs (datatrove's multiprocessing Manager and pool
workers), via `children_die_with_me`.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1
_forks_die_with_parent = False


def _set_parent_death_signal(sig: int) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: nothing to ask for
        return False
    return libc.prctl(_PR_SET_PDEATHSIG, sig) == 0


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (a multiprocessing initializer)."""
    _set_parent_death_signal(signal.SIGKILL)


def stop_with_parent(sig: int = signal.SIGTERM) -> None:
    """Send `sig` to this process when its parent dies; if the parent is already gone, now."""
    parent = os.getppid()
    if _set_parent_death_signal(sig) and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _after_fork_in_child() -> None:
    if _forks_die_with_parent:
        die_with_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def children_die_with_me() -> Iterator[None]:
    """Processes forked in this block get SIGKILL when their parent dies (a SIGKILLed data_prep
    run would otherwise leave its multiprocessing Manager serving forever). Only os.fork-based
    children: fork+exec (subprocess, spawn) children are left to exit on their own."""
    global _forks_die_with_parent
    before, _forks_die_with_parent = _forks_die_with_parent, True
    try:
        yield
    finally:
        _forks_die_with_parent = before
