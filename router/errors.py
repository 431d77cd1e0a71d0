"""How the hub answers a storage failure: the one mapping from storage errors to error codes.

Storage raises :class:`~zmq_mq.storage.StorageError` (``StorageFull`` is one of them) and
writes nothing; every hub command that touches storage answers its sender with the code
this module gives, and nothing is stored.
"""

from __future__ import annotations

from ..storage import StorageError, StorageFull
from .protocol import ErrorCode

__all__ = ["StorageError", "storage_error_code"]


def storage_error_code(exc: StorageError) -> ErrorCode:
    """``storage_full`` for a full map or disk, ``storage_error`` for any other failure."""
    return ErrorCode.STORAGE_FULL if isinstance(exc, StorageFull) else ErrorCode.STORAGE_ERROR
