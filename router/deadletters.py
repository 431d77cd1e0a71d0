"""Dead letters: the headers the hub adds when it dead-letters a message, and how a dead letter
is turned back into a message for its origin topic (redrive).

Pure code: records in, records out; the hub stores the result in the same transaction that
removes the dead letter, so a redrive never loses nor duplicates a message.
"""

from __future__ import annotations

from typing import Any

from . import protocol

# Headers the hub adds to a dead letter (router/hub.py ``_dead_letter_records``).
ORIGIN_TOPIC = "x-origin-topic"
ORIGIN_SEQ = "x-origin-seq"
ORIGIN_TIMESTAMP = "x-origin-timestamp"
SUBSCRIPTION = "x-subscription"
DELIVERIES = "x-deliveries"
REASON = "x-reason"
ORIGINAL_HEADERS = "x-original-headers"  # the headers of a message whose headers were no map
DEAD_LETTER_HEADERS = (ORIGIN_TOPIC, ORIGIN_SEQ, ORIGIN_TIMESTAMP, SUBSCRIPTION, DELIVERIES, REASON)
# Added to a redriven message: "<dlq topic>:<seq>", so a consumer can tell a second attempt.
REDRIVEN_FROM = "x-redriven-from"


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


def describe(seq: int, record: bytes) -> dict[str, Any]:
    """A dead letter as a plain map for people and JSON (what ``zmq-mq dlq`` shows)."""
    ts, key, headers, payload = protocol.unpack_record(record)
    headers = headers if isinstance(headers, dict) else {}
    return {
        "seq": seq,
        "timestamp": ts,
        "key": key,
        "origin_topic": headers.get(ORIGIN_TOPIC),
        "origin_seq": headers.get(ORIGIN_SEQ),
        "origin_timestamp": headers.get(ORIGIN_TIMESTAMP),
        "subscription": headers.get(SUBSCRIPTION),
        "deliveries": headers.get(DELIVERIES),
        "reason": headers.get(REASON),
        "headers": {k: v for k, v in headers.items() if k not in DEAD_LETTER_HEADERS},
        "payload": payload,
    }
