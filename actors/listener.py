"""Listener: the live, at-most-once feed from the hub's PUB socket.

Fast and simple, with no acks and no storage on the reader's side: a listener that is slow, or
not connected, misses messages. Use a durable subscription (Consumer, Actor) when every message
matters. Topic matching is ZeroMQ's prefix match on the topic name.
"""

from __future__ import annotations

from typing import Iterator

import msgpack
import zmq

from .connection import CurveKeys, resolve_curve
from .message import Message


class Listener:
    """Receive live messages whose topic starts with one of ``prefixes`` ('' for all)."""

    def __init__(self, pub_endpoint: str, prefixes: tuple[str, ...] | list[str] = ("",), *,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        keys = resolve_curve(curve)
        if keys is not None:  # a --curve hub's live feed (with an ACL: keys allowed to read '>')
            keys.apply(self.socket)
        for prefix in prefixes:
            self.socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.socket.connect(pub_endpoint)
        self._pending: list[Message] = []

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next live message, or None after ``timeout`` seconds."""
        if not self._pending:
            if not self.socket.poll(None if timeout is None else int(timeout * 1000)):
                return None
            topic, body = self.socket.recv_multipart()
            name = topic.decode()
            first, records = msgpack.unpackb(body, raw=False, strict_map_key=False)
            for seq, record in enumerate(records, first):
                ts, key, headers, payload = msgpack.unpackb(record, raw=False, strict_map_key=False)
                self._pending.append(Message(name, seq, key, headers or {}, payload, 1, ts, "", 0, None))
            self._pending.reverse()
        return self._pending.pop()

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.receive()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
