"""Staging a publish: which partition each message goes to, which producer msg_ids are repeats
(de-duplication), and where each message lands in the turn's appends.

Functions over a :class:`~zmq_mq.router.turn.Turn` and the look-ups they are given (the dedup
index of the store, the partition counts): no socket, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import protocol
from .turn import Turn

__all__ = ["partition_of", "route", "stage"]


def partition_of(
    topic: str, n: int, key: str | None, msg_id: str | None, round_robin: dict[str, int]
) -> str:
    """The partition topic of a message to a partitioned topic of ``n`` partitions: by its key,
    else by its msg_id (so a retried publish lands where the first did), else round-robin."""
    if key is not None:
        i = protocol.partition_of(key, n)
    elif msg_id is not None:
        i = protocol.partition_of(msg_id, n)
    else:
        i = round_robin[topic] = (round_robin.get(topic, -1) + 1) % n
    return f"{topic}.{i}"


def route(
    staged: list[tuple[str, bytes]],
    routes: dict[int, tuple[str | None, str | None]],
    partitions: dict[str, int],
    round_robin: dict[str, int],
) -> dict[int, str]:
    """Send the messages of ``routes`` (index -> (key, msg_id)) to their partition in place;
    returns index -> the partitioned topic's name (the ACL right is on that name)."""
    names = {}
    for index, (key, msg_id) in routes.items():
        topic, record = staged[index]
        names[index] = topic
        staged[index] = (partition_of(topic, partitions[topic], key, msg_id, round_robin), record)
    return names


def stage(
    turn: Turn,
    identity: bytes,
    batch_id: Any,
    staged: list[tuple[str, bytes]],
    ids: dict[int, str] | None,
    delays: dict[int, int] | None,
    received_ns: int,
    dedup_window_ms: int,
    dedup_lookup: Callable[[list[tuple[str, str]]], dict],
) -> None:
    """Stage an accepted batch in ``turn`` and its confirm. A message whose msg_id was stored
    within the dedup window (``dedup_lookup`` of ``[(topic, msg_id)]``), or staged earlier in
    this turn, is not staged again: its position points at the original (``(None, seq)`` for
    one already committed)."""
    turn.staged += len(staged)
    if ids is None:
        appends = turn.appends
        positions = []
        for topic, record in staged:
            lst = appends.get(topic)
            if lst is None:
                lst = appends[topic] = []
            positions.append((topic, len(lst)))
            lst.append(record)
    else:
        positions = _stage_with_ids(turn, staged, ids, dedup_window_ms, dedup_lookup)
    turn.confirms.append((identity, batch_id, positions, received_ns))
    if delays is not None:
        sched_new = turn.sched_new
        for index, due in delays.items():
            if positions[index][0] is not None:  # not a msg_id stored before
                sched_new[positions[index]] = due


def _stage_with_ids(
    turn: Turn,
    staged: list[tuple[str, bytes]],
    ids: dict[int, str],
    window: int,
    dedup_lookup: Callable[[list[tuple[str, str]]], dict],
) -> list:
    appends = turn.appends
    in_turn = turn.dedup_staged
    known: dict[tuple[str, str], int] = {}
    if window > 0:
        wanted = [(staged[i][0], m) for i, m in ids.items() if (staged[i][0], m) not in in_turn]
        if wanted:
            known = dedup_lookup(wanted)
    positions: list[tuple[str | None, int]] = []
    for index, (topic, record) in enumerate(staged):
        msg_id = ids.get(index) if window > 0 else None
        if msg_id is not None:
            ident = (topic, msg_id)
            pos = in_turn.get(ident)
            if pos is None and ident in known:
                pos = (None, known[ident])
                turn.dedup_hits = True
            if pos is not None:  # a retried publish: confirmed with the original sequence
                positions.append(pos)
                continue
        lst = appends.get(topic)
        if lst is None:
            lst = appends[topic] = []
        pos = (topic, len(lst))
        if msg_id is not None:
            in_turn[ident] = pos
            turn.dedup_new.append((topic, msg_id, len(lst)))
        positions.append(pos)
        lst.append(record)
    return positions
