"""The hub: one thread, one event loop, moving bytes between sockets, storage and the core.

This module is the loop and nothing else; each step hands its work to the module named:

1. poll, then read up to ``max_turn_commands`` commands from the ROUTER socket (CURVE: learn
   each command's client key, router/security.py);
2. hand each to its handler: the body is parsed into a typed request or refused
   (router/requests.py); publishes are routed and staged (router/staging.py) in this turn's
   :class:`~zmq_mq.router.turn.Turn`; acks / nacks / credit go to the pure subscription state
   machines (router/subscription.py) through the connection's attachments
   (router/attachments.py); admin commands to router/admin.py;
3. expire deadlines (``tick``), detach actors whose heartbeats stopped, release delayed
   messages whose time came (router/schedule.py);
4. ONE LMDB write transaction (group commit, storage/log.py) consumes the Turn: staged
   publishes, dead letters (router/deadletters.py), retention trimming (router/retention.py),
   changed cursors; a new Turn starts;
5. only then answer: confirms, errors and other replies, in arrival order;
6. broadcast the new messages on the PUB socket (live, at-most-once);
7. hand out deliveries within each actor's credit, read from the log, send DELIVER frames.

No reply leaves before the commit that makes it true, so a confirmed publish survives
``kill -9``; the hub never buffers past an actor's credit, so memory stays flat with any backlog.
The STATS document is built by router/stats.py. Without sockets, :meth:`Hub.step` runs one
turn on given commands and returns what it would send (the seam the tests drive).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..storage import StorageError, Store
from . import admin, protocol
from .acl import PUBLISH, SUBSCRIBE
from .attachments import Attachment, Attachments, Peer
from .clock import Clock, SystemClock
from .config import HubConfig
from .deadletters import dead_letter_records
from .errors import storage_error_code
from .protocol import Command, DecodeError, ErrorCode
from .requests import (
    MAX_FETCH,
    MAX_SEQS_PER_COMMAND,
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
from .retention import Trimmer, start_after
from .schedule import Schedule
from .security import (
    LIVE_DOMAIN,
    MONITOR_EVENTS,
    ROUTER_DOMAIN,
    HubAuthenticator,
    HubKeys,
    LogLimiter,
    describe_handshake_failure,
    make_curve_server,
)
from .staging import route, stage
from .stats import LatencyHistogram, SubCounters, TopicCounters, stats_document, topic_rows
from .subscription import DEFAULT_ACK_WAIT_MS, DEFAULT_MAX_DELIVER, DeadLetter, Subscription
from .turn import Turn
from .wire import NOBLOCK, recv_frames, send_frames

__all__ = ["HARD_FRAME_LIMIT", "MAX_FETCH", "MAX_SEQS_PER_COMMAND", "Hub", "Refusal"]

log = logging.getLogger("zmq_mq.hub")

# A frame above this size makes ZeroMQ drop the connection before we see it (no reply is
# possible); below it and above max_frame_bytes the sender gets a too_large error.
HARD_FRAME_LIMIT = 256 * 1024 * 1024
# The longest the loop sleeps in poll: bounds how late a stop() or a timer is noticed.
MAX_POLL_MS = 100
# Replies queued for one peer before ZeroMQ refuses more (ROUTER_MANDATORY raises EAGAIN then);
# large because confirms are small and a producer may pipeline many batches.
ROUTER_SNDHWM = 100_000
# CURVE mode remembers the client key of each ROUTER identity, to notice an identity reused by
# another key; past this many the entries of connections with no attachment are dropped (the
# key is read again from the next frame, so forgetting costs nothing but that check).
MAX_REMEMBERED_USERS = 50_000

class Hub:
    """The zmq-mq hub. ``bind()`` then ``run()`` (blocking) in one thread; ``stop()`` from any."""

    def __init__(
        self, config: HubConfig | None = None, *, context: zmq.Context | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config or HubConfig()
        # Every time the hub reads goes through this (tests pass a FakeClock and move it).
        self.clock = clock or SystemClock()
        # The loop's wake-up: a pipe polled with the sockets, written by stop() and by a clock
        # that jumps, so neither waits for the poll timeout (made in bind(), closed in close()).
        self._wake_lock = threading.Lock()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self.instance = uuid.uuid4().hex[:12]
        cfg = self.config
        if not cfg.curve and (cfg.acl_file or cfg.authorized_dir):
            raise ValueError("an ACL or an authorised-keys directory needs curve=True (--curve)")
        # CURVE: keys and ACL are read before anything opens, so a bad file stops the start.
        self.keys: HubKeys | None = (
            HubKeys.load(cfg.keys_dir, cfg.authorized_dir, cfg.acl_file) if cfg.curve else None
        )
        self._acl = self.keys.acl if self.keys else None
        # One ZAP handler per context: a CURVE hub gets its own context unless given one, so
        # that several hubs (tests) can run in one process.
        self._own_ctx = context is None and self.keys is not None
        self._ctx = context or (zmq.Context() if self._own_ctx else zmq.Context.instance())
        self._auth: HubAuthenticator | None = None
        self._monitor: zmq.Socket | None = None
        self._users: dict[bytes, str | None] = {}  # ROUTER identity -> client key (Z85), CURVE only
        self._log_limiter = LogLimiter()
        self._stop = threading.Event()
        self._running = threading.Event()
        self.store = Store(
            self.config.data_dir,
            map_size=self.config.map_size,
            max_map_size=self.config.max_map_size,
            sync=self.config.sync,
        )
        self.subs: dict[tuple[str, str], Subscription] = {}
        # What this loop turn stages for its group commit (router/turn.py); the commit
        # consumes it and a new one starts.
        self.turn = Turn()
        # Replies the last commit made true, to send: (identity, command, body); and the
        # receipt times (ns) of the batches it confirmed (publish latency)
        self._outbox: list[tuple[bytes, bytes, Any]] = []
        self._confirmed_at: list[int] = []
        # Sends of a hub without sockets (step()), in order
        self._unsent: list[tuple[bytes, bytes, Any]] = []
        # delayed delivery (router/schedule.py): entries whose time passed while the hub was
        # down are deleted in the first commit
        self.schedule = Schedule(self.clock)
        self.turn.unsched.extend(self.schedule.load(self.store.load_schedule()))
        # peers, attachments, pattern subscriptions and partitioned topics
        self.attachments = Attachments(
            self.store.load_patterns(),
            {t: c["partitions"] for t, c in self.store.configs.items() if c.get("partitions")},
            self._dead,
        )
        self._peers = self.attachments.peers
        self._load_subscriptions()
        self._valid_topics: set[str] = set(self.store.topics)
        # Per-topic retention limits (router/retention.py), only topics that have some
        self.trimmer = Trimmer(self.store, self.store.configs)
        cfg = self.config
        self._publish_limits = PublishLimits(
            cfg.max_batch_messages, cfg.max_message_bytes, cfg.max_headers_bytes
        )
        if self.attachments.patterns:  # topics created while the hub was down, or before a crash stored them
            self._new_topics(list(self.store.topics))
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.endpoint: str | None = None
        self.pub_endpoint: str | None = None
        self._next_liveness_check = 0
        # Operator statistics (router/stats.py), updated per batch or per turn
        self._started_ms = self.clock.monotonic_ms()
        self._topic_counters: dict[str, TopicCounters] = {}
        self._sub_counters: dict[tuple[str, str], SubCounters] = {}
        self.publish_latency = LatencyHistogram()
        # Stats for other threads (the metrics endpoint): taken by the loop at the end of a turn
        self._snapshot_wanted = False
        self._snapshot: dict | None = None
        self._snapshot_ready = threading.Event()
        self._snapshot_lock = threading.Lock()
        self.counters = {
            "published": 0,
            "delivered": 0,
            "redelivered": 0,
            "acked": 0,
            "dead_lettered": 0,
            "errors": 0,
        }

    # --- lifecycle -------------------------------------------------------------------------

    def _load_subscriptions(self) -> None:
        for (topic, group), blob in self.store.load_subs().items():
            info = self.store.topics.get(topic)
            last = info.last_seq if info else 0
            sub = self.subs[(topic, group)] = Subscription.restore(
                topic, group, protocol.unpack(blob), last_seq=last, lookup=self._lookup(topic)
            )
            sub.published(last, priority=True)  # the backlog may hold prioritised messages
            self.schedule.defer_scheduled(sub)

    def _lookup(self, topic: str):
        """The subscription core's window look-up: ``(key, priority)`` of seqs of ``topic``, read
        from the log (only for key ordering and for seqs that may carry a priority)."""
        read = self.store.read
        meta = protocol.record_meta
        plain = (None, protocol.DEFAULT_PRIORITY)

        def lookup(seqs: list[int]) -> list[tuple[str | None, int]]:
            return [plain if rec is None else meta(rec) for rec in read(topic, seqs)]

        return lookup

    def bind(self) -> None:
        """Bind the sockets (``tcp://127.0.0.1:*`` picks a free port; see ``endpoint``)."""
        # sockets are kept at once, so that close() cleans up after a failed bind
        router = self.router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        router.setsockopt(zmq.RCVHWM, ROUTER_SNDHWM)
        router.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_LIMIT)
        if self.keys is not None:
            self._auth = HubAuthenticator(self._ctx, self.keys)
            self._auth.start()
            make_curve_server(router, self.keys, ROUTER_DOMAIN)
            self._monitor = router.get_monitor_socket(MONITOR_EVENTS)
        router.bind(self.config.bind)
        if self._wake_r is None:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        self.endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.store.lock.note(endpoint=self.endpoint)  # named to a hub refused on this data dir
        if self.config.pub:
            pub = self.pub = self._ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            if self.keys is not None:
                make_curve_server(pub, self.keys, LIVE_DOMAIN)
            pub.bind(self.config.pub)
            self.pub_endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()

    def stop(self) -> None:
        """Ask the loop to finish its turn, commit and return (thread-safe, idempotent)."""
        self._stop.set()
        self.wake()

    def wake(self) -> None:
        """Make the loop run a turn now instead of at its poll timeout (thread-safe)."""
        with self._wake_lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"w")
                except BlockingIOError:  # the pipe is full of wake-ups already
                    pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    @property
    def running(self) -> threading.Event:
        return self._running

    def close(self) -> None:
        if self._monitor is not None:
            self.router.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        for sock in (self.router, self.pub):
            if sock is not None:
                sock.close(linger=0)
        self.router = self.pub = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx:  # only the hub's sockets live in it, all closed by now
            self._ctx.term()
            self._own_ctx = False
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
        self.store.close()

    def run(self) -> None:
        """Serve until ``stop()``. Binds first if ``bind()`` was not called."""
        if self.router is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        wake_r = self._wake_r
        poller.register(wake_r, zmq.POLLIN)
        read = self._read_commands
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
            read = self._read_curve
        unwatch = self.clock.watch(self.wake)  # before running: a jump right after start counts
        self._running.set()
        log.info("hub %s serving on %s (pub %s, %s)", self.instance, self.endpoint,
                 self.pub_endpoint, "CURVE" if self.keys else "plain, no authentication")
        try:
            while not self._stop.is_set():
                timeout = self._poll_timeout()
                ready = poller.poll(timeout)
                if ready:
                    for item, _ in ready:
                        if item == wake_r:
                            self._drain_wake()
                    read()
                self._turn()
                if self._snapshot_wanted:
                    self._snapshot_wanted = False
                    self._snapshot = self.stats()
                    self._snapshot_ready.set()
        finally:
            unwatch()
            self._persist_on_exit()
            self._running.clear()

    def _poll_timeout(self) -> int:
        """Real ms to wait in poll: until the next deadline (on the hub's clock), at most
        MAX_POLL_MS. With a FakeClock the deadline never comes by waiting; its jumps wake the
        loop instead."""
        now = self.clock.monotonic_ms()
        timeout = MAX_POLL_MS
        for sub in self.subs.values():
            deadline = sub.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0, deadline - now))
        return timeout

    def _persist_on_exit(self) -> None:
        try:
            self._commit()
        except Exception:  # the data of the last turn was never confirmed, so nothing is lost
            log.exception("final commit failed")


    # --- driving the hub by hand (tests) -----------------------------------------------------

    def serve_once(self) -> None:
        """One loop turn of a bound hub that is not running: read the commands queued on its
        socket, then tick, commit, answer and dispatch as :meth:`run` does on each wake-up."""
        if self.router is None:
            raise RuntimeError("serve_once needs a bound hub (bind() first)")
        self._read_curve() if self._monitor is not None else self._read_commands()
        self._turn()

    def step(self, commands: Iterable[list[bytes]] = ()) -> list[tuple[bytes, bytes, Any]]:
        """One loop turn of a hub without sockets (never bound): handle each command (its
        frames, the sender's identity first, as the ROUTER socket gives them), then tick,
        commit, answer and dispatch as :meth:`run` does. Returns what the turn would have sent,
        in order: ``(identity, command, body)`` (DELIVER bodies included)."""
        if self.router is not None:
            raise RuntimeError("step drives a hub without sockets; a bound hub uses serve_once")
        for frames in commands:
            self.handle(frames)
        self._turn()
        sent, self._unsent = self._unsent, []
        return sent

    # --- one turn --------------------------------------------------------------------------

    def _read_commands(self) -> None:
        router = self.router
        handle = self.handle
        max_messages = self.config.max_turn_messages
        self.turn.staged = 0
        for _ in range(self.config.max_turn_commands):
            try:
                frames = recv_frames(router, NOBLOCK)
            except zmq.Again:
                return
            handle(frames)
            if self.turn.staged >= max_messages:
                # Commit and answer what we have: a flood must not make everyone wait for its
                # huge turn. The ROUTER queues fairly per peer, so the others are read next turn.
                return

    def _read_curve(self) -> None:
        """``_read_commands`` for a CURVE hub: also learns each command's client key.

        The key is read from the routing-id frame's ``User-Id`` (set by the ZAP handler) on
        every command, not only the first of an identity: a ROUTER identity freed by one client
        may be claimed by another key, and must not inherit the first one's rights or
        attachments.
        """
        self._drain_monitor()
        router = self.router
        handle = self.handle
        users = self._users
        max_messages = self.config.max_turn_messages
        self.turn.staged = 0
        for _ in range(self.config.max_turn_commands):
            try:
                first = router.recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [first.bytes]
            frame = first
            while frame.more:
                frame = router.recv(0, copy=False)
                frames.append(frame.bytes)
            try:
                user = first.get("User-Id")
            except zmq.ZMQError:  # no ZAP metadata: cannot happen on a CURVE server socket
                user = None
            identity = frames[0]
            known = users.get(identity, False)
            if known != user:
                if known is not False:
                    log.warning("connection %s changed client key; dropping its attachments",
                                identity.hex())
                    self.attachments.lost(identity, self.clock.monotonic_ms())
                if len(users) >= MAX_REMEMBERED_USERS:
                    self._users = users = {i: u for i, u in users.items() if i in self._peers}
                users[identity] = user
            handle(frames)
            if self.turn.staged >= max_messages:  # fairness, as in _read_commands
                return

    def _drain_monitor(self) -> None:
        """Log handshakes that failed before ZAP saw them (no keys, wrong hub key)."""
        monitor = self._monitor
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = parse_monitor_message(frames)
            event, value = int(msg["event"]), int(msg["value"])
            what = describe_handshake_failure(event, value)
            now = self.clock.monotonic_ms()
            skipped = self._log_limiter.allow(("handshake", event, value), now)
            if skipped is not None:
                more = f" ({skipped} more since the last report)" if skipped else ""
                log.warning("refused a connection on %s: CURVE handshake failed, %s%s",
                            msg["endpoint"].decode("utf-8", "replace"), what, more)

    def forbidden(self, identity: bytes, action: str, topic: str) -> str:
        """Log an ACL refusal (rate-limited) and return the text of the error."""
        user = self._users.get(identity)
        who = self.keys.name_of(user) if self.keys else "?"
        skipped = self._log_limiter.allow((user, action, topic), self.clock.monotonic_ms())
        if skipped is not None:
            more = f" ({skipped} more since the last report)" if skipped else ""
            log.warning("forbidden: client %s (key %s) may not %s to %r%s", who, user, action,
                        topic, more)
        return f"client {who} may not {action} to {topic!r}"


    def permits(self, identity: bytes, action: str, topic: str) -> bool:
        """Whether this client may ``action`` on ``topic`` (always, without an ACL)."""
        acl = self._acl
        return acl is None or acl.permits(self._users.get(identity), action, topic)

    def visible(self, identity: bytes, topic: str) -> bool:
        """Under an ACL, whether this client may see ``topic`` (publish or read it)."""
        acl = self._acl
        if acl is None:
            return True
        user = self._users.get(identity)
        return acl.permits(user, PUBLISH, topic) or acl.permits(user, SUBSCRIBE, topic)

    def require(self, identity: bytes, action: str, topic: str, ref: Any) -> None:
        """Under an ACL, refuse a command on a topic the client has no ``action`` right on."""
        if self._acl is not None and not self._acl.permits(self._users.get(identity), action, topic):
            raise Refusal(ErrorCode.FORBIDDEN, self.forbidden(identity, action, topic), ref)

    def _turn(self) -> None:
        now = self.clock.monotonic_ms()
        for sub in self.subs.values():
            deadline = sub.next_deadline()
            if deadline is not None and deadline <= now:
                self._dead(sub, sub.tick(now))
        if now >= self._next_liveness_check:
            self._check_liveness(now)
            self._next_liveness_check = now + self.config.heartbeat_ms // 2
        if self.schedule.due():
            self.turn.unsched.extend(self.schedule.expire())
        fresh = self.turn.fresh
        early = not self.turn.appends
        if early:
            # A turn of acks (no publish waits for this commit): hand out the credit they freed
            # now, not after the commit's fsync; a consumer's next message then costs a round
            # trip, not a round trip plus a sync. The acks become durable in the commit below
            # (a crash in between redelivers them: at least once holds). Not to attachments
            # made this turn: their SUBSCRIBED goes out after the commit and must come first.
            self._dispatch(now, skip=fresh)
        published = self._commit()
        self._flush_outbox()
        if self._confirmed_at:
            sent = self.clock.monotonic_ns()
            observe = self.publish_latency.observe
            for received in self._confirmed_at:
                observe((sent - received) / 1e9)
            self._confirmed_at = []
        if published and self.pub is not None:
            self._broadcast(published)
        if not early or published:  # new records (dead letters, redrives): any may take them
            self._dispatch(now)
        elif fresh:  # the others were served before the commit, and the commit added nothing
            self._dispatch(now, keys=fresh)
        self._flush_outbox()

    def _commit(self) -> dict[str, tuple[int, list[bytes]]]:
        """Group commit: consume this turn's :class:`Turn` (staged publishes, dead letters,
        deletes, changed cursors) in one transaction, and start a new one.

        Returns ``{topic: (first_seq, records)}`` of what was stored. On a full store the
        publishes of this turn are refused with an error, and cursors and dead letters are
        committed alone; if even that fails they stay pending and are retried next turn (a
        cursor is never stored without the dead letters that its state implies).
        """
        turn = self.turn
        if self.trimmer.limits:
            self.trimmer.trim(turn.appends, turn.deletes, self._ack_floors, self.clock.wall_ms())
        self.turn = Turn()
        appends, confirms, deletes, admin_done = turn.appends, turn.confirms, turn.deletes, turn.admin
        sched_new, unsched = turn.sched_new, turn.unsched
        outbox = self._outbox
        outbox.extend(turn.replies)
        dlq, dead_by_sub = dead_letter_records(turn.dead_letters, self.store.read, self.clock.wall_ms)
        dirty = [sub for sub in self.subs.values() if sub.dirty]
        if not appends and not dlq and not dirty and not deletes and not unsched:
            # empty batches, or only msg_ids stored earlier ((None, seq) positions)
            for identity, batch_id, positions, received in confirms:
                outbox.append((identity, Command.CONFIRM, [batch_id, [i for _, i in positions]]))
                self._confirmed_at.append(received)
            admin.answer_admin(admin_done, {}, outbox)
            return {}
        subs = {(s.topic, s.group): protocol.pack(s.snapshot()) for s in dirty}
        combined = {topic: list(records) for topic, records in appends.items()}
        for topic, records in dlq.items():
            combined.setdefault(topic, []).extend(records)
        topics = self.store.topics
        new_topics = [t for t in combined if t not in topics]
        try:
            wall = self.clock.wall_ms()
            window = self.config.dedup_window_ms
            firsts = self.store.commit(
                combined, subs, now_ms=wall, deletes=deletes or None, dedup=turn.dedup_new or None,
                dedup_expire_before=wall - window if window > 0 else None,
                schedule=[(t, i, due) for (t, i), due in sched_new.items()] or None,
                unschedule=unsched or None,
            )
        except StorageError as exc:
            code = storage_error_code(exc)
            log.error("commit of %d publish batches failed: %s", len(confirms), exc)
            for identity, batch_id, _, _ in confirms:
                self._error(identity, code, f"nothing stored: {exc}", Command.PUBLISH, batch_id, out=outbox)
            for identity, command, ref, _ in admin_done:  # a redrive or purge is all or nothing too
                self._error(identity, code, f"nothing changed: {exc}", command, ref, out=outbox)
            admin_done = []
            firsts = None
            if appends or deletes:  # again without publishes and deletes: acks, dead letters persist
                try:
                    firsts = self.store.commit(dlq, subs, now_ms=self.clock.wall_ms())
                except StorageError as exc2:
                    log.error("cursor commit failed too, retrying next turn: %s", exc2)
            self.turn.unsched = unsched + self.turn.unsched  # cleanup only: next time
            if firsts is None:
                self.turn.dead_letters = turn.dead_letters + self.turn.dead_letters
                return {}
            confirms, combined, sched_new = [], dlq, {}
        for sub in dirty:
            sub.dirty = False
        if new_topics and self.attachments.patterns:
            self._new_topics([t for t in new_topics if t in combined])
        self.counters["dead_lettered"] += sum(len(v) for v in dlq.values())
        for key, n in dead_by_sub.items():
            self._sub_stats(key).dead_lettered += n
        if turn.dedup_hits and confirms:
            firsts = {**firsts, None: 0}  # (None, seq): a msg_id stored before, at seq
        confirmed_at = self._confirmed_at
        for identity, batch_id, positions, received in confirms:
            outbox.append(
                (identity, Command.CONFIRM, [batch_id, [firsts[t] + i for t, i in positions]])
            )
            confirmed_at.append(received)
        if admin_done:
            admin.answer_admin(admin_done, firsts, outbox)
        stored: dict[str, tuple[int, list[bytes]]] = {}
        now = self.clock.monotonic_ms()
        topic_counters = self._topic_counters
        prio_topics = turn.prio_topics
        for topic, records in combined.items():
            self._valid_topics.add(topic)
            stored[topic] = (firsts[topic], records)
            self.counters["published"] += len(records)
            tc = topic_counters.get(topic)
            if tc is None:
                tc = topic_counters[topic] = TopicCounters(self._started_ms)
            tc.add(now, len(records), sum(map(len, records)))
            last = firsts[topic] + len(records) - 1
            prio = topic in prio_topics
            for sub in self._subs_of(topic):
                sub.published(last, priority=prio)
        if sched_new:
            self.schedule.hold_back(
                [(t, firsts[t] + i, due) for (t, i), due in sched_new.items()], self._subs_of
            )
        return stored

    def commit_now(self) -> None:
        """Commit what this turn staged (answered with the turn's other replies) before an
        operation that cannot be part of the group commit (TOPIC delete)."""
        fresh = self.turn.fresh
        published = self._commit()
        self.turn.fresh = fresh  # the loop still owes these attachments their first dispatch
        if published and self.pub is not None:
            self._broadcast(published)

    def _ack_floors(self, topic: str) -> list[int]:
        return [s.ack_floor for s in self._subs_of(topic)]

    def _probe(self, topic: str):
        """For start_after: the first stored ``(seq, timestamp_ms)`` of ``topic`` at or after a seq."""
        def probe(seq: int) -> tuple[int, int] | None:
            found = self.store.read_range(topic, seq, 1)
            return (found[0][0], protocol.unpack_record(found[0][1])[0]) if found else None
        return probe

    def _subs_of(self, topic: str) -> list[Subscription]:
        return [sub for (t, _), sub in self.subs.items() if t == topic]

    def _broadcast(self, stored: dict[str, tuple[int, list[bytes]]]) -> None:
        """Live feed: one PUB message per topic per turn: ``[topic, msgpack [first_seq, [record, ...]]]``."""
        pub_frames = protocol.pub_frames
        for topic, (first, records) in stored.items():
            try:
                send_frames(self.pub, pub_frames(topic, first, records), NOBLOCK)
            except zmq.Again:  # at-most-once by design: slow listeners lose messages
                pass

    def _dead(self, sub: Subscription, dead: list[DeadLetter]) -> None:
        """Dead letters of a subscription core: stored (router/deadletters.py) in the commit."""
        if dead:
            self.turn.dead_letters.extend([(sub, dl) for dl in dead])

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, now: int, skip: set | None = None, keys: Iterable | None = None) -> None:
        """Hand out what each subscription's credit allows (only those of ``keys`` if given,
        none of ``skip``), straight to the sockets."""
        limit = self.config.max_dispatch_per_turn
        frame_max = self.config.max_deliver_frame
        subs = self.subs
        items = subs.items() if keys is None else [(k, subs[k]) for k in keys if k in subs]
        for key, sub in items:
            if not sub.actors or skip and key in skip:
                continue
            deliveries = sub.dispatch(now, limit)
            if not deliveries:
                continue
            counters = self._sub_stats(key)
            for delivery in deliveries:
                identity, sid = delivery.actor
                seqs = delivery.seqs
                records = self.store.read(sub.topic, seqs)
                entries = []
                gone = []
                again = 0
                for seq, n, rec in zip(seqs, delivery.deliveries, records):
                    if rec is None:
                        gone.append(seq)
                    else:
                        entries.append([seq, n, rec])
                        if n > 1:
                            again += 1
                if gone:  # no longer in the log (retention, purge): count it done and expired
                    sub.ack(delivery.actor, gone)
                    counters.expired += len(gone)
                self.counters["delivered"] += len(entries)
                self.counters["redelivered"] += again
                counters.delivered += len(entries)
                counters.redelivered += again
                for i in range(0, len(entries), frame_max):
                    chunk = entries[i : i + frame_max]
                    body = protocol.deliver_body(sid, sub.topic, chunk)
                    if not self._send(identity, Command.DELIVER, body):
                        self.attachments.lost(identity, now)
                        break

    # --- peers and liveness ----------------------------------------------------------------

    def _check_liveness(self, now: int) -> None:
        limit = self.config.heartbeat_ms * self.config.liveness
        for identity in self.attachments.silent(now, limit):
            log.warning("actor %s silent for %d ms: detaching", identity.hex(), limit)
            self.attachments.lost(identity, now)

    # --- sending ---------------------------------------------------------------------------

    def _send(self, identity: bytes, command: bytes, body: Any) -> bool:
        router = self.router
        if router is None:  # a hub without sockets (step()): what it would send
            self._unsent.append((identity, command, body))
            return True
        try:
            send_frames(router, [identity, *protocol.encode(command, body)], NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: peer gone; EAGAIN: peer not reading
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            log.debug("cannot send %s to %s: %s", command, identity.hex(), exc)
            return False

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for identity, command, body in outbox:
            self._send(identity, command, body)

    def _error(
        self,
        identity: bytes,
        code: ErrorCode,
        message: str,
        command: bytes | None = None,
        ref: Any = None,
        out: list | None = None,
        **extra: Any,
    ) -> None:
        """An ERROR to one sender: with this turn's replies, or into ``out``."""
        self.counters["errors"] += 1
        body = protocol.error_body(code, message, command, ref)
        body.update(extra)
        (self.turn.replies if out is None else out).append((identity, Command.ERROR, body))

    # --- command handlers ------------------------------------------------------------------

    def handle(self, frames: list[bytes]) -> None:
        """Apply one command (its frames, the sender's identity first) to this turn: staged
        for the commit, or answered with the turn's replies; a refusal is an ERROR to its
        sender only. Never raises."""
        identity = frames[0]
        parts = frames[1:]
        for part in parts:
            if len(part) > self.config.max_frame_bytes:
                command, ref = protocol.oversized_ref(parts)
                self._error(
                    identity,
                    ErrorCode.TOO_LARGE,
                    f"frame of {len(part)} bytes is over the limit of "
                    f"{self.config.max_frame_bytes}",
                    command,
                    ref,
                )
                return
        try:
            command, body = protocol.decode(parts)
        except DecodeError as exc:
            self._error(identity, exc.code, exc.message, exc.command)
            return
        peer = self._peers.get(identity)
        if peer is not None:
            peer.last_seen = self.clock.monotonic_ms()
        handler = self._handlers[command]
        try:
            handler(self, identity, peer, body)
        except Refusal as exc:
            extra = {} if exc.index is None else {"index": exc.index}
            self._error(identity, exc.code, exc.message, command, exc.ref, **extra)
        except Exception as exc:  # a bug must not take the hub down for everyone else
            log.exception("internal error handling %s", command)
            self._error(identity, ErrorCode.INTERNAL, f"internal error: {exc!r}", command)


    def _on_hello(self, identity: bytes, peer: Peer | None, body: Any) -> None:
        self.turn.replies.append(
            (
                identity,
                Command.WELCOME,
                {
                    "version": protocol.VERSION,
                    "hub": self.instance,
                    "heartbeat_ms": self.config.heartbeat_ms,
                    "liveness": self.config.liveness,
                    "limits": self.config.limits(),
                    "pub": self.pub_endpoint,
                },
            )
        )

    def _on_heartbeat(self, identity: bytes, peer: Peer | None, body: Any) -> None:
        # The sids this connection has attached: a client that was taken for dead (and detached)
        # while it was paused or cut off sees its sids missing and subscribes again.
        attached = sorted(peer.attachments) if peer is not None else []
        self.turn.replies.append((identity, Command.HEARTBEAT, [self.instance, attached]))


    def _on_publish(self, identity: bytes, peer: Peer | None, body: Any) -> None:
        attachments = self.attachments
        req = parse_publish(body, self._publish_limits, self._valid_topics, self.clock.wall_ns(),
                            attachments.partitions)
        staged = req.staged
        names = None
        if req.routes is not None:  # to partitioned topics: each message to its partition
            names = route(staged, req.routes, attachments.partitions, attachments.round_robin)
        if self._acl is not None:
            self._check_publish_rights(identity, staged, names, req.batch_id)
        turn = self.turn
        if self.trimmer.limits:
            why = self.trimmer.refuse_if_full(staged, turn.appends)
            if why:
                raise Refusal(ErrorCode.TOPIC_FULL, why, req.batch_id)
        if req.prioritised is not None:  # accepted: its subscriptions look its priorities up
            turn.prio_topics.update(staged[i][0] for i in req.prioritised)
        stage(turn, identity, req.batch_id, staged, req.ids, req.delays, self.clock.monotonic_ns(),
              self.config.dedup_window_ms, self._dedup_lookup)

    def _dedup_lookup(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The seqs of ``(topic, msg_id)`` stored within the dedup window."""
        return self.store.dedup_lookup(wanted, self.clock.wall_ms() - self.config.dedup_window_ms)

    def _check_publish_rights(self, identity: bytes, staged: list[tuple[str, bytes]],
                              names: dict[int, str] | None, batch_id: Any) -> None:
        """Under an ACL: the whole batch is refused if one message goes where this client may
        not publish (one cached lookup per run of equal topics)."""
        acl = self._acl
        user = self._users.get(identity)
        allowed = None
        for index, (topic, _) in enumerate(staged):
            if names is not None:  # a partitioned topic: the right is on its name
                topic = names.get(index, topic)
            if topic != allowed:
                if not acl.permits(user, PUBLISH, topic):
                    raise Refusal(
                        ErrorCode.FORBIDDEN,
                        f"message {index}: {self.forbidden(identity, PUBLISH, topic)}; "
                        "nothing of this batch was stored",
                        batch_id,
                        index,
                    )
                allowed = topic

    def _on_subscribe(self, identity: bytes, peer: Peer | None, body: Any) -> None:
        req = parse_subscribe(body)
        sid, topic, group, pattern = req.sid, req.topic, req.group, req.pattern
        if not pattern and not self.permits(identity, SUBSCRIBE, topic):
            raise Refusal(ErrorCode.FORBIDDEN, self.forbidden(identity, SUBSCRIBE, topic), sid)
        options = {"ack_wait_ms": req.ack_wait_ms, "max_deliver": req.max_deliver, "ordering": req.ordering}
        now = self.clock.monotonic_ms()
        attachments = self.attachments
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
                        self.store.put_pattern(topic, group, spec)
                    except StorageError as exc:
                        code = storage_error_code(exc)
                        raise Refusal(code, f"pattern subscription not stored: {exc}", sid) from None
                    attachments.patterns[spec_key] = spec
                    log.info("new pattern subscription %s on %s", group, topic)
                targets = [t for t in sorted(self.store.topics) if protocol.pattern_matches(topic, t)]
            else:
                targets = protocol.partition_topics(topic, partitions[topic])
            subs = {}
            for t in targets:
                if not self.permits(identity, SUBSCRIBE, t):
                    continue  # a pattern reaches only the topics this client may read
                subs[t] = self._subscription(t, group, req.start, options, sid)
        else:
            subs = {topic: self._subscription(topic, group, req.start, options, sid)}
        att = Attachment(topic, group, req.credit, subs, pattern or topic in partitions)
        attachments.attach(identity, peer, sid, att, now)
        fresh = self.turn.fresh
        for t in subs:
            fresh.add((t, group))
        first = next(iter(subs.values()), None)
        ack_wait_ms, max_deliver, ordering = req.ack_wait_ms, req.max_deliver, req.ordering
        self.turn.replies.append(
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
                    "max_deliver": first.max_deliver if first else (
                        DEFAULT_MAX_DELIVER if max_deliver is None else max_deliver),
                    "ordering": first.ordering if first else (ordering or "none"),
                    "topics": sorted(subs),
                },
            )
        )
    def _subscription(self, topic: str, group: str, start: Any, options: dict, ref: Any) -> Subscription:
        """The subscription (topic, group): created at ``start`` if new, else re-configured with
        the options given (None: unchanged)."""
        key = (topic, group)
        sub = self.subs.get(key)
        ack_wait_ms, max_deliver, ordering = options["ack_wait_ms"], options["max_deliver"], options["ordering"]
        if sub is None:
            info = self.store.topics.get(topic)
            last = info.last_seq if info else 0
            kwargs = {}
            if ack_wait_ms is not None:
                kwargs["ack_wait_ms"] = ack_wait_ms
            if max_deliver is not None:
                kwargs["max_deliver"] = max_deliver
            try:
                after = start_after(start, info.first_seq if info else 1, last, self._probe(topic))
            except ValueError as exc:
                raise Refusal(ErrorCode.INVALID, str(exc), ref) from None
            sub = Subscription(
                topic, group, last_seq=last, start_after=after, ordering=ordering or "none",
                lookup=self._lookup(topic), **kwargs,
            )
            sub.published(last, priority=True)  # the backlog may hold prioritised messages
            self.schedule.defer_scheduled(sub)
            sub.dirty = True
            self.subs[key] = sub
            log.info("new subscription %s on %s (start=%s)", group, topic, start)
        elif ack_wait_ms is not None or max_deliver is not None or ordering is not None:
            sub.configure(ack_wait_ms=ack_wait_ms, max_deliver=max_deliver, ordering=ordering)
        return sub

    def _new_topics(self, topics: Iterable[str]) -> None:
        """Topics just created: pattern subscriptions that match get a subscription on each (from
        its first message), and every actor attached through the pattern is attached to it."""
        for topic in topics:
            for (pattern, group), spec in self.attachments.patterns.items():
                if not protocol.pattern_matches(pattern, topic):
                    continue
                options = {"ack_wait_ms": spec.get("ack_wait_ms"), "max_deliver": spec.get("max_deliver"),
                           "ordering": spec.get("ordering")}
                sub = self._subscription(topic, group, "first", options, None)
                for (identity, sid), att in self.attachments.multi.get((pattern, group), {}).items():
                    if not self.permits(identity, SUBSCRIBE, topic):
                        continue
                    att.subs[topic] = sub
                    sub.attach((identity, sid), att.credit)


    def _attachment(self, peer: Peer | None, body: Any, command: str, size: int) -> tuple[int, Attachment]:
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

    def _seqs(self, att: Attachment, sid: int, command: str, by_topic: Any) -> list[tuple[Subscription, list[int]]]:
        """``{topic: [seq, ...]}`` of a command: the subscription of each topic and its seqs."""
        subs = att.subs
        return [(subs[t], seqs) for t, seqs in parse_by_topic(by_topic, subs, att.name, sid, command)]

    def _on_credit(self, identity, peer, body) -> None:
        sid, att = self._attachment(peer, body, "CREDIT", 2)
        credit = parse_credit(body[1], sid)
        att.credit = credit
        for sub in att.subs.values():
            sub.set_credit((identity, sid), credit)

    def _on_ack(self, identity, peer, body) -> None:
        sid, att = self._attachment(peer, body, "ACK", 2)
        unknown_all = []
        for sub, seqs in self._seqs(att, sid, "ACK", body[1]):
            # messages this ACK made done (duplicates and unknown seqs count nothing): done ones
            # are floor + acked-above-floor = last_seq - pending - in_flight
            before = sub.last_seq - sub.pending - sub.in_flight
            unknown = sub.ack((identity, sid), seqs)
            done = sub.last_seq - sub.pending - sub.in_flight - before
            if done:
                self.counters["acked"] += done
                self._sub_stats((sub.topic, sub.group)).acked += done
            if unknown:
                unknown_all.append(f"{sub.topic}: {unknown[:10]}")
        if unknown_all:
            raise Refusal(
                ErrorCode.UNKNOWN_SEQUENCE,
                f"ACK of sequences never published on {'; '.join(unknown_all)}",
                sid,
            )

    def _on_nack(self, identity, peer, body) -> None:
        sid, att = self._attachment(peer, body, "NACK", 3)
        targets = self._seqs(att, sid, "NACK", body[1])
        delay = parse_nack_delay(body[2], sid)
        now = self.clock.monotonic_ms()
        for sub, seqs in targets:
            self._dead(sub, sub.nack((identity, sid), seqs, now, delay))

    def _on_release(self, identity, peer, body) -> None:
        sid, att = self._attachment(peer, body, "RELEASE", 2)
        for sub, seqs in self._seqs(att, sid, "RELEASE", body[1]):
            sub.release((identity, sid), seqs)

    def _on_reject(self, identity, peer, body) -> None:
        sid, att = self._attachment(peer, body, "REJECT", 3)
        targets = self._seqs(att, sid, "REJECT", body[1])
        reason = body[2] if isinstance(body[2], str) else repr(body[2])
        for sub, seqs in targets:
            self._dead(sub, sub.reject((identity, sid), seqs, reason[:1000]))

    def _on_progress(self, identity, peer, body) -> None:
        sid, att = self._attachment(peer, body, "PROGRESS", 2)
        now = self.clock.monotonic_ms()
        for sub, seqs in self._seqs(att, sid, "PROGRESS", body[1]):
            sub.progress((identity, sid), seqs, now)


    def _on_detach(self, identity, peer, body) -> None:
        sid = parse_detach(body)
        self.attachments.detach(identity, peer, sid, self.clock.monotonic_ms())
        # Detaching twice, or after a hub restart, is fine: the reply says it is done either way.
        self.turn.replies.append((identity, Command.DETACHED, [sid]))

    # --- operator views ------------------------------------------------------------------------

    def topics(self) -> list[dict]:
        """Topics with their message counts and subscriptions (what ``zmq-mq topics`` shows)."""
        return topic_rows(self.store.topics, self.subs)

    def stats(self) -> dict:
        """The STATS document (router/stats.py, docs/PROTOCOL.md); call on the hub's thread
        (else snapshot_stats)."""
        return stats_document(
            hub=self.instance, version=protocol.VERSION, now_ms=self.clock.monotonic_ms(),
            wall_ms=self.clock.wall_ms(), started_ms=self._started_ms, totals=self.counters,
            connections=len(self._peers), latency=self.publish_latency, stored=self.store.topics,
            subs=self.subs, topic_counters=self._topic_counters, sub_counters=self._sub_counters,
            dlq_topic=protocol.dlq_topic,
        )

    def _sub_stats(self, key: tuple[str, str]) -> SubCounters:
        c = self._sub_counters.get(key)
        if c is None:
            c = self._sub_counters[key] = SubCounters()
        return c

    def forget_counters(self, key: tuple[str, str] | None, topic: str | None) -> None:
        """Statistics of a deleted subscription or topic."""
        if key is not None:
            self._sub_counters.pop(key, None)
        if topic is not None:
            self._topic_counters.pop(topic, None)
    def snapshot_stats(self, timeout: float = 2.0) -> dict | None:
        """:meth:`stats`, safe from any thread: the loop takes it at the end of its next turn
        (within ``MAX_POLL_MS``), so it never races the hub's state. None if the hub is not
        running or did not answer within ``timeout`` seconds."""
        with self._snapshot_lock:
            if not self._running.is_set():
                return None
            self._snapshot_ready.clear()
            self._snapshot_wanted = True
            self.wake()  # taken at the end of the next turn: now, not at the poll timeout
            if not self._snapshot_ready.wait(timeout):
                return None
            return self._snapshot


    _handlers = {
        Command.HELLO: _on_hello,
        Command.HEARTBEAT: _on_heartbeat,
        Command.PUBLISH: _on_publish,
        Command.SUBSCRIBE: _on_subscribe,
        Command.CREDIT: _on_credit,
        Command.ACK: _on_ack,
        Command.NACK: _on_nack,
        Command.RELEASE: _on_release,
        Command.REJECT: _on_reject,
        Command.PROGRESS: _on_progress,
        Command.DETACH: _on_detach,
        **admin.HANDLERS,
    }
