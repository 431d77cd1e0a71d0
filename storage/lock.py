"""The data directory's owner lock: one process writes a store at a time.

Two hubs on one directory would each keep their own idea of the topics' last sequences and
overwrite each other's records. :class:`DataDirLock` takes an exclusive ``flock`` on
``<data dir>/zmq-mq.lock`` for as long as the store is open, and writes who holds it (pid, host,
and the hub's endpoint once bound) into the file, so that a refused start can name the running
hub. The kernel drops a ``flock`` when its holder dies, however it dies, so a lock file left by a
``kill -9`` stops nobody: the file stays, the lock does not.

The lock is per open file, not per process: a second store opened in the same process on the
same directory is refused too.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import socket
import time
from pathlib import Path

from .errors import DataDirInUse

__all__ = ["DataDirLock", "DataDirInUse", "LOCK_FILE"]

LOCK_FILE = "zmq-mq.lock"


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on the lock file of a data directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        # A file object, not a bare descriptor: if the store is dropped without close() (e.g. a
        # hub whose start failed half-way), garbage collection still closes it and frees the lock.
        self._file: io.FileIO | None = None
        self._holder: dict = {}

    def acquire(self) -> None:
        """Take the lock at once or raise :class:`DataDirInUse` naming its holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.directory} is in use by {describe(holder)}; "
                "stop that hub first or use another data directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._file = io.FileIO(fd, "r+")
        self._holder = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._write()

    def note(self, **fields: str | None) -> None:
        """Add what others should know about the holder (e.g. ``endpoint``) to the lock file."""
        self._holder.update({k: v for k, v in fields.items() if v})
        if self._file is not None:
            self._write()

    def release(self) -> None:
        """Empty the lock file and unlock it (the file stays: removing it would race a taker)."""
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            os.ftruncate(file.fileno(), 0)
        except OSError:
            pass  # the lock goes anyway; a stale description is only ever shown with a new holder's
        finally:
            file.close()  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._file is not None

    def _write(self) -> None:
        data = json.dumps(self._holder).encode() + b"\n"
        fd = self._file.fileno()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    """``another hub (pid 123 on host h, serving tcp://...)``, with whatever is known."""
    parts = []
    if holder.get("pid"):
        parts.append(f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else ""))
    if holder.get("endpoint"):
        parts.append(f"serving {holder['endpoint']}")
    return "another hub" + (f" ({', '.join(parts)})" if parts else "")
