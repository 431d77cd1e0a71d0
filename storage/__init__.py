"""Storage: the LMDB topic logs, topic metadata and subscription state (see ``log``).

Every storage failure is a :class:`StorageError` (storage/errors.py: a full map or disk is
its subclass :class:`StorageFull`, a data directory another hub holds :class:`DataDirInUse`);
nothing is written when one is raised.
"""

from zmq_mq.storage.errors import DataDirInUse, StorageError, StorageFull
from zmq_mq.storage.log import Store, TopicInfo

__all__ = ["DataDirInUse", "Store", "StorageError", "StorageFull", "TopicInfo"]
