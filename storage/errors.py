"""Every storage error, one tree: :class:`StorageError` and its subclasses.

Nothing is written when one is raised. The hub answers each with the error code
router/errors.py gives it (``storage_full`` for :class:`StorageFull`, ``storage_error`` for the
others); the CLI says what to do about :class:`DataDirInUse`.
"""

from __future__ import annotations

__all__ = ["DataDirInUse", "StorageError", "StorageFull"]


class StorageError(Exception):
    """A storage failure: nothing was written. The base of every storage error."""


class StorageFull(StorageError):
    """The LMDB map reached its maximum size or the disk is full: nothing was written."""


class DataDirInUse(StorageError):
    """Another process (a running hub) holds the data directory's lock."""
