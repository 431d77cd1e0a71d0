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
    "LATENCY_BUCKETS_S",
    "RATE_WINDOW_S",
    "LatencyHistogram",
    "RateWindow",
    "SubCounters",
    "TopicCounters",
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
