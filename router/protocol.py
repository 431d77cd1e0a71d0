"""zmq-mq wire protocol, version 1: the single source of truth for hub and clients.

Pure code: no sockets, no clock. ``docs/PROTOCOL.md`` describes the same thing for people.

Frame layout
------------
Every command is one ZeroMQ multipart message of exactly three frames (the hub's ROUTER socket
sees the sender's routing id in front of them, and prepends it to replies)::

    frame 0  signature   b"ZMQMQ/1"              protocol name and version
    frame 1  command     ASCII name, e.g. b"PUBLISH"
    frame 2  body        msgpack; the schema depends on the command (see COMMANDS below)

Hot-path bodies (PUBLISH, CONFIRM, DELIVER, ACK, ...) are msgpack *arrays* so that encoding is
cheap; rare ones (HELLO, SUBSCRIBE, ERROR, ...) are msgpack *maps* so that they can grow.

A stored message record (what the LMDB log holds, and what DELIVER and the PUB socket carry
unchanged, so the hub never decodes and re-encodes a payload) is the msgpack array
``[timestamp_ms, key, headers, payload]``.

Decoding never raises anything but :class:`DecodeError`, which carries an error code from
:class:`ErrorCode` so the hub can answer the sender precisely.

The codec
---------
Every body layout and header name used on the wire or in a record lives here, as a pair of
plain functions (hub and clients both use them; they build and read the same lists as a
hand-written body, so they cost nothing extra per message):

- PUBLISH: :func:`publish_message` / :func:`publish_body`, :func:`decode_publish` /
  :func:`decode_publish_message`; the ref of an oversized one: :func:`oversized_ref`;
- DELIVER: :func:`deliver_body` / :func:`decode_deliver` (entries ``[seq, deliveries, record]``);
- the live feed (PUB): :func:`pub_frames` / :func:`decode_pub`;
- the stored record: :func:`pack_record` / :func:`unpack_record` / :func:`record_meta`;
- header names the hub adds (``x-msg-id``, ``x-priority``, ``x-deliver-at``, the dead-letter
  and redrive headers), a dead letter read back (:func:`describe_dead_letter`), and the
  heartbeat and ack_wait defaults a client starts with.
"""

from __future__ import annotations

import re
import zlib
from enum import Enum
from typing import Any

import msgpack

VERSION = 1
SIGNATURE = b"ZMQMQ/1"
SIGNATURE_PREFIX = b"ZMQMQ/"

# Where a hub listens unless told otherwise, and where a client looks for it.
DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_PUB = "tcp://127.0.0.1:5556"
# Heartbeats: clients send one every interval; a peer silent for LIVENESS intervals is dead.
# One second and three misses detach a dead actor within about three seconds, which is the
# "a few heartbeat intervals" the design promises, without flapping on a loaded 2-core machine.
# A hub tells its own values in WELCOME; these are what a client assumes before that.
HEARTBEAT_INTERVAL_MS = 1000
LIVENESS = 3
# A subscription's ack_wait when it sets none (SUBSCRIBED tells the one granted; a client that
# has not heard it yet assumes this one).
DEFAULT_ACK_WAIT_MS = 30_000

