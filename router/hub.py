"""The hub: one thread, one event loop, moving bytes between sockets, storage and the core.

This module is the loop and nothing else; each step hands its work to the module named:

1. poll, then read up to ``max_turn_commands`` commands from the ROUTER socket (CURVE: each
   command's client key is noted by router/access.py);
2. hand each to its handler (router/handlers.py for client commands, router/admin.py for
   admin ones): the body is parsed into a typed request or refused (router/requests.py);
   publishes are routed and staged (router/staging.py) in this turn's
   :class:`~zmq_mq.router.turn.Turn`; a subscribe creates its subscription cores
   (router/groups.py) and attachment (router/attachments.py); acks / nacks / credit go to the
   pure subscription state machines (router/subscription.py);
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
The STATS document is built by router/stats.py; docs/ARCHITECTURE.md follows one message
through all of it. Without sockets, :meth:`Hub.step` runs one turn on given commands and
returns what it would send; :meth:`Hub.serve_once` runs one turn of a bound hub (the seams the
tests drive).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import zmq

from ..storage import StorageError, Store
from . import admin, handlers, protocol
from .access import Access, log_handshake_failures
from .attachments import Attachments
from .clock import Clock, SystemClock
from .config import HubConfig
from .deadletters import dead_letter_records
from .errors import storage_error_code
from .groups import Groups
from .protocol import Command, DecodeError, ErrorCode
from .requests import MAX_FETCH, MAX_SEQS_PER_COMMAND, PublishLimits, Refusal
from .retention import Trimmer
from .schedule import Schedule
from .security import (
    LIVE_DOMAIN,
    MONITOR_EVENTS,
    ROUTER_DOMAIN,
    HubAuthenticator,
    HubKeys,
    LogLimiter,
    make_curve_server,
)
from .stats import HubStats, topic_rows
from .subscription import DeadLetter, Subscription
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


class Hub:
    """The zmq-mq hub. ``bind()`` then ``run()`` (blocking) in one thread; ``stop()`` from any."""

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        context: zmq.Context | None = None,
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
        # who each connection is (CURVE client keys) and what the ACL lets it do
        self.access = Access(self.keys, LogLimiter())
        # One ZAP handler per context: a CURVE hub gets its own context unless given one, so
        # that several hubs (tests) can run in one process.
        self._own_ctx = context is None and self.keys is not None
        self._ctx = context or (zmq.Context() if self._own_ctx else zmq.Context.instance())
        self._auth: HubAuthenticator | None = None
        self._monitor: zmq.Socket | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        try:
            self.store = Store(
                self.config.data_dir,
                map_size=self.config.map_size,
                max_map_size=self.config.max_map_size,
                sync=self.config.sync,
            )
            self._load_state()
        except BaseException:
            # nothing is served yet: give the data directory (its lock) and an own context
            # back now, not when the collector gets to a half-made hub
            if getattr(self, "store", None) is not None:
                self.store.close()
            if self._own_ctx:
                self._ctx.term()
            raise

    def _load_state(self) -> None:
        """The state a hub serves from, read from its opened store (part of __init__)."""
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
            self.dead,
        )
        self._peers = self.attachments.peers
        # the subscription cores, (topic, group) -> Subscription (router/groups.py)
        self.groups = Groups(self.store, self.schedule, self.attachments, self.access.permits)
        self.subs = self.groups.subs
        self.groups.restore()
        # topic names known to be valid: a publish to one skips the name check
        self.valid_topics: set[str] = set(self.store.topics)
        # Per-topic retention limits (router/retention.py), only topics that have some
        self.trimmer = Trimmer(self.store, self.store.configs)
        cfg = self.config
        self.publish_limits = PublishLimits(
            cfg.max_batch_messages, cfg.max_message_bytes, cfg.max_headers_bytes
        )
        if self.attachments.patterns:  # topics created while the hub was down, or before a
            self.groups.new_topics(list(self.store.topics))  # crash stored them
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.endpoint: str | None = None
        self.pub_endpoint: str | None = None
        self._next_liveness_check = 0
        # Operator statistics (router/stats.py), updated per batch or per turn
        self.statistics = HubStats(self.clock.monotonic_ms())
        self.counters = self.statistics.totals  # hub-wide totals (STATS "totals")
        self.publish_latency = self.statistics.latency
        # Stats for other threads (the metrics endpoint): taken by the loop at the end of a turn
        self._snapshot_wanted = False
        self._snapshot: dict | None = None
        self._snapshot_ready = threading.Event()
        self._snapshot_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------

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
        log.info(
            "hub %s serving on %s (pub %s, %s)",
            self.instance,
            self.endpoint,
            self.pub_endpoint,
            "CURVE" if self.keys else "plain, no authentication",
        )
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
        if self._monitor is not None:
            self._read_curve()
        else:
            self._read_commands()
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
        log_handshake_failures(self._monitor, self.access.limiter, self.clock.monotonic_ms())
        router = self.router
        handle = self.handle
        access = self.access
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
            if access.users.get(identity, False) != user and access.learn(
                identity, user, self._peers
            ):
                log.warning(
                    "connection %s changed client key; dropping its attachments", identity.hex()
                )
                self.attachments.lost(identity, self.clock.monotonic_ms())
            handle(frames)
            if self.turn.staged >= max_messages:  # fairness, as in _read_commands
                return

    def _turn(self) -> None:
        now = self.clock.monotonic_ms()
        for sub in self.subs.values():
            deadline = sub.next_deadline()
            if deadline is not None and deadline <= now:
                self.dead(sub, sub.tick(now))
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
        appends, confirms, deletes = turn.appends, turn.confirms, turn.deletes
        admin_done, sched_new, unsched = turn.admin, turn.sched_new, turn.unsched
        outbox = self._outbox
        outbox.extend(turn.replies)
        dlq, dead_by_sub = dead_letter_records(
            turn.dead_letters, self.store.read, self.clock.wall_ms
        )
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
                combined,
                subs,
                now_ms=wall,
                deletes=deletes or None,
                dedup=turn.dedup_new or None,
                dedup_expire_before=wall - window if window > 0 else None,
                schedule=[(t, i, due) for (t, i), due in sched_new.items()] or None,
                unschedule=unsched or None,
            )
        except StorageError as exc:
            code = storage_error_code(exc)
            log.error("commit of %d publish batches failed: %s", len(confirms), exc)
            for identity, batch_id, _, _ in confirms:
                self._error(
                    identity, code, f"nothing stored: {exc}", Command.PUBLISH, batch_id, out=outbox
                )
            for identity, command, ref, _ in admin_done:  # a redrive or purge is all or nothing too
                self._error(identity, code, f"nothing changed: {exc}", command, ref, out=outbox)
            admin_done = []
            firsts = None
            if appends or deletes:
                # again without publishes and deletes: acks and dead letters persist
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
            self.groups.new_topics([t for t in new_topics if t in combined])
        self.counters["dead_lettered"] += sum(len(v) for v in dlq.values())
        for key, n in dead_by_sub.items():
            self.statistics.sub(key).dead_lettered += n
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
        topic_counters = self.statistics.topic
        prio_topics = turn.prio_topics
        for topic, records in combined.items():
            self.valid_topics.add(topic)
            stored[topic] = (firsts[topic], records)
            self.counters["published"] += len(records)
            topic_counters(topic).add(now, len(records), sum(map(len, records)))
            last = firsts[topic] + len(records) - 1
            prio = topic in prio_topics
            for sub in self.groups.of(topic):
                sub.published(last, priority=prio)
        if sched_new:
            self.schedule.hold_back(
                [(t, firsts[t] + i, due) for (t, i), due in sched_new.items()], self.groups.of
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

    def dedup_lookup(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The seqs of ``(topic, msg_id)`` stored within the dedup window."""
        return self.store.dedup_lookup(wanted, self.clock.wall_ms() - self.config.dedup_window_ms)

    def _ack_floors(self, topic: str) -> list[int]:
        return [s.ack_floor for s in self.groups.of(topic)]

    def _broadcast(self, stored: dict[str, tuple[int, list[bytes]]]) -> None:
        """Live feed: one PUB message per topic per turn:
        ``[topic, msgpack [first_seq, [record, ...]]]``."""
        pub_frames = protocol.pub_frames
        for topic, (first, records) in stored.items():
            try:
                send_frames(self.pub, pub_frames(topic, first, records), NOBLOCK)
            except zmq.Again:  # at-most-once by design: slow listeners lose messages
                pass

    def dead(self, sub: Subscription, dead: list[DeadLetter]) -> None:
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
            counters = self.statistics.sub(key)
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

    # --- operator views ------------------------------------------------------------------------

    def topics(self) -> list[dict]:
        """Topics with their message counts and subscriptions (what ``zmq-mq topics`` shows)."""
        return topic_rows(self.store.topics, self.subs)

    def stats(self) -> dict:
        """The STATS document (router/stats.py, docs/PROTOCOL.md); call on the hub's thread
        (else snapshot_stats)."""
        return self.statistics.document(
            hub=self.instance,
            version=protocol.VERSION,
            now_ms=self.clock.monotonic_ms(),
            wall_ms=self.clock.wall_ms(),
            connections=len(self._peers),
            stored=self.store.topics,
            subs=self.subs,
            dlq_topic=protocol.dlq_topic,
        )

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

    # every command's handler: the client commands, then the admin ones
    _handlers = {**handlers.HANDLERS, **admin.HANDLERS}
