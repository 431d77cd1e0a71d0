"""Storage: the LMDB topic logs, topic metadata and subscription state (see ``log``)."""

from zmq_mq.storage.log import Store, StorageError, StorageFull, TopicInfo

__all__ = ["Store", "StorageError", "StorageFull", "TopicInfo"]
