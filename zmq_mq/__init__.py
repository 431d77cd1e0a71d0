"""zmq-mq: a durable message queue for Python services, over ZeroMQ and LMDB.

The code lives in the repository's top-level folders, installed as subpackages of this one:
``zmq_mq.router`` (the hub), ``zmq_mq.actors`` (client library), ``zmq_mq.storage`` (LMDB log
and cursors) and ``zmq_mq.cli`` (the ``zmq-mq`` command).
"""

__version__ = "0.1.0"
