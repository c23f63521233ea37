"""A stage's output folder: checked before anything is written, and locked while a run writes it.

One run at a time per output folder: `OutputLock` holds an exclusive, non-blocking `fcntl.flock`
on `<output>/.work/lock` (the file records the holder's pid). A second run into the same folder
fails at once with `OutputBusyError` instead of interleaving its documents with the first run's
stats and completion marker. The kernel drops the lock when the holder exits, even on SIGKILL,
so a stale lock file never blocks a rerun. Forked children (datatrove's local workers, the
multiprocessing manager) close their copy of the lock: a helper process orphaned by a killed
run must not keep holding it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from data_prep.errors import InputError, OutputBusyError

LOCK = "lock"
_HELD: set[int] = set()  # lock fds held by this process


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # the parent's flock stays: it holds its own descriptor
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def check_output(out: Path, spec: str) -> None:
    """Refuse an output that is a file, lies under a file, or cannot be written (one line)."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == out else f"is under a file ({parent})"
                raise InputError(f"output {spec} {what}: output must be a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"output {spec} is not writable (no write permission on {parent})")
            return


class OutputLock:
    """`with OutputLock(out):` exclusive writer of `out` (creates `out/.work/`)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / ".work" / LOCK
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"output {self.out} is not writable ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"another data_prep run is writing {self.out} (pid {holder}); wait for it to "
                f"finish or choose another output"
            ) from None
        self._fd = fd
        _HELD.add(fd)
        return self

    def record_pid(self) -> None:
        """Write this process's pid into the lock file (named in a second run's error). Done
        only once the run is going to write: a skipped rerun leaves every file untouched."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.close(self._fd)  # releases the flock; the file stays (unlinking it would race)
            self._fd = None
