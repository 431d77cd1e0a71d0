"""A turn: what one loop turn of the hub stages for its group commit.

The loop reads commands into the current :class:`Turn`; the commit consumes it in one LMDB
transaction and a new one starts. Replies that the commit makes true (confirms, admin answers)
are built from it; nothing in a Turn is visible to any client before its commit.
"""

from __future__ import annotations

from typing import Any

from .subscription import DeadLetter, Subscription

__all__ = ["Turn"]


class Turn:
    """The staged work of one loop turn (slots: it is touched per command on the hot path)."""

    __slots__ = (
        "appends",
        "confirms",
        "replies",
        "dead_letters",
        "deletes",
        "admin",
        "dedup_staged",
        "dedup_new",
        "dedup_hits",
        "staged",
        "prio_topics",
        "sched_new",
        "unsched",
        "fresh",
    )

    def __init__(self) -> None:
        # topic -> records to append, in arrival order
        self.appends: dict[str, list[bytes]] = {}
        # PUBLISH batches to confirm once stored:
        # (identity, batch_id, [(topic, index in its append list)], receipt time in ns)
        self.confirms: list[tuple[bytes, Any, list[tuple[Any, int]], int]] = []
        # answers that need no commit of their own (errors, WELCOME, SUBSCRIBED, ...):
        # (identity, command, body), sent after the commit with the confirms
        self.replies: list[tuple[bytes, bytes, Any]] = []
        self.dead_letters: list[tuple[Subscription, DeadLetter]] = []
        # PURGE / REDRIVE / retention: records to delete in the commit
        self.deletes: dict[str, set[int] | range] = {}
        # PURGE / REDRIVE answers to send once the commit is durable:
        # (identity, command, ref, result)
        self.admin: list[tuple[bytes, bytes, Any, Any]] = []
        # producer message ids of this turn: (topic, msg_id) -> staged position, and what the
        # commit stores in the dedup index; dedup_hits: some confirm repeats a stored seq
        self.dedup_staged: dict[tuple[str, str], tuple[Any, int]] = {}
        self.dedup_new: list[tuple[str, str, int]] = []
        self.dedup_hits = False
        self.staged = 0  # messages staged by PUBLISH (bounded by max_turn_messages)
        self.prio_topics: set[str] = set()  # topics with a prioritised message
        # delayed delivery: (topic, position in appends) -> due (wall ms); entries to unschedule
        self.sched_new: dict[tuple[str, int], int] = {}
        self.unsched: list[tuple[str, int]] = []
        # (topic, group) of subscriptions that got an attachment (their SUBSCRIBED goes first)
        self.fresh: set[tuple[str, str]] = set()

    def append(self, topic: str, record: bytes) -> tuple[str, int]:
        """Stage one record; its position ``(topic, index)`` in this turn's appends."""
        lst = self.appends.get(topic)
        if lst is None:
            lst = self.appends[topic] = []
        lst.append(record)
        return (topic, len(lst) - 1)
