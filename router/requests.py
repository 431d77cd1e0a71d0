"""Requests: a command body in, a typed request out, or a :class:`Refusal` (the sender's fault).

Pure functions: no socket, no storage, no clock (times come in as arguments). Whatever body
arrives, a parser returns its request or raises ``Refusal``, never anything else
(tests/test_requests.py drives them with garbage). What needs the hub's state (an attachment,
a topic's subscriptions, the ACL) is checked by the handler after parsing.

PUBLISH is the hot path: ``parse_publish`` builds each message's stored record once, and
returns the per-message extras (msg ids, due times, partition routes, priorities) as dicts
that exist only when some message has them, as the hub did inline before.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from . import protocol
from .protocol import DecodeError, ErrorCode

__all__ = [
    "MAX_FETCH",
    "MAX_NACK_DELAY_MS",
    "MAX_SEQS_PER_COMMAND",
    "Admin",
    "Publish",
    "PublishLimits",
    "Refusal",
    "Subscribe",
    "parse_admin",
    "parse_by_topic",
    "parse_detach",
    "parse_fetch",
    "parse_publish",
    "parse_ref",
    "parse_seqs",
    "parse_settle",
    "parse_subscribe",
]

MAX_SEQS_PER_COMMAND = 100_000
# FETCH answers at most this many records (and at most half a frame of bytes): an admin reads
# a log page by page, and one page never holds the loop for long.
MAX_FETCH = 1000
MAX_NACK_DELAY_MS = 365 * 24 * 3600 * 1000
MAX_ACK_WAIT_MS = 7 * 24 * 3600 * 1000
START_HELP = 'start must be "first", "new", {"seq": N} or {"time_ms": T}'


# An ACL check a parser runs at the point the hub always checked it: (topic, ref) -> None, or
# raises a Refusal (forbidden)
Authorize = Callable[[str, Any], None]


class Refusal(Exception):
    """A well-framed command the hub refuses: the sender's fault, answered with an ERROR to it
    only (``code``, ``message``, ``ref`` of the command, ``index`` of the message at fault)."""

    def __init__(self, code: ErrorCode, message: str, ref: Any = None, index: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.index = index


@dataclass(frozen=True, slots=True)
class PublishLimits:
    """The hub's per-batch limits a PUBLISH is checked against (from HubConfig)."""

    max_batch_messages: int
    max_message_bytes: int
    max_headers_bytes: int


@dataclass(frozen=True, slots=True)
class Publish:
    """An accepted PUBLISH batch, not yet routed to partitions nor staged.

    ``staged``: ``(topic, record)`` per message; ``ids``: index -> producer msg_id;
    ``delays``: index -> due time (wall ms) of held-back messages; ``routes``: index ->
    ``(key, msg_id)`` of messages sent to a partitioned topic (the topic in ``staged`` is its
    name until routed); ``prioritised``: indexes of messages with a non-default priority.
    Each is None when no message of the batch has one.
    """

    batch_id: Any
    staged: list[tuple[str, bytes]]
    ids: dict[int, str] | None
    delays: dict[int, int] | None
    routes: dict[int, tuple[str | None, str | None]] | None
    prioritised: list[int] | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    sid: int
    topic: str  # a topic, a pattern or a partitioned topic's name
    group: str
    pattern: bool
    credit: int
    ack_wait_ms: int | None
    max_deliver: int | None
    ordering: str | None
    start: Any  # "first", "new", {"seq": N} or {"time_ms": T}


@dataclass(frozen=True, slots=True)
class Admin:
    """An admin command ``[ref, topic, arg]`` (PURGE, REDRIVE) or ``[ref, op, topic, config]``
    (TOPIC, with ``arg`` = op, ``config``), topic checked."""

    ref: Any
    topic: str
    arg: Any
    config: Any = None


# --- PUBLISH ----------------------------------------------------------------------------------


