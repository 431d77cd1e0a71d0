"""A delivered message, as handlers and consumers see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..router import protocol


class _Settler(Protocol):
    def settle(self, msg: "Message", kind: str, arg: Any = None) -> None: ...


class Message:
    """One delivery of a stored message.

    ``payload`` is bytes; ``deliveries`` is 1 on the first delivery and grows with each
    redelivery; ``timestamp`` is the hub's clock at publish, in integer milliseconds since the
    epoch. ``ack``, ``nack``, ``reject``, ``release`` and ``progress`` settle it explicitly;
    an Actor acks on return and nacks on exception when the handler did neither.
    """

    # Slots: a consumer creates one per delivery, on the hot path. A delivery is made from its
    # stored record without decoding it (``_delivered``): ``key``, ``headers``, ``payload`` and
    # ``timestamp`` decode it on first access, so a handler that reads none of them (or an
    # Actor's loop thread handing thousands a second to its workers) never pays for it.
    __slots__ = (
        "topic",
        "seq",
        "_key",
        "_headers",
        "_payload",
        "deliveries",
        "_timestamp",
        "group",
        "sid",
        "settled",
        "_settler",
        "_queued_at",  # an Actor's: when it was handed to its workers (ms); None once started
        "_record",  # the stored record, until decoded (None once decoded)
    )

    def __init__(
        self,
        topic: str,
        seq: int,
        key: str | None,
        headers: dict,
        payload: bytes,
        deliveries: int,
        timestamp: int,
        group: str,
        sid: int,
        settler: _Settler | None,
    ) -> None:
        self.topic = topic
        self.seq = seq
        self._key = key
        self._headers = headers
        self._payload = payload
        self.deliveries = deliveries
        self._timestamp = timestamp
        self.group = group
        self.sid = sid
        self.settled: str | None = None
        self._settler = settler
        self._queued_at: int | None = None
        self._record: bytes | None = None

    @classmethod
    def _delivered(cls, topic: str, seq: int, record: bytes, deliveries: int, group: str,
                   sid: int, settler: _Settler | None) -> "Message":
        """A delivery of ``record`` (a DELIVER entry), decoded when first read."""
        msg = cls.__new__(cls)
        msg.topic = topic
        msg.seq = seq
        msg._record = record
        msg.deliveries = deliveries
        msg.group = group
        msg.sid = sid
        msg.settled = None
        msg._settler = settler
        msg._queued_at = None
        return msg

    def _decode(self) -> None:
        ts, key, headers, payload = protocol.unpack_record(self._record)
        self._timestamp, self._key, self._headers, self._payload = ts, key, headers, payload
        self._record = None

    @property
    def key(self) -> str | None:
        if self._record is not None:
            self._decode()
        return self._key

    @property
    def headers(self) -> dict:
        if self._record is not None:
            self._decode()
        return self._headers

    @property
    def payload(self) -> bytes:
        if self._record is not None:
            self._decode()
        return self._payload

    @property
    def timestamp(self) -> int:
        if self._record is not None:
            self._decode()
        return self._timestamp

    @property
    def msg_id(self) -> str:
        """The message's id: the producer's ``msg_id`` (header ``x-msg-id``, set by the hub)
        when it gave one, else ``topic:seq``. The idempotency store keys on it."""
        given = self.headers.get(protocol.MSG_ID_HEADER)
        return given if isinstance(given, str) else f"{self.topic}:{self.seq}"

    def text(self, encoding: str = "utf-8") -> str:
        """The payload decoded as text."""
        return self.payload.decode(encoding)

    def _settle(self, kind: str, arg: Any = None) -> None:
        if self.settled is not None:
            return  # settling twice is a no-op: the first decision stands
        self.settled = kind
        if self._settler is not None:
            self._settler.settle(self, kind, arg)

    def ack(self) -> None:
        """Done: never deliver it to this subscription again."""
        self._settle("ack")

    def nack(self, delay: float = 0.0) -> None:
        """Failed: deliver again after ``delay`` seconds (dead-lettered at max_deliver)."""
        self._settle("nack", int(delay * 1000))

    def reject(self, reason: str = "rejected") -> None:
        """Dead-letter it now, with ``reason`` in its ``x-reason`` header."""
        self._settle("reject", reason)

    def release(self) -> None:
        """Not processed: give it back to be delivered again, without counting an attempt."""
        self._settle("release")

    def progress(self) -> None:
        """Still working on it: push the redelivery deadline ``ack_wait`` further."""
        if self.settled is None and self._settler is not None:
            self._settler.settle(self, "progress", None)

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, seq={self.seq}, key={self.key!r}, "
            f"deliveries={self.deliveries}, payload={self.payload[:40]!r})"
        )


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the hub stores it, read by ``Admin.fetch`` / ``Admin.scan`` (not a delivery:
    nothing to settle).

    ``timestamp`` is the hub's clock at publish (ms since the epoch); ``headers`` include the
    ones the hub wrote (``x-msg-id``, ``x-priority``, ``x-deliver-at``, dead-letter headers);
    ``record`` is the stored bytes as they are (msgpack ``[timestamp_ms, key, headers,
    payload]``), for tools that need them.
    """

    topic: str
    seq: int
    timestamp: int
    key: str | None
    headers: dict
    payload: bytes
    record: bytes = field(repr=False, compare=False)

    @classmethod
    def from_record(cls, topic: str, seq: int, record: bytes) -> "StoredMessage":
        timestamp, key, headers, payload = protocol.unpack_record(record)
        return cls(topic, seq, timestamp, key, headers if isinstance(headers, dict) else {},
                   payload, record)

    @property
    def priority(self) -> int:
        """0..9 (header ``x-priority``; 0 when absent)."""
        value = self.headers.get(protocol.PRIORITY_HEADER, protocol.DEFAULT_PRIORITY)
        return value if type(value) is int else protocol.DEFAULT_PRIORITY

    @property
    def msg_id(self) -> str:
        """The producer's ``msg_id`` when it gave one, else ``topic:seq`` (as ``Message.msg_id``)."""
        given = self.headers.get(protocol.MSG_ID_HEADER)
        return given if isinstance(given, str) else f"{self.topic}:{self.seq}"

    def text(self, encoding: str = "utf-8") -> str:
        """The payload decoded as text."""
        return self.payload.decode(encoding)
