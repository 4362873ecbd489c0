"""One monitor run at a time per state database: an exclusive `flock` on `<state>.lock`.

The kernel drops the lock when the process dies, however it dies, so a killed run never leaves
a stale lock behind. A second run finds the lock held and stops with one line (BusyError).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from changedet.errors import BusyError, ConfigError, OutputError

__all__ = ["hold_lock", "lock_path"]


def lock_path(state: Path) -> Path:
    return state.with_name(state.name + ".lock")


@contextlib.contextmanager
def hold_lock(state: Path) -> Iterator[None]:
    """Hold the state's run lock for the block; BusyError at once if another process has it."""
    path = lock_path(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # settings, not the machine
            raise ConfigError(
                f"cannot create the lock file '{path}': {exc.strerror}; point the watch-list's "
                "state (or --state) at a folder this job can write"
            ) from None
        raise OutputError(f"cannot create the lock file '{path}': {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock '{path}': {exc.strerror}") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise BusyError(
                f"another monitor run (pid {holder}) is using {state}; this run did nothing "
                "(it will be picked up by the next scheduled run)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
