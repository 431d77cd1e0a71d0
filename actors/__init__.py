"""The zmq-mq client library: producers, consumers, actors and live listeners."""

from .actor import Actor
from .admin import Admin
from .connection import CurveKeys
from .consumer import Consumer
from .errors import ClosedError, HubError, HubUnavailable, InvalidMessage, ZmqMqError
from .listener import Listener
from .message import Message
from .producer import Producer

__all__ = [
    "Actor",
    "Admin",
    "ClosedError",
    "Consumer",
    "CurveKeys",
    "HubError",
    "HubUnavailable",
    "InvalidMessage",
    "Listener",
    "Message",
    "Producer",
    "ZmqMqError",
]
