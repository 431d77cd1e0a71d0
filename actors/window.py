"""The adaptive credit window of an Actor's subscription: how many messages it holds.

A fixed window is wrong both ways: one message in flight makes a fast actor wait a round trip
to the hub per message; a large one lets a slow actor of a work queue hoard messages an idle
actor of the same group could have taken. So the window follows how fast this actor finishes
messages, the way TCP grows its window:

- **grow** (double, up to ``cap``) when the workers ran out of work while the window was full:
  the hub had more to give and the round trip to it, not the handlers, set the pace;
- **shrink** when a message has waited here, for a worker, longer than ``hold_ms``: the
  workers fall behind. The new window is what they finish in ``hold_ms`` (the completion rate
  measured over the last samples), plus ``floor`` (what they run at once), never under
  ``floor``.

A fast actor therefore ends at ``cap`` with messages waiting only briefly; a slow one holds
about ``floor + rate * hold_ms``, e.g. 2 for one worker taking 50 ms a message. The class is
pure: its owner reports deliveries and completions and asks :meth:`update` once per loop turn,
with the time from an injected clock (milliseconds).
"""

from __future__ import annotations

import math

__all__ = ["CreditWindow", "TARGET_HOLD_MS", "RATE_SAMPLE_MS"]

# How long a message may wait here for a worker before the window shrinks (ms): long enough to
# ride out a scheduling hiccup, short next to any ack_wait.
TARGET_HOLD_MS = 50
# The completion rate is sampled over at least this many ms (then smoothed).
RATE_SAMPLE_MS = 20


class CreditWindow:
    """The window of one subscription, between ``floor`` and ``cap`` (see module docstring)."""

    __slots__ = ("floor", "cap", "hold_ms", "window", "held", "_full", "_done",
                 "_sample_start", "rate")

    def __init__(self, floor: int, cap: int, now_ms: int, *, hold_ms: int = TARGET_HOLD_MS,
                 start: int | None = None) -> None:
        cap = max(1, cap)
        self.floor = max(1, min(floor, cap))
        self.cap = cap
        self.hold_ms = hold_ms
        self.window = self.floor if start is None else max(self.floor, min(start, cap))
        self.held = 0          # delivered, not yet finished
        self._full = False     # held reached the window since the last change
        self._done = 0         # finished in the current rate sample
        self._sample_start = now_ms
        self.rate = 0.0        # messages finished per ms, smoothed

    def delivered(self, n: int = 1) -> None:
        self.held += n
        if self.held >= self.window:
            self._full = True

    def finished(self, n: int = 1) -> None:
        self.held = max(0, self.held - n)
        self._done += n

    def update(self, now_ms: int, *, starved: bool, oldest_wait_ms: int | None) -> int | None:
        """Once per loop turn. ``starved``: a worker was idle with nothing waiting here;
        ``oldest_wait_ms``: how long the oldest message waiting for a worker has waited (None:
        none waits). Returns the new window when it changed, else None."""
        elapsed = now_ms - self._sample_start
        if elapsed >= RATE_SAMPLE_MS:
            sample = self._done / elapsed
            self.rate = sample if self.rate == 0.0 else (self.rate + sample) / 2
            self._done = 0
            self._sample_start = now_ms
        new = self.window
        if oldest_wait_ms is not None and oldest_wait_ms > self.hold_ms:
            new = max(self.floor, min(new, self.floor + math.ceil(self.rate * self.hold_ms)))
        elif starved and self._full:
            new = min(self.cap, new * 2)
        if new == self.window:
            return None
        self.window = new
        self._full = self.held >= new
        return new
