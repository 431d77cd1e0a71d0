"""Operator statistics: counters the hub keeps per topic and per subscription, and the STATS
document built from them.

Pure code: no socket, no LMDB, no clock (times come in as arguments). The hub updates these
counters once per batch or per turn, never per message, so keeping them costs nothing
measurable on the hot path. Counters count since the hub started; what survives a restart
(message counts, sequences, ack floors, the dead-letter topics) comes from storage.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

__all__ = [
    "HubStats",
    "LATENCY_BUCKETS_S",
    "RATE_WINDOW_S",
    "LatencyHistogram",
    "RateWindow",
    "SubCounters",
    "TopicCounters",
    "stats_document",
    "subscription_row",
    "topic_rows",
]

# Publish rate is the messages appended over the last RATE_WINDOW_S seconds, per second: long
# enough to smooth batching, short enough that `stats --watch` shows a change within seconds.
RATE_WINDOW_S = 10
# Publish latency (PUBLISH received to CONFIRM sent, the commit included), in seconds. The low
# buckets resolve a group commit without fsync; the high ones a stalled disk.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class RateWindow:
    """Events counted in one-second buckets over the last ``window_s`` seconds."""

    __slots__ = ("_buckets", "_since_ms", "window_s")

    def __init__(self, now_ms: int, window_s: int = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._since_ms = now_ms

    def add(self, now_ms: int, n: int) -> None:
        second = now_ms // 1000
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += n
            return
        buckets.append([second, n])
        while buckets and buckets[0][0] <= second - self.window_s:
            buckets.popleft()

    def rate(self, now_ms: int) -> float:
        """Events per second over the window (or over the time since creation, if shorter)."""
        oldest = now_ms // 1000 - self.window_s
        total = sum(n for second, n in self._buckets if second > oldest)
        span = min(self.window_s, max(1.0, (now_ms - self._since_ms) / 1000))
        return total / span


class TopicCounters:
    """What was appended to one topic since the hub started."""

    __slots__ = ("published", "published_bytes", "window")

    def __init__(self, now_ms: int) -> None:
        self.published = 0
        self.published_bytes = 0
        self.window = RateWindow(now_ms)

    def add(self, now_ms: int, n: int, nbytes: int) -> None:
        self.published += n
        self.published_bytes += nbytes
        self.window.add(now_ms, n)


class SubCounters:
    """What one subscription handed out and got back since the hub started.

    ``delivered`` counts every hand-out (first deliveries and redeliveries), ``redelivered`` the
    hand-outs after the first, ``acked`` the messages an ACK made done (a duplicate ack counts
    once), ``dead_lettered`` the messages written to its dead-letter topic, ``expired`` the
    messages it was due to hand out (pending or in flight) that were gone from the log by then
    (retention limits or PURGE): skipped and counted done.
    """

    __slots__ = ("acked", "dead_lettered", "delivered", "expired", "redelivered")

    def __init__(self) -> None:
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.dead_lettered = 0
        self.expired = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "redelivered": self.redelivered,
            "acked": self.acked,
            "dead_lettered": self.dead_lettered,
            "expired": self.expired,
        }


class LatencyHistogram:
    """A cumulative-ready histogram of durations in seconds, in fixed buckets."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        """``buckets``: ``[[upper_bound, cumulative count], ...]`` ending with ``["+Inf", count]``."""
        cumulative = []
        running = 0
        for bound, n in zip((*self.bounds, "+Inf"), self.counts):
            running += n
            cumulative.append([bound, running])
        return {"count": self.count, "sum": self.sum, "buckets": cumulative}


# --- the documents: TOPICS rows and the STATS document (docs/PROTOCOL.md) -------------------


def subscription_row(sub: Any) -> dict[str, Any]:
    """What TOPICS and STATS both show of a subscription (the core's counters and options)."""
    return {
        "ack_floor": sub.ack_floor,
        "lag": sub.pending + sub.in_flight,
        "pending": sub.pending,
        "in_flight": sub.in_flight,
        "scheduled": sub.deferred,
        "actors": sub.actors,
        "ack_wait_ms": sub.ack_wait_ms,
        "max_deliver": sub.max_deliver,
        "ordering": sub.ordering,
    }


def topic_rows(stored: dict[str, Any], subs: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    """The TOPICS answer: every stored topic or topic with a subscription, with its message
    counts (``stored``: name -> TopicInfo) and subscriptions."""
    by_topic: dict[str, list[dict]] = {}
    for (topic, group), sub in sorted(subs.items()):
        by_topic.setdefault(topic, []).append({"group": group, **subscription_row(sub)})
    out = []
    for name in sorted(set(stored) | set(by_topic)):
        info = stored.get(name)
        out.append(
            {
                "topic": name,
                "name": name,
                "messages": info.count if info else 0,
                "first_seq": info.first_seq if info else 1,
                "last_seq": info.last_seq if info else 0,
                "bytes": info.bytes if info else 0,
                "subscriptions": by_topic.get(name, []),
            }
        )
    return out


class HubStats:
    """What the hub counts since its start: totals, per topic, per subscription, and the publish
    latency; and the STATS document built from them with what storage and the subscription
    cores hold (``document``)."""

    __slots__ = ("started_ms", "totals", "topics", "subs", "latency")

    def __init__(self, started_ms: int) -> None:
        self.started_ms = started_ms
        self.totals = {
            "published": 0,
            "delivered": 0,
            "redelivered": 0,
            "acked": 0,
            "dead_lettered": 0,
            "errors": 0,
        }
        self.topics: dict[str, TopicCounters] = {}
        self.subs: dict[tuple[str, str], SubCounters] = {}
        self.latency = LatencyHistogram()

    def sub(self, key: tuple[str, str]) -> SubCounters:
        """The counters of subscription ``key`` (topic, group), made on first use."""
        c = self.subs.get(key)
        if c is None:
            c = self.subs[key] = SubCounters()
        return c

    def topic(self, name: str) -> TopicCounters:
        """The counters of topic ``name``, made on first use."""
        c = self.topics.get(name)
        if c is None:
            c = self.topics[name] = TopicCounters(self.started_ms)
        return c

    def forget(self, key: tuple[str, str] | None = None, topic: str | None = None) -> None:
        """The counters of a deleted subscription or topic."""
        if key is not None:
            self.subs.pop(key, None)
        if topic is not None:
            self.topics.pop(topic, None)

    def document(
        self,
        *,
        hub: str,
        version: int,
        now_ms: int,
        wall_ms: int,
        connections: int,
        stored: dict[str, Any],
        subs: dict[tuple[str, str], Any],
        dlq_topic: Any,
    ) -> dict[str, Any]:
        """The STATS document (docs/PROTOCOL.md)."""
        return stats_document(
            hub=hub,
            version=version,
            now_ms=now_ms,
            wall_ms=wall_ms,
            started_ms=self.started_ms,
            totals=self.totals,
            connections=connections,
            latency=self.latency,
            stored=stored,
            subs=subs,
            topic_counters=self.topics,
            sub_counters=self.subs,
            dlq_topic=dlq_topic,
        )


def stats_document(
    *,
    hub: str,
    version: int,
    now_ms: int,
    wall_ms: int,
    started_ms: int,
    totals: dict[str, int],
    connections: int,
    latency: LatencyHistogram,
    stored: dict[str, Any],
    subs: dict[tuple[str, str], Any],
    topic_counters: dict[str, TopicCounters],
    sub_counters: dict[tuple[str, str], SubCounters],
    dlq_topic: Any,
) -> dict[str, Any]:
    """The STATS document: the hub's totals, and per topic and per subscription what storage
    and the subscription cores hold plus the counters kept since the start."""
    topics = []
    for name in sorted(set(stored) | {t for t, _ in subs}):
        info = stored.get(name)
        tc = topic_counters.get(name)
        topics.append(
            {
                "topic": name,
                "messages": info.count if info else 0,
                "bytes": info.bytes if info else 0,
                "first_seq": info.first_seq if info else 1,
                "last_seq": info.last_seq if info else 0,
                "created_ms": info.created_ms if info else None,
                "published": tc.published if tc else 0,
                "published_bytes": tc.published_bytes if tc else 0,
                "publish_rate": round(tc.window.rate(now_ms), 2) if tc else 0.0,
            }
        )
    rows = []
    for (topic, group), sub in sorted(subs.items()):
        c = sub_counters.get((topic, group)) or SubCounters()
        row = subscription_row(sub)
        rows.append(
            {
                "topic": topic,
                "group": group,
                "ack_floor": row.pop("ack_floor"),
                "last_seq": sub.last_seq,
                **row,
                "dlq_topic": dlq_topic(group),
                **c.as_dict(),
            }
        )
    return {
        "hub": hub,
        "version": version,
        "time_ms": wall_ms,
        "uptime_ms": now_ms - started_ms,
        "rate_window_s": RATE_WINDOW_S,
        "totals": dict(totals),
        "connections": connections,
        "publish_latency": latency.as_dict(),
        "topics": topics,
        "subscriptions": rows,
    }