# Limits the hub enforces by default (each can be changed on the hub's command line). They are
# told to clients in WELCOME so that a well-behaved client refuses bad input before sending it.
MAX_FRAME_BYTES = 64 * 1024 * 1024  # one frame; larger gets too_large (bounded hub memory)
MAX_MESSAGE_BYTES = 1024 * 1024  # one payload
MAX_HEADERS_BYTES = 64 * 1024  # one message's key + headers, packed
MAX_BATCH_MESSAGES = 10_000  # messages in one PUBLISH
MAX_TOPIC_LENGTH = 255
MAX_GROUP_LENGTH = MAX_TOPIC_LENGTH - len("dlq.")  # dlq.<group> must be a valid topic
MAX_CREDIT = 100_000  # per attachment: bounds hub and client memory
MAX_MSG_ID_LENGTH = 255  # a producer message id (PUBLISH opts "msg_id"), in characters
# The header the hub adds to a stored record when its producer gave a msg_id.
MSG_ID_HEADER = "x-msg-id"
# Message priority (PUBLISH opts "priority"): 0..9, higher delivered first. The hub stores a
# priority above the default as this header; a record without it has the default.
PRIORITY_HEADER = "x-priority"
DEFAULT_PRIORITY = 0  # messages without a priority
MAX_PRIORITY = 9
# Delayed delivery (PUBLISH opts "delay_ms" or "deliver_at_ms"): the hub stores the due time
# (wall clock, ms since the epoch) of a message held back as this header.
DELIVER_AT_HEADER = "x-deliver-at"
# Headers whose names start with this prefix are the hub's: it writes them (x-msg-id, x-priority,
# x-deliver-at, the dead-letter and redrive headers) and acts on some of them, so a PUBLISH
# carrying one is refused (invalid) and its batch not stored. Case-sensitive: "X-Trace" is yours.
RESERVED_HEADER_PREFIX = "x-"
MAX_DELAY_MS = 366 * 24 * 3600 * 1000  # a delay or deliver_at at most this far ahead
# SUBSCRIBE option "ordering" (see router/subscription.py for what each one means).
ORDERINGS = ("none", "key", "strict")
# Headers the hub adds to a dead letter (appended to dlq.<group>; see router/deadletters.py).
ORIGIN_TOPIC_HEADER = "x-origin-topic"
ORIGIN_SEQ_HEADER = "x-origin-seq"
ORIGIN_TIMESTAMP_HEADER = "x-origin-timestamp"
SUBSCRIPTION_HEADER = "x-subscription"
DELIVERIES_HEADER = "x-deliveries"
REASON_HEADER = "x-reason"
DEAD_LETTER_HEADERS = (
    ORIGIN_TOPIC_HEADER, ORIGIN_SEQ_HEADER, ORIGIN_TIMESTAMP_HEADER, SUBSCRIPTION_HEADER,
    DELIVERIES_HEADER, REASON_HEADER,
)
# The headers of a dead-lettered message whose headers were not a map, kept under this name.
ORIGINAL_HEADERS_HEADER = "x-original-headers"
# Added to a redriven message: "<dlq topic>:<seq>", so a consumer can tell a second attempt.
REDRIVEN_FROM_HEADER = "x-redriven-from"

# Topic names: dot-separated tokens of letters, digits, '_', '-'; e.g. "orders", "dlq.billing".
# '*' and '>' are reserved for patterns, whitespace and empty tokens are refused.
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_GROUP_RE = _TOPIC_RE  # a group names its dead-letter topic dlq.<group>, so same token rules


class Command:
    """Command names (frame 1). Client-to-hub first, then hub-to-client."""

    HELLO = b"HELLO"
    PUBLISH = b"PUBLISH"
    SUBSCRIBE = b"SUBSCRIBE"
    CREDIT = b"CREDIT"
    ACK = b"ACK"
    NACK = b"NACK"
    RELEASE = b"RELEASE"
    REJECT = b"REJECT"
    PROGRESS = b"PROGRESS"
    DETACH = b"DETACH"
    HEARTBEAT = b"HEARTBEAT"
    TOPICS = b"TOPICS"
    STATS = b"STATS"  # operator commands (answered with REPLY [ref, result])
    FETCH = b"FETCH"
    PURGE = b"PURGE"
    REDRIVE = b"REDRIVE"
    TOPIC = b"TOPIC"  # topic config (retention limits): REPLY [ref, {"topic", "config"}]
    METADATA = b"METADATA"  # cluster view (answered with METADATA {...}; docs/PROTOCOL.md)
    REPLICATE = b"REPLICATE"  # cluster: a follower hub fetches a partition from its leader

    WELCOME = b"WELCOME"
    CONFIRM = b"CONFIRM"
    SUBSCRIBED = b"SUBSCRIBED"
    DELIVER = b"DELIVER"
    DETACHED = b"DETACHED"
    REPLY = b"REPLY"
    ERROR = b"ERROR"
    REPLICA = b"REPLICA"  # cluster: the leader's answer to REPLICATE


CLIENT_COMMANDS = frozenset(
    {
        Command.HELLO,
        Command.PUBLISH,
        Command.SUBSCRIBE,
        Command.CREDIT,
        Command.ACK,
        Command.NACK,
        Command.RELEASE,
        Command.REJECT,
        Command.PROGRESS,
        Command.DETACH,
        Command.HEARTBEAT,
        Command.TOPICS,
        Command.STATS,
        Command.FETCH,
        Command.PURGE,
        Command.REDRIVE,
        Command.TOPIC,
        Command.METADATA,
        Command.REPLICATE,
    }
)
HUB_COMMANDS = frozenset(
    {
        Command.WELCOME,
        Command.CONFIRM,
        Command.SUBSCRIBED,
        Command.DELIVER,
        Command.DETACHED,
        Command.HEARTBEAT,
        Command.REPLY,
        Command.ERROR,
        Command.METADATA,
        Command.REPLICA,
    }
)


