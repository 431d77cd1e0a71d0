"""ClusterSession and ClusterConsumer: subscriptions over a cluster.

A subscription to NAME attaches to every partition ``NAME.i`` on its leader (one plain Session
per leader hub) and follows the leader: when it moves or refuses, the partition is attached
on the new leader, resuming from the replicated cursor. ``Consumer("zk://...")`` is a
:class:`ClusterConsumer`; an ``Actor`` given a cluster address runs on a
:class:`ClusterSession` (``new_session``).
"""

from __future__ import annotations

import collections
import logging
import select
import threading
import time
from typing import Any

import zmq

from ..router import protocol
from ..router.protocol import Command, DecodeError
from .cluster import (
    MIN_REFRESH_MS,
    RETRY_CODES,
    MetadataCache,
    cluster_address,
    make_source,
    unknown_topic,
)
from .connection import monotonic_ms
from .consumer import Consumer
from .errors import HubError, HubUnavailable, ZmqMqError
from .message import Message
from .session import DEFAULT_CREDIT, MIN_RECONNECT_MS, Session, SubscriptionSpec

log = logging.getLogger("zmq_mq.cluster")

# Consumers and actors given a list of hubs look at the placement this often even when all is
# well; from ZooKeeper a watch brings a change at once (MetadataCache).
IDLE_REFRESH_MS = 2000
# The longest a cluster session's poll waits (its sockets change as leaders move).
POLL_CAP_MS = 100


class _Forward:
    """The settler of inner sessions' messages: whoever settles for the cluster session now
    (the ClusterSession itself, or the Actor that took its place)."""

    __slots__ = ("session",)

    def __init__(self, session: "ClusterSession") -> None:
        self.session = session

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        self.session.settler.settle(msg, kind, arg)


class _HubSession(Session):
    """A plain Session to one hub that reports partition refusals to the cluster session."""

    def __init__(self, owner: "ClusterSession", endpoint: str, **kw: Any) -> None:
        super().__init__(endpoint, **kw)
        self.owner = owner

    def _handle(self, command: bytes, body: Any) -> None:
        if command == Command.ERROR:
            err = protocol.parse_error(body)
            if err["code"] in RETRY_CODES:
                self.owner._refused(self, err)
                if err.get("command") == "SUBSCRIBE" and isinstance(err.get("ref"), int):
                    self._waiting[err["ref"]] = HubError.from_body(err)
                return
        super()._handle(command, body)


class _Attachment:
    """One partition of a cluster subscription: where it is attached now."""

    __slots__ = ("partition", "endpoint", "inner_sid")

    def __init__(self, partition: str) -> None:
        self.partition = partition
        self.endpoint: str | None = None
        self.inner_sid: int | None = None


class _AnyReadable:
    """What an Actor's loop polls for a cluster session: one epoll descriptor readable when any
    hub socket may be (their ``zmq.FD``). The loop then pumps every socket, which is also done
    at least every POLL_CAP_MS, so a notification ZeroMQ consumed during a send is not missed
    for long."""

    def __init__(self) -> None:
        self._ep = select.epoll() if hasattr(select, "epoll") else None
        self._fds: set[int] = set()

    def fileno(self) -> int:
        if self._ep is None:
            raise OSError("no epoll on this platform")
        return self._ep.fileno()

    def watch(self, sockets: list[zmq.Socket]) -> None:
        """Watch exactly these sockets (all registered again: a closed socket's descriptor
        number may already belong to a new one)."""
        if self._ep is None:
            return
        for fd in self._fds:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass  # closed: the kernel dropped it already
        self._fds = {s.getsockopt(zmq.FD) for s in sockets}
        for fd in self._fds:
            self._ep.register(fd, select.EPOLLIN)

    def poll(self, timeout: int = 0, flags: int = zmq.POLLIN) -> int:
        if self._ep is None:
            return 0
        return zmq.POLLIN if self._ep.poll(timeout / 1000) else 0

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()


class _ConnView:
    """The part of a Connection that Consumer and Actor read from a session's ``conn``."""

    def __init__(self, session: "ClusterSession") -> None:
        self._session = session
        self.endpoint = session.address
        self.socket: Any = None  # an _AnyReadable once connected

    @property
    def heartbeat_ms(self) -> int:
        return min([POLL_CAP_MS, *(s.conn.heartbeat_ms for s in self._session.hubs.values())])

    def now_ms(self) -> int:
        return monotonic_ms()


