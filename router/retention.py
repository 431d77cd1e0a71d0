"""Per-topic retention limits: validation and the pure decisions the hub applies.

No sockets: the hub asks these functions what to refuse (``discard="new"``) and which oldest
sequences to delete in its group commit (``discard="old"``), in bounded batches. ``Trimmer``
applies them: it reads the oldest records of the store it is given and stages the deletions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import protocol

__all__ = ["TRIM_BATCH", "TopicLimits", "Trimmer", "acked_upto", "start_after", "aged_prefix", "bytes_upto", "excess_messages", "parse_limits", "refuse_new"]

# Oldest records deleted per topic per hub turn: bounds the work one commit adds.
TRIM_BATCH = 1000

DISCARDS = ("old", "new")
RETENTIONS = ("limits", "workqueue")
_MAX_INT = (1 << 63) - 1
MAX_PARTITIONS = 1024


@dataclass(frozen=True)
class TopicLimits:
    """A topic's limits; ``None`` (or 0 on the wire) means unlimited."""

    max_messages: int | None = None
    discard: str = "old"
    max_bytes: int | None = None  # stored record bytes (as STATS "bytes" counts them)
    max_age_ms: int | None = None  # messages older than this are deleted, whatever ``discard``
    retention: str = "limits"  # or "workqueue": deleted once every subscription acked it
    # Set at creation only: the topic is stored as N topics <name>.0 .. <name>.<N-1>, a keyed
    # message goes to partition hash(key) mod N (the limits above apply to each partition)
    partitions: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["partitions"] is None:  # only partitioned topics show it
            del out["partitions"]
        return out

    @property
    def unlimited(self) -> bool:
        return (self.max_messages is None and self.max_bytes is None and self.max_age_ms is None
                and self.retention == "limits")


def parse_limits(config: Any, base: TopicLimits | None = None) -> TopicLimits:
    """Validate a config map from the wire or storage, applied over ``base``; ValueError names
    the bad field."""
    if not isinstance(config, dict):
        raise ValueError("topic config must be a map")
    values = (base or TopicLimits()).as_dict()
    for name, value in config.items():
        if name == "max_messages":
            if value is not None and (type(value) is not int or not 0 <= value <= _MAX_INT):
                raise ValueError("max_messages must be a non-negative integer (0 or nil: unlimited)")
            values[name] = value or None
        elif name in ("max_age_ms", "max_bytes"):
            if value is not None and (type(value) is not int or not 0 <= value <= _MAX_INT):
                raise ValueError(f"{name} must be a non-negative integer (0 or nil: unlimited)")
            values[name] = value or None
        elif name == "partitions":
            if value is not None and (type(value) is not int or not 1 <= value <= MAX_PARTITIONS):
                raise ValueError(f"partitions must be an integer in 1..{MAX_PARTITIONS} (nil: not partitioned)")
            values[name] = value
        elif name == "retention":
            if value not in RETENTIONS:
                raise ValueError(f"retention must be one of {', '.join(RETENTIONS)}")
            values[name] = value
        elif name == "discard":
            if value not in DISCARDS:
                raise ValueError(f"discard must be one of {', '.join(DISCARDS)}")
            values[name] = value
        else:
            raise ValueError(f"unknown topic config field {name!r}")
    return TopicLimits(**values)


def refuse_new(limits: TopicLimits, stored: int, staged: int, adding: int,
               stored_bytes: int = 0, staged_bytes: int = 0, adding_bytes: int = 0) -> str | None:
    """With ``discard="new"``: why ``adding`` more messages (of ``adding_bytes``) must be
    refused (None: they fit).

    ``stored`` is what the topic holds, ``staged`` what this turn already accepted for it.
    """
    if limits.discard != "new":
        return None
    if limits.max_bytes is not None and stored_bytes + staged_bytes + adding_bytes > limits.max_bytes:
        return (
            f"topic is full: {stored_bytes + staged_bytes} of max_bytes {limits.max_bytes} "
            f"held, {adding_bytes} more refused (discard=new)"
        )
    if limits.max_messages is None:
        return None
    if stored + staged + adding > limits.max_messages:
        return (
            f"topic is full: {stored + staged} of max_messages {limits.max_messages} "
            f"held, {adding} more refused (discard=new)"
        )
    return None


def excess_messages(limits: TopicLimits, stored: int, appending: int) -> int:
    """With ``discard="old"``: how many oldest messages to delete in this commit (bounded)."""
    if limits.discard != "old" or limits.max_messages is None:
        return 0
    return max(0, min(stored + appending - limits.max_messages, TRIM_BATCH))


def aged_prefix(stamped: list[tuple[int, int]], cutoff_ms: int) -> tuple[int | None, int | None]:
    """Of the oldest ``(seq, timestamp_ms)`` in log order: the last seq of the leading run older
    than ``cutoff_ms`` (None: none is), and the timestamp of the first one that is not (None:
    all are, or the list is empty), from which the hub knows when to look again."""
    last = None
    for seq, ts in stamped:
        if ts >= cutoff_ms:
            return last, ts
        last = seq
    return last, None


def acked_upto(first_seq: int, ack_floors: list[int]) -> int:
    """workqueue: the seq bound (exclusive) of the oldest messages every subscription acked,
    at most TRIM_BATCH past ``first_seq``. No subscription: nothing is deleted (nobody acked)."""
    if not ack_floors:
        return first_seq
    return max(first_seq, min(min(ack_floors) + 1, first_seq + TRIM_BATCH))


