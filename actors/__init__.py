"""The zmq-mq client library: producers, consumers, actors and live listeners."""

from .actor import Actor
from .aio import AsyncConsumer, AsyncMessage, AsyncProducer
from .admin import Admin
from .connection import CurveKeys
from .consumer import Consumer
from .idempotency import IdempotencyStore
from .errors import ClosedError, HubError, HubUnavailable, InvalidMessage, ZmqMqError
from .listener import Listener
from .message import Message, StoredMessage
from .producer import Producer
from .retry import Backoff, compute_backoff

__all__ = [
    "Actor",
    "Admin",
    "AsyncConsumer",
    "AsyncMessage",
    "AsyncProducer",
    "Backoff",
    "ClosedError",
    "Consumer",
    "CurveKeys",
    "HubError",
    "HubUnavailable",
    "IdempotencyStore",
    "InvalidMessage",
    "Listener",
    "Message",
    "Producer",
    "StoredMessage",
    "ZmqMqError",
    "compute_backoff",
]
