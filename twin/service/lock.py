"""One process per data dir.

Two stations on one data dir would both drain the same durable queue: the CSMS would get
every StartTransaction twice under two connections with the same identity, and each would
bind the other's transaction ids. SQLite's own locking keeps the file intact but not the
protocol, so ``twin run`` and ``twin fleet`` take an exclusive ``flock(2)`` on
``<data_dir>/twin.lock`` before they open anything else and hold it until they exit.

flock rather than a pid file: the kernel drops the lock when the holder dies, kill -9 and
power loss included, so a stale lock cannot keep a station down after a crash. The
holder's pid is written into the file only to name it in the error.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "twin.lock"
_HELD: dict[Path, "DataDirLock"] = {}


class DataDirBusy(Exception):
    """Another live process holds the data dir."""


class DataDirLock:
    """The held lock; :meth:`release` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int | None, unlocked_reason: str = ""):
        self.path = path
        self._fd: int | None = fd
        # Set when the lock file could not even be created (a full disk): the station runs
        # unguarded rather than not at all, as it runs on a full disk otherwise
        # (docs/durability.md), and says so.
        self.unlocked_reason = unlocked_reason

    @property
    def fd(self) -> int | None:
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing our descriptor drops the flock (unless a child shares it)
            self._fd = None
        _HELD.pop(self.path, None)


def held_descriptors() -> tuple[int, ...]:
    """The descriptors of the locks this process holds, for a child to inherit
    (``subprocess.Popen(pass_fds=...)``): the firmware launcher's child shares the open file
    and with it the lock, so the data dir stays held while either of them lives (a launcher
    killed alone must not free the dir under a still running station)."""
    return tuple(lock.fd for lock in _HELD.values() if lock.fd is not None)


def hold(data_dir: Path, what: str = "station") -> DataDirLock:
    """Take ``<data_dir>/twin.lock`` or raise :class:`DataDirBusy` naming the holder.

    The descriptor is close-on-exec (os.open's default since PEP 446): a Reset that re-execs
    the process drops the lock with the old image and the new one takes it again; a child
    the firmware launcher starts does not inherit it and must not take it (the launcher
    holds it for the child)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return DataDirLock(path, None, f"cannot create {path} ({e.strerror}): running without the "
                                           "data-dir lock; nothing stops a second station on this dir")
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            by = f"process {holder}" if holder else "another process"
            raise DataDirBusy(f"{data_dir} is in use by {by} (it holds {path}); two {what}s on one data dir "
                              "would send the same durable queue twice: stop the other one or give this "
                              "one its own --data-dir") from None
        raise
    except BaseException:
        os.close(fd)
        raise
    try:  # the pid only names the holder in the error: a full disk must not stop the start
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
    except OSError:
        pass
    lock = _HELD[path] = DataDirLock(path, fd)
    return lock


def hold_for_command(data_dir: Path, what: str = "station") -> DataDirLock | None:
    """:func:`hold` for ``twin run`` / ``twin fleet``: the lock, with a warning on stderr when
    it could not be taken for want of space; None, with the reason on stderr, when the dir is
    busy or unusable (the command then exits 3)."""
    import sys

    try:
        lock = hold(data_dir, what)
    except (DataDirBusy, OSError) as e:
        print(f"twin: cannot take the data dir: {e}", file=sys.stderr)
        return None
    if lock.unlocked_reason:
        print(f"twin: warning: {lock.unlocked_reason}", file=sys.stderr)
    return lock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode("ascii", "replace").split(maxsplit=1)[0]
    except (OSError, IndexError):
        return ""