def bytes_upto(sized: list[tuple[int, int]], over: int) -> int | None:
    """discard=old with max_bytes: of the oldest ``(seq, record bytes)`` in log order, the last
    seq to delete so that at least ``over`` bytes go (None: nothing to delete); all of them
    when they are not enough (the rest goes next turn)."""
    if over <= 0:
        return None
    last = None
    for seq, size in sized:
        last = seq
        over -= size
        if over <= 0:
            break
    return last


def start_after(start: Any, first_seq: int, last_seq: int, probe: Any) -> int:
    """The cursor (``start_after``) of a NEW subscription for a SUBSCRIBE ``start``: ``"first"``
    (the oldest retained), ``"new"`` (only later messages), ``{"seq": N}`` (from seq N on) or
    ``{"time_ms": T}`` (from the first message with timestamp >= T). ``probe(seq)`` gives the
    first stored ``(seq, timestamp_ms)`` at or after ``seq`` (None past the end); the time is
    found by binary search over sequences (timestamps are taken as non-decreasing along the log).
    ValueError for anything else."""
    if start == "first":
        return first_seq - 1
    if start == "new":
        return last_seq
    if isinstance(start, dict) and len(start) == 1:
        ((kind, value),) = start.items()
        if type(value) is int and 0 <= value <= _MAX_INT:
            if kind == "seq":
                return min(max(value, first_seq), last_seq + 1) - 1
            if kind == "time_ms":
                lo, hi = first_seq, last_seq + 1
                while lo < hi:
                    mid = (lo + hi) // 2
                    found = probe(mid)
                    if found is None or found[0] >= hi or found[1] >= value:
                        hi = mid
                    else:
                        lo = found[0] + 1
                return lo - 1
    raise ValueError('start must be "first", "new", {"seq": N} or {"time_ms": T}')


class Trimmer:
    """The limits of every topic that has some, and the trimming they ask for each turn.

    A publish to a topic without limits costs one dict truthiness check (``limits``)."""

    __slots__ = ("store", "limits", "age_check")

    def __init__(self, store: Any, configs: dict[str, dict]) -> None:
        self.store = store
        self.limits: dict[str, TopicLimits] = {}
        self.age_check: dict[str, int] = {}  # max_age topics: wall ms before which none expires
        for topic, stored_config in configs.items():
            limits = parse_limits(stored_config)
            if not limits.unlimited:
                self.limits[topic] = limits

    def set(self, topic: str, limits: TopicLimits) -> None:
        self.age_check.pop(topic, None)
        if limits.unlimited:
            self.limits.pop(topic, None)
        else:
            self.limits[topic] = limits

    def forget(self, topic: str) -> None:
        self.limits.pop(topic, None)
        self.age_check.pop(topic, None)

    def trim(self, appends: dict[str, list[bytes]], deletes: dict[str, set[int] | range],
             ack_floors: Callable[[str], list[int]], wall_ms: int) -> None:
        """discard=old: stage in ``deletes`` the oldest messages over a topic's limits, at most
        TRIM_BATCH per topic per turn (deletes apply after this turn's ``appends``)."""
        store = self.store
        for topic, limits in self.limits.items():
            if topic in deletes:  # a PURGE or REDRIVE of this turn; trim next turn
                continue
            info = store.topics.get(topic)
            stored = info.count if info else 0
            first = info.first_seq if info else 1
            upto = first + excess_messages(limits, stored, len(appends.get(topic, ())))
            if limits.max_age_ms and stored:
                upto = max(upto, self._aged_upto(topic, info, limits.max_age_ms, wall_ms))
            if limits.max_bytes is not None and limits.discard == "old" and stored:
                over = info.bytes + sum(map(len, appends.get(topic, ()))) - limits.max_bytes
                if over > 0:
                    oldest = store.read_range(topic, first, TRIM_BATCH)
                    last = bytes_upto([(seq, len(rec)) for seq, rec in oldest], over)
                    if last is not None:
                        upto = max(upto, last + 1)
            if limits.retention == "workqueue" and stored:
                upto = max(upto, acked_upto(first, ack_floors(topic)))
            if upto > first:
                deletes[topic] = range(first, upto)

    def _aged_upto(self, topic: str, info: Any, max_age_ms: int, wall: int) -> int:
        """max_age: the seq bound (exclusive) of the oldest messages past their age, reading at
        most TRIM_BATCH records, and only once the oldest one can have aged."""
        if wall < self.age_check.get(topic, 0):
            return 0
        oldest = self.store.read_range(topic, info.first_seq, TRIM_BATCH)
        stamped = [(seq, protocol.unpack_record(rec)[0]) for seq, rec in oldest]
        last, next_ts = aged_prefix(stamped, wall - max_age_ms)
        # none left to age in this batch: look again when the first kept one ages
        self.age_check[topic] = next_ts + max_age_ms if next_ts is not None else 0
        return 0 if last is None else last + 1

    def refuse_if_full(self, staged: list[tuple[str, bytes]], appends: dict[str, list[bytes]]) -> str | None:
        """discard=new: why the whole batch ``staged`` is refused (a topic would go over its
        max_messages or max_bytes), or None."""
        adding: dict[str, list[int]] = {}
        for topic, record in staged:
            a = adding.get(topic)
            if a is None:
                a = adding[topic] = [0, 0]
            a[0] += 1
            a[1] += len(record)
        for topic, (n, nbytes) in adding.items():
            limits = self.limits.get(topic)
            if limits is None or limits.discard != "new":
                continue
            info = self.store.topics.get(topic)
            appended = appends.get(topic, ())
            staged_bytes = sum(map(len, appended)) if limits.max_bytes is not None else 0
            why = refuse_new(limits, info.count if info else 0, len(appended), n,
                             info.bytes if info else 0, staged_bytes, nbytes)
            if why:
                return f"{topic}: {why}; nothing of this batch was stored"
        return None