class ErrorCode(str, Enum):
    """Stable error codes carried by ERROR. Clients may switch on them; they never change meaning."""

    BAD_FRAME = "bad_frame"  # wrong number of frames, or frame 0 is not a zmq-mq signature
    BAD_VERSION = "bad_version"  # a zmq-mq signature with a version this hub does not speak
    UNKNOWN_COMMAND = "unknown_command"  # frame 1 names no command
    BAD_BODY = "bad_body"  # frame 2 is not msgpack, or not the schema the command needs
    TOO_LARGE = "too_large"  # frame, payload, headers or batch over the hub's limits
    BAD_TOPIC = "bad_topic"  # topic name breaks the naming rules
    BAD_GROUP = "bad_group"  # subscription (group) name breaks the naming rules
    INVALID = "invalid"  # a well-formed command with a value out of range
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"  # sid not attached on this connection
    UNKNOWN_SEQUENCE = "unknown_sequence"  # ack/nack/... of a sequence never published
    STORAGE_FULL = "storage_full"  # the LMDB map or the disk is full: nothing was stored
    STORAGE_ERROR = "storage_error"  # another storage failure: nothing was stored
    TOPIC_FULL = "topic_full"  # the topic is at its max_messages with discard=new: batch refused
    FORBIDDEN = "forbidden"  # the hub's ACL does not grant this client key the topic
    INTERNAL = "internal"  # a bug in the hub; the hub keeps serving
    # cluster mode (docs/PROTOCOL.md "Cluster"): nothing of the refused command was done
    NOT_LEADER = "not_leader"  # this hub does not lead that partition (map: leader hint)
    UNAVAILABLE = "unavailable"  # the partition has no leader now (no in-sync replica live)
    NOT_ENOUGH_REPLICAS = "not_enough_replicas"  # in-sync replicas below the topic's min_insync


