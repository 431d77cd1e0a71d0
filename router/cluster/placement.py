"""Placement and failover decisions: pure functions of a partition's state and the live hubs.

No ZooKeeper here: the controller (coordinator.py) reads the state, calls these, and writes
the result back with a versioned (compare-and-set) write. The rules, stated once:

- ``assign``: leaders and replicas of N partitions x R replicas spread over the hubs as
  Kafka does (round-robin from an offset, followers shifted per round), so every hub leads
  N/H partitions (+-1) and holds about N*R/H replicas; R distinct hubs per partition.
- ``elect`` (the controller, on every membership change): a live leader stays (same epoch) and
  dead followers leave the in-sync set; a dead (or absent) leader is replaced by the first
  live in-sync replica, in replica order, with ``epoch + 1``, and the dead leave the in-sync
  set. No unclean election: with no live in-sync replica the partition becomes unavailable
  (leader None) and its epoch still grows by one, so the deposed leader is fenced at once;
  its in-sync set is kept as it was, so the first of them to come back leads again (epoch + 1
  once more). Nothing else changes an epoch.
- ``change_isr`` (the leader): only the current leader at the current epoch may change the
  in-sync set (grow it when a follower caught up, shrink it when one fell behind); any other
  writer gets ``StaleEpochError``.

Invariant (tests/test_cluster_placement.py checks it on random histories): a leader is always
a replica that was in sync, so it holds every confirmed message; and one epoch never has two
leaders.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable
from dataclasses import replace

from .errors import NotEnoughHubsError, StaleEpochError
from .layout import MAX_PARTITIONS, PartitionState, TopicSpec, in_replica_order


def default_min_insync(replicas: int) -> int:
    """All in-sync replicas must hold a publish, and at least two of them when there are two
    or more replicas (one copy is not replication)."""
    return min(2, replicas)


def assign(topic: str, partitions: int, replicas: int, hubs: Iterable[str],
           start: int | None = None) -> tuple[tuple[str, ...], ...]:
    """Replicas of each partition, preferred leader first, over ``hubs`` (sorted first, so the
    result depends on the set only). ``start``: the hub of partition 0 and the first follower
    shift; default: from the topic's name, so topics do not all start on the same hub."""
    ring = sorted(set(hubs))
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, not {partitions}")
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    n = len(ring)
    if replicas > n:
        raise NotEnoughHubsError(f"topic {topic!r} needs {replicas} replicas but only {n} "
                                 f"hub(s) are live; start more hubs or ask for fewer replicas")
    if start is None:
        start = zlib.crc32(topic.encode())
    first_offset = start % n
    shift = start % n
    out = []
    for p in range(partitions):
        if p > 0 and p % n == 0:
            shift += 1  # a new round: shift the followers so pairs of hubs vary
        first = (p + first_offset) % n
        chosen = [ring[first]]
        for j in range(replicas - 1):
            step = 1 + (shift + j) % (n - 1)
            chosen.append(ring[(first + step) % n])
        out.append(tuple(chosen))
    return tuple(out)


def make_topic(name: str, partitions: int, replicas: int, hubs: Iterable[str],
               min_insync: int | None = None, start: int | None = None) -> TopicSpec:
    """The TopicSpec of a new topic placed over ``hubs`` (see ``assign``)."""
    assignment = assign(name, partitions, replicas, hubs, start)
    if min_insync is None:
        min_insync = default_min_insync(replicas)
    return TopicSpec(name, partitions, replicas, min_insync, assignment)


def initial_state(topic: str, index: int, replicas: Iterable[str],
                  controller_epoch: int = 0) -> PartitionState:
    """A new partition before any election: its preferred leader leads at epoch 0 and every
    replica is in sync (all logs are empty). The controller then applies ``elect`` with the
    live hubs before writing it."""
    replicas = tuple(replicas)
    return PartitionState(topic, index, replicas[0], 0, replicas, replicas, controller_epoch)


def elect(state: PartitionState, live: Collection[str]) -> PartitionState:
    """The state after the hubs in ``live`` (and only them) are known to be up; ``state``
    itself when nothing changes (the controller writes only what changed)."""
    live = set(live)
    if state.leader is not None and state.leader in live:
        isr = tuple(r for r in state.isr if r in live or r == state.leader)
        return state if isr == state.isr else replace(state, isr=isr)
    candidates = [r for r in state.replicas if r in state.isr and r in live]
    if candidates:
        isr = in_replica_order(state.replicas, (r for r in state.isr if r in live))
        return replace(state, leader=candidates[0], epoch=state.epoch + 1, isr=isr)
    if state.leader is None:
        return state  # still unavailable: nothing to write
    return replace(state, leader=None, epoch=state.epoch + 1)


def change_isr(state: PartitionState, leader: str, epoch: int,
               isr: Iterable[str]) -> PartitionState:
    """The leader's change of the in-sync set. ``StaleEpochError`` unless ``leader`` leads
    ``state`` at ``epoch``; ValueError if ``isr`` drops the leader or names a non-replica."""
    if state.leader != leader or state.epoch != epoch:
        raise StaleEpochError(
            f"{leader!r} at epoch {epoch} may not change partition {state.name}: it is led by "
            f"{state.leader!r} at epoch {state.epoch}")
    wanted = set(isr)
    if leader not in wanted:
        raise ValueError(f"the leader {leader!r} must stay in the in-sync replicas")
    unknown = wanted - set(state.replicas)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not replicas of {state.name}")
    new = in_replica_order(state.replicas, wanted)
    return state if new == state.isr else replace(state, isr=new)


def with_controller_epoch(state: PartitionState, controller_epoch: int) -> PartitionState:
    return replace(state, controller_epoch=controller_epoch)