def parse_publish(
    body: Any,
    limits: PublishLimits,
    valid_topics: Container[str],
    wall_ns: int,
    partitioned: Container[str],
) -> Publish:
    """A PUBLISH body: every message checked and packed into its stored record, stamped with
    the wall clock at receipt (``wall_ns``). ``valid_topics`` are names known to be valid (a
    cache: others are checked); ``partitioned`` the names of partitioned topics."""
    try:
        batch_id, messages = protocol.decode_publish(body)
    except DecodeError as exc:
        raise Refusal(exc.code, exc.message) from None
    if len(messages) > limits.max_batch_messages:
        raise Refusal(
            ErrorCode.TOO_LARGE,
            f"batch of {len(messages)} messages is over the limit of {limits.max_batch_messages}",
            batch_id,
        )
    max_payload = limits.max_message_bytes
    max_headers = limits.max_headers_bytes
    pack_record = protocol.pack_record
    decode_message = protocol.decode_publish_message
    ts = wall_ns // 1_000_000  # the record's timestamp: the wall clock at receipt
    # delay_ms counts from the receipt rounded up, so the due time is never before it
    ts_ceil = -(-wall_ns // 1_000_000)
    staged: list[tuple[str, bytes]] = []
    ids: dict[int, str] | None = None
    delays: dict[int, int] | None = None
    routes: dict[int, tuple[str | None, str | None]] | None = None
    prioritised: list[int] | None = None
    for index, msg in enumerate(messages):
        try:
            topic, payload, key, headers, opts = decode_message(msg)
        except DecodeError as exc:
            raise Refusal(exc.code, f"message {index}: {exc.message}", batch_id, index) from None
        if type(topic) is not str or topic not in valid_topics:  # unhashable: no set lookup
            problem = protocol.check_topic(topic)
            if problem:
                raise Refusal(ErrorCode.BAD_TOPIC, f"message {index}: {problem}", batch_id, index)
        if type(payload) is not bytes:
            raise Refusal(
                ErrorCode.BAD_BODY, f"message {index}: payload must be bytes", batch_id, index
            )
        if len(payload) > max_payload:
            raise Refusal(
                ErrorCode.TOO_LARGE,
                f"message {index}: payload of {len(payload)} bytes is over the limit of "
                f"{max_payload}",
                batch_id,
                index,
            )
        if key is not None and type(key) is not str:
            raise Refusal(
                ErrorCode.BAD_BODY, f"message {index}: key must be a string or nil", batch_id, index
            )
        if headers:
            problem = protocol.check_headers(headers)
            if problem:
                raise Refusal(ErrorCode.BAD_BODY, f"message {index}: {problem}", batch_id, index)
            problem = protocol.check_reserved_headers(headers)
            if problem:
                raise Refusal(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
        elif headers is not None and type(headers) is not dict:
            raise Refusal(
                ErrorCode.BAD_BODY,
                f"message {index}: headers must be a map or nil",
                batch_id,
                index,
            )
        msg_id = None
        if opts is not None:
            msg_id = _msg_id_of(opts, index, batch_id)
            priority = opts.get("priority")
            if priority is not None:
                problem = protocol.check_priority(priority)
                if problem:
                    raise Refusal(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
                if priority != protocol.DEFAULT_PRIORITY:
                    headers = (
                        {**headers, protocol.PRIORITY_HEADER: priority}
                        if headers
                        else {protocol.PRIORITY_HEADER: priority}
                    )
                    if prioritised is None:
                        prioritised = []
                    prioritised.append(index)
            due = _due_of(opts, ts, ts_ceil, index, batch_id)
            if due is not None:
                headers = (
                    {**headers, protocol.DELIVER_AT_HEADER: due}
                    if headers
                    else {protocol.DELIVER_AT_HEADER: due}
                )
                if delays is None:
                    delays = {}
                delays[index] = due
            if msg_id is not None:
                headers = (
                    {**headers, protocol.MSG_ID_HEADER: msg_id}
                    if headers
                    else {protocol.MSG_ID_HEADER: msg_id}
                )
                if ids is None:
                    ids = {}
                ids[index] = msg_id
        try:
            record = pack_record(ts, key, headers, payload)
        except (TypeError, ValueError) as exc:
            raise Refusal(ErrorCode.BAD_BODY, f"message {index}: {exc}", batch_id, index) from None
        if len(record) - len(payload) > max_headers:
            raise Refusal(
                ErrorCode.TOO_LARGE,
                f"message {index}: key and headers are over the limit of {max_headers} bytes",
                batch_id,
                index,
            )
        if partitioned and topic in partitioned:
            if routes is None:
                routes = {}
            routes[index] = (key, msg_id)
        staged.append((topic, record))
    return Publish(batch_id, staged, ids, delays, routes, prioritised)


def _due_of(opts: dict, ts: int, ts_ceil: int, index: int, batch_id: Any) -> int | None:
    """The due time (wall ms) of a message PUBLISH opts hold back (``delay_ms`` or
    ``deliver_at_ms``), or None to deliver it at once. ``ts`` is the wall clock at receipt
    rounded down, ``ts_ceil`` rounded up: a delay counts from the latter, so that the due time
    is never less than the delay after the publish."""
    delay = opts.get("delay_ms")
    at = opts.get("deliver_at_ms")
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise Refusal(
            ErrorCode.INVALID,
            f"message {index}: give delay_ms or deliver_at_ms, not both",
            batch_id,
            index,
        )
    if delay is not None:
        problem = protocol.check_delay_ms(delay)
        if problem:
            raise Refusal(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
        if delay == 0:
            return None
        due = ts_ceil + delay
    else:
        if type(at) is not int or at < 0:
            raise Refusal(
                ErrorCode.INVALID,
                f"message {index}: deliver_at_ms must be an integer "
                f">= 0 (ms since the epoch), got {at!r}",
                batch_id,
                index,
            )
        if at - ts > protocol.MAX_DELAY_MS:
            raise Refusal(
                ErrorCode.INVALID,
                f"message {index}: deliver_at_ms is more than 366 days ahead",
                batch_id,
                index,
            )
        due = at
    return due if due > ts else None


def _msg_id_of(opts: Any, index: int, batch_id: Any) -> str | None:
    """The msg_id of a PUBLISH message's options map (unknown option keys are ignored)."""
    if type(opts) is not dict:
        raise Refusal(
            ErrorCode.BAD_BODY, f"message {index}: options must be a map", batch_id, index
        )
    msg_id = opts.get("msg_id")
    if msg_id is None:
        return None
    problem = protocol.check_msg_id(msg_id)
    if problem:
        raise Refusal(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
    return msg_id


# --- SUBSCRIBE and settlements ------------------------------------------------------------


def parse_subscribe(body: Any, authorize: Authorize | None = None) -> Subscribe:
    """A SUBSCRIBE map (docs/PROTOCOL.md). ``authorize(topic, sid)``, the caller's ACL check of
    a plain topic, runs once topic and group are known good, before the options are checked
    (a client without the right hears that first)."""
    if not isinstance(body, dict):
        raise Refusal(ErrorCode.BAD_BODY, "SUBSCRIBE body must be a map")
    sid = body.get("sid")
    if type(sid) is not int:
        raise Refusal(ErrorCode.BAD_BODY, "SUBSCRIBE needs an integer sid")
    topic, group = body.get("topic"), body.get("group")
    pattern = protocol.is_pattern(topic)
    problem = protocol.check_pattern(topic) if pattern else protocol.check_topic(topic)
    if problem:
        raise Refusal(ErrorCode.BAD_TOPIC, problem, sid)
    problem = protocol.check_group(group)
    if problem:
        raise Refusal(ErrorCode.BAD_GROUP, problem, sid)
    if authorize is not None and not pattern:
        authorize(topic, sid)
    credit = _int_field(body, "credit", 0, protocol.MAX_CREDIT, sid, default=10)
    ack_wait_ms = _int_field(body, "ack_wait_ms", 1, MAX_ACK_WAIT_MS, sid)
    max_deliver = _int_field(body, "max_deliver", 0, 1_000_000, sid)
    ordering = body.get("ordering")
    if ordering is not None and ordering not in protocol.ORDERINGS:
        raise Refusal(
            ErrorCode.INVALID, f"ordering must be one of {', '.join(protocol.ORDERINGS)}", sid
        )
    start = body.get("start", "first")
    if start not in ("first", "new") and not (
        isinstance(start, dict)
        and len(start) == 1
        and type(next(iter(start.values()))) is int
        and next(iter(start)) in ("seq", "time_ms")
        and next(iter(start.values())) >= 0
    ):
        raise Refusal(ErrorCode.INVALID, START_HELP, sid)
    return Subscribe(sid, topic, group, pattern, credit, ack_wait_ms, max_deliver, ordering, start)


def _int_field(
    body: dict, name: str, lo: int, hi: int, ref: Any, default: int | None = None
) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise Refusal(ErrorCode.INVALID, f"{name} must be an integer in {lo}..{hi}", ref)
    return value


def parse_settle(body: Any, command: str, size: int) -> int:
    """The sid of ``[sid, ...]`` bodies (CREDIT, ACK, NACK, RELEASE, REJECT, PROGRESS) of
    ``size`` items; the rest is checked once the attachment is found (its error comes first)."""
    if not isinstance(body, list) or len(body) != size or type(body[0]) is not int:
        raise Refusal(
            ErrorCode.BAD_BODY, f"{command} body must be an array of {size} starting with sid"
        )
    return body[0]


def parse_by_topic(by_topic: Any, reads: Container[str], name: str, sid: int, command: str) -> list:
    """``{topic: [seq, ...]}`` of a settlement: ``[(topic, seqs)]``, each topic one that the
    attachment ``name`` reads (``reads``)."""
    if not isinstance(by_topic, dict):
        raise Refusal(ErrorCode.BAD_BODY, f"{command} needs a map of topic to sequences", sid)
    out = []
    for topic, seqs in by_topic.items():
        if type(topic) is not str or topic not in reads:
            raise Refusal(
                ErrorCode.INVALID, f"{command}: subscription {name!r} does not read {topic!r}", sid
            )
        if not isinstance(seqs, list) or len(seqs) > MAX_SEQS_PER_COMMAND:
            raise Refusal(ErrorCode.BAD_BODY, f"{command}: sequences must be a list", sid)
        for s in seqs:
            if type(s) is not int:
                raise Refusal(ErrorCode.BAD_BODY, f"{command}: sequences must be integers", sid)
        out.append((topic, seqs))
    return out


def parse_credit(value: Any, sid: int) -> int:
    if type(value) is not int or not 0 <= value <= protocol.MAX_CREDIT:
        raise Refusal(ErrorCode.INVALID, f"credit must be 0..{protocol.MAX_CREDIT}", sid)
    return value


def parse_nack_delay(value: Any, sid: int) -> int:
    if type(value) is not int or not 0 <= value <= MAX_NACK_DELAY_MS:
        raise Refusal(ErrorCode.INVALID, "NACK delay_ms must be a non-negative integer", sid)
    return value


def parse_detach(body: Any) -> int:
    if not isinstance(body, list) or len(body) != 1 or type(body[0]) is not int:
        raise Refusal(ErrorCode.BAD_BODY, "DETACH body must be [sid]")
    return body[0]


# --- admin commands -----------------------------------------------------------------------


def parse_ref(body: Any) -> Any:
    """The ref of TOPICS and STATS (``[ref]``; anything else: no ref)."""
    return body[0] if isinstance(body, list) and body else None


def parse_admin(body: Any, command: str) -> Admin:
    """PURGE / REDRIVE ``[ref, topic, seqs]`` or TOPIC ``[ref, op, topic, config]``."""
    size = 4 if command == "TOPIC" else 3
    if not isinstance(body, list) or len(body) != size:
        raise Refusal(
            ErrorCode.BAD_BODY,
            f"{command} body must be an array of {size}: [ref, ...]",
            parse_ref(body),
        )
    if size == 4:
        ref, op, topic, config = body
        topic = _admin_topic(topic, ref)
        if op not in ("create", "config", "get", "delete"):
            raise Refusal(ErrorCode.INVALID, "TOPIC op must be create, config, get or delete", ref)
        return Admin(ref, topic, op, config)
    ref, topic, seqs = body
    return Admin(ref, _admin_topic(topic, ref), seqs)


def parse_fetch(body: Any, authorize: Authorize | None = None) -> tuple[Any, str, int, int]:
    """FETCH ``[ref, topic, from_seq, max_count]``; ``authorize(topic, ref)`` (the caller's ACL
    check) runs once the topic is known good, before the range is checked."""
    if not isinstance(body, list) or len(body) != 4:
        raise Refusal(
            ErrorCode.BAD_BODY, "FETCH body must be an array of 4: [ref, ...]", parse_ref(body)
        )
    ref, topic, from_seq, max_count = body
    topic = _admin_topic(topic, ref)
    if authorize is not None:
        authorize(topic, ref)
    if type(from_seq) is not int or not 0 <= from_seq < 1 << 63:
        raise Refusal(ErrorCode.INVALID, "FETCH from_seq must be a non-negative integer", ref)
    if type(max_count) is not int or not 1 <= max_count <= MAX_FETCH:
        raise Refusal(ErrorCode.INVALID, f"FETCH max_count must be 1..{MAX_FETCH}", ref)
    return ref, topic, from_seq, max_count


def _admin_topic(topic: Any, ref: Any) -> str:
    problem = protocol.check_topic(topic)
    if problem:
        raise Refusal(ErrorCode.BAD_TOPIC, problem, ref)
    return topic


def parse_seqs(seqs: Any, ref: Any, command: str, limit: int) -> list[int]:
    """The sequences of PURGE / REDRIVE: at most ``limit`` integers, duplicates dropped."""
    if not isinstance(seqs, list) or len(seqs) > limit:
        raise Refusal(
            ErrorCode.BAD_BODY, f"{command}: sequences must be a list of at most {limit}", ref
        )
    for s in seqs:
        if type(s) is not int:
            raise Refusal(ErrorCode.BAD_BODY, f"{command}: sequences must be integers", ref)
    return list(dict.fromkeys(seqs))