class DecodeError(Exception):
    """The peer sent something that is not valid protocol v1 (the peer's fault)."""

    def __init__(self, code: ErrorCode, message: str, command: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = command


# --- encoding ------------------------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    """Encode a body (or a message record) as msgpack."""
    return _packer.pack(obj)


def unpack(data: bytes) -> Any:
    """Decode msgpack produced by :func:`pack` (str stays str, bytes stay bytes)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(command: bytes, body: Any) -> list[bytes]:
    """The three frames of one command (without a routing id)."""
    return [SIGNATURE, command, _packer.pack(body)]


def pack_record(timestamp_ms: int, key: str | None, headers: dict | None, payload: bytes) -> bytes:
    """A stored message record: ``[timestamp_ms, key, headers, payload]``."""
    return _packer.pack([timestamp_ms, key, headers, payload])


_unpackb = msgpack.unpackb


def unpack_record(data: bytes) -> tuple[int, str | None, dict, bytes]:
    """``(timestamp_ms, key, headers, payload)`` of a record (nil headers read as ``{}``; the
    field types are as stored: check them where it matters). DecodeError if it is no record."""
    try:
        ts, key, headers, payload = _unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # not msgpack, or not an array of 4
        raise DecodeError(ErrorCode.BAD_BODY, f"not a record: {exc}") from None
    return ts, key, headers or {}, payload


def record_meta(data: bytes) -> tuple[str | None, int]:
    """``(key, priority)`` of a stored record; a record that cannot be read counts as
    ``(None, DEFAULT_PRIORITY)`` (it is delivered as it is, unordered)."""
    try:
        _, key, headers, _ = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None, DEFAULT_PRIORITY
    prio = DEFAULT_PRIORITY
    if type(headers) is dict:
        prio = headers.get(PRIORITY_HEADER, DEFAULT_PRIORITY)
    if type(prio) is not int or not DEFAULT_PRIORITY <= prio <= MAX_PRIORITY:
        prio = DEFAULT_PRIORITY
    return (key if type(key) is str else None), prio


def describe_dead_letter(seq: int, record: bytes) -> dict[str, Any]:
    """A dead letter (a record of ``dlq.<group>``) as a plain map for people and JSON: where it
    came from and why, read from its dead-letter headers (what ``zmq-mq dlq`` shows)."""
    ts, key, headers, payload = unpack_record(record)
    headers = headers if isinstance(headers, dict) else {}
    return {
        "seq": seq,
        "timestamp": ts,
        "key": key,
        "origin_topic": headers.get(ORIGIN_TOPIC_HEADER),
        "origin_seq": headers.get(ORIGIN_SEQ_HEADER),
        "origin_timestamp": headers.get(ORIGIN_TIMESTAMP_HEADER),
        "subscription": headers.get(SUBSCRIPTION_HEADER),
        "deliveries": headers.get(DELIVERIES_HEADER),
        "reason": headers.get(REASON_HEADER),
        "headers": {k: v for k, v in headers.items() if k not in DEAD_LETTER_HEADERS},
        "payload": payload,
    }


def check_priority(value: Any) -> str | None:
    """Why ``value`` is not a message priority, or None if it is one."""
    if type(value) is not int or not DEFAULT_PRIORITY <= value <= MAX_PRIORITY:
        return f"priority must be an integer in {DEFAULT_PRIORITY}..{MAX_PRIORITY}, got {value!r}"
    return None


def check_delay_ms(value: Any) -> str | None:
    """Why ``value`` is not a delay in ms (PUBLISH opts ``delay_ms``), or None."""
    if type(value) is not int or not 0 <= value <= MAX_DELAY_MS:
        return f"delay_ms must be an integer in 0..{MAX_DELAY_MS} (366 days), got {value!r}"
    return None


# --- decoding ------------------------------------------------------------------------------


def decode(frames: list[bytes], known: frozenset[bytes] = CLIENT_COMMANDS) -> tuple[bytes, Any]:
    """Parse the frames of one command into ``(command, body)``.

    ``known`` is the set of commands the receiver accepts (the hub passes CLIENT_COMMANDS, a client
    HUB_COMMANDS). Raises DecodeError, and nothing else, for any input that is not valid.
    """
    if len(frames) != 3:
        raise DecodeError(ErrorCode.BAD_FRAME, f"expected 3 frames, got {len(frames)}")
    sig, command, body = frames
    if sig != SIGNATURE:
        if bytes(sig[: len(SIGNATURE_PREFIX)]) == SIGNATURE_PREFIX:
            raise DecodeError(
                ErrorCode.BAD_VERSION,
                f"protocol {bytes(sig)[:32]!r} not supported; this hub speaks {SIGNATURE.decode()}",
            )
        raise DecodeError(ErrorCode.BAD_FRAME, f"frame 0 must be {SIGNATURE!r}")
    command = bytes(command)
    if command not in known:
        raise DecodeError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {command[:32]!r}")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(ErrorCode.BAD_BODY, f"body is not valid msgpack: {exc}", command) from None
    return command, obj


def check_topic(topic: Any) -> str | None:
    """Return an error text if ``topic`` is not a valid topic name, else None."""
    if not isinstance(topic, str):
        return "topic must be a string"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"topic longer than {MAX_TOPIC_LENGTH} characters"
    if not _TOPIC_RE.match(topic):
        return (
            f"bad topic name {topic[:64]!r}: use dot-separated tokens of letters, digits, '_' "
            "and '-' (e.g. 'orders.eu')"
        )
    return None


def is_pattern(topic: Any) -> bool:
    """True if a SUBSCRIBE topic is a pattern: a token ``*`` (exactly one token) or a last
    token ``>`` (one or more tokens)."""
    return isinstance(topic, str) and any(t in ("*", ">") for t in topic.split("."))


def check_pattern(pattern: Any) -> str | None:
    """Return an error text if ``pattern`` is not a valid subscription pattern, else None."""
    if not isinstance(pattern, str):
        return "topic must be a string"
    if len(pattern) > MAX_TOPIC_LENGTH:
        return f"pattern longer than {MAX_TOPIC_LENGTH} characters"
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i != len(tokens) - 1:
            return f"bad pattern {pattern[:64]!r}: '>' may only be the last token"
        if token not in ("*", ">") and not _TOPIC_RE.match(token):
            return (f"bad pattern {pattern[:64]!r}: tokens are letters, digits, '_', '-', or '*' "
                    "(one token) and a last '>' (the rest), e.g. 'orders.*' or 'orders.>'")
    return None


PATTERN_ONE = "*"  # a pattern token that matches exactly one token of a topic
PATTERN_REST = ">"  # a last pattern token that matches one or more remaining tokens


def tokens_match(pattern: tuple[str, ...] | list[str], topic: str) -> bool:
    """The one topic-pattern matcher: whether ``topic`` (a valid topic name) matches the
    pattern's tokens (``*``: one token, a last ``>``: one or more, any other: itself). Used by
    pattern subscriptions (:func:`pattern_matches`) and the ACL (``router/acl.py``)."""
    tokens = topic.split(".")
    for i, want in enumerate(pattern):
        if want == PATTERN_REST:
            return len(tokens) > i  # at least one token left for '>'
        if i >= len(tokens) or (want != PATTERN_ONE and want != tokens[i]):
            return False
    return len(tokens) == len(pattern)


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether a subscription ``pattern`` reads ``topic``: :func:`tokens_match`, except that a
    pattern whose first token is not literally ``dlq`` never matches a dead-letter topic
    ``dlq.*``, so ``>`` does not feed a group its own dead letters. (An ACL grant has no such
    exception: ``>`` grants every topic.)"""
    want = pattern.split(".")
    if want[0] != "dlq" and topic.partition(".")[0] == "dlq":
        return False
    return tokens_match(want, topic)


MAX_PARTITIONS = 1024


def partition_topics(topic: str, partitions: int) -> list[str]:
    """The topics that store a partitioned topic: ``<topic>.0`` .. ``<topic>.<N-1>``."""
    return [f"{topic}.{i}" for i in range(partitions)]


def partition_of(key: str, partitions: int) -> int:
    """The partition of a message key: a stable hash (CRC-32 of its UTF-8) modulo N."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def check_headers(headers: Any) -> str | None:
    """Return an error text if ``headers`` is not None or a map with string keys, else None."""
    if headers is None:
        return None
    if type(headers) is not dict:
        return "headers must be a map of string keys or nil"
    for name in headers:
        if type(name) is not str:
            return f"header names must be strings, not {type(name).__name__} ({name!r:.40})"
    return None


def check_reserved_headers(headers: dict) -> str | None:
    """An error text if a header name of ``headers`` (a map) is reserved for the hub, else None."""
    for name in headers:
        if type(name) is str and name.startswith(RESERVED_HEADER_PREFIX):
            return (
                f"header {name[:64]!r} is reserved: names starting with "
                f"{RESERVED_HEADER_PREFIX!r} are set by the hub (use publish options such as "
                "priority, delay or msg_id instead, or another header name)"
            )
    return None


def check_msg_id(msg_id: Any) -> str | None:
    """Return an error text if ``msg_id`` is not a valid producer message id, else None."""
    if type(msg_id) is not str:
        return "msg_id must be a string"
    if not msg_id or len(msg_id) > MAX_MSG_ID_LENGTH:
        return f"msg_id must have 1 to {MAX_MSG_ID_LENGTH} characters"
    return None


def check_group(group: Any) -> str | None:
    """Return an error text if ``group`` is not a valid subscription name, else None."""
    if not isinstance(group, str):
        return "group must be a string"
    if len(group) > MAX_GROUP_LENGTH:
        return f"group longer than {MAX_GROUP_LENGTH} characters"
    if not _GROUP_RE.match(group):
        return (
            f"bad group name {group[:64]!r}: use dot-separated tokens of letters, digits, '_' "
            "and '-' (e.g. 'billing' or 'billing.eu')"
        )
    return None


def dlq_topic(group: str) -> str:
    """The default dead-letter topic of a subscription."""
    return f"dlq.{group}"


def error_body(code: ErrorCode | str, message: str, command: bytes | None = None, ref: Any = None) -> dict:
    return {
        "code": code.value if isinstance(code, ErrorCode) else code,
        "message": message,
        "command": command.decode("ascii", "replace") if command else None,
        "ref": ref,
    }


def parse_error(body: Any) -> dict:
    """Normalise an ERROR body from the hub into a dict with code, message, command, ref."""
    if not isinstance(body, dict):
        return {"code": "bad_body", "message": repr(body)[:200], "command": None, "ref": None}
    return {
        "code": str(body.get("code")),
        "message": str(body.get("message")),
        "command": body.get("command"),
        "ref": body.get("ref"),
        **{k: v for k, v in body.items() if k not in ("code", "message", "command", "ref")},
    }


# --- message bodies: PUBLISH, DELIVER, the live feed ---------------------------------------
#
# Built and read as plain lists, exactly what msgpack gives and takes, so that a hot path pays
# no extra object per message. Each decode_* checks the shape it needs and raises DecodeError
# (code bad_body) for anything else; the values inside are checked by whoever uses them.


def publish_message(
    topic: str, payload: bytes, key: str | None = None, headers: dict | None = None,
    opts: dict | None = None,
) -> list:
    """One message of a PUBLISH batch: ``[topic, payload, key, headers]``, plus ``opts`` (the
    options map: ``msg_id``, ``priority``, ``delay_ms`` / ``deliver_at_ms``) when given."""
    if opts:
        return [topic, payload, key, headers, opts]
    return [topic, payload, key, headers]


def publish_body(batch_id: Any, messages: list) -> list:
    """The PUBLISH body: ``[batch_id, [message, ...]]`` (messages from :func:`publish_message`)."""
    return [batch_id, messages]


def decode_publish(body: Any) -> tuple[Any, list]:
    """``(batch_id, messages)`` of a PUBLISH body."""
    if type(body) is not list or len(body) != 2 or type(body[1]) is not list:
        raise DecodeError(ErrorCode.BAD_BODY, "PUBLISH body must be [batch_id, [messages]]",
                          Command.PUBLISH)
    return body[0], body[1]


def decode_publish_message(msg: Any) -> tuple[Any, Any, Any, Any, Any]:
    """``(topic, payload, key, headers, opts)`` of one PUBLISH message (opts None if absent);
    the values are not checked here."""
    try:
        return msg[0], msg[1], msg[2], msg[3], (msg[4] if len(msg) > 4 else None)
    except (TypeError, IndexError, KeyError):
        raise DecodeError(ErrorCode.BAD_BODY, "must be [topic, payload, key, headers]",
                          Command.PUBLISH) from None


def oversized_ref(parts: list[bytes]) -> tuple[bytes | None, Any]:
    """Command and ref (a PUBLISH batch id) of a command whose frame is too large to decode,
    read from the first bytes of its body only, so the sender can match the error to it."""
    if len(parts) != 3 or len(parts[1]) > 32 or parts[0] != SIGNATURE:
        return None, None
    command = bytes(parts[1])
    if command not in CLIENT_COMMANDS:
        return None, None
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(parts[2][:64])
        if command == Command.PUBLISH:
            if unpacker.read_array_header() >= 1:
                ref = unpacker.unpack()
                return command, ref if type(ref) is int else None
    except Exception:  # garbage or truncated: no ref, the error still names the command
        pass
    return command, None


def deliver_body(sid: int, topic: str, entries: list) -> list:
    """The DELIVER body: ``[sid, topic, [[seq, deliveries, record], ...]]`` (records as stored)."""
    return [sid, topic, entries]


def decode_deliver(body: Any) -> tuple[int, str, list]:
    """``(sid, topic, entries)`` of a DELIVER body; each entry is ``[seq, deliveries, record]``
    (read a record with :func:`unpack_record`)."""
    if (type(body) is not list or len(body) != 3 or type(body[0]) is not int
            or type(body[1]) is not str or type(body[2]) is not list):
        raise DecodeError(ErrorCode.BAD_BODY, "DELIVER body must be [sid, topic, [entries]]",
                          Command.DELIVER)
    return body[0], body[1], body[2]


def pub_frames(topic: str, first_seq: int, records: list[bytes]) -> list[bytes]:
    """The two frames of one live-feed message: ``[topic (UTF-8), msgpack [first_seq,
    [record, ...]]]``; the records have sequences first_seq, first_seq + 1, ..."""
    return [topic.encode(), _packer.pack([first_seq, records])]


def decode_pub(frames: list[bytes]) -> tuple[str, int, list[bytes]]:
    """``(topic, first_seq, records)`` of a live-feed message."""
    try:
        topic_frame, body = frames
        topic = bytes(topic_frame).decode()
        first, records = _unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise DecodeError(ErrorCode.BAD_BODY, f"not a live-feed message: {exc}") from None
    if type(first) is not int or type(records) is not list:
        raise DecodeError(ErrorCode.BAD_BODY, "live-feed body must be [first_seq, [records]]")
    return topic, first, records
