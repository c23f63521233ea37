"""Sandbox launcher: the first code that runs in the sandboxed child (never imported by the
evaluating process). `evaluation.sandbox` starts it as

    [unshare --net --mount --] python -I -S evaluation/_launcher.py '<json settings>'

with the fresh work directory as cwd. It applies the OS-level layers that need to run inside the
child (tmpfs over world-writable directories, a unique unprivileged uid, no-new-privs, rlimits),
then the Python-level guards, then executes `main.py` from the work directory. Stdlib only.

Exit protocol: 0 and the line `PASSED` on the original stdout = the program ran to its end;
1 = it raised (the exception's last line on stderr); 121 = the sandbox could not be set up.
"""

import json
import os
import resource
import sys

SETUP_FAILED = 121
PASSED_MARKER = b"PASSED\n"
# Unique per concurrent sandbox (pids are unique among live processes), far above real accounts
# and the usual /etc/subuid ranges.
UID_BASE = 1_500_000_000
# World-writable directories that get a private, throwaway tmpfs inside the mount namespace.
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
PR_SET_NO_NEW_PRIVS = 38
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mask_world_writable(libc) -> None:
    """Mount an empty tmpfs over each world-writable directory (private mount namespace)."""
    import ctypes

    for path in WORLD_WRITABLE:
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        rc = libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, b"size=16m,mode=1777")
        if rc != 0:
            raise OSError(ctypes.get_errno(), f"mount tmpfs on {path}")


def _expose_python(libc) -> None:
    """Private mount namespace: when an ancestor of the Python prefix is closed to other users
    (e.g. /root/.pyenv), hide that ancestor behind an empty tmpfs and bind the prefix back
    read-only, so the unique uid can import the stdlib and sees nothing else there."""
    import ctypes

    prefix = os.path.realpath(sys.base_prefix)
    parts = prefix.split(os.sep)
    closed = [
        os.sep.join(parts[:i])
        for i in range(2, len(parts) + 1)
        if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001
    ]
    if not closed:
        return
    fd = os.open(prefix, os.O_PATH)
    steps = [
        (b"tmpfs", closed[0].encode(), b"tmpfs", 0, b"size=1m,mode=755"),
        (f"/proc/self/fd/{fd}".encode(), prefix.encode(), None, MS_BIND | MS_REC, None),
        (None, prefix.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None),
    ]
    for i, (source, target, fstype, flags, data) in enumerate(steps):
        if i == 1:
            os.makedirs(prefix, exist_ok=True)  # inside the fresh tmpfs
        if libc.mount(source, target, fstype, flags, data) != 0:
            raise OSError(ctypes.get_errno(), f"mount step {i} on {target.decode()}")
    os.close(fd)


def _drop_privileges() -> None:
    uid = UID_BASE + os.getpid()
    os.chown(".", uid, uid)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _set_limits(cfg: dict) -> None:
    cpu = int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    # Counts every process/thread of the (unique) uid: 1 = no fork, no thread. Ignored for root.
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))


def _setup(cfg: dict) -> None:
    libc = _libc() if (cfg["mask_tmp"] or cfg["drop_privileges"]) else None
    if cfg["mask_tmp"]:
        _mask_world_writable(libc)
    if cfg["mask_tmp"] and cfg["drop_privileges"]:
        _expose_python(libc)
    if cfg["drop_privileges"]:
        _drop_privileges()
    if libc is not None and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    _set_limits(cfg)


def _blocked(name: str):
    def blocked(*args, **kwargs):
        raise PermissionError(f"sandbox: {name} is disabled")

    return blocked


def _install_guards(workdir: str) -> None:
    """Python-level guards (defense in depth; ctypes or a C extension could bypass them)."""
    import _posixsubprocess
    import _socket
    import builtins
    import io
    import socket

    for name in (
        "fork",
        "forkpty",
        "system",
        "popen",
        "posix_spawn",
        "posix_spawnp",
        "kill",
        "killpg",
        "setsid",
        "setpgid",
        "execv",
        "execve",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "execvp",
        "execvpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
    ):
        if hasattr(os, name):
            setattr(os, name, _blocked(f"os.{name}"))
    _posixsubprocess.fork_exec = _blocked("subprocess")
    for mod in (socket, _socket):
        for name in ("socket", "socketpair", "fromfd", "create_connection", "create_server"):
            if hasattr(mod, name):
                setattr(mod, name, _blocked(f"socket.{name}"))
    for name in ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError

    root = os.path.realpath(workdir) + os.sep

    def inside(path) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        return os.path.realpath(os.fsdecode(path)).startswith(root)

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"sandbox: write outside the work directory: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        if flags & writes and not inside(path):
            raise PermissionError(f"sandbox: write outside the work directory: {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name, num_paths in (
        ("remove", 1),
        ("unlink", 1),
        ("rmdir", 1),
        ("mkdir", 1),
        ("chmod", 1),
        ("chown", 1),
        ("truncate", 1),
        ("utime", 1),
        ("mkfifo", 1),
        ("rename", 2),
        ("replace", 2),
        ("link", 2),
        ("symlink", 2),
    ):
        real = getattr(os, name)

        def guarded(*args, _real=real, _name=name, _n=num_paths, **kwargs):
            if not all(inside(p) for p in args[:_n]):
                raise PermissionError(f"sandbox: os.{_name} outside the work directory")
            return _real(*args, **kwargs)

        setattr(os, name, guarded)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    try:
        _setup(cfg)
        with open("main.py", encoding="utf-8") as f:
            source = f.read()
        result_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if cfg["python_guards"]:
            _install_guards(os.getcwd())
    except BaseException as e:
        os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(SETUP_FAILED)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "main.py", "exec"), namespace)
    except BaseException as e:  # SystemExit included: a program that exits did not pass
        namespace.clear()  # frees what a runaway allocation held, so the report can be written
        os.write(2, f"{type(e).__name__}: {e}"[:2000].encode(errors="replace") + b"\n")
        os._exit(1)
    os.write(result_fd, PASSED_MARKER)
    os._exit(0)


if __name__ == "__main__":
    main()
