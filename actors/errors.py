"""The client library's errors: one tree, rooted at ZmqMqError."""

from __future__ import annotations

from typing import Any


class ZmqMqError(Exception):
    """Base class of every error the zmq-mq client library raises."""


class HubUnavailable(ZmqMqError):
    """The hub did not answer within the timeout (not running, wrong endpoint, or overloaded)."""


class InvalidMessage(ZmqMqError, ValueError):
    """A message was refused before sending: bad topic name, payload too large, wrong type."""


class ClosedError(ZmqMqError):
    """The producer, consumer or actor was used after it was closed."""


class HubError(ZmqMqError):
    """The hub refused a command. ``code`` is a stable error code (see docs/PROTOCOL.md)."""

    def __init__(self, code: str, message: str, command: str | None = None, ref: Any = None, **extra: Any):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.command = command
        self.ref = ref
        self.extra = extra

    @classmethod
    def from_body(cls, body: dict) -> "HubError":
        return cls(**body)
