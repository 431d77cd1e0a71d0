"""The delay schedule: committed messages held back until their due time (wall ms).

The hub stages new entries in its Turn (``sched_new``); once committed they are held here
(by topic and as a heap of due times) and every subscription of their topic defers them. When
their time comes the subscriptions make them ready by themselves; the schedule only forgets
them and has the next commit delete their stored entries. Clock and subscriptions come in as
arguments: no socket, no storage.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from .clock import Clock
from .subscription import Subscription

__all__ = ["Schedule"]


class Schedule:
    """Every committed held-back message not yet due: by topic (seq -> due) and as a heap
    ``(due, topic, seq)``."""

    __slots__ = ("clock", "by_topic", "heap")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.by_topic: dict[str, dict[int, int]] = {}
        self.heap: list[tuple[int, str, int]] = []

    def load(self, entries: Iterable[tuple[str, int, int]]) -> list[tuple[str, int]]:
        """At start: keep the stored entries still to come; return those whose time has passed
        (ordinary messages now: the first commit deletes their entries)."""
        wall = self.clock.wall_ms()
        past = []
        for topic, seq, due in entries:
            if due > wall:
                self.by_topic.setdefault(topic, {})[seq] = due
                self.heap.append((due, topic, seq))
            else:
                past.append((topic, seq))
        heapq.heapify(self.heap)
        return past

    def hold_back(
        self, entries: list[tuple[str, int, int]], subs_of: Callable[[str], list[Subscription]]
    ) -> None:
        """Committed messages ``(topic, seq, due)`` to deliver only at their due time: remember
        them and have every subscription of their topic hold them back."""
        by_topic: dict[str, list[tuple[int, int]]] = {}
        for topic, seq, due in entries:
            self.by_topic.setdefault(topic, {})[seq] = due
            heapq.heappush(self.heap, (due, topic, seq))
            by_topic.setdefault(topic, []).append((seq, due))
        for topic, seqs in by_topic.items():
            for sub in subs_of(topic):
                self.defer(sub, seqs)

    def defer(self, sub: Subscription, seqs_due: Iterable[tuple[int, int]]) -> None:
        """Hand held-back seqs to a subscription core, wall-clock dues turned into its clock
        (rounded up: a message is never handed out before its due time)."""
        to_monotonic = self.clock.wall_to_monotonic_ms
        sub.defer([(seq, to_monotonic(due)) for seq, due in seqs_due])

    def defer_scheduled(self, sub: Subscription) -> None:
        """A subscription created or restored: it holds back its topic's messages not yet due."""
        held = self.by_topic.get(sub.topic)
        if held:
            self.defer(sub, held.items())

    def due(self) -> bool:
        """Whether some held-back message's time has come."""
        return bool(self.heap) and self.heap[0][0] <= self.clock.wall_ms()

    def expire(self) -> list[tuple[str, int]]:
        """Forget held-back messages whose time has come (the subscriptions made them ready);
        their stored entries, for the next commit to delete."""
        heap = self.heap
        wall = self.clock.wall_ms()
        out = []
        while heap and heap[0][0] <= wall:
            _, topic, seq = heapq.heappop(heap)
            held = self.by_topic.get(topic)
            if held is not None and held.pop(seq, None) is not None:
                if not held:
                    del self.by_topic[topic]
                out.append((topic, seq))
        return out

    def forget(self, topic: str) -> None:
        """A deleted topic: nothing of it is held back any more."""
        self.by_topic.pop(topic, None)
