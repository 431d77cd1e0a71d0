"""Groups: the hub's subscription cores, one per (topic, consumer group).

Restored from storage at start, created at their start position by a SUBSCRIBE, added to every
new topic a pattern subscription matches. The cores themselves are pure state machines
(router/subscription.py); this module gives them what they read from the log (the window
look-up, the start probe) and the delay schedule's held-back messages. No socket, no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from . import protocol
from .acl import SUBSCRIBE
from .attachments import Attachments
from .protocol import ErrorCode
from .requests import Refusal
from .retention import start_after
from .schedule import Schedule
from .subscription import Subscription

__all__ = ["Groups"]

log = logging.getLogger("zmq_mq.hub")

Permits = Callable[[bytes, str, str], bool]


class Groups:
    """``subs``: (topic, group) -> its subscription core (the dict the hub reads and tests see)."""

    __slots__ = ("subs", "store", "schedule", "attachments", "permits")

    def __init__(
        self, store: Any, schedule: Schedule, attachments: Attachments, permits: Permits
    ) -> None:
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.store = store
        self.schedule = schedule
        self.attachments = attachments
        self.permits = permits  # (identity, action, topic): the ACL's answer

    def restore(self) -> None:
        """At start: every stored subscription, at its stored state."""
        store = self.store
        for (topic, group), blob in store.load_subs().items():
            info = store.topics.get(topic)
            last = info.last_seq if info else 0
            sub = self.subs[(topic, group)] = Subscription.restore(
                topic, group, protocol.unpack(blob), last_seq=last, lookup=self.lookup(topic)
            )
            sub.published(last, priority=True)  # the backlog may hold prioritised messages
            self.schedule.defer_scheduled(sub)

    def of(self, topic: str) -> list[Subscription]:
        """The subscriptions of one topic."""
        return [sub for (t, _), sub in self.subs.items() if t == topic]

    def lookup(self, topic: str):
        """The subscription core's window look-up: ``(key, priority)`` of seqs of ``topic``, read
        from the log (only for key ordering and for seqs that may carry a priority)."""
        read = self.store.read
        meta = protocol.record_meta
        plain = (None, protocol.DEFAULT_PRIORITY)

        def lookup(seqs: list[int]) -> list[tuple[str | None, int]]:
            return [plain if rec is None else meta(rec) for rec in read(topic, seqs)]

        return lookup

    def probe(self, topic: str):
        """For start_after: the first stored ``(seq, timestamp_ms)`` of ``topic`` at or after
        a seq."""
        read_range = self.store.read_range

        def probe(seq: int) -> tuple[int, int] | None:
            found = read_range(topic, seq, 1)
            return (found[0][0], protocol.unpack_record(found[0][1])[0]) if found else None

        return probe

    def get(self, topic: str, group: str, start: Any, options: dict, ref: Any) -> Subscription:
        """The subscription (topic, group): created at ``start`` if new, else re-configured with
        the options given (None: unchanged). A start the topic cannot have is refused."""
        key = (topic, group)
        sub = self.subs.get(key)
        ack_wait_ms, max_deliver = options["ack_wait_ms"], options["max_deliver"]
        ordering = options["ordering"]
        if sub is None:
            info = self.store.topics.get(topic)
            last = info.last_seq if info else 0
            kwargs = {}
            if ack_wait_ms is not None:
                kwargs["ack_wait_ms"] = ack_wait_ms
            if max_deliver is not None:
                kwargs["max_deliver"] = max_deliver
            try:
                after = start_after(start, info.first_seq if info else 1, last, self.probe(topic))
            except ValueError as exc:
                raise Refusal(ErrorCode.INVALID, str(exc), ref) from None
            sub = Subscription(
                topic,
                group,
                last_seq=last,
                start_after=after,
                ordering=ordering or "none",
                lookup=self.lookup(topic),
                **kwargs,
            )
            sub.published(last, priority=True)  # the backlog may hold prioritised messages
            self.schedule.defer_scheduled(sub)
            sub.dirty = True
            self.subs[key] = sub
            log.info("new subscription %s on %s (start=%s)", group, topic, start)
        elif ack_wait_ms is not None or max_deliver is not None or ordering is not None:
            sub.configure(ack_wait_ms=ack_wait_ms, max_deliver=max_deliver, ordering=ordering)
        return sub

    def new_topics(self, topics: Iterable[str]) -> None:
        """Topics just created: pattern subscriptions that match get a subscription on each (from
        its first message), and every actor attached through the pattern is attached to it."""
        attachments = self.attachments
        for topic in topics:
            for (pattern, group), spec in attachments.patterns.items():
                if not protocol.pattern_matches(pattern, topic):
                    continue
                options = {
                    "ack_wait_ms": spec.get("ack_wait_ms"),
                    "max_deliver": spec.get("max_deliver"),
                    "ordering": spec.get("ordering"),
                }
                sub = self.get(topic, group, "first", options, None)
                for (identity, sid), att in attachments.multi.get((pattern, group), {}).items():
                    if not self.permits(identity, SUBSCRIBE, topic):
                        continue
                    att.subs[topic] = sub
                    sub.attach((identity, sid), att.credit)
