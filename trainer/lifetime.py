"""No orphans: processes of a training run end when the process that started them ends.

Linux delivers a chosen signal to a process when its parent dies (prctl PR_SET_PDEATHSIG).
torchrun starts each rank in its own session and, when the agent itself is SIGKILLed, never
tells the ranks: they would train on, write checkpoints and hold the GPUs. A rank therefore
asks for SIGTERM on its parent's death (its handler saves at the next step and exits); helper
processes that megatron starts get SIGKILL (they hold no state of their own).
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


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
