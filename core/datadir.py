"""Where a node keeps its state: one data directory per identity, one node at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import platformdirs

from core.errors import UsageError

__all__ = [
    "ENV_DATA_DIR",
    "LOCK_FILE_NAME",
    "DataDirBusy",
    "DataDirLock",
    "default_data_dir",
    "resolve_data_dir",
]

ENV_DATA_DIR = "MESH_DATA_DIR"
LOCK_FILE_NAME = "node.lock"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("meshsuite", appauthor=False))


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--data-dir`` wins, then ``$MESH_DATA_DIR``, then the XDG data directory."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().absolute()
    return default_data_dir()


class DataDirBusy(UsageError):
    """Another node process holds the data directory's lock."""


class DataDirLock:
    """An OS lock (``flock``) on ``<data dir>/node.lock``, held for a node's whole life.

    The kernel drops it when the process ends, however it ends (kill -9 included), so a
    stale lock never needs cleaning up, and two processes can never both hold it. The
    file itself is never deleted (deleting it would let a third process lock a new file
    while the second still holds the old one); it only carries the holder's pid.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Take the lock or raise :class:`DataDirBusy` (nothing in the directory touched)."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / LOCK_FILE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise DataDirBusy(
                f"a node is already running on {data_dir}{who}: use it (`mesh status`), "
                f"stop it first, or give another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None
