"""The hub: one thread, one event loop, moving bytes between sockets, storage and the core.

A loop turn:
1. poll, then read up to ``max_turn_commands`` commands from the ROUTER socket;
2. apply each: publishes are validated and staged, acks / nacks / credit go to the pure
   subscription state machines (router/subscription.py), which may dead-letter;
3. expire deadlines (``tick``) and detach actors whose heartbeats stopped;
4. ONE LMDB write transaction (group commit): staged publishes, dead letters, changed cursors;
5. only then answer: confirms, errors and other replies, in arrival order;
6. broadcast the new messages on the PUB socket (live, at-most-once);
7. hand out deliveries within each actor's credit, read from the log, send DELIVER frames.

No reply leaves before the commit that makes it true, so a confirmed publish survives
``kill -9``; the hub never buffers past an actor's credit, so memory stays flat with any backlog.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import threading
import uuid
from typing import Any, Iterable

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..storage import Store, StorageError
from . import protocol
from .acl import PUBLISH, SUBSCRIBE
from .clock import Clock, SystemClock
from .config import HubConfig
from .deadletters import NotRedrivable, dead_letter_record, redrive_record
from .errors import storage_error_code
from .protocol import Command, DecodeError, ErrorCode
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
from .stats import RATE_WINDOW_S, LatencyHistogram, SubCounters, TopicCounters
from .retention import TRIM_BATCH, TopicLimits, acked_upto, aged_prefix, bytes_upto, start_after, excess_messages, parse_limits, refuse_new
from .subscription import DEFAULT_ACK_WAIT_MS, DEFAULT_MAX_DELIVER, DeadLetter, Subscription
from .wire import NOBLOCK, recv_frames, send_frames

log = logging.getLogger("zmq_mq.hub")

# A frame above this size makes ZeroMQ drop the connection before we see it (no reply is
# possible); below it and above max_frame_bytes the sender gets a too_large error.
HARD_FRAME_LIMIT = 256 * 1024 * 1024
# The longest the loop sleeps in poll: bounds how late a stop() or a timer is noticed.
MAX_POLL_MS = 100
# Replies queued for one peer before ZeroMQ refuses more (ROUTER_MANDATORY raises EAGAIN then);
# large because confirms are small and a producer may pipeline many batches.
ROUTER_SNDHWM = 100_000
MAX_SEQS_PER_COMMAND = 100_000
# CURVE mode remembers the client key of each ROUTER identity, to notice an identity reused by
# another key; past this many the entries of connections with no attachment are dropped (the
# key is read again from the next frame, so forgetting costs nothing but that check).
MAX_REMEMBERED_USERS = 50_000
# FETCH answers at most this many records (and at most half a frame of bytes): an admin reads
# a log page by page, and one page never holds the loop for long.
MAX_FETCH = 1000

class _Attachment:
    """What one SUBSCRIBE (one sid of a connection) reads: one subscription, or for a pattern or
    a partitioned topic (``multi``) one subscription of the group per matched topic."""

    __slots__ = ("name", "group", "credit", "subs", "multi")

    def __init__(self, name: str, group: str, credit: int, subs: dict[str, Subscription], multi: bool) -> None:
        self.name = name  # the topic, pattern or partitioned topic as subscribed
        self.group = group
        self.credit = credit  # per subscription
        self.subs = subs  # topic -> subscription
        self.multi = multi


class _Peer:
    """A connected client that has attached at least one subscription (an actor)."""

    __slots__ = ("identity", "last_seen", "attachments")

    def __init__(self, identity: bytes, now: int) -> None:
        self.identity = identity
        self.last_seen = now
        self.attachments: dict[int, _Attachment] = {}


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
        # delayed delivery: (topic, position in this turn's appends) -> due (wall ms) of this
        # turn's held-back messages; every committed held-back message not yet due, by topic
        # (seq -> due) and as a heap (due, topic, seq); entries whose time came, to delete
        self._sched_new: dict[tuple[str, int], int] = {}
        self._scheduled: dict[str, dict[int, int]] = {}
        self._sched_heap: list[tuple[int, str, int]] = []
        self._unsched: list[tuple[str, int]] = []
        self._load_schedule()
        self._load_subscriptions()
        self._peers: dict[bytes, _Peer] = {}
        self._valid_topics: set[str] = set(self.store.topics)
        # Per-topic retention limits (router/retention.py), only topics that have some: a
        # publish to a topic without limits costs one dict truthiness check.
        self._limits: dict[str, TopicLimits] = {}
        self._age_check: dict[str, int] = {}  # max_age topics: wall ms before which none expires
        for topic, stored_config in self.store.configs.items():
            limits = parse_limits(stored_config)
            if not limits.unlimited:
                self._limits[topic] = limits
        # partitioned topics (name -> N), pattern subscriptions ((pattern, group) -> options),
        # the attachments through a pattern or partitioned topic by (name, group), and the
        # round-robin position of keyless publishes to each partitioned topic
        self._partitions: dict[str, int] = {
            t: c["partitions"] for t, c in self.store.configs.items() if c.get("partitions")
        }
        self._patterns: dict[tuple[str, str], dict] = self.store.load_patterns()
        self._multi: dict[tuple[str, str], dict[tuple[bytes, int], _Attachment]] = {}
        self._round_robin: dict[str, int] = {}
        if self._patterns:  # topics created while the hub was down, or before a crash stored them
            self._new_topics(list(self.store.topics))
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.endpoint: str | None = None
        self.pub_endpoint: str | None = None
        # per-turn state
        self._appends: dict[str, list[bytes]] = {}
        # (identity, batch_id, [(topic, index in its append list)], receipt time in ns)
        self._confirms: list[tuple[bytes, Any, list[tuple[str, int]], int]] = []
        self._outbox: list[tuple[bytes, bytes, Any]] = []
        # (topic, group) of subscriptions that got an attachment this turn (see _turn)
        self._fresh: set[tuple[str, str]] = set()
        self._dead_letters: list[tuple[Subscription, DeadLetter]] = []
        # PURGE / REDRIVE: records to delete in this turn's commit, and the answers to send once
        # it committed: (identity, command, ref, result)
        self._deletes: dict[str, set[int] | range] = {}
        self._admin: list[tuple[bytes, bytes, Any, Any]] = []
        # producer message ids of this turn: (topic, msg_id) -> staged position, and what the
        # commit stores in the dedup index; _dedup_hits: some confirm repeats a stored seq
        self._dedup_staged: dict[tuple[str, str], tuple[str, int]] = {}
        self._dedup_new: list[tuple[str, str, int]] = []
        self._dedup_hits = False
        self._staged = 0  # messages staged by PUBLISH in this turn (bounded by max_turn_messages)
        self._prio_topics: set[str] = set()  # topics with a prioritised message in this turn
        self._next_liveness_check = 0
        # Operator statistics (router/stats.py), updated per batch or per turn
        self._started_ms = self.clock.monotonic_ms()
        self._topic_counters: dict[str, TopicCounters] = {}
        self._sub_counters: dict[tuple[str, str], SubCounters] = {}
        self.publish_latency = LatencyHistogram()
        self._confirmed_at: list[int] = []  # receipt times (ns) of the batches confirmed this turn
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
            self._defer_scheduled(sub)

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

    # --- one turn --------------------------------------------------------------------------

    def _read_commands(self) -> None:
        router = self.router
        handle = self._handle
        max_messages = self.config.max_turn_messages
        self._staged = 0
        for _ in range(self.config.max_turn_commands):
            try:
                frames = recv_frames(router, NOBLOCK)
            except zmq.Again:
                return
            handle(frames)
            if self._staged >= max_messages:
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
        handle = self._handle
        users = self._users
        max_messages = self.config.max_turn_messages
        self._staged = 0
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
                    self._lost_peer(identity, self.clock.monotonic_ms())
                if len(users) >= MAX_REMEMBERED_USERS:
                    self._users = users = {i: u for i, u in users.items() if i in self._peers}
                users[identity] = user
            handle(frames)
            if self._staged >= max_messages:  # fairness, as in _read_commands
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

    def _forbidden(self, identity: bytes, action: str, topic: str) -> str:
        """Log an ACL refusal (rate-limited) and return the text of the error."""
        user = self._users.get(identity)
        who = self.keys.name_of(user) if self.keys else "?"
        skipped = self._log_limiter.allow((user, action, topic), self.clock.monotonic_ms())
        if skipped is not None:
            more = f" ({skipped} more since the last report)" if skipped else ""
            log.warning("forbidden: client %s (key %s) may not %s to %r%s", who, user, action,
                        topic, more)
        return f"client {who} may not {action} to {topic!r}"

    def _turn(self) -> None:
        now = self.clock.monotonic_ms()
        for sub in self.subs.values():
            deadline = sub.next_deadline()
            if deadline is not None and deadline <= now:
                self._dead(sub, sub.tick(now))
        if now >= self._next_liveness_check:
            self._check_liveness(now)
            self._next_liveness_check = now + self.config.heartbeat_ms // 2
        if self._sched_heap and self._sched_heap[0][0] <= self.clock.wall_ms():
            self._expire_schedule()
        early = not self._appends
        if early:
            # A turn of acks (no publish waits for this commit): hand out the credit they freed
            # now, not after the commit's fsync; a consumer's next message then costs a round
            # trip, not a round trip plus a sync. The acks become durable in the commit below
            # (a crash in between redelivers them: at least once holds). Not to attachments
            # made this turn: their SUBSCRIBED goes out after the commit and must come first.
            self._dispatch(now, skip=self._fresh)
        published = self._commit()
        fresh, self._fresh = self._fresh, set()
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
        """Group commit: staged publishes, dead letters and changed cursors in one transaction.

        Returns ``{topic: (first_seq, records)}`` of what was stored. On a full store the
        publishes of this turn are refused with an error, and cursors and dead letters are
        committed alone; if even that fails they stay pending and are retried next turn (a
        cursor is never stored without the dead letters that its state implies).
        """
        if self._limits:
            self._trim()
        appends, self._appends = self._appends, {}
        confirms, self._confirms = self._confirms, []
        dead, self._dead_letters = self._dead_letters, []
        deletes, self._deletes = self._deletes, {}
        admin, self._admin = self._admin, []
        dedup_new, self._dedup_new = self._dedup_new, []
        dedup_hits, self._dedup_hits = self._dedup_hits, False
        prio_topics, self._prio_topics = self._prio_topics, set()
        sched_new, self._sched_new = self._sched_new, {}
        unsched, self._unsched = self._unsched, []
        self._dedup_staged = {}
        dlq, dead_by_sub = self._dead_letter_records(dead)
        dirty = [sub for sub in self.subs.values() if sub.dirty]
        if not appends and not dlq and not dirty and not deletes and not unsched:
            # empty batches, or only msg_ids stored earlier ((None, seq) positions)
            for identity, batch_id, positions, received in confirms:
                self._outbox.append((identity, Command.CONFIRM, [batch_id, [i for _, i in positions]]))
                self._confirmed_at.append(received)
            self._answer_admin(admin, {})
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
                combined, subs, now_ms=wall, deletes=deletes or None, dedup=dedup_new or None,
                dedup_expire_before=wall - window if window > 0 else None,
                schedule=[(t, i, due) for (t, i), due in sched_new.items()] or None,
                unschedule=unsched or None,
            )
        except StorageError as exc:
            code = storage_error_code(exc)
            log.error("commit of %d publish batches failed: %s", len(confirms), exc)
            for identity, batch_id, _, _ in confirms:
                self._error(identity, code, f"nothing stored: {exc}", Command.PUBLISH, batch_id)
            for identity, command, ref, _ in admin:  # a redrive or purge is all or nothing too
                self._error(identity, code, f"nothing changed: {exc}", command, ref)
            admin = []
            firsts = None
            if appends or deletes:  # again without publishes and deletes: acks, dead letters persist
                try:
                    firsts = self.store.commit(dlq, subs, now_ms=self.clock.wall_ms())
                except StorageError as exc2:
                    log.error("cursor commit failed too, retrying next turn: %s", exc2)
            self._unsched = unsched + self._unsched  # cleanup only: next time
            if firsts is None:
                self._dead_letters = dead + self._dead_letters
                return {}
            confirms, combined, sched_new = [], dlq, {}
        for sub in dirty:
            sub.dirty = False
        if new_topics and self._patterns:
            self._new_topics([t for t in new_topics if t in combined])
        self.counters["dead_lettered"] += sum(len(v) for v in dlq.values())
        for key, n in dead_by_sub.items():
            self._sub_stats(key).dead_lettered += n
        if dedup_hits and confirms:
            firsts = {**firsts, None: 0}  # (None, seq): a msg_id stored before, at seq
        confirmed_at = self._confirmed_at
        for identity, batch_id, positions, received in confirms:
            self._outbox.append(
                (identity, Command.CONFIRM, [batch_id, [firsts[t] + i for t, i in positions]])
            )
            confirmed_at.append(received)
        if admin:
            self._answer_admin(admin, firsts)
        stored: dict[str, tuple[int, list[bytes]]] = {}
        now = self.clock.monotonic_ms()
        topic_counters = self._topic_counters
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
            self._hold_back([(t, firsts[t] + i, due) for (t, i), due in sched_new.items()])
        return stored

    # --- delayed delivery ------------------------------------------------------------------

    def _hold_back(self, entries: list[tuple[str, int, int]]) -> None:
        """Committed messages to deliver only at their due time (wall ms): remember them and
        have every subscription of their topic hold them back."""
        by_topic: dict[str, list[tuple[int, int]]] = {}
        for topic, seq, due in entries:
            self._scheduled.setdefault(topic, {})[seq] = due
            heapq.heappush(self._sched_heap, (due, topic, seq))
            by_topic.setdefault(topic, []).append((seq, due))
        for topic, seqs in by_topic.items():
            for sub in self._subs_of(topic):
                self._defer(sub, seqs)

    def _defer(self, sub: Subscription, seqs_due: Iterable[tuple[int, int]]) -> None:
        """Hand held-back seqs to a subscription core, wall-clock dues turned into its clock
        (rounded up: a message is never handed out before its due time)."""
        to_monotonic = self.clock.wall_to_monotonic_ms
        sub.defer([(seq, to_monotonic(due)) for seq, due in seqs_due])

    def _defer_scheduled(self, sub: Subscription) -> None:
        """A subscription created or restored: it holds back its topic's messages not yet due."""
        held = self._scheduled.get(sub.topic)
        if held:
            self._defer(sub, held.items())

    def _load_schedule(self) -> None:
        """At start: the held-back messages still to come; entries whose time has passed are
        deleted in the first commit (those messages are ordinary ones now)."""
        wall = self.clock.wall_ms()
        for topic, seq, due in self.store.load_schedule():
            if due > wall:
                self._scheduled.setdefault(topic, {})[seq] = due
                self._sched_heap.append((due, topic, seq))
            else:
                self._unsched.append((topic, seq))
        heapq.heapify(self._sched_heap)

    def _expire_schedule(self) -> None:
        """Forget held-back messages whose time has come (the subscriptions made them ready)."""
        heap = self._sched_heap
        wall = self.clock.wall_ms()
        while heap and heap[0][0] <= wall:
            _, topic, seq = heapq.heappop(heap)
            held = self._scheduled.get(topic)
            if held is not None and held.pop(seq, None) is not None:
                if not held:
                    del self._scheduled[topic]
                self._unsched.append((topic, seq))

    def _trim(self) -> None:
        """discard=old: stage the deletion of the oldest messages over a topic's limits, at most
        TRIM_BATCH per topic per turn (deletes apply after this turn's appends)."""
        for topic, limits in self._limits.items():
            if topic in self._deletes:  # a PURGE or REDRIVE of this turn; trim next turn
                continue
            info = self.store.topics.get(topic)
            stored = info.count if info else 0
            first = info.first_seq if info else 1
            upto = first + excess_messages(limits, stored, len(self._appends.get(topic, ())))
            if limits.max_age_ms and stored:
                upto = max(upto, self._aged_upto(topic, info, limits.max_age_ms))
            if limits.max_bytes is not None and limits.discard == "old" and stored:
                over = info.bytes + sum(map(len, self._appends.get(topic, ()))) - limits.max_bytes
                if over > 0:
                    oldest = self.store.read_range(topic, first, TRIM_BATCH)
                    last = bytes_upto([(seq, len(rec)) for seq, rec in oldest], over)
                    if last is not None:
                        upto = max(upto, last + 1)
            if limits.retention == "workqueue" and stored:
                upto = max(upto, acked_upto(first, [s.ack_floor for s in self._subs_of(topic)]))
            if upto > first:
                self._deletes[topic] = range(first, upto)

    def _aged_upto(self, topic: str, info: Any, max_age_ms: int) -> int:
        """max_age: the seq bound (exclusive) of the oldest messages past their age, reading at
        most TRIM_BATCH records, and only once the oldest one can have aged."""
        wall = self.clock.wall_ms()
        if wall < self._age_check.get(topic, 0):
            return 0
        oldest = self.store.read_range(topic, info.first_seq, TRIM_BATCH)
        stamped = [(seq, protocol.unpack_record(rec)[0]) for seq, rec in oldest]
        last, next_ts = aged_prefix(stamped, wall - max_age_ms)
        # none left to age in this batch: look again when the first kept one ages
        self._age_check[topic] = next_ts + max_age_ms if next_ts is not None else 0
        return 0 if last is None else last + 1

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

    # --- dead letters ----------------------------------------------------------------------

    def _dead(self, sub: Subscription, dead: list[DeadLetter]) -> None:
        for dl in dead:
            self._dead_letters.append((sub, dl))

    def _dead_letter_records(
        self, dead: list[tuple[Subscription, DeadLetter]]
    ) -> tuple[dict[str, list[bytes]], dict[tuple[str, str], int]]:
        """Records for the ``dlq.<group>`` topics: the original message plus origin headers;
        and how many each subscription dead-lettered."""
        out: dict[str, list[bytes]] = {}
        by_sub: dict[tuple[str, str], int] = {}
        for sub, dl in dead:
            (record,) = self.store.read(sub.topic, [dl.seq])
            if record is None:  # removed from the log meanwhile: nothing left to keep
                continue
            try:
                dead_record = dead_letter_record(
                    record, sub.topic, dl.seq, sub.group, dl.deliveries, dl.reason,
                    self.clock.wall_ms(),
                )
            except Exception:  # a record this hub cannot re-pack: keep it as stored, never lose it
                log.exception("dead letter %s/%s: record kept unchanged", sub.topic, dl.seq)
                dead_record = record
            topic = protocol.dlq_topic(sub.group)
            out.setdefault(topic, []).append(dead_record)
            key = (sub.topic, sub.group)
            by_sub[key] = by_sub.get(key, 0) + 1
        return out, by_sub

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
                        self._lost_peer(identity, now)
                        break

    # --- peers and liveness ----------------------------------------------------------------

    def _check_liveness(self, now: int) -> None:
        limit = self.config.heartbeat_ms * self.config.liveness
        for identity in [i for i, p in self._peers.items() if now - p.last_seen > limit]:
            log.warning("actor %s silent for %d ms: detaching", identity.hex(), limit)
            self._lost_peer(identity, now)

    def _lost_peer(self, identity: bytes, now: int) -> None:
        peer = self._peers.pop(identity, None)
        if peer is None:
            return
        for sid, att in peer.attachments.items():
            self._release_attachment(identity, sid, att, now, failed=True)

    # --- sending ---------------------------------------------------------------------------

    def _send(self, identity: bytes, command: bytes, body: Any) -> bool:
        try:
            send_frames(self.router, [identity, *protocol.encode(command, body)], NOBLOCK)
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
        **extra: Any,
    ) -> None:
        self.counters["errors"] += 1
        body = protocol.error_body(code, message, command, ref)
        body.update(extra)
        self._outbox.append((identity, Command.ERROR, body))

    # --- command handlers ------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
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
        except _BadRequest as exc:
            extra = {} if exc.index is None else {"index": exc.index}
            self._error(identity, exc.code, exc.message, command, exc.ref, **extra)
        except Exception as exc:  # a bug must not take the hub down for everyone else
            log.exception("internal error handling %s", command)
            self._error(identity, ErrorCode.INTERNAL, f"internal error: {exc!r}", command)

    def _on_hello(self, identity: bytes, peer: _Peer | None, body: Any) -> None:
        self._outbox.append(
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

    def _on_heartbeat(self, identity: bytes, peer: _Peer | None, body: Any) -> None:
        # The sids this connection has attached: a client that was taken for dead (and detached)
        # while it was paused or cut off sees its sids missing and subscribes again.
        attached = sorted(peer.attachments) if peer is not None else []
        self._outbox.append((identity, Command.HEARTBEAT, [self.instance, attached]))

    def _on_publish(self, identity: bytes, peer: _Peer | None, body: Any) -> None:
        try:
            batch_id, messages = protocol.decode_publish(body)
        except DecodeError as exc:
            raise _BadRequest(exc.code, exc.message) from None
        cfg = self.config
        if len(messages) > cfg.max_batch_messages:
            raise _BadRequest(
                ErrorCode.TOO_LARGE,
                f"batch of {len(messages)} messages is over the limit of {cfg.max_batch_messages}",
                batch_id,
            )
        valid_topics = self._valid_topics
        max_payload = cfg.max_message_bytes
        max_headers = cfg.max_headers_bytes
        pack_record = protocol.pack_record
        decode_message = protocol.decode_publish_message
        wall_ns = self.clock.wall_ns()
        ts = wall_ns // 1_000_000  # the record's timestamp: the wall clock at receipt
        # delay_ms counts from the receipt rounded up, so the due time is never before it
        ts_ceil = -(-wall_ns // 1_000_000)
        staged: list[tuple[str, bytes]] = []
        ids: dict[int, str] | None = None  # message index -> producer msg_id
        delays: dict[int, int] | None = None  # message index -> due time (wall ms), if held back
        acl_names: dict[int, str] | None = None  # message index -> partitioned topic it was sent to
        prio_topics: set[str] | None = None  # stored topics (partitions) of prioritised messages
        for index, msg in enumerate(messages):
            prioritised = False
            try:
                topic, payload, key, headers, opts = decode_message(msg)
            except DecodeError as exc:
                raise _BadRequest(
                    exc.code, f"message {index}: {exc.message}", batch_id, index
                ) from None
            if type(topic) is not str or topic not in valid_topics:  # unhashable: no set lookup
                problem = protocol.check_topic(topic)
                if problem:
                    raise _BadRequest(ErrorCode.BAD_TOPIC, f"message {index}: {problem}", batch_id, index)
            if type(payload) is not bytes:
                raise _BadRequest(
                    ErrorCode.BAD_BODY, f"message {index}: payload must be bytes", batch_id, index
                )
            if len(payload) > max_payload:
                raise _BadRequest(
                    ErrorCode.TOO_LARGE,
                    f"message {index}: payload of {len(payload)} bytes is over the limit of "
                    f"{max_payload}",
                    batch_id,
                    index,
                )
            if key is not None and type(key) is not str:
                raise _BadRequest(ErrorCode.BAD_BODY, f"message {index}: key must be a string or nil", batch_id, index)
            if headers:
                problem = protocol.check_headers(headers)
                if problem:
                    raise _BadRequest(ErrorCode.BAD_BODY, f"message {index}: {problem}", batch_id, index)
                problem = protocol.check_reserved_headers(headers)
                if problem:
                    raise _BadRequest(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
            elif headers is not None and type(headers) is not dict:
                raise _BadRequest(ErrorCode.BAD_BODY, f"message {index}: headers must be a map or nil", batch_id, index)
            msg_id = None
            if opts is not None:
                msg_id = _msg_id_of(opts, index, batch_id)
                priority = opts.get("priority")
                if priority is not None:
                    problem = protocol.check_priority(priority)
                    if problem:
                        raise _BadRequest(
                            ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index
                        )
                    if priority != protocol.DEFAULT_PRIORITY:
                        headers = (
                            {**headers, protocol.PRIORITY_HEADER: priority}
                            if headers
                            else {protocol.PRIORITY_HEADER: priority}
                        )
                        prioritised = True
                due = _due_of(opts, ts, ts_ceil, index, batch_id)
                if due is not None:
                    headers = (
                        {**headers, protocol.DELIVER_AT_HEADER: due}
                        if headers
                        else {protocol.DELIVER_AT_HEADER: due}
                    )
                    if delays is None:
                        delays = {}
                    delays[index] = due
                if msg_id is not None:
                    headers = {**headers, protocol.MSG_ID_HEADER: msg_id} if headers else {protocol.MSG_ID_HEADER: msg_id}
                    if ids is None:
                        ids = {}
                    ids[index] = msg_id
            try:
                record = pack_record(ts, key, headers, payload)
            except (TypeError, ValueError) as exc:
                raise _BadRequest(ErrorCode.BAD_BODY, f"message {index}: {exc}", batch_id, index) from None
            if len(record) - len(payload) > max_headers:
                raise _BadRequest(
                    ErrorCode.TOO_LARGE,
                    f"message {index}: key and headers are over the limit of {max_headers} bytes",
                    batch_id,
                    index,
                )
            if self._partitions and topic in self._partitions:
                named = topic
                topic = self._partition(topic, key, msg_id)
                if acl_names is None:
                    acl_names = {}
                acl_names[index] = named
            staged.append((topic, record))
            if prioritised:  # the topic it is stored in: a partition of a partitioned topic
                if prio_topics is None:
                    prio_topics = set()
                prio_topics.add(topic)
        acl = self._acl
        if acl is not None:  # one cached lookup per run of equal topics
            user = self._users.get(identity)
            allowed = None
            for index, (topic, _) in enumerate(staged):
                if acl_names is not None:  # a partitioned topic: the right is on its name
                    topic = acl_names.get(index, topic)
                if topic != allowed:
                    if not acl.permits(user, PUBLISH, topic):
                        raise _BadRequest(
                            ErrorCode.FORBIDDEN,
                            f"message {index}: {self._forbidden(identity, PUBLISH, topic)}; "
                            "nothing of this batch was stored",
                            batch_id,
                            index,
                        )
                    allowed = topic
        if self._limits:
            self._refuse_if_full(staged, batch_id)
        if prio_topics is not None:  # accepted: its subscriptions look its priorities up
            self._prio_topics |= prio_topics
        self._staged += len(staged)
        if ids is not None:
            positions = self._stage_with_ids(staged, ids)
            self._confirms.append((identity, batch_id, positions, self.clock.monotonic_ns()))
            if delays is not None:
                for index, due in delays.items():
                    if positions[index][0] is not None:  # not a msg_id stored before
                        self._sched_new[positions[index]] = due
            return
        appends = self._appends
        positions = []
        for topic, record in staged:
            lst = appends.get(topic)
            if lst is None:
                lst = appends[topic] = []
            positions.append((topic, len(lst)))
            lst.append(record)
        self._confirms.append((identity, batch_id, positions, self.clock.monotonic_ns()))
        if delays is not None:
            for index, due in delays.items():
                self._sched_new[positions[index]] = due

    def _refuse_if_full(self, staged: list[tuple[str, bytes]], batch_id: Any) -> None:
        """discard=new: refuse the whole batch when a topic would go over its max_messages."""
        adding: dict[str, list[int]] = {}
        for topic, record in staged:
            a = adding.get(topic)
            if a is None:
                a = adding[topic] = [0, 0]
            a[0] += 1
            a[1] += len(record)
        for topic, (n, nbytes) in adding.items():
            limits = self._limits.get(topic)
            if limits is None or limits.discard != "new":
                continue
            info = self.store.topics.get(topic)
            appended = self._appends.get(topic, ())
            staged_bytes = sum(map(len, appended)) if limits.max_bytes is not None else 0
            why = refuse_new(limits, info.count if info else 0, len(appended), n,
                             info.bytes if info else 0, staged_bytes, nbytes)
            if why:
                raise _BadRequest(
                    ErrorCode.TOPIC_FULL, f"{topic}: {why}; nothing of this batch was stored", batch_id
                )

    def _partition(self, topic: str, key: str | None, msg_id: str | None) -> str:
        """The partition topic of a message to a partitioned topic: by its key, else by its
        msg_id (so a retried publish lands where the first did), else round-robin."""
        n = self._partitions[topic]
        if key is not None:
            i = protocol.partition_of(key, n)
        elif msg_id is not None:
            i = protocol.partition_of(msg_id, n)
        else:
            i = self._round_robin[topic] = (self._round_robin.get(topic, -1) + 1) % n
        return f"{topic}.{i}"

    def _stage_with_ids(self, staged: list[tuple[str, bytes]], ids: dict[int, str]) -> list:
        """Stage a batch some of whose messages carry a producer msg_id: an id stored within
        the dedup window, or staged earlier in this turn, is not staged again; its position
        points at the original (``(None, seq)`` for one already committed)."""
        appends = self._appends
        window = self.config.dedup_window_ms
        in_turn = self._dedup_staged
        known: dict[tuple[str, str], int] = {}
        if window > 0:
            wanted = [(staged[i][0], m) for i, m in ids.items() if (staged[i][0], m) not in in_turn]
            if wanted:
                known = self.store.dedup_lookup(wanted, self.clock.wall_ms() - window)
        positions: list[tuple[str | None, int]] = []
        for index, (topic, record) in enumerate(staged):
            msg_id = ids.get(index) if window > 0 else None
            if msg_id is not None:
                ident = (topic, msg_id)
                pos = in_turn.get(ident)
                if pos is None and ident in known:
                    pos = (None, known[ident])
                    self._dedup_hits = True
                if pos is not None:  # a retried publish: confirmed with the original sequence
                    positions.append(pos)
                    continue
            lst = appends.get(topic)
            if lst is None:
                lst = appends[topic] = []
            pos = (topic, len(lst))
            if msg_id is not None:
                in_turn[ident] = pos
                self._dedup_new.append((topic, msg_id, len(lst)))
            positions.append(pos)
            lst.append(record)
        return positions

    def _on_subscribe(self, identity: bytes, peer: _Peer | None, body: Any) -> None:
        if not isinstance(body, dict):
            raise _BadRequest(ErrorCode.BAD_BODY, "SUBSCRIBE body must be a map")
        sid = body.get("sid")
        if type(sid) is not int:
            raise _BadRequest(ErrorCode.BAD_BODY, "SUBSCRIBE needs an integer sid")
        topic, group = body.get("topic"), body.get("group")
        pattern = protocol.is_pattern(topic)
        problem = protocol.check_pattern(topic) if pattern else protocol.check_topic(topic)
        if problem:
            raise _BadRequest(ErrorCode.BAD_TOPIC, problem, sid)
        problem = protocol.check_group(group)
        if problem:
            raise _BadRequest(ErrorCode.BAD_GROUP, problem, sid)
        if (not pattern and self._acl is not None
                and not self._acl.permits(self._users.get(identity), SUBSCRIBE, topic)):
            raise _BadRequest(ErrorCode.FORBIDDEN, self._forbidden(identity, SUBSCRIBE, topic), sid)
        credit = _int_field(body, "credit", 0, protocol.MAX_CREDIT, sid, default=10)
        ack_wait_ms = _int_field(body, "ack_wait_ms", 1, 7 * 24 * 3600 * 1000, sid)
        max_deliver = _int_field(body, "max_deliver", 0, 1_000_000, sid)
        ordering = body.get("ordering")
        if ordering is not None and ordering not in protocol.ORDERINGS:
            raise _BadRequest(
                ErrorCode.INVALID, f"ordering must be one of {', '.join(protocol.ORDERINGS)}", sid
            )
        start = body.get("start", "first")
        if start not in ("first", "new") and not (
            isinstance(start, dict) and len(start) == 1 and type(next(iter(start.values()))) is int
            and next(iter(start)) in ("seq", "time_ms") and next(iter(start.values())) >= 0
        ):
            raise _BadRequest(
                ErrorCode.INVALID, 'start must be "first", "new", {"seq": N} or {"time_ms": T}', sid
            )
        options = {"ack_wait_ms": ack_wait_ms, "max_deliver": max_deliver, "ordering": ordering}
        now = self.clock.monotonic_ms()
        if pattern or topic in self._partitions:
            # many topics: every stored topic the pattern matches (and every one created later),
            # or every partition of a partitioned topic; one subscription of the group on each
            if pattern:
                spec_key = (topic, group)
                spec = self._patterns.get(spec_key)
                if spec is None:
                    spec = {k: v for k, v in options.items() if v is not None}
                    try:
                        self.store.put_pattern(topic, group, spec)
                    except StorageError as exc:
                        code = storage_error_code(exc)
                        raise _BadRequest(code, f"pattern subscription not stored: {exc}", sid) from None
                    self._patterns[spec_key] = spec
                    log.info("new pattern subscription %s on %s", group, topic)
                targets = [t for t in sorted(self.store.topics) if protocol.pattern_matches(topic, t)]
            else:
                targets = protocol.partition_topics(topic, self._partitions[topic])
            subs = {}
            for t in targets:
                if self._acl is not None and not self._acl.permits(self._users.get(identity), SUBSCRIBE, t):
                    continue  # a pattern reaches only the topics this client may read
                subs[t] = self._subscription(t, group, start, options, sid)
        else:
            subs = {topic: self._subscription(topic, group, start, options, sid)}
        if peer is None:
            peer = self._peers[identity] = _Peer(identity, now)
        old = peer.attachments.get(sid)
        if old is not None:
            self._release_attachment(identity, sid, old, now, failed=False)
        att = _Attachment(topic, group, credit, subs, pattern or topic in self._partitions)
        peer.attachments[sid] = att
        if att.multi:
            self._multi.setdefault((topic, group), {})[(identity, sid)] = att
        for t, sub in subs.items():
            sub.attach((identity, sid), credit)
            self._fresh.add((t, group))
        first = next(iter(subs.values()), None)
        self._outbox.append(
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
                raise _BadRequest(ErrorCode.INVALID, str(exc), ref) from None
            sub = Subscription(
                topic, group, last_seq=last, start_after=after, ordering=ordering or "none",
                lookup=self._lookup(topic), **kwargs,
            )
            sub.published(last, priority=True)  # the backlog may hold prioritised messages
            self._defer_scheduled(sub)
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
            for (pattern, group), spec in self._patterns.items():
                if not protocol.pattern_matches(pattern, topic):
                    continue
                options = {"ack_wait_ms": spec.get("ack_wait_ms"), "max_deliver": spec.get("max_deliver"),
                           "ordering": spec.get("ordering")}
                sub = self._subscription(topic, group, "first", options, None)
                for (identity, sid), att in self._multi.get((pattern, group), {}).items():
                    if self._acl is not None and not self._acl.permits(self._users.get(identity), SUBSCRIBE, topic):
                        continue
                    att.subs[topic] = sub
                    sub.attach((identity, sid), att.credit)

    def _release_attachment(self, identity: bytes, sid: int, att: _Attachment, now: int, *, failed: bool) -> None:
        """Detach an attachment from every subscription it reads."""
        for sub in att.subs.values():
            self._dead(sub, sub.detach((identity, sid), now, failed=failed))
        if att.multi:
            atts = self._multi.get((att.name, att.group))
            if atts is not None:
                atts.pop((identity, sid), None)
                if not atts:
                    del self._multi[(att.name, att.group)]

    def _attachment(self, identity: bytes, peer: _Peer | None, body: Any, command: str, size: int):
        """Parse ``[sid, ...]`` bodies and find the attachment."""
        if not isinstance(body, list) or len(body) != size or type(body[0]) is not int:
            raise _BadRequest(ErrorCode.BAD_BODY, f"{command} body must be an array of {size} starting with sid")
        sid = body[0]
        att = peer.attachments.get(sid) if peer is not None else None
        if att is None:
            raise _BadRequest(
                ErrorCode.UNKNOWN_SUBSCRIPTION,
                f"sid {sid} is not attached on this connection (hub restarted? subscribe again)",
                sid,
            )
        return sid, att

    def _seqs(self, att: _Attachment, sid: int, command: str, by_topic: Any) -> list[tuple[Subscription, list[int]]]:
        """``{topic: [seq, ...]}`` of a command: the subscription of each topic and its seqs."""
        if not isinstance(by_topic, dict):
            raise _BadRequest(ErrorCode.BAD_BODY, f"{command} needs a map of topic to sequences", sid)
        out: list[tuple[Subscription, list[int]]] = []
        for topic, seqs in by_topic.items():
            sub = att.subs.get(topic) if type(topic) is str else None
            if sub is None:
                raise _BadRequest(
                    ErrorCode.INVALID, f"{command}: subscription {att.name!r} does not read {topic!r}", sid
                )
            if not isinstance(seqs, list) or len(seqs) > MAX_SEQS_PER_COMMAND:
                raise _BadRequest(ErrorCode.BAD_BODY, f"{command}: sequences must be a list", sid)
            for s in seqs:
                if type(s) is not int:
                    raise _BadRequest(ErrorCode.BAD_BODY, f"{command}: sequences must be integers", sid)
            out.append((sub, seqs))
        return out

    def _on_credit(self, identity, peer, body) -> None:
        sid, att = self._attachment(identity, peer, body, "CREDIT", 2)
        credit = body[1]
        if type(credit) is not int or not 0 <= credit <= protocol.MAX_CREDIT:
            raise _BadRequest(ErrorCode.INVALID, f"credit must be 0..{protocol.MAX_CREDIT}", sid)
        att.credit = credit
        for sub in att.subs.values():
            sub.set_credit((identity, sid), credit)

    def _on_ack(self, identity, peer, body) -> None:
        sid, att = self._attachment(identity, peer, body, "ACK", 2)
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
            raise _BadRequest(
                ErrorCode.UNKNOWN_SEQUENCE,
                f"ACK of sequences never published on {'; '.join(unknown_all)}",
                sid,
            )

    def _on_nack(self, identity, peer, body) -> None:
        sid, att = self._attachment(identity, peer, body, "NACK", 3)
        targets = self._seqs(att, sid, "NACK", body[1])
        delay = body[2]
        if type(delay) is not int or not 0 <= delay <= 365 * 24 * 3600 * 1000:
            raise _BadRequest(ErrorCode.INVALID, "NACK delay_ms must be a non-negative integer", sid)
        now = self.clock.monotonic_ms()
        for sub, seqs in targets:
            self._dead(sub, sub.nack((identity, sid), seqs, now, delay))

    def _on_release(self, identity, peer, body) -> None:
        sid, att = self._attachment(identity, peer, body, "RELEASE", 2)
        for sub, seqs in self._seqs(att, sid, "RELEASE", body[1]):
            sub.release((identity, sid), seqs)

    def _on_reject(self, identity, peer, body) -> None:
        sid, att = self._attachment(identity, peer, body, "REJECT", 3)
        targets = self._seqs(att, sid, "REJECT", body[1])
        reason = body[2] if isinstance(body[2], str) else repr(body[2])
        for sub, seqs in targets:
            self._dead(sub, sub.reject((identity, sid), seqs, reason[:1000]))

    def _on_progress(self, identity, peer, body) -> None:
        sid, att = self._attachment(identity, peer, body, "PROGRESS", 2)
        now = self.clock.monotonic_ms()
        for sub, seqs in self._seqs(att, sid, "PROGRESS", body[1]):
            sub.progress((identity, sid), seqs, now)

    def _on_detach(self, identity, peer, body) -> None:
        if not isinstance(body, list) or len(body) != 1 or type(body[0]) is not int:
            raise _BadRequest(ErrorCode.BAD_BODY, "DETACH body must be [sid]")
        sid = body[0]
        att = peer.attachments.pop(sid, None) if peer is not None else None
        if att is not None:
            self._release_attachment(identity, sid, att, self.clock.monotonic_ms(), failed=False)
            if not peer.attachments:
                del self._peers[identity]
        # Detaching twice, or after a hub restart, is fine: the reply says it is done either way.
        self._outbox.append((identity, Command.DETACHED, [sid]))

    def _on_topics(self, identity, peer, body) -> None:
        ref = body[0] if isinstance(body, list) and body else None
        topics = self.topics()
        acl = self._acl
        if acl is not None:  # a client sees only the topics it may publish or read
            user = self._users.get(identity)
            topics = [t for t in topics if acl.permits(user, PUBLISH, t["topic"])
                      or acl.permits(user, SUBSCRIBE, t["topic"])]
        self._outbox.append((identity, Command.REPLY, [ref, topics]))

    def topics(self) -> list[dict]:
        """Topics with their message counts and subscriptions (what ``zmq-mq topics`` shows)."""
        by_topic: dict[str, list[dict]] = {}
        for (topic, group), sub in sorted(self.subs.items()):
            by_topic.setdefault(topic, []).append(
                {
                    "group": group,
                    "ack_floor": sub.ack_floor,
                    "lag": sub.pending + sub.in_flight,
                    "pending": sub.pending,
                    "in_flight": sub.in_flight,
                    "scheduled": sub.deferred,
                    "actors": sub.actors,
                    "ack_wait_ms": sub.ack_wait_ms,
                    "max_deliver": sub.max_deliver,
                    "ordering": sub.ordering,
                }
            )
        out = []
        for name in sorted(set(self.store.topics) | set(by_topic)):
            info = self.store.topics.get(name)
            out.append(
                {
                    "topic": name,
                    "name": name,
                    "messages": info.count if info else 0,
                    "first_seq": info.first_seq if info else 1,
                    "last_seq": info.last_seq if info else 0,
                    "bytes": info.bytes if info else 0,
                    "subscriptions": by_topic.get(name, []),
                }
            )
        return out

    # --- operator commands -----------------------------------------------------------------

    def _sub_stats(self, key: tuple[str, str]) -> SubCounters:
        c = self._sub_counters.get(key)
        if c is None:
            c = self._sub_counters[key] = SubCounters()
        return c

    def stats(self) -> dict:
        """The STATS document (docs/PROTOCOL.md); call on the hub's thread (else snapshot_stats)."""
        now = self.clock.monotonic_ms()
        topics = []
        for name in sorted(set(self.store.topics) | {t for t, _ in self.subs}):
            info = self.store.topics.get(name)
            tc = self._topic_counters.get(name)
            topics.append(
                {
                    "topic": name,
                    "messages": info.count if info else 0,
                    "bytes": info.bytes if info else 0,
                    "first_seq": info.first_seq if info else 1,
                    "last_seq": info.last_seq if info else 0,
                    "created_ms": info.created_ms if info else None,
                    "published": tc.published if tc else 0,
                    "published_bytes": tc.published_bytes if tc else 0,
                    "publish_rate": round(tc.window.rate(now), 2) if tc else 0.0,
                }
            )
        subs = []
        for (topic, group), sub in sorted(self.subs.items()):
            c = self._sub_counters.get((topic, group)) or SubCounters()
            subs.append(
                {
                    "topic": topic,
                    "group": group,
                    "ack_floor": sub.ack_floor,
                    "last_seq": sub.last_seq,
                    "lag": sub.pending + sub.in_flight,
                    "pending": sub.pending,
                    "in_flight": sub.in_flight,
                    "scheduled": sub.deferred,
                    "actors": sub.actors,
                    "ack_wait_ms": sub.ack_wait_ms,
                    "max_deliver": sub.max_deliver,
                    "ordering": sub.ordering,
                    "dlq_topic": protocol.dlq_topic(group),
                    **c.as_dict(),
                }
            )
        return {
            "hub": self.instance,
            "version": protocol.VERSION,
            "time_ms": self.clock.wall_ms(),
            "uptime_ms": now - self._started_ms,
            "rate_window_s": RATE_WINDOW_S,
            "totals": dict(self.counters),
            "connections": len(self._peers),
            "publish_latency": self.publish_latency.as_dict(),
            "topics": topics,
            "subscriptions": subs,
        }

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

    def _admin_args(self, body: Any, size: int, command: str) -> list:
        if not isinstance(body, list) or len(body) != size:
            ref = body[0] if isinstance(body, list) and body else None
            raise _BadRequest(ErrorCode.BAD_BODY, f"{command} body must be an array of {size}: [ref, ...]", ref)
        return body

    def _admin_topic(self, topic: Any, ref: Any) -> str:
        problem = protocol.check_topic(topic)
        if problem:
            raise _BadRequest(ErrorCode.BAD_TOPIC, problem, ref)
        return topic

    def _admin_seqs(self, seqs: Any, ref: Any, command: str, limit: int) -> list[int]:
        if not isinstance(seqs, list) or len(seqs) > limit:
            raise _BadRequest(ErrorCode.BAD_BODY, f"{command}: sequences must be a list of at most {limit}", ref)
        for s in seqs:
            if type(s) is not int:
                raise _BadRequest(ErrorCode.BAD_BODY, f"{command}: sequences must be integers", ref)
        return list(dict.fromkeys(seqs))

    def _visible(self, identity: bytes, topic: str) -> bool:
        """Under an ACL, whether this client may see ``topic`` (publish or read it)."""
        acl = self._acl
        if acl is None:
            return True
        user = self._users.get(identity)
        return acl.permits(user, PUBLISH, topic) or acl.permits(user, SUBSCRIBE, topic)

    def _require(self, identity: bytes, action: str, topic: str, ref: Any) -> None:
        """Under an ACL, refuse an admin command on a topic the client has no ``action`` right on."""
        if self._acl is not None and not self._acl.permits(self._users.get(identity), action, topic):
            raise _BadRequest(ErrorCode.FORBIDDEN, self._forbidden(identity, action, topic), ref)

    def _on_stats(self, identity, peer, body) -> None:
        ref = body[0] if isinstance(body, list) and body else None
        stats = self.stats()
        if self._acl is not None:  # like TOPICS: only what this client may publish or read
            stats["topics"] = [t for t in stats["topics"] if self._visible(identity, t["topic"])]
            stats["subscriptions"] = [
                s for s in stats["subscriptions"] if self._visible(identity, s["topic"])
            ]
        self._outbox.append((identity, Command.REPLY, [ref, stats]))

    def _on_fetch(self, identity, peer, body) -> None:
        ref, topic, from_seq, max_count = self._admin_args(body, 4, "FETCH")
        topic = self._admin_topic(topic, ref)
        self._require(identity, SUBSCRIBE, topic, ref)  # reading a log is reading the topic
        if type(from_seq) is not int or not 0 <= from_seq < 1 << 63:
            raise _BadRequest(ErrorCode.INVALID, "FETCH from_seq must be a non-negative integer", ref)
        if type(max_count) is not int or not 1 <= max_count <= MAX_FETCH:
            raise _BadRequest(ErrorCode.INVALID, f"FETCH max_count must be 1..{MAX_FETCH}", ref)
        budget = self.config.max_frame_bytes // 2
        out = []
        size = 0
        for seq, record in self.store.read_range(topic, from_seq, max_count):
            if out and size + len(record) > budget:
                break
            out.append([seq, record])
            size += len(record)
        self._outbox.append((identity, Command.REPLY, [ref, out]))

    def _on_purge(self, identity, peer, body) -> None:
        ref, topic, seqs = self._admin_args(body, 3, "PURGE")
        topic = self._admin_topic(topic, ref)
        self._require(identity, SUBSCRIBE, topic, ref)  # deleting needs both rights on the topic
        self._require(identity, PUBLISH, topic, ref)
        if seqs != "all":
            seqs = self._admin_seqs(seqs, ref, "PURGE", MAX_SEQS_PER_COMMAND)
        info = self.store.topics.get(topic)
        staged = self._deletes.get(topic)
        if info is None:
            purged: list[int] | int = 0
        elif seqs == "all":  # everything stored now; what this turn appends stays
            already = 0 if staged is None else (info.count if isinstance(staged, range) else len(staged))
            purged = info.count - already
            self._deletes[topic] = range(info.first_seq, info.last_seq + 1)
        elif isinstance(staged, range):  # a purge of all in this turn already takes them
            purged = []
        else:
            fresh = [s for s in seqs if staged is None or s not in staged]
            purged = [s for s, r in zip(fresh, self.store.read(topic, fresh)) if r is not None]
            if purged:
                self._deletes.setdefault(topic, set()).update(purged)
        result = {"topic": topic, "purged": purged if isinstance(purged, int) else len(purged)}
        if not isinstance(purged, int):
            result["seqs"] = purged
        self._admin.append((identity, Command.PURGE, ref, result))

    def _on_topic(self, identity, peer, body) -> None:
        """TOPIC [ref, op, topic, config]: op create|config (store limits), get (read them),
        delete (remove the topic, its partitions and its subscriptions)."""
        ref, op, topic, config = self._admin_args(body, 4, "TOPIC")
        topic = self._admin_topic(topic, ref)
        if op not in ("create", "config", "get", "delete"):
            raise _BadRequest(ErrorCode.INVALID, "TOPIC op must be create, config, get or delete", ref)
        if op == "get":
            if not self._visible(identity, topic):
                raise _BadRequest(ErrorCode.FORBIDDEN, self._forbidden(identity, SUBSCRIBE, topic), ref)
        elif op == "delete":
            self._require(identity, SUBSCRIBE, topic, ref)
            self._require(identity, PUBLISH, topic, ref)
            self._outbox.append((identity, Command.REPLY, [ref, self._delete_topic(topic, ref)]))
            return
        else:
            self._require(identity, SUBSCRIBE, topic, ref)  # limits delete messages: both rights
            self._require(identity, PUBLISH, topic, ref)
            if config is None:
                config = {}
            current = self.store.configs.get(topic, {})
            base = parse_limits(current) if op == "config" else None
            if op == "create" and isinstance(config, dict) and "partitions" not in config and current.get("partitions"):
                config = {**config, "partitions": current["partitions"]}  # fixed at creation: kept
            try:
                limits = parse_limits(config, base)
            except ValueError as exc:
                raise _BadRequest(ErrorCode.INVALID, f"TOPIC {op}: {exc}", ref) from None
            if limits.partitions != current.get("partitions"):
                self._check_partitioning(topic, op, current.get("partitions"), limits.partitions, ref)
            parts = protocol.partition_topics(topic, limits.partitions) if limits.partitions else []
            per_partition = dataclasses.replace(limits, partitions=None)
            try:
                self.store.set_topic_config(topic, limits.as_dict())
                for part in parts:
                    self.store.set_topic_config(part, per_partition.as_dict())
            except StorageError as exc:
                code = storage_error_code(exc)
                raise _BadRequest(code, f"nothing changed: {exc}", ref) from None
            if limits.partitions:
                self._partitions[topic] = limits.partitions
            for name, lim in [(topic, limits), *((part, per_partition) for part in parts)]:
                self._age_check.pop(name, None)
                if lim.unlimited:
                    self._limits.pop(name, None)
                else:
                    self._limits[name] = lim
        stored = self.store.configs.get(topic)
        limits = parse_limits(stored) if stored is not None else TopicLimits()
        self._outbox.append((identity, Command.REPLY, [ref, {"topic": topic, "config": limits.as_dict()}]))

    def _check_partitioning(self, topic: str, op: str, now: int | None, wanted: int | None, ref: Any) -> None:
        """Partitions are set when a topic is created, before it holds anything."""
        if op == "config" or now is not None:
            raise _BadRequest(ErrorCode.INVALID, f"topic {topic!r} has {now or 'no'} partitions: "
                              "partitions are set at creation (delete the topic to change them)", ref)
        if topic in self.store.topics:
            raise _BadRequest(ErrorCode.INVALID, f"topic {topic!r} already holds messages: partitions "
                              "are set at creation (delete the topic first)", ref)
        if any(t in self.store.topics for t in protocol.partition_topics(topic, wanted)):
            raise _BadRequest(ErrorCode.INVALID, f"a topic named like a partition of {topic!r} "
                              f"({topic}.N) already exists", ref)
        if any(t == topic for t, _ in self.subs):
            raise _BadRequest(ErrorCode.INVALID, f"topic {topic!r} already has subscriptions: "
                              "partitions are set at creation (delete the topic first)", ref)

    def _delete_topic(self, topic: str, ref: Any) -> dict:
        """Remove a topic (with its partitions): records, config, subscriptions (their actors
        are detached: a later ACK gets unknown_subscription and they subscribe again, to the
        topic as it is then), delayed-delivery entries and statistics."""
        parts = self._partitions.get(topic)
        names = [topic, *(protocol.partition_topics(topic, parts) if parts else [])]
        if not any(n in self.store.topics or n in self.store.configs or any(t == n for t, _ in self.subs)
                   for n in names):
            raise _BadRequest(ErrorCode.INVALID, f"no topic {topic!r}", ref)
        if any(n in self._appends or n in self._deletes for n in names):
            # this turn stages publishes or deletes of it: commit them first, then delete
            self._turn_commit_now()
        messages = 0
        groups: set[str] = set()
        for name in names:
            try:
                messages += self.store.delete_topic(name)
            except StorageError as exc:
                code = storage_error_code(exc)
                raise _BadRequest(code, f"topic {name!r} not deleted: {exc}", ref) from None
            for key in [k for k in self.subs if k[0] == name]:
                groups.add(key[1])
                sub = self.subs.pop(key)
                for peer in list(self._peers.values()):
                    for sid, att in list(peer.attachments.items()):
                        if att.subs.get(name) is sub:
                            del att.subs[name]
                            if not att.subs and not protocol.is_pattern(att.name):
                                # gone: the client sees its sid missing and subscribes again
                                del peer.attachments[sid]
                                self._release_attachment(peer.identity, sid, att, self.clock.monotonic_ms(),
                                                         failed=False)
                    if not peer.attachments:
                        self._peers.pop(peer.identity, None)
                self._sub_counters.pop(key, None)
                self._dead_letters = [(s, d) for s, d in self._dead_letters if s is not sub]
            self._limits.pop(name, None)
            self._age_check.pop(name, None)
            self._topic_counters.pop(name, None)
            self._scheduled.pop(name, None)
        self._partitions.pop(topic, None)
        self._round_robin.pop(topic, None)
        log.info("topic %s deleted: %d messages, subscriptions %s", topic, messages, sorted(groups))
        return {"topic": topic, "deleted": True, "messages": messages, "subscriptions": sorted(groups),
                "partitions": parts or 0}

    def _turn_commit_now(self) -> None:
        """Commit what this turn staged (and answer it) before an operation that cannot be
        part of the group commit."""
        published = self._commit()
        if published and self.pub is not None:
            self._broadcast(published)

    def _on_redrive(self, identity, peer, body) -> None:
        ref, topic, seqs = self._admin_args(body, 3, "REDRIVE")
        topic = self._admin_topic(topic, ref)
        self._require(identity, SUBSCRIBE, topic, ref)  # takes dead letters out of their topic
        self._require(identity, PUBLISH, topic, ref)
        seqs = self._admin_seqs(seqs, ref, "REDRIVE", self.config.max_batch_messages)
        staged = self._deletes.get(topic)
        results: list[dict] = []
        taken: list[int] = []
        now = self.clock.wall_ms()
        appends = self._appends
        for seq, record in zip(seqs, self.store.read(topic, seqs)):
            if record is None or (staged is not None and seq in staged):
                results.append({"seq": seq, "error": "not found"})
                continue
            try:
                origin, new_record = redrive_record(topic, seq, record, now)
            except NotRedrivable as exc:
                results.append({"seq": seq, "error": str(exc)})
                continue
            if self._acl is not None and not self._acl.permits(self._users.get(identity), PUBLISH, origin):
                results.append({"seq": seq, "error": f"forbidden: {self._forbidden(identity, PUBLISH, origin)}"})
                continue
            lst = appends.get(origin)
            if lst is None:
                lst = appends[origin] = []
            results.append({"seq": seq, "topic": origin, "_pos": len(lst)})
            lst.append(new_record)
            taken.append(seq)
            self._prio_topics.add(origin)  # it keeps its x-priority header; redrives are rare
        if taken:  # one commit appends to the origin and deletes here: never lost, never twice
            self._deletes.setdefault(topic, set()).update(taken)
        self._admin.append((identity, Command.REDRIVE, ref, {"topic": topic, "results": results}))

    def _answer_admin(self, admin: list[tuple[bytes, bytes, Any, Any]], firsts: dict[str, int]) -> None:
        """Answer PURGE and REDRIVE once the commit that carried them out is durable."""
        for identity, command, ref, result in admin:
            if command == Command.REDRIVE:
                moved = 0
                for item in result["results"]:
                    pos = item.pop("_pos", None)
                    if pos is not None:
                        item["new_seq"] = firsts[item["topic"]] + pos
                        moved += 1
                result["redriven"] = moved
            self._outbox.append((identity, Command.REPLY, [ref, result]))

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
        Command.TOPICS: _on_topics,
        Command.STATS: _on_stats,
        Command.FETCH: _on_fetch,
        Command.PURGE: _on_purge,
        Command.TOPIC: _on_topic,
        Command.REDRIVE: _on_redrive,
    }


class _BadRequest(Exception):
    """A well-framed command the hub refuses; becomes an ERROR to its sender only."""

    def __init__(self, code: ErrorCode, message: str, ref: Any = None, index: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.index = index


def _due_of(opts: dict, ts: int, ts_ceil: int, index: int, batch_id: Any) -> int | None:
    """The due time (wall ms) of a message PUBLISH opts hold back (``delay_ms`` or
    ``deliver_at_ms``), or None to deliver it at once. ``ts`` is the wall clock at receipt
    rounded down, ``ts_ceil`` rounded up: a delay counts from the latter, so that the due time
    is never less than the delay after the publish."""
    delay = opts.get("delay_ms")
    at = opts.get("deliver_at_ms")
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise _BadRequest(ErrorCode.INVALID, f"message {index}: give delay_ms or deliver_at_ms, not both",
                          batch_id, index)
    if delay is not None:
        problem = protocol.check_delay_ms(delay)
        if problem:
            raise _BadRequest(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
        if delay == 0:
            return None
        due = ts_ceil + delay
    else:
        if type(at) is not int or at < 0:
            raise _BadRequest(ErrorCode.INVALID, f"message {index}: deliver_at_ms must be an integer "
                              f">= 0 (ms since the epoch), got {at!r}", batch_id, index)
        if at - ts > protocol.MAX_DELAY_MS:
            raise _BadRequest(ErrorCode.INVALID, f"message {index}: deliver_at_ms is more than 366 days "
                              "ahead", batch_id, index)
        due = at
    return due if due > ts else None


def _msg_id_of(opts: Any, index: int, batch_id: Any) -> str | None:
    """The msg_id of a PUBLISH message's options map (unknown option keys are ignored)."""
    if type(opts) is not dict:
        raise _BadRequest(ErrorCode.BAD_BODY, f"message {index}: options must be a map", batch_id, index)
    msg_id = opts.get("msg_id")
    if msg_id is None:
        return None
    problem = protocol.check_msg_id(msg_id)
    if problem:
        raise _BadRequest(ErrorCode.INVALID, f"message {index}: {problem}", batch_id, index)
    return msg_id


def _int_field(body: dict, name: str, lo: int, hi: int, ref: Any, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise _BadRequest(ErrorCode.INVALID, f"{name} must be an integer in {lo}..{hi}", ref)
    return value
