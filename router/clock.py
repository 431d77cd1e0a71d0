"""Time for the hub (and, later, the clients): one object that tells monotonic and wall time.

Pure of the hub: this module imports nothing of zmq-mq, so clients can share it.

Two clocks, one source, one conversion. Deadlines (ack_wait, liveness, nack delays, a held-back
message's due time) run on the monotonic clock, which never jumps; what is stored or told to
people (a record's timestamp, a ``deliver_at`` due time, the dedup window) is wall time, ms since
the epoch. The only way from one to the other is :meth:`Clock.wall_to_monotonic_ms`, which reads
both clocks as one pair and rounds *up*, so a due time never becomes an earlier deadline.

``SystemClock`` is the real thing. ``FakeClock`` is for tests: it stands still until the test
calls :meth:`FakeClock.advance` (or :meth:`FakeClock.set`), and tells whoever watches it (the
hub's wake-up) so that a hub notices the jump at once rather than at its next poll timeout.

Times are integers: nanoseconds for latency, milliseconds for everything else. ``*_ms`` round
down, so ``monotonic_ms() >= deadline`` is true only once the deadline has fully passed.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["Clock", "FakeClock", "SystemClock"]

_NS_PER_MS = 1_000_000


def _nothing() -> None:
    return None


class Clock:
    """What the hub reads time from. Subclasses give ``monotonic_ns`` and ``wall_ns``."""

    __slots__ = ()

    def monotonic_ns(self) -> int:
        raise NotImplementedError

    def wall_ns(self) -> int:
        raise NotImplementedError

    def monotonic_ms(self) -> int:
        """Monotonic time in whole ms (rounded down): for deadlines and durations."""
        return self.monotonic_ns() // _NS_PER_MS

    def wall_ms(self) -> int:
        """Wall-clock time in whole ms since the epoch (rounded down): for what is stored."""
        return self.wall_ns() // _NS_PER_MS

    def wall_to_monotonic_ms(self, wall_ms: int) -> int:
        """The monotonic ms at which the wall clock shows ``wall_ms``, rounded up (never early).

        The wall clock is read first, then the monotonic one: the gap between the two reads can
        only move the result later.
        """
        wall = self.wall_ns()
        mono = self.monotonic_ns()
        return -(-(wall_ms * _NS_PER_MS - wall + mono) // _NS_PER_MS)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Have ``callback`` called (from any thread) whenever this clock jumps; returns the
        function that stops it. A real clock never jumps, so this does nothing."""
        return _nothing


class SystemClock(Clock):
    """The machine's clocks: ``time.monotonic_ns`` and ``time.time_ns``."""

    __slots__ = ("monotonic_ns", "wall_ns")

    def __init__(self) -> None:
        # Instance attributes bound to the C functions: a hub reads the clock per batch, so no
        # Python frame in between.
        self.monotonic_ns = time.monotonic_ns
        self.wall_ns = time.time_ns


class FakeClock(Clock):
    """A clock that moves only when told to (tests). Thread-safe: a hub thread reads it while
    the test thread advances it.

    ``FakeClock(wall_ms=..., monotonic_ms=...)`` starts at those times (defaults: a fixed date
    in 2023 and one hour of uptime), so wall and monotonic time differ by a fixed offset until
    :meth:`set` steps the wall clock alone (as NTP may).
    """

    __slots__ = ("_lock", "_mono_ns", "_offset_ns", "_watchers")

    def __init__(self, wall_ms: int = 1_700_000_000_000, monotonic_ms: int = 3_600_000) -> None:
        self._lock = threading.Lock()
        self._mono_ns = monotonic_ms * _NS_PER_MS
        self._offset_ns = (wall_ms - monotonic_ms) * _NS_PER_MS
        self._watchers: list[Callable[[], None]] = []

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def wall_ns(self) -> int:
        with self._lock:  # one consistent pair, never half an update
            return self._mono_ns + self._offset_ns

    def wall_to_monotonic_ms(self, wall_ms: int) -> int:
        with self._lock:
            offset = self._offset_ns
        return -(-(wall_ms * _NS_PER_MS - offset) // _NS_PER_MS)

    def advance(self, ms: float) -> None:
        """Move both clocks forward by ``ms`` milliseconds (may be fractional, not negative)."""
        if ms < 0:
            raise ValueError(f"a clock does not go back: advance({ms})")
        with self._lock:
            self._mono_ns += round(ms * _NS_PER_MS)
        self._notify()

    def set(self, *, monotonic_ms: int | None = None, wall_ms: int | None = None) -> None:
        """Move the monotonic clock forward to ``monotonic_ms`` (the wall clock moves with it),
        and/or step the wall clock alone to ``wall_ms`` (the monotonic clock stays)."""
        with self._lock:
            if monotonic_ms is not None:
                target = monotonic_ms * _NS_PER_MS
                if target < self._mono_ns:
                    raise ValueError("the monotonic clock does not go back")
                self._mono_ns = target
            if wall_ms is not None:
                self._offset_ns = wall_ms * _NS_PER_MS - self._mono_ns
        self._notify()

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._watchers.append(callback)

        def unwatch() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def _notify(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for callback in watchers:
            callback()
