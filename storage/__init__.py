"""Storage: the LMDB topic logs, topic metadata and subscription state (see ``log``)."""

from zmq_mq.storage.log import DataDirInUse, Store, StorageError, StorageFull, TopicInfo

__all__ = ["DataDirInUse", "Store", "StorageError", "StorageFull", "TopicInfo"]
