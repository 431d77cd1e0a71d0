"""Attachments: which connection reads which subscriptions, through which topic, pattern or
partitioned topic, and which connections are alive.

A ``Peer`` is a connection that attached at least one subscription (an actor); each SUBSCRIBE
(one sid) is an ``Attachment`` to one subscription, or for a pattern or a partitioned topic
(``multi``) to one subscription of the group per matched topic. ``Attachments`` holds them
with the pattern subscriptions and partition counts; the subscription cores are given to it,
and what detaching dead-letters goes to the callback it is given. No socket, no storage, no
clock.
"""

from __future__ import annotations

from collections.abc import Callable

from . import protocol
from .subscription import DeadLetter, Subscription

__all__ = ["Attachment", "Attachments", "Peer"]


class Attachment:
    """What one SUBSCRIBE (one sid of a connection) reads: one subscription, or for a pattern or
    a partitioned topic (``multi``) one subscription of the group per matched topic."""

    __slots__ = ("name", "group", "credit", "subs", "multi")

    def __init__(
        self, name: str, group: str, credit: int, subs: dict[str, Subscription], multi: bool
    ) -> None:
        self.name = name  # the topic, pattern or partitioned topic as subscribed
        self.group = group
        self.credit = credit  # per subscription
        self.subs = subs  # topic -> subscription
        self.multi = multi


class Peer:
    """A connected client that has attached at least one subscription (an actor)."""

    __slots__ = ("identity", "last_seen", "attachments")

    def __init__(self, identity: bytes, now: int) -> None:
        self.identity = identity
        self.last_seen = now
        self.attachments: dict[int, Attachment] = {}


DeadSink = Callable[[Subscription, list[DeadLetter]], None]


class Attachments:
    """Peers and their attachments; pattern subscriptions ((pattern, group) -> options, as
    stored); partitioned topics (name -> N) and the round-robin position of keyless publishes
    to each; the attachments through a pattern or partitioned topic by (name, group)."""

    __slots__ = ("peers", "patterns", "partitions", "round_robin", "multi", "dead")

    def __init__(
        self, patterns: dict[tuple[str, str], dict], partitions: dict[str, int], dead: DeadSink
    ) -> None:
        self.peers: dict[bytes, Peer] = {}
        self.patterns = patterns
        self.partitions = partitions
        self.round_robin: dict[str, int] = {}
        self.multi: dict[tuple[str, str], dict[tuple[bytes, int], Attachment]] = {}
        self.dead = dead  # where what a detach dead-letters goes (the turn's dead letters)

    def attach(
        self, identity: bytes, peer: Peer | None, sid: int, att: Attachment, now: int
    ) -> Peer:
        """Attach ``att`` as ``sid`` of a connection (replacing an earlier one of that sid)."""
        if peer is None:
            peer = self.peers[identity] = Peer(identity, now)
        old = peer.attachments.get(sid)
        if old is not None:
            self.release(identity, sid, old, now, failed=False)
        peer.attachments[sid] = att
        if att.multi:
            self.multi.setdefault((att.name, att.group), {})[(identity, sid)] = att
        for sub in att.subs.values():
            sub.attach((identity, sid), att.credit)
        return peer

    def release(
        self, identity: bytes, sid: int, att: Attachment, now: int, *, failed: bool
    ) -> None:
        """Detach an attachment from every subscription it reads."""
        for sub in att.subs.values():
            self.dead(sub, sub.detach((identity, sid), now, failed=failed))
        if att.multi:
            atts = self.multi.get((att.name, att.group))
            if atts is not None:
                atts.pop((identity, sid), None)
                if not atts:
                    del self.multi[(att.name, att.group)]

    def detach(self, identity: bytes, peer: Peer | None, sid: int, now: int) -> None:
        """DETACH of one sid (none attached: nothing to do)."""
        att = peer.attachments.pop(sid, None) if peer is not None else None
        if att is not None:
            self.release(identity, sid, att, now, failed=False)
            if not peer.attachments:
                del self.peers[identity]

    def lost(self, identity: bytes, now: int) -> None:
        """A connection gone (silent, unreachable, or its key changed): detach all it read."""
        peer = self.peers.pop(identity, None)
        if peer is None:
            return
        for sid, att in peer.attachments.items():
            self.release(identity, sid, att, now, failed=True)

    def silent(self, now: int, limit_ms: int) -> list[bytes]:
        """Connections not heard from for more than ``limit_ms``."""
        return [i for i, p in self.peers.items() if now - p.last_seen > limit_ms]

    def drop_subscription(self, topic: str, sub: Subscription, now: int) -> None:
        """A deleted subscription: attachments lose it; one left reading nothing (not through
        a pattern) is gone, and its client sees its sid missing and subscribes again."""
        for peer in list(self.peers.values()):
            for sid, att in list(peer.attachments.items()):
                if att.subs.get(topic) is sub:
                    del att.subs[topic]
                    if not att.subs and not protocol.is_pattern(att.name):
                        del peer.attachments[sid]
                        self.release(peer.identity, sid, att, now, failed=False)
            if not peer.attachments:
                self.peers.pop(peer.identity, None)

    def forget_partitioned(self, topic: str) -> None:
        self.partitions.pop(topic, None)
        self.round_robin.pop(topic, None)
