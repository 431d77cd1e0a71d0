"""The client commands: HELLO, HEARTBEAT, PUBLISH, SUBSCRIBE and the settlements (CREDIT,
ACK, NACK, RELEASE, REJECT, PROGRESS, DETACH).

Each handler takes the hub it serves as its first argument (what it uses of it is listed by
:class:`ClientHost`; this module never imports the hub), parses the body with
router/requests.py and hands the request on: a publish to router/staging.py and the turn,
a subscribe to the groups (router/groups.py) and attachments (router/attachments.py), a
settlement to the subscription cores (router/subscription.py). A ``Refusal`` raised here
becomes an ERROR to the sender only.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from . import protocol
from .access import Access
from .acl import PUBLISH, SUBSCRIBE
from .attachments import Attachment, Attachments, Peer
from .config import HubConfig
from .errors import StorageError, storage_error_code
from .groups import Groups
from .protocol import Command, ErrorCode
from .requests import (
    PublishLimits,
    Refusal,
    parse_by_topic,
    parse_credit,
    parse_detach,
    parse_nack_delay,
    parse_publish,
    parse_settle,
    parse_subscribe,
)
from .retention import Trimmer
from .staging import route, stage
from .stats import HubStats
from .subscription import DEFAULT_ACK_WAIT_MS, DEFAULT_MAX_DELIVER, DeadLetter, Subscription
from .turn import Turn

__all__ = ["HANDLERS", "ClientHost"]

log = logging.getLogger("zmq_mq.hub")


class ClientHost(Protocol):
    """What the client commands use of the hub."""

    config: HubConfig
    clock: Any
    store: Any
    instance: str
    pub_endpoint: str | None
    counters: dict[str, int]
    turn: Turn
    access: Access
    attachments: Attachments
    groups: Groups
    trimmer: Trimmer
    publish_limits: PublishLimits
    valid_topics: set[str]
    statistics: HubStats

    def dead(self, sub: Subscription, dead: list[DeadLetter]) -> None: ...

    def dedup_lookup(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], int]: ...


def on_hello(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    hub.turn.replies.append(
        (
            identity,
            Command.WELCOME,
            {
                "version": protocol.VERSION,
                "hub": hub.instance,
                "heartbeat_ms": hub.config.heartbeat_ms,
                "liveness": hub.config.liveness,
                "limits": hub.config.limits(),
                "pub": hub.pub_endpoint,
            },
        )
    )


def on_heartbeat(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    # The sids this connection has attached: a client that was taken for dead (and detached)
    # while it was paused or cut off sees its sids missing and subscribes again.
    attached = sorted(peer.attachments) if peer is not None else []
    hub.turn.replies.append((identity, Command.HEARTBEAT, [hub.instance, attached]))


def on_publish(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    attachments = hub.attachments
    req = parse_publish(
        body, hub.publish_limits, hub.valid_topics, hub.clock.wall_ns(), attachments.partitions
    )
    staged = req.staged
    names = None
    if req.routes is not None:  # to partitioned topics: each message to its partition
        names = route(staged, req.routes, attachments.partitions, attachments.round_robin)
    if hub.access.acl is not None:
        _check_publish_rights(hub, identity, staged, names, req.batch_id)
    turn = hub.turn
    if hub.trimmer.limits:
        why = hub.trimmer.refuse_if_full(staged, turn.appends)
        if why:
            raise Refusal(ErrorCode.TOPIC_FULL, why, req.batch_id)
    if req.prioritised is not None:  # accepted: its subscriptions look its priorities up
        turn.prio_topics.update(staged[i][0] for i in req.prioritised)
    stage(
        turn,
        identity,
        req.batch_id,
        staged,
        req.ids,
        req.delays,
        hub.clock.monotonic_ns(),
        hub.config.dedup_window_ms,
        hub.dedup_lookup,
    )


def _check_publish_rights(
    hub: ClientHost,
    identity: bytes,
    staged: list[tuple[str, bytes]],
    names: dict[int, str] | None,
    batch_id: Any,
) -> None:
    """Under an ACL: the whole batch is refused if one message goes where this client may
    not publish (one cached lookup per run of equal topics)."""
    acl = hub.access.acl
    user = hub.access.users.get(identity)
    allowed = None
    for index, (topic, _) in enumerate(staged):
        if names is not None:  # a partitioned topic: the right is on its name
            topic = names.get(index, topic)
        if topic != allowed:
            if not acl.permits(user, PUBLISH, topic):
                why = hub.access.forbidden(identity, PUBLISH, topic, hub.clock.monotonic_ms())
                raise Refusal(
                    ErrorCode.FORBIDDEN,
                    f"message {index}: {why}; nothing of this batch was stored",
                    batch_id,
                    index,
                )
            allowed = topic


def on_subscribe(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    access = hub.access
    if access.acl is None:
        req = parse_subscribe(body)
    else:
        req = parse_subscribe(
            body,
            lambda topic, sid: access.require(
                identity, SUBSCRIBE, topic, sid, hub.clock.monotonic_ms()
            ),
        )
    sid, topic, group, pattern = req.sid, req.topic, req.group, req.pattern
    now = hub.clock.monotonic_ms()
    options = {
        "ack_wait_ms": req.ack_wait_ms,
        "max_deliver": req.max_deliver,
        "ordering": req.ordering,
    }
    attachments = hub.attachments
    partitions = attachments.partitions
    if pattern or topic in partitions:
        # many topics: every stored topic the pattern matches (and every one created later),
        # or every partition of a partitioned topic; one subscription of the group on each
        if pattern:
            spec_key = (topic, group)
            spec = attachments.patterns.get(spec_key)
            if spec is None:
                spec = {k: v for k, v in options.items() if v is not None}
                try:
                    hub.store.put_pattern(topic, group, spec)
                except StorageError as exc:
                    code = storage_error_code(exc)
                    raise Refusal(code, f"pattern subscription not stored: {exc}", sid) from None
                attachments.patterns[spec_key] = spec
                log.info("new pattern subscription %s on %s", group, topic)
            targets = [t for t in sorted(hub.store.topics) if protocol.pattern_matches(topic, t)]
        else:
            targets = protocol.partition_topics(topic, partitions[topic])
        subs = {}
        for t in targets:
            if not hub.access.permits(identity, SUBSCRIBE, t):
                continue  # a pattern reaches only the topics this client may read
            subs[t] = hub.groups.get(t, group, req.start, options, sid)
    else:
        subs = {topic: hub.groups.get(topic, group, req.start, options, sid)}
    att = Attachment(topic, group, req.credit, subs, pattern or topic in partitions)
    attachments.attach(identity, peer, sid, att, now)
    fresh = hub.turn.fresh
    for t in subs:
        fresh.add((t, group))
    first = next(iter(subs.values()), None)
    ack_wait_ms, max_deliver, ordering = req.ack_wait_ms, req.max_deliver, req.ordering
    hub.turn.replies.append(
        (
            identity,
            Command.SUBSCRIBED,
            {
                "sid": sid,
                "topic": topic,
                "group": group,
                "ack_floor": first.ack_floor if first and not att.multi else 0,
                "last_seq": first.last_seq if first and not att.multi else 0,
                "ack_wait_ms": first.ack_wait_ms if first else (ack_wait_ms or DEFAULT_ACK_WAIT_MS),
                "max_deliver": first.max_deliver
                if first
                else (DEFAULT_MAX_DELIVER if max_deliver is None else max_deliver),
                "ordering": first.ordering if first else (ordering or "none"),
                "topics": sorted(subs),
            },
        )
    )


def _attachment(peer: Peer | None, body: Any, command: str, size: int) -> tuple[int, Attachment]:
    """The sid of ``[sid, ...]`` bodies and the attachment it names."""
    sid = parse_settle(body, command, size)
    att = peer.attachments.get(sid) if peer is not None else None
    if att is None:
        raise Refusal(
            ErrorCode.UNKNOWN_SUBSCRIPTION,
            f"sid {sid} is not attached on this connection (hub restarted? subscribe again)",
            sid,
        )
    return sid, att


def _seqs(
    att: Attachment, sid: int, command: str, by_topic: Any
) -> list[tuple[Subscription, list[int]]]:
    """``{topic: [seq, ...]}`` of a command: the subscription of each topic and its seqs."""
    subs = att.subs
    return [(subs[t], seqs) for t, seqs in parse_by_topic(by_topic, subs, att.name, sid, command)]


def on_credit(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid, att = _attachment(peer, body, "CREDIT", 2)
    credit = parse_credit(body[1], sid)
    att.credit = credit
    for sub in att.subs.values():
        sub.set_credit((identity, sid), credit)


def on_ack(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid, att = _attachment(peer, body, "ACK", 2)
    unknown_all = []
    for sub, seqs in _seqs(att, sid, "ACK", body[1]):
        # messages this ACK made done (duplicates and unknown seqs count nothing): done ones
        # are floor + acked-above-floor = last_seq - pending - in_flight
        before = sub.last_seq - sub.pending - sub.in_flight
        unknown = sub.ack((identity, sid), seqs)
        done = sub.last_seq - sub.pending - sub.in_flight - before
        if done:
            hub.counters["acked"] += done
            hub.statistics.sub((sub.topic, sub.group)).acked += done
        if unknown:
            unknown_all.append(f"{sub.topic}: {unknown[:10]}")
    if unknown_all:
        raise Refusal(
            ErrorCode.UNKNOWN_SEQUENCE,
            f"ACK of sequences never published on {'; '.join(unknown_all)}",
            sid,
        )


def on_nack(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid, att = _attachment(peer, body, "NACK", 3)
    targets = _seqs(att, sid, "NACK", body[1])
    delay = parse_nack_delay(body[2], sid)
    now = hub.clock.monotonic_ms()
    for sub, seqs in targets:
        hub.dead(sub, sub.nack((identity, sid), seqs, now, delay))


def on_release(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid, att = _attachment(peer, body, "RELEASE", 2)
    for sub, seqs in _seqs(att, sid, "RELEASE", body[1]):
        sub.release((identity, sid), seqs)


def on_reject(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid, att = _attachment(peer, body, "REJECT", 3)
    targets = _seqs(att, sid, "REJECT", body[1])
    reason = body[2] if isinstance(body[2], str) else repr(body[2])
    for sub, seqs in targets:
        hub.dead(sub, sub.reject((identity, sid), seqs, reason[:1000]))


def on_progress(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid, att = _attachment(peer, body, "PROGRESS", 2)
    now = hub.clock.monotonic_ms()
    for sub, seqs in _seqs(att, sid, "PROGRESS", body[1]):
        sub.progress((identity, sid), seqs, now)


def on_detach(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    sid = parse_detach(body)
    hub.attachments.detach(identity, peer, sid, hub.clock.monotonic_ms())
    # Detaching twice, or after a hub restart, is fine: the reply says it is done either way.
    hub.turn.replies.append((identity, Command.DETACHED, [sid]))


def on_metadata(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    # A hub without --cluster: router/cluster_hub.py answers for a cluster member.
    hub.turn.replies.append((identity, Command.METADATA, {"cluster": False, "node": None,
                                                          "hubs": {}, "topics": {},
                                                          "partitions": {}}))


def on_replicate(hub: ClientHost, identity: bytes, peer: Peer | None, body: Any) -> None:
    raise Refusal(ErrorCode.NOT_LEADER, "this hub is not in a cluster (started without --cluster)")


HANDLERS = {
    Command.HELLO: on_hello,
    Command.HEARTBEAT: on_heartbeat,
    Command.PUBLISH: on_publish,
    Command.SUBSCRIBE: on_subscribe,
    Command.CREDIT: on_credit,
    Command.ACK: on_ack,
    Command.NACK: on_nack,
    Command.RELEASE: on_release,
    Command.REJECT: on_reject,
    Command.PROGRESS: on_progress,
    Command.DETACH: on_detach,
    Command.METADATA: on_metadata,
    Command.REPLICATE: on_replicate,
}
