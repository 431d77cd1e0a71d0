"""Admin commands: TOPICS, STATS, FETCH, PURGE, TOPIC and REDRIVE.

Each handler takes the hub it serves as its first argument (the collaborators it uses are
listed by :class:`AdminHost`; this module never imports the hub) and a parsed request from
router/requests.py. Reads answer at once; PURGE and REDRIVE stage their deletes and appends in
the turn and are answered by :func:`answer_admin` once the commit that carries them out is
durable; TOPIC delete commits what the turn staged first, then deletes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from . import protocol
from .access import Access
from .acl import PUBLISH, SUBSCRIBE
from .attachments import Attachments, Peer
from .config import HubConfig
from .deadletters import NotRedrivable, redrive_record
from .errors import StorageError, storage_error_code
from .protocol import Command, ErrorCode
from .requests import MAX_SEQS_PER_COMMAND, Refusal, parse_admin, parse_fetch, parse_ref, parse_seqs
from .retention import TopicLimits, Trimmer, parse_limits
from .schedule import Schedule
from .stats import HubStats
from .subscription import Subscription
from .turn import Turn

__all__ = ["AdminHost", "HANDLERS", "answer_admin"]

log = logging.getLogger("zmq_mq.hub")


class AdminHost(Protocol):
    """What the admin commands use of the hub."""

    config: HubConfig
    store: Any
    subs: dict[tuple[str, str], Subscription]
    turn: Turn
    attachments: Attachments
    trimmer: Trimmer
    schedule: Schedule
    clock: Any
    statistics: HubStats
    access: Access

    def topics(self) -> list[dict]: ...
    def stats(self) -> dict: ...
    def commit_now(self) -> None: ...


def _require(hub: AdminHost, identity: bytes, topic: str, ref: Any, *actions: str) -> None:
    """Under an ACL, refuse a command on a topic the client lacks one of these rights on."""
    now = hub.clock.monotonic_ms()
    for action in actions:
        hub.access.require(identity, action, topic, ref, now)


def on_topics(hub: AdminHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    ref = parse_ref(body)
    topics = [t for t in hub.topics() if hub.access.visible(identity, t["topic"])]
    hub.turn.replies.append((identity, Command.REPLY, [ref, topics]))


def on_stats(hub: AdminHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    ref = parse_ref(body)
    stats = hub.stats()
    # under an ACL, like TOPICS: only what this client may publish or read
    stats["topics"] = [t for t in stats["topics"] if hub.access.visible(identity, t["topic"])]
    visible = hub.access.visible
    stats["subscriptions"] = [s for s in stats["subscriptions"] if visible(identity, s["topic"])]
    hub.turn.replies.append((identity, Command.REPLY, [ref, stats]))


def on_fetch(hub: AdminHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    # reading a log is reading the topic
    ref, topic, from_seq, max_count = parse_fetch(
        body, lambda topic, ref: _require(hub, identity, topic, ref, SUBSCRIBE)
    )
    budget = hub.config.max_frame_bytes // 2
    out = []
    size = 0
    for seq, record in hub.store.read_range(topic, from_seq, max_count):
        if out and size + len(record) > budget:
            break
        out.append([seq, record])
        size += len(record)
    hub.turn.replies.append((identity, Command.REPLY, [ref, out]))


def on_purge(hub: AdminHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    req = parse_admin(body, "PURGE")
    ref, topic, seqs = req.ref, req.topic, req.arg
    _require(hub, identity, topic, ref, SUBSCRIBE, PUBLISH)  # deleting needs both rights
    if seqs != "all":
        seqs = parse_seqs(seqs, ref, "PURGE", MAX_SEQS_PER_COMMAND)
    deletes = hub.turn.deletes
    info = hub.store.topics.get(topic)
    staged = deletes.get(topic)
    if info is None:
        purged: list[int] | int = 0
    elif seqs == "all":  # everything stored now; what this turn appends stays
        already = (
            0 if staged is None else (info.count if isinstance(staged, range) else len(staged))
        )
        purged = info.count - already
        deletes[topic] = range(info.first_seq, info.last_seq + 1)
    elif isinstance(staged, range):  # a purge of all in this turn already takes them
        purged = []
    else:
        fresh = [s for s in seqs if staged is None or s not in staged]
        purged = [s for s, r in zip(fresh, hub.store.read(topic, fresh)) if r is not None]
        if purged:
            deletes.setdefault(topic, set()).update(purged)
    result = {"topic": topic, "purged": purged if isinstance(purged, int) else len(purged)}
    if not isinstance(purged, int):
        result["seqs"] = purged
    hub.turn.admin.append((identity, Command.PURGE, ref, result))


def on_topic(hub: AdminHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    """TOPIC [ref, op, topic, config]: op create|config (store limits), get (read them),
    delete (remove the topic, its partitions and its subscriptions)."""
    req = parse_admin(body, "TOPIC")
    ref, op, topic, config = req.ref, req.arg, req.topic, req.config
    store = hub.store
    if op == "get":
        if not hub.access.visible(identity, topic):
            why = hub.access.forbidden(identity, SUBSCRIBE, topic, hub.clock.monotonic_ms())
            raise Refusal(ErrorCode.FORBIDDEN, why, ref)
    elif op == "delete":
        _require(hub, identity, topic, ref, SUBSCRIBE, PUBLISH)
        # delete first: it may commit the turn (commit_now), which starts a new hub.turn
        result = delete_topic(hub, topic, ref)
        hub.turn.replies.append((identity, Command.REPLY, [ref, result]))
        return
    else:
        _require(hub, identity, topic, ref, SUBSCRIBE, PUBLISH)  # limits delete messages
        if config is None:
            config = {}
        current = store.configs.get(topic, {})
        base = parse_limits(current) if op == "config" else None
        if (
            op == "create"
            and isinstance(config, dict)
            and "partitions" not in config
            and current.get("partitions")
        ):
            config = {**config, "partitions": current["partitions"]}  # fixed at creation: kept
        try:
            limits = parse_limits(config, base)
        except ValueError as exc:
            raise Refusal(ErrorCode.INVALID, f"TOPIC {op}: {exc}", ref) from None
        if limits.partitions != current.get("partitions"):
            check_partitioning(hub, topic, op, current.get("partitions"), limits.partitions, ref)
        parts = protocol.partition_topics(topic, limits.partitions) if limits.partitions else []
        per_partition = dataclasses.replace(limits, partitions=None)
        try:
            store.set_topic_config(topic, limits.as_dict())
            for part in parts:
                store.set_topic_config(part, per_partition.as_dict())
        except StorageError as exc:
            raise Refusal(storage_error_code(exc), f"nothing changed: {exc}", ref) from None
        if limits.partitions:
            hub.attachments.partitions[topic] = limits.partitions
        for name, lim in [(topic, limits), *((part, per_partition) for part in parts)]:
            hub.trimmer.set(name, lim)
    stored = store.configs.get(topic)
    limits = parse_limits(stored) if stored is not None else TopicLimits()
    hub.turn.replies.append(
        (identity, Command.REPLY, [ref, {"topic": topic, "config": limits.as_dict()}])
    )


def check_partitioning(
    hub: AdminHost, topic: str, op: str, now: int | None, wanted: int | None, ref: Any
) -> None:
    """Partitions are set when a topic is created, before it holds anything."""
    topics = hub.store.topics
    if op == "config" or now is not None:
        raise Refusal(
            ErrorCode.INVALID,
            f"topic {topic!r} has {now or 'no'} partitions: "
            "partitions are set at creation (delete the topic to change them)",
            ref,
        )
    if topic in topics:
        raise Refusal(
            ErrorCode.INVALID,
            f"topic {topic!r} already holds messages: partitions "
            "are set at creation (delete the topic first)",
            ref,
        )
    if any(t in topics for t in protocol.partition_topics(topic, wanted)):
        raise Refusal(
            ErrorCode.INVALID,
            f"a topic named like a partition of {topic!r} ({topic}.N) already exists",
            ref,
        )
    if any(t == topic for t, _ in hub.subs):
        raise Refusal(
            ErrorCode.INVALID,
            f"topic {topic!r} already has subscriptions: "
            "partitions are set at creation (delete the topic first)",
            ref,
        )


def delete_topic(hub: AdminHost, topic: str, ref: Any) -> dict:
    """Remove a topic (with its partitions): records, config, subscriptions (their actors
    are detached: a later ACK gets unknown_subscription and they subscribe again, to the
    topic as it is then), delayed-delivery entries and statistics."""
    store, subs, attachments = hub.store, hub.subs, hub.attachments
    parts = attachments.partitions.get(topic)
    names = [topic, *(protocol.partition_topics(topic, parts) if parts else [])]
    if not any(
        n in store.topics or n in store.configs or any(t == n for t, _ in subs) for n in names
    ):
        raise Refusal(ErrorCode.INVALID, f"no topic {topic!r}", ref)
    if any(n in hub.turn.appends or n in hub.turn.deletes for n in names):
        # this turn stages publishes or deletes of it: commit them first, then delete
        hub.commit_now()
    messages = 0
    groups: set[str] = set()
    for name in names:
        try:
            messages += store.delete_topic(name)
        except StorageError as exc:
            raise Refusal(
                storage_error_code(exc), f"topic {name!r} not deleted: {exc}", ref
            ) from None
        for key in [k for k in subs if k[0] == name]:
            groups.add(key[1])
            sub = subs.pop(key)
            attachments.drop_subscription(name, sub, hub.clock.monotonic_ms())
            hub.statistics.forget(key=key)
            turn = hub.turn
            turn.dead_letters = [(s, d) for s, d in turn.dead_letters if s is not sub]
        hub.trimmer.forget(name)
        hub.statistics.forget(topic=name)
        hub.schedule.forget(name)
    attachments.forget_partitioned(topic)
    log.info("topic %s deleted: %d messages, subscriptions %s", topic, messages, sorted(groups))
    return {
        "topic": topic,
        "deleted": True,
        "messages": messages,
        "subscriptions": sorted(groups),
        "partitions": parts or 0,
    }


def on_redrive(hub: AdminHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    req = parse_admin(body, "REDRIVE")
    ref, topic = req.ref, req.topic
    _require(hub, identity, topic, ref, SUBSCRIBE, PUBLISH)  # takes dead letters out of their topic
    seqs = parse_seqs(req.arg, ref, "REDRIVE", hub.config.max_batch_messages)
    turn = hub.turn
    staged = turn.deletes.get(topic)
    results: list[dict] = []
    taken: list[int] = []
    now = hub.clock.wall_ms()
    for seq, record in zip(seqs, hub.store.read(topic, seqs)):
        if record is None or (staged is not None and seq in staged):
            results.append({"seq": seq, "error": "not found"})
            continue
        try:
            origin, new_record = redrive_record(topic, seq, record, now)
        except NotRedrivable as exc:
            results.append({"seq": seq, "error": str(exc)})
            continue
        if not hub.access.permits(identity, PUBLISH, origin):
            why = hub.access.forbidden(identity, PUBLISH, origin, hub.clock.monotonic_ms())
            results.append({"seq": seq, "error": f"forbidden: {why}"})
            continue
        _, pos = turn.append(origin, new_record)
        results.append({"seq": seq, "topic": origin, "_pos": pos})
        taken.append(seq)
        turn.prio_topics.add(origin)  # it keeps its x-priority header; redrives are rare
    if taken:  # one commit appends to the origin and deletes here: never lost, never twice
        turn.deletes.setdefault(topic, set()).update(taken)
    turn.admin.append((identity, Command.REDRIVE, ref, {"topic": topic, "results": results}))


def answer_admin(
    admin: list[tuple[bytes, bytes, Any, Any]],
    firsts: dict[str, int],
    out: list[tuple[bytes, bytes, Any]],
) -> None:
    """Answer PURGE and REDRIVE (into ``out``) once the commit that carried them out is durable."""
    for identity, command, ref, result in admin:
        if command == Command.REDRIVE:
            moved = 0
            for item in result["results"]:
                pos = item.pop("_pos", None)
                if pos is not None:
                    item["new_seq"] = firsts[item["topic"]] + pos
                    moved += 1
            result["redriven"] = moved
        out.append((identity, Command.REPLY, [ref, result]))


HANDLERS = {
    Command.TOPICS: on_topics,
    Command.STATS: on_stats,
    Command.FETCH: on_fetch,
    Command.PURGE: on_purge,
    Command.TOPIC: on_topic,
    Command.REDRIVE: on_redrive,
}