class ClusterSession:
    """Session's interface over a cluster: a subscription to NAME attaches to every partition
    ``NAME.i`` on its leader (one plain Session per leader hub) and follows the leader.

    Messages carry the cluster subscription's sid; settling one sends it to the partition's
    current leader. Not thread-safe beyond ``lock``, like Session.
    """

    def __init__(self, endpoint: str | None, *, name: str = "", timeout: float = 10.0,
                 context: zmq.Context | None = None, curve: Any = None, clock: Any = None,
                 source: Any = None) -> None:
        self.address = cluster_address(endpoint) or endpoint
        self.name = name
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._curve = curve
        self._clock = clock
        self.cache = MetadataCache(source or make_source(self.address, timeout, context=self._ctx,
                                                         curve=curve))
        self.conn = _ConnView(self)
        self.hubs: dict[str, _HubSession] = {}  # endpoint -> session
        self.specs: dict[int, SubscriptionSpec] = {}  # cluster sid -> what was asked
        self.attachments: dict[int, dict[str, _Attachment]] = {}  # sid -> partition -> where
        # (endpoint, inner sid) -> (cluster sid, partition)
        self._by_inner: dict[tuple[str, int], tuple[int, str]] = {}
        self.inbox: collections.deque[Message] = collections.deque()
        self.settler: Any = self
        self._forward = _Forward(self)
        self.lock = threading.RLock()
        self.open = False
        self._next_sid = 1
        self.reattached = 0

    # --- connection ---

    def connect(self) -> None:
        self.cache.refresh(force=True)
        if self.conn.socket is None:
            self.conn.socket = _AnyReadable()
        self.open = True

    def close(self) -> None:
        with self.lock:
            for hub in self.hubs.values():
                hub.close()
            self.hubs.clear()
            if isinstance(self.conn.socket, _AnyReadable):
                self.conn.socket.close()
            self.cache.source.close()
            self.open = False

    def _hub(self, endpoint: str) -> _HubSession:
        hub = self.hubs.get(endpoint)
        if hub is None:
            hub = _HubSession(self, endpoint, name=self.name, timeout=self.timeout,
                              context=self._ctx, curve=self._curve, clock=self._clock)
            hub.settler = self._forward
            hub.connect()
            self.hubs[endpoint] = hub
            self._watch()
        return hub

    def _watch(self) -> None:
        if isinstance(self.conn.socket, _AnyReadable):
            self.conn.socket.watch([h.conn.socket for h in self.hubs.values() if h.conn.socket])

    def _refused(self, hub: _HubSession, err: dict) -> None:
        """A hub refused a partition (not_leader / unavailable): look at the placement again."""
        log.info("hub at %s: %s: %s", hub.conn.endpoint, err["code"], err["message"])
        self.cache.wanted = True

    # --- subscribing ---

    def subscribe(self, topic: str, group: str, *, credit: int = DEFAULT_CREDIT,
                  ack_wait_ms: int | None = None, max_deliver: int | None = None,
                  start: Any = "first", ordering: str | None = None) -> SubscriptionSpec:
        if protocol.is_pattern(topic):
            raise ValueError("a cluster subscription names a topic, not a pattern")
        problem = protocol.check_topic(topic) or protocol.check_group(group)
        if problem:
            raise ValueError(problem)
        if ordering is not None and ordering not in protocol.ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(protocol.ORDERINGS)}")
        with self.lock:
            if not self.open:
                self.connect()
            partitions = (self.cache.get().partitions_of(topic)
                          or self.cache.refresh().partitions_of(topic))
            if not partitions:
                raise unknown_topic(topic)
            spec = SubscriptionSpec(self._next_sid, topic, group, credit, ack_wait_ms,
                                    max_deliver, start, ordering=ordering)
            self._next_sid += 1
            self.specs[spec.sid] = spec
            self.attachments[spec.sid] = {p: _Attachment(p) for p in partitions}
            deadline = monotonic_ms() + int(self.timeout * 1000)
            try:
                for att in self.attachments[spec.sid].values():
                    self._attach_blocking(spec, att, deadline)
            except BaseException:
                self._drop(spec.sid)
                raise
            spec.attached = True
            return spec

    def _inner_spec(self, spec: SubscriptionSpec, partition: str) -> dict:
        return dict(credit=spec.credit, ack_wait_ms=spec.ack_wait_ms,
                    max_deliver=spec.max_deliver, start=spec.start, ordering=spec.ordering)

    def _attach_blocking(self, spec: SubscriptionSpec, att: _Attachment, deadline: int) -> None:
        """Attach one partition on its leader, following refusals until ``deadline``."""
        hint = None
        while True:
            meta = self.cache.get()
            endpoint = hint or meta.leader_endpoint(att.partition)
            hint = None
            error: BaseException | None = None
            if endpoint is not None:
                try:
                    inner = self._hub(endpoint).subscribe(att.partition, spec.group,
                                                          **self._inner_spec(spec, att.partition))
                    self._bind(spec.sid, att, endpoint, inner.sid)
                    if inner.granted_ack_wait_ms:
                        spec.granted_ack_wait_ms = inner.granted_ack_wait_ms
                    return
                except HubError as exc:
                    if exc.code not in RETRY_CODES:
                        raise
                    error, hint = exc, exc.extra.get("leader_endpoint")
                except HubUnavailable as exc:
                    error = exc
                    self._forget_hub(endpoint)
            if monotonic_ms() >= deadline:
                raise error or HubUnavailable(f"partition {att.partition} has no leader")
            time.sleep(MIN_REFRESH_MS / 1000)
            try:
                self.cache.refresh()
            except ZmqMqError:
                pass

    def _bind(self, sid: int, att: _Attachment, endpoint: str, inner_sid: int) -> None:
        att.endpoint, att.inner_sid = endpoint, inner_sid
        self._by_inner[(endpoint, inner_sid)] = (sid, att.partition)

    def _unbind(self, att: _Attachment) -> None:
        """Leave the partition's old leader (best effort: it may be gone)."""
        if att.endpoint is None:
            return
        hub = self.hubs.get(att.endpoint)
        self._by_inner.pop((att.endpoint, att.inner_sid), None)
        if hub is not None and att.inner_sid in hub.specs:
            hub.specs.pop(att.inner_sid, None)
            hub.inbox = collections.deque(m for m in hub.inbox if m.sid != att.inner_sid)
            if hub.conn.socket is not None:
                hub.conn.send(Command.DETACH, [att.inner_sid])
        att.endpoint = att.inner_sid = None

    def _forget_hub(self, endpoint: str) -> None:
        hub = self.hubs.pop(endpoint, None)
        if hub is not None:
            for key in [k for k in self._by_inner if k[0] == endpoint]:
                sid, partition = self._by_inner.pop(key)
                att = self.attachments.get(sid, {}).get(partition)
                if att is not None:
                    att.endpoint = att.inner_sid = None
            hub.close()
            self._watch()

    def _drop(self, sid: int) -> None:
        for att in self.attachments.pop(sid, {}).values():
            self._unbind(att)
        self.specs.pop(sid, None)

    def _follow_leaders(self) -> None:
        """Re-attach every partition whose leader is not where it is attached (moved, refused
        us, or unknown before); drop hubs that lead nothing of ours."""
        meta = self.cache.meta
        if meta is None:
            return
        for sid, parts in self.attachments.items():
            spec = self.specs[sid]
            for att in parts.values():
                leader = meta.leader_endpoint(att.partition)
                hub = self.hubs.get(att.endpoint) if att.endpoint else None
                lost = hub is not None and att.inner_sid not in hub.specs
                if leader is None or (leader == att.endpoint and not lost):
                    continue
                log.warning("partition %s: re-attaching to %s", att.partition, leader)
                self._unbind(att)
                try:
                    hub = self._hub(leader)
                except HubUnavailable:
                    self._forget_hub(leader)
                    continue
                inner = SubscriptionSpec(hub._next_sid, att.partition, spec.group,
                                         **self._inner_spec(spec, att.partition))
                hub._next_sid += 1
                hub.specs[inner.sid] = inner
                hub.conn.send(Command.SUBSCRIBE, inner.body())  # SUBSCRIBED comes in the pump
                self._bind(sid, att, leader, inner.sid)
                self.reattached += 1
        used = {att.endpoint for parts in self.attachments.values() for att in parts.values()}
        for endpoint in [e for e in self.hubs if e not in used]:
            self._forget_hub(endpoint)

    def _check_refusals(self) -> None:
        """Attachments a hub refused (SUBSCRIBE answered not_leader): attach them again."""
        for hub in list(self.hubs.values()):
            for inner_sid, answer in list(hub._waiting.items()):
                hub._waiting.pop(inner_sid)
                where = self._by_inner.get((hub.conn.endpoint, inner_sid))
                if isinstance(answer, HubError) and where is not None:
                    hub.specs.pop(inner_sid, None)
                    self.cache.wanted = True

    # --- the pump ---

    def set_credit(self, sid: int, credit: int) -> None:
        with self.lock:
            self.specs[sid].credit = credit
            for att in self.attachments.get(sid, {}).values():
                hub = self.hubs.get(att.endpoint) if att.endpoint else None
                if hub is not None and att.inner_sid in hub.specs:
                    hub.set_credit(att.inner_sid, credit)

    def _drain(self) -> int:
        got = 0
        for endpoint, hub in list(self.hubs.items()):
            conn = hub.conn
            if conn.socket is None:
                continue
            try:
                item = conn.try_recv()
                while item is not None:
                    hub._handle(*item)
                    item = conn.try_recv()
            except DecodeError as exc:
                log.warning("ignoring a bad frame from %s: %s", endpoint, exc.message)
            while hub.inbox:
                msg = hub.inbox.popleft()
                where = self._by_inner.get((endpoint, msg.sid))
                if where is None:
                    continue  # of an attachment left behind: the hub delivers it again
                msg.sid = where[0]
                self.inbox.append(msg)
                got += 1
        return got

    def pump(self, timeout_ms: int | None, reconnect_ms: int | None = None,
             cancel: Any = None) -> None:
        with self.lock:
            got = self._drain()
            wait = POLL_CAP_MS if timeout_ms is None else min(timeout_ms, POLL_CAP_MS)
            if not got and wait > 0:
                sockets = [h.conn.socket for h in self.hubs.values() if h.conn.socket is not None]
                if sockets:
                    poller = zmq.Poller()
                    for s in sockets:
                        poller.register(s, zmq.POLLIN)
                    if poller.poll(wait):
                        self._drain()
                else:
                    time.sleep(wait / 1000)
            self.keepalive(reconnect_ms, cancel)

    def keepalive(self, reconnect_ms: int | None = None, cancel: Any = None) -> None:
        with self.lock:
            bound = (MIN_RECONNECT_MS if reconnect_ms is None
                     else min(reconnect_ms, MIN_RECONNECT_MS))
            for hub in list(self.hubs.values()):
                if hub.conn.socket is None:
                    continue
                before = hub.conn.socket
                hub.keepalive(bound, cancel)
                if hub.conn.socket is not before:
                    self._watch()
            self._drain()
            self._check_refusals()
            if self.specs and self.cache.due(IDLE_REFRESH_MS):
                try:
                    self.cache.refresh()
                except ZmqMqError as exc:
                    log.warning("%s", exc)
                    return
                self._follow_leaders()

    # --- settling ---

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        with self.lock:
            att = self.attachments.get(msg.sid, {}).get(msg.topic)
            hub = self.hubs.get(att.endpoint) if att is not None and att.endpoint else None
            if hub is None or att.inner_sid not in hub.specs:
                return  # no leader attached now: the hub delivers it again
            sid, msg.sid = msg.sid, att.inner_sid
            try:
                hub._settle(msg, kind, arg)
            finally:
                msg.sid = sid

    def ack_many(self, msgs: Any) -> None:
        """Session.ack_many: acks of an Actor's finished batch, each to its partition's leader
        (sent with the next ``flush_acks``)."""
        with self.lock:
            for msg in msgs:
                self.settle(msg, "ack")

    def flush_acks(self) -> None:
        with self.lock:
            for hub in self.hubs.values():
                if hub.conn.socket is not None:
                    hub.flush_acks()

    def detach_all(self, timeout: float) -> bool:
        with self.lock:
            deadline = monotonic_ms() + int(timeout * 1000)
            ok = True
            for hub in list(self.hubs.values()):
                left = max(0, deadline - monotonic_ms()) / 1000
                ok = hub.detach_all(left) and ok
            self.inbox.clear()
            self.specs.clear()
            self.attachments.clear()
            self._by_inner.clear()
            return ok


def new_session(endpoint: str | None, **kw: Any):
    """A Session for a plain endpoint, a ClusterSession for a cluster address."""
    if cluster_address(endpoint) is not None:
        return ClusterSession(endpoint, **kw)
    return Session(endpoint, **kw)


class ClusterConsumer(Consumer):
    """A Consumer over a cluster (``Consumer("zk://...")`` makes one): ``subscribe(NAME, ...)``
    attaches to every partition of NAME on its leader; the rest is Consumer's."""

    _session_class = ClusterSession
