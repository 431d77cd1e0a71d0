"""Dead letters: the record the hub appends when it dead-letters a message, and how a dead
letter is turned back into a message for its origin topic (redrive).

Pure code: records in, records out; the hub stores the result in the same transaction that
removes the dead letter, so a redrive never loses nor duplicates a message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import protocol
from .subscription import DeadLetter, Subscription

log = logging.getLogger("zmq_mq.hub")

# Headers the hub adds to a dead letter: their one home is router/protocol.py (these short
# names are kept for this module's readers and callers).
ORIGIN_TOPIC = protocol.ORIGIN_TOPIC_HEADER
ORIGIN_SEQ = protocol.ORIGIN_SEQ_HEADER
ORIGIN_TIMESTAMP = protocol.ORIGIN_TIMESTAMP_HEADER
SUBSCRIPTION = protocol.SUBSCRIPTION_HEADER
DELIVERIES = protocol.DELIVERIES_HEADER
REASON = protocol.REASON_HEADER
ORIGINAL_HEADERS = protocol.ORIGINAL_HEADERS_HEADER  # headers of a message whose headers were no map
DEAD_LETTER_HEADERS = protocol.DEAD_LETTER_HEADERS
REDRIVEN_FROM = protocol.REDRIVEN_FROM_HEADER


def dead_letter_record(record: bytes, topic: str, seq: int, group: str, deliveries: int,
                       reason: str, now_ms: int) -> bytes:
    """The record appended to ``dlq.<group>`` for message ``seq`` of ``topic``: same key and
    payload, its headers (kept under ``x-original-headers`` if they were no map) plus where it
    came from and why, stamped ``now_ms``. Raises if the record cannot be read or re-packed
    (the hub then keeps it unchanged)."""
    ts, key, headers, payload = protocol.unpack_record(record)
    headers = dict(headers) if isinstance(headers, dict) else {ORIGINAL_HEADERS: headers}
    headers[ORIGIN_TOPIC] = topic
    headers[ORIGIN_SEQ] = seq
    headers[SUBSCRIPTION] = group
    headers[DELIVERIES] = deliveries
    headers[REASON] = reason
    headers[ORIGIN_TIMESTAMP] = ts
    return protocol.pack_record(now_ms, key, headers, payload)


class NotRedrivable(ValueError):
    """This record cannot be sent back: it does not say where it came from."""


def redrive_record(dlq_topic: str, seq: int, record: bytes, now_ms: int) -> tuple[str, bytes]:
    """The origin topic and the record to append there for dead letter ``seq`` of ``dlq_topic``.

    Same key and payload; the original headers (the dead-letter headers removed) plus
    ``x-redriven-from``; a new timestamp, since it is a new message in the origin topic.
    """
    try:
        _, key, headers, payload = protocol.unpack_record(record)
    except Exception as exc:
        raise NotRedrivable(f"record cannot be decoded: {exc}") from None
    if not isinstance(headers, dict):
        raise NotRedrivable("record headers are not a map")
    origin = headers.get(ORIGIN_TOPIC)
    if protocol.check_topic(origin) is not None:
        raise NotRedrivable(f"no valid {ORIGIN_TOPIC} header (not a dead letter?)")
    if key is not None and not isinstance(key, str):
        raise NotRedrivable("record key is not a string")
    if not isinstance(payload, bytes):
        raise NotRedrivable("record payload is not bytes")
    out: dict[str, Any] = {k: v for k, v in headers.items() if k not in DEAD_LETTER_HEADERS}
    original = out.pop(ORIGINAL_HEADERS, None)
    if isinstance(original, dict):
        out.update(original)
    out[REDRIVEN_FROM] = f"{dlq_topic}:{seq}"
    return origin, protocol.pack_record(now_ms, key, out, payload)


# A dead letter as a plain map for people and JSON: the codec owns it, the client reads it too.
describe = protocol.describe_dead_letter


def dead_letter_records(
    dead: list[tuple[Subscription, DeadLetter]],
    read: Callable[[str, list[int]], list[bytes | None]],
    wall_ms: Callable[[], int],
) -> tuple[dict[str, list[bytes]], dict[tuple[str, str], int]]:
    """Records for the ``dlq.<group>`` topics of a turn's dead letters: the original message
    (``read`` from the log) plus origin headers; and how many each subscription dead-lettered."""
    out: dict[str, list[bytes]] = {}
    by_sub: dict[tuple[str, str], int] = {}
    for sub, dl in dead:
        (record,) = read(sub.topic, [dl.seq])
        if record is None:  # removed from the log meanwhile: nothing left to keep
            continue
        try:
            dead_record = dead_letter_record(
                record, sub.topic, dl.seq, sub.group, dl.deliveries, dl.reason, wall_ms(),
            )
        except Exception:  # a record this hub cannot re-pack: keep it as stored, never lose it
            log.exception("dead letter %s/%s: record kept unchanged", sub.topic, dl.seq)
            dead_record = record
        topic = protocol.dlq_topic(sub.group)
        out.setdefault(topic, []).append(dead_record)
        key = (sub.topic, sub.group)
        by_sub[key] = by_sub.get(key, 0) + 1
    return out, by_sub
