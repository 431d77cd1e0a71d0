"""Storage: the LMDB topic logs, topic metadata and subscription state (see ``log``).

Every storage failure is a :class:`StorageError` (a full map or disk: its subclass
:class:`StorageFull`); nothing is written when one is raised.
"""

from zmq_mq.storage.log import DataDirInUse, Store, StorageError, StorageFull, TopicInfo

__all__ = ["DataDirInUse", "Store", "StorageError", "StorageFull", "TopicInfo"]
