"""The client session: one connection to the hub and the subscriptions attached through it.

A ``Session`` turns DELIVER frames into ``Message`` objects, batches acks, sends heartbeats, and
after a hub restart or a silent hub reconnects and re-attaches by itself (messages not yet
handed to the application are dropped: the hub delivers them again). It is single-threaded:
``Consumer`` drives it from the caller's thread (and its keeper thread, under ``lock``),
``Actor`` from its loop thread.

Its parts: the subscription specs replayed on every re-attach (``SubscriptionSpec``,
``wire_start``), the pump (``pump``: read and handle what the hub sent), the keepalive
(heartbeats and hub-silence detection on the connection's clock, reconnect and re-attach),
settling (acks batched, the rest sent at once; recent acks kept to resend to a restarted hub)
and the detach that makes acks durable before closing.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

import zmq

from ..router import protocol
from ..router.clock import Clock
from ..router.protocol import DEFAULT_ACK_WAIT_MS, Command
from .connection import Connection, CurveKeys, monotonic_ms
from .errors import HubError, HubUnavailable
from .message import Message

__all__ = ["ACK_RESEND_MAX_SEQS", "ACK_RESEND_MS", "DEFAULT_ACK_WAIT_MS", "DEFAULT_CREDIT",
           "MIN_RECONNECT_MS", "Session", "SubscriptionSpec", "wire_start"]

log = logging.getLogger("zmq_mq.consumer")  # the name it logged under before the move

DEFAULT_CREDIT = 100
# Acks sent in this window before the hub is found restarted are sent again to the new hub: the
# old one may have died before committing them (each costs a redelivery otherwise). Bounded in
# time and in sequences kept.
ACK_RESEND_MS = 10_000
ACK_RESEND_MAX_SEQS = 100_000
# Shortest handshake attempt when a caller bounds a reconnect (receive(timeout), the keeper):
# long enough for a live hub to answer HELLO, short enough to keep the caller's timeout.
MIN_RECONNECT_MS = 200


@dataclass(slots=True)
class SubscriptionSpec:
    """What a client asked for when it subscribed; replayed on every re-attach."""

    sid: int
    topic: str
    group: str
    credit: int = DEFAULT_CREDIT
    ack_wait_ms: int | None = None
    max_deliver: int | None = None
    start: Any = "first"  # "first", "new", an int seq or a datetime (see wire_start)
    attached: bool = False  # the hub said SUBSCRIBED (again, after every re-attach)
    ordering: str | None = None  # "none", "key" or "strict"; None: the subscription's own
    granted_ack_wait_ms: int | None = None  # the subscription's ack_wait, as SUBSCRIBED said

    def body(self) -> dict:
        body: dict[str, Any] = {
            "sid": self.sid,
            "topic": self.topic,
            "group": self.group,
            "credit": self.credit,
            "start": wire_start(self.start),
        }
        if self.ack_wait_ms is not None:
            body["ack_wait_ms"] = self.ack_wait_ms
        if self.max_deliver is not None:
            body["max_deliver"] = self.max_deliver
        if self.ordering is not None:
            body["ordering"] = self.ordering
        return body


def check_subscribe(topic: str, group: str, ordering: str | None) -> None:
    """ValueError (one line) if a subscribe's topic or pattern, group or ordering is invalid:
    checked before anything is sent (Session and AsyncConsumer)."""
    problem = (protocol.check_pattern(topic) if protocol.is_pattern(topic)
               else protocol.check_topic(topic)) or protocol.check_group(group)
    if problem:
        raise ValueError(problem)
    if ordering is not None and ordering not in protocol.ORDERINGS:
        raise ValueError(f"ordering must be one of {', '.join(protocol.ORDERINGS)}")


class Session:
    """One connection's subscriptions, inbox and pending acks.

    Every use of the socket happens under ``lock``, so that a Consumer's keeper thread can keep
    heartbeats going while the application is busy (or blocked writing its output) between
    ``receive`` calls; an Actor uses it from its loop thread only, uncontended.
    """

    def __init__(self, endpoint: str | None, *, name: str = "", timeout: float = 10.0,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None,
                 clock: Clock | None = None) -> None:
        # clock: heartbeats, hub silence and the ack-resend window (the connection's); the
        # waits a caller bounds (subscribe, pump, detach) are real time
        self.conn = Connection(endpoint, name=name, context=context, curve=curve, clock=clock)
        self.timeout = timeout
        self.specs: dict[int, SubscriptionSpec] = {}
        self.inbox: collections.deque[Message] = collections.deque()
        self._acks: dict[int, dict[str, list[int]]] = {}  # sid -> topic -> seqs
        self._ack_count = 0
        # (sent at, sid, {topic: seqs}, n) of recent ACKs, oldest first; _sent_seqs counts them
        self._sent_acks: collections.deque[tuple[int, int, dict[str, list[int]], int]] = collections.deque()
        self._sent_seqs = 0
        self._next_sid = 1
        self._waiting: dict[int, Any] = {}  # sid -> SUBSCRIBED body or HubError, for subscribe()
        self._detached: set[int] = set()
        self._detaching = False
        self.settler: Any = self  # who Message.ack() reports to (the Actor swaps in its own)
        self.message_type: type[Message] = Message  # what DELIVER becomes (AsyncConsumer's own)
        self.lock = threading.RLock()
        self.open = False
        self.reattached = 0  # times this session re-attached after losing the hub
        self._reconnecting = False  # a reconnect attempt failed and none has succeeded since

    # --- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        self.conn.open(self.timeout)
        self.open = True

    def close(self) -> None:
        with self.lock:
            self.conn.close()
            self.open = False

    def _reattach(self, reason: str, sids: list[int] | None = None) -> None:
        """Subscribe again (all specs, or those of ``sids``): the hub lost our attachments."""
        specs = [s for s in self.specs.values() if sids is None or s.sid in sids]
        if not specs or self._detaching:
            return
        log.warning("re-attaching %d subscriptions: %s", len(specs), reason)
        self.reattached += 1
        # Not handed out yet, and the hub has given them back: it delivers them again.
        if sids is None:
            self.inbox.clear()
        else:
            lost = set(sids)
            self.inbox = collections.deque(m for m in self.inbox if m.sid not in lost)
        for spec in specs:
            spec.attached = False
            self.conn.send(Command.SUBSCRIBE, spec.body())
        if reason in ("hub restarted", "reconnected"):
            # the old hub may have died before committing the last acks: send them again (an
            # ack of something already done is a no-op for the hub)
            cutoff = self.conn.now_ms() - ACK_RESEND_MS
            again = {s.sid for s in specs}
            for sent, sid, by_topic, _ in self._sent_acks:
                if sent >= cutoff and sid in again:
                    self.conn.send(Command.ACK, [sid, by_topic])
        self.flush_acks()  # acks of what was processed still count on the new hub

    def _reconnect(self, within_ms: int | None = None, cancel: Any = None) -> None:
        """New socket and handshake, then re-attach. ``within_ms`` bounds the wait for WELCOME
        (a caller with a timeout of its own); ``cancel()`` true stops it early."""
        if not self._reconnecting:  # once per outage, not once per (short) attempt
            log.warning("hub at %s silent; reconnecting", self.conn.endpoint)
            self._reconnecting = True
        wait = self.conn.heartbeat_ms * self.conn.liveness
        if within_ms is not None:
            wait = min(wait, max(within_ms, MIN_RECONNECT_MS))
        self.conn.open(wait / 1000, cancel)
        self._reconnecting = False
        self._reattach("reconnected")

    # --- subscribing -----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, credit: int = DEFAULT_CREDIT,
                  ack_wait_ms: int | None = None, max_deliver: int | None = None,
                  start: str = "first", ordering: str | None = None) -> SubscriptionSpec:
        """Attach to subscription ``group`` on ``topic``; waits for the hub's answer."""
        check_subscribe(topic, group, ordering)
        if not self.open:
            self.connect()
        spec = SubscriptionSpec(self._next_sid, topic, group, credit, ack_wait_ms, max_deliver, start,
                                ordering=ordering)
        self._next_sid += 1
        with self.lock:
            # Registered before sending: DELIVER frames may follow SUBSCRIBED in the same read.
            self.specs[spec.sid] = spec
            self.conn.send(Command.SUBSCRIBE, spec.body())
            deadline = monotonic_ms() + int(self.timeout * 1000)
            try:
                while spec.sid not in self._waiting:
                    left = deadline - monotonic_ms()
                    if left <= 0:
                        raise HubUnavailable(f"no answer to SUBSCRIBE within {self.timeout:g} s")
                    self.pump(left)
                answer = self._waiting.pop(spec.sid)
                if isinstance(answer, HubError):
                    raise answer
            except BaseException:
                self.specs.pop(spec.sid, None)
                raise
        return spec

    def set_credit(self, sid: int, credit: int) -> None:
        with self.lock:
            self.specs[sid].credit = credit
            self.conn.send(Command.CREDIT, [sid, credit])

    # --- the pump --------------------------------------------------------------------------

    def pump(self, timeout_ms: int | None, reconnect_ms: int | None = None,
             cancel: Any = None) -> None:
        """Wait up to ``timeout_ms`` for traffic, handle all that arrived, keep the link alive
        (``reconnect_ms``, ``cancel``: see ``keepalive``)."""
        with self.lock:
            start = monotonic_ms() if reconnect_ms is not None else 0
            sock = self.conn.socket
            hb = self.conn.heartbeat_ms
            wait = hb if timeout_ms is None else min(timeout_ms, hb)
            # Socket.poll builds a Poller per call: only worth it when we must wait.
            got = self.conn.try_recv()
            if got is None and wait > 0 and sock.poll(wait, zmq.POLLIN):
                got = self.conn.try_recv()
            while got is not None:
                self._handle(*got)
                got = self.conn.try_recv()
            if reconnect_ms is not None:  # what is left of it after the wait above
                reconnect_ms -= monotonic_ms() - start
            self.keepalive(reconnect_ms, cancel)

    def keepalive(self, reconnect_ms: int | None = None, cancel: Any = None) -> None:
        """Heartbeat when due; reconnect if the hub went silent, waiting at most
        ``reconnect_ms`` for it (default ``heartbeat_ms * liveness``) or until ``cancel()``."""
        with self.lock:
            conn = self.conn
            now = conn.now_ms()
            if conn.heartbeat_due(now):
                conn.heartbeat()
            may_wait = reconnect_ms is None or reconnect_ms > 0
            if (self.specs and may_wait and conn.hub_silent(now)
                    and not conn.socket.poll(0, zmq.POLLIN)):
                try:
                    self._reconnect(reconnect_ms, cancel)
                except HubUnavailable:
                    pass  # try again at the next pump; messages stay safe in the hub
                except HubError as exc:
                    log.error("hub at %s refused the connection: %s", conn.endpoint, exc)

    def _handle(self, command: bytes, body: Any) -> None:
        if command == Command.DELIVER:
            self._on_deliver(body)
        elif command == Command.HEARTBEAT:
            instance = body[0] if isinstance(body, list) and body else None
            if instance and self.conn.hub_instance and instance != self.conn.hub_instance:
                self.conn.hub_instance = instance
                if self.specs:
                    self._reattach("hub restarted")
            elif len(body) >= 2 and isinstance(body[1], list):
                # The hub lists what this connection has attached. It answers in order, so a sid
                # whose SUBSCRIBED came before this reply and is missing was dropped by the hub
                # (e.g. it took us for dead while we were paused): attach again.
                held = set(body[1])
                missing = [s.sid for s in self.specs.values() if s.attached and s.sid not in held]
                if missing:
                    self._reattach("the hub had detached us", missing)
        elif command == Command.SUBSCRIBED:
            self._waiting[body["sid"]] = body
            spec = self.specs.get(body["sid"])
            if spec is not None:
                spec.attached = True
                ack_wait = body.get("ack_wait_ms")
                if isinstance(ack_wait, int) and ack_wait > 0:
                    spec.granted_ack_wait_ms = ack_wait
        elif command == Command.DETACHED:
            self._detached.add(body[0])
        elif command == Command.ERROR:
            err = protocol.parse_error(body)
            if err.get("command") == "SUBSCRIBE" and isinstance(err.get("ref"), int):
                self._waiting[err["ref"]] = HubError.from_body(err)
            elif err["code"] == "unknown_subscription" and err.get("ref") in self.specs:
                if self.specs[err["ref"]].attached:  # not when a SUBSCRIBE is already on its way
                    self._reattach("hub does not know our subscription", [err["ref"]])
            else:
                log.warning("hub error: %s: %s", err["code"], err["message"])
        elif command == Command.WELCOME:
            self.conn._welcomed(body)

    def _on_deliver(self, body: Any) -> None:
        sid, topic, entries = protocol.decode_deliver(body)
        spec = self.specs.get(sid)
        if spec is None:
            # Not ours (any more), e.g. a subscribe() that gave up waiting: the hub must not count
            # these as in flight here until ack_wait. DETACH gives them back at once (idempotent).
            self.conn.send(Command.DETACH, [sid])
            return
        group = spec.group
        settler = self.settler
        make = self.message_type._delivered  # the record is decoded when the application reads it
        append = self.inbox.append
        for seq, deliveries, record in entries:
            append(make(topic, seq, record, deliveries, group, sid, settler))

    # --- settling --------------------------------------------------------------------------

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        """Record the application's decision on ``msg``; acks are batched, the rest sent now."""
        with self.lock:
            self._settle(msg, kind, arg)

    def _settle(self, msg: Message, kind: str, arg: Any) -> None:
        if kind == "ack":
            by_topic = self._acks.get(msg.sid)
            if by_topic is None:
                by_topic = self._acks[msg.sid] = {}
            seqs = by_topic.get(msg.topic)
            if seqs is None:
                seqs = by_topic[msg.topic] = []
            seqs.append(msg.seq)
            self._ack_count += 1
            spec = self.specs.get(msg.sid)
            if spec is not None and self._ack_count * 2 >= spec.credit:
                self.flush_acks()
            return
        if msg.sid not in self.specs:
            return
        by_topic = {msg.topic: [msg.seq]}
        if kind == "nack":
            self.conn.send(Command.NACK, [msg.sid, by_topic, arg or 0])
        elif kind == "reject":
            self.conn.send(Command.REJECT, [msg.sid, by_topic, str(arg)])
        elif kind == "release":
            self.conn.send(Command.RELEASE, [msg.sid, by_topic])
        elif kind == "progress":
            self.conn.send(Command.PROGRESS, [msg.sid, by_topic])

    def ack_many(self, msgs: Any) -> None:
        """Record acks of many messages at once (an Actor's finished batch); sent with the next
        ``flush_acks`` (the caller flushes once per loop turn)."""
        with self.lock:
            acks = self._acks
            n = 0
            for msg in msgs:
                by_topic = acks.get(msg.sid)
                if by_topic is None:
                    by_topic = acks[msg.sid] = {}
                seqs = by_topic.get(msg.topic)
                if seqs is None:
                    seqs = by_topic[msg.topic] = []
                seqs.append(msg.seq)
                n += 1
            self._ack_count += n

    @property
    def pending_acks(self) -> int:
        """Acks recorded and not sent yet."""
        return self._ack_count

    def flush_acks(self) -> None:
        if not self._ack_count:
            return
        with self.lock:
            acks, self._acks, self._ack_count = self._acks, {}, 0
            now = self.conn.now_ms()
            sent = self._sent_acks
            for sid, by_topic in acks.items():
                if sid in self.specs:
                    self.conn.send(Command.ACK, [sid, by_topic])
                    k = sum(map(len, by_topic.values()))
                    sent.append((now, sid, by_topic, k))
                    self._sent_seqs += k
            cutoff = now - ACK_RESEND_MS
            while sent and (sent[0][0] < cutoff or self._sent_seqs > ACK_RESEND_MAX_SEQS):
                self._sent_seqs -= sent.popleft()[3]

    def detach_all(self, timeout: float) -> bool:
        """Flush acks, detach every subscription (releasing what was not settled) and wait for
        the hub to confirm, which it does only after committing: the acks are then durable."""
        with self.lock:
            return self._detach_all(timeout)

    def _detach_all(self, timeout: float) -> bool:
        if not self.open:
            return True
        self.flush_acks()
        self._detaching = True
        sids = list(self.specs)
        for sid in sids:
            self.conn.send(Command.DETACH, [sid])
        self.inbox.clear()
        deadline = monotonic_ms() + int(timeout * 1000)
        while not all(s in self._detached for s in sids):
            left = deadline - monotonic_ms()
            if left <= 0:
                return False
            sock = self.conn.socket
            if sock.poll(left, zmq.POLLIN):
                command, body = self.conn.recv()
                if command == Command.DETACHED:
                    self._detached.add(body[0])
        self.specs.clear()
        self._detaching = False
        return True


def wire_start(start: Any) -> Any:
    """A subscription start position as SUBSCRIBE carries it: ``"first"`` / ``"new"`` as they
    are, an int seq as ``{"seq": N}``, a datetime as ``{"time_ms": T}`` (naive: local time)."""
    if isinstance(start, _dt.datetime):
        return {"time_ms": int(start.timestamp() * 1000)}
    if isinstance(start, int) and not isinstance(start, bool):
        return {"seq": start}
    return start
