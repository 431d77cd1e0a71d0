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

import logging
import threading
import time
import uuid
from typing import Any

import msgpack
import zmq

from ..storage import Store, StorageError, StorageFull
from . import protocol
from .config import HubConfig
from .protocol import Command, DecodeError, ErrorCode
from .subscription import DeadLetter, Subscription
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

_now_ms = time.monotonic_ns


def _monotonic_ms() -> int:
    return _now_ms() // 1_000_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _oversized_ref(parts: list[bytes]) -> tuple[bytes | None, Any]:
    """Command and ref (batch id or sid) of a command whose frame is too large, read from the
    first bytes of its body only, so that the sender can match the error to its request."""
    if len(parts) != 3 or len(parts[1]) > 32 or parts[0] != protocol.SIGNATURE:
        return None, None
    command = bytes(parts[1])
    if command not in protocol.CLIENT_COMMANDS:
        return None, None
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(parts[2][:64])
        if command == Command.PUBLISH:
            if unpacker.read_array_header() >= 1:
                ref = unpacker.unpack()
                return command, ref if type(ref) is int else None
    except Exception:  # garbage or truncated: no ref, the error still names the command
        pass
    return command, None


class _Peer:
    """A connected client that has attached at least one subscription (an actor)."""

    __slots__ = ("identity", "last_seen", "attachments")

    def __init__(self, identity: bytes, now: int) -> None:
        self.identity = identity
        self.last_seen = now
        self.attachments: dict[int, Subscription] = {}


class Hub:
    """The zmq-mq hub. ``bind()`` then ``run()`` (blocking) in one thread; ``stop()`` from any."""

    def __init__(self, config: HubConfig | None = None, *, context: zmq.Context | None = None) -> None:
        self.config = config or HubConfig()
        self.instance = uuid.uuid4().hex[:12]
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._running = threading.Event()
        self.store = Store(
            self.config.data_dir,
            map_size=self.config.map_size,
            max_map_size=self.config.max_map_size,
            sync=self.config.sync,
        )
        self.subs: dict[tuple[str, str], Subscription] = {}
        self._load_subscriptions()
        self._peers: dict[bytes, _Peer] = {}
        self._valid_topics: set[str] = set(self.store.topics)
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.endpoint: str | None = None
        self.pub_endpoint: str | None = None
        # per-turn state
        self._appends: dict[str, list[bytes]] = {}
        self._confirms: list[tuple[bytes, Any, list[tuple[str, int]]]] = []
        self._outbox: list[tuple[bytes, bytes, Any]] = []
        self._dead_letters: list[tuple[Subscription, DeadLetter]] = []
        self._staged = 0  # messages staged by PUBLISH in this turn (bounded by max_turn_messages)
        self._next_liveness_check = 0
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
            self.subs[(topic, group)] = Subscription.restore(
                topic, group, protocol.unpack(blob), last_seq=last
            )

    def bind(self) -> None:
        """Bind the sockets (``tcp://127.0.0.1:*`` picks a free port; see ``endpoint``)."""
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        router.setsockopt(zmq.RCVHWM, ROUTER_SNDHWM)
        router.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_LIMIT)
        router.bind(self.config.bind)
        self.router = router
        self.endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        if self.config.pub:
            pub = self._ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.bind(self.config.pub)
            self.pub = pub
            self.pub_endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()

    def stop(self) -> None:
        """Ask the loop to finish its turn, commit and return (thread-safe, idempotent)."""
        self._stop.set()

    @property
    def running(self) -> threading.Event:
        return self._running

    def close(self) -> None:
        for sock in (self.router, self.pub):
            if sock is not None:
                sock.close(linger=0)
        self.router = self.pub = None
        self.store.close()

    def run(self) -> None:
        """Serve until ``stop()``. Binds first if ``bind()`` was not called."""
        if self.router is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        self._running.set()
        log.info("hub %s serving on %s (pub %s)", self.instance, self.endpoint, self.pub_endpoint)
        try:
            while not self._stop.is_set():
                timeout = self._poll_timeout()
                if poller.poll(timeout):
                    self._read_commands()
                self._turn()
        finally:
            self._persist_on_exit()
            self._running.clear()

    def _poll_timeout(self) -> int:
        now = _monotonic_ms()
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

    def _turn(self) -> None:
        now = _monotonic_ms()
        for sub in self.subs.values():
            deadline = sub.next_deadline()
            if deadline is not None and deadline <= now:
                self._dead(sub, sub.tick(now))
        if now >= self._next_liveness_check:
            self._check_liveness(now)
            self._next_liveness_check = now + self.config.heartbeat_ms // 2
        published = self._commit()
        self._flush_outbox()
        if published and self.pub is not None:
            self._broadcast(published)
        self._dispatch(now)
        self._flush_outbox()

    def _commit(self) -> dict[str, tuple[int, list[bytes]]]:
        """Group commit: staged publishes, dead letters and changed cursors in one transaction.

        Returns ``{topic: (first_seq, records)}`` of what was stored. On a full store the
        publishes of this turn are refused with an error, and cursors and dead letters are
        committed alone; if even that fails they stay pending and are retried next turn (a
        cursor is never stored without the dead letters that its state implies).
        """
        appends, self._appends = self._appends, {}
        confirms, self._confirms = self._confirms, []
        dead, self._dead_letters = self._dead_letters, []
        dlq = self._dead_letter_records(dead)
        dirty = [sub for sub in self.subs.values() if sub.dirty]
        if not appends and not dlq and not dirty:
            for identity, batch_id, _ in confirms:  # empty batches: nothing to store
                self._outbox.append((identity, Command.CONFIRM, [batch_id, []]))
            return {}
        subs = {(s.topic, s.group): protocol.pack(s.snapshot()) for s in dirty}
        combined = {topic: list(records) for topic, records in appends.items()}
        for topic, records in dlq.items():
            combined.setdefault(topic, []).extend(records)
        try:
            firsts = self.store.commit(combined, subs, now_ms=_wall_ms())
        except (StorageFull, StorageError) as exc:
            code = ErrorCode.STORAGE_FULL if isinstance(exc, StorageFull) else ErrorCode.STORAGE_ERROR
            log.error("commit of %d publish batches failed: %s", len(confirms), exc)
            for identity, batch_id, _ in confirms:
                self._error(identity, code, f"nothing stored: {exc}", Command.PUBLISH, batch_id)
            firsts = None
            if appends:  # try again without the publishes, so acks and dead letters persist
                try:
                    firsts = self.store.commit(dlq, subs, now_ms=_wall_ms())
                except (StorageFull, StorageError) as exc2:
                    log.error("cursor commit failed too, retrying next turn: %s", exc2)
            if firsts is None:
                self._dead_letters = dead + self._dead_letters
                return {}
            confirms, combined = [], dlq
        for sub in dirty:
            sub.dirty = False
        self.counters["dead_lettered"] += sum(len(v) for v in dlq.values())
        for identity, batch_id, positions in confirms:
            self._outbox.append(
                (identity, Command.CONFIRM, [batch_id, [firsts[t] + i for t, i in positions]])
            )
        stored: dict[str, tuple[int, list[bytes]]] = {}
        for topic, records in combined.items():
            self._valid_topics.add(topic)
            stored[topic] = (firsts[topic], records)
            self.counters["published"] += len(records)
            last = firsts[topic] + len(records) - 1
            for sub in self._subs_of(topic):
                sub.published(last)
        return stored

    def _subs_of(self, topic: str) -> list[Subscription]:
        return [sub for (t, _), sub in self.subs.items() if t == topic]

    def _broadcast(self, stored: dict[str, tuple[int, list[bytes]]]) -> None:
        """Live feed: one PUB message per topic per turn: ``[topic, msgpack [first_seq, [record, ...]]]``."""
        for topic, (first, records) in stored.items():
            body = protocol.pack([first, records])
            try:
                send_frames(self.pub, [topic.encode(), body], NOBLOCK)
            except zmq.Again:  # at-most-once by design: slow listeners lose messages
                pass

    # --- dead letters ----------------------------------------------------------------------

    def _dead(self, sub: Subscription, dead: list[DeadLetter]) -> None:
        for dl in dead:
            self._dead_letters.append((sub, dl))

    def _dead_letter_records(
        self, dead: list[tuple[Subscription, DeadLetter]]
    ) -> dict[str, list[bytes]]:
        """Records for the ``dlq.<group>`` topics: the original message plus origin headers."""
        out: dict[str, list[bytes]] = {}
        for sub, dl in dead:
            (record,) = self.store.read(sub.topic, [dl.seq])
            if record is None:  # removed from the log meanwhile: nothing left to keep
                continue
            origin = {
                "x-origin-topic": sub.topic,
                "x-origin-seq": dl.seq,
                "x-subscription": sub.group,
                "x-deliveries": dl.deliveries,
                "x-reason": dl.reason,
            }
            try:
                ts, key, headers, payload = protocol.unpack_record(record)
                headers = dict(headers) if isinstance(headers, dict) else {"x-original-headers": headers}
                headers.update(origin)
                headers["x-origin-timestamp"] = ts
                dead_record = protocol.pack_record(_wall_ms(), key, headers, payload)
            except Exception:  # a record this hub cannot re-pack: keep it as stored, never lose it
                log.exception("dead letter %s/%s: record kept unchanged", sub.topic, dl.seq)
                dead_record = record
            topic = protocol.dlq_topic(sub.group)
            out.setdefault(topic, []).append(dead_record)
        return out

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, now: int) -> None:
        limit = self.config.max_dispatch_per_turn
        frame_max = self.config.max_deliver_frame
        for sub in self.subs.values():
            if not sub.actors:
                continue
            for delivery in sub.dispatch(now, limit):
                identity, sid = delivery.actor
                seqs = delivery.seqs
                records = self.store.read(sub.topic, seqs)
                entries = []
                gone = []
                for seq, n, rec in zip(seqs, delivery.deliveries, records):
                    if rec is None:
                        gone.append(seq)
                    else:
                        entries.append([seq, n, rec])
                        if n > 1:
                            self.counters["redelivered"] += 1
                if gone:  # no longer in the log: nothing to deliver, count it done
                    sub.ack(delivery.actor, gone)
                self.counters["delivered"] += len(entries)
                for i in range(0, len(entries), frame_max):
                    chunk = entries[i : i + frame_max]
                    if not self._send(identity, Command.DELIVER, [sid, sub.topic, chunk]):
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
        for sid, sub in peer.attachments.items():
            self._dead(sub, sub.detach((identity, sid), now, failed=True))

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
                command, ref = _oversized_ref(parts)
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
            peer.last_seen = _monotonic_ms()
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
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[1], list)):
            raise _BadRequest(ErrorCode.BAD_BODY, "PUBLISH body must be [batch_id, [messages]]")
        batch_id, messages = body
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
        ts = _wall_ms()
        staged: list[tuple[str, bytes]] = []
        for index, msg in enumerate(messages):
            try:
                topic, payload, key, headers = msg[0], msg[1], msg[2], msg[3]
            except (TypeError, IndexError, KeyError):
                raise _BadRequest(
                    ErrorCode.BAD_BODY,
                    f"message {index}: must be [topic, payload, key, headers]",
                    batch_id,
                    index,
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
            elif headers is not None and type(headers) is not dict:
                raise _BadRequest(ErrorCode.BAD_BODY, f"message {index}: headers must be a map or nil", batch_id, index)
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
            staged.append((topic, record))
        self._staged += len(staged)
        appends = self._appends
        positions = []
        for topic, record in staged:
            lst = appends.get(topic)
            if lst is None:
                lst = appends[topic] = []
            positions.append((topic, len(lst)))
            lst.append(record)
        self._confirms.append((identity, batch_id, positions))

    def _on_subscribe(self, identity: bytes, peer: _Peer | None, body: Any) -> None:
        if not isinstance(body, dict):
            raise _BadRequest(ErrorCode.BAD_BODY, "SUBSCRIBE body must be a map")
        sid = body.get("sid")
        if type(sid) is not int:
            raise _BadRequest(ErrorCode.BAD_BODY, "SUBSCRIBE needs an integer sid")
        topic, group = body.get("topic"), body.get("group")
        problem = protocol.check_topic(topic)
        if problem:
            raise _BadRequest(ErrorCode.BAD_TOPIC, problem, sid)
        problem = protocol.check_group(group)
        if problem:
            raise _BadRequest(ErrorCode.BAD_GROUP, problem, sid)
        credit = _int_field(body, "credit", 0, protocol.MAX_CREDIT, sid, default=10)
        ack_wait_ms = _int_field(body, "ack_wait_ms", 1, 7 * 24 * 3600 * 1000, sid)
        max_deliver = _int_field(body, "max_deliver", 0, 1_000_000, sid)
        start = body.get("start", "first")
        if start not in ("first", "new"):
            raise _BadRequest(ErrorCode.INVALID, "start must be 'first' or 'new'", sid)
        key = (topic, group)
        sub = self.subs.get(key)
        info = self.store.topics.get(topic)
        last = info.last_seq if info else 0
        if sub is None:
            options = {}
            if ack_wait_ms is not None:
                options["ack_wait_ms"] = ack_wait_ms
            if max_deliver is not None:
                options["max_deliver"] = max_deliver
            start_after = last if start == "new" else (info.first_seq - 1 if info else 0)
            sub = Subscription(topic, group, last_seq=last, start_after=start_after, **options)
            sub.dirty = True
            self.subs[key] = sub
            log.info("new subscription %s on %s (start=%s)", group, topic, start)
        elif ack_wait_ms is not None or max_deliver is not None:
            sub.configure(ack_wait_ms=ack_wait_ms, max_deliver=max_deliver)
        now = _monotonic_ms()
        if peer is None:
            peer = self._peers[identity] = _Peer(identity, now)
        old = peer.attachments.get(sid)
        if old is not None and old is not sub:
            self._dead(old, old.detach((identity, sid), now, failed=False))
        peer.attachments[sid] = sub
        sub.attach((identity, sid), credit)
        self._outbox.append(
            (
                identity,
                Command.SUBSCRIBED,
                {
                    "sid": sid,
                    "topic": topic,
                    "group": group,
                    "ack_floor": sub.ack_floor,
                    "last_seq": sub.last_seq,
                    "ack_wait_ms": sub.ack_wait_ms,
                    "max_deliver": sub.max_deliver,
                },
            )
        )

    def _attachment(self, identity: bytes, peer: _Peer | None, body: Any, command: str, size: int):
        """Parse ``[sid, ...]`` bodies and find the attached subscription."""
        if not isinstance(body, list) or len(body) != size or type(body[0]) is not int:
            raise _BadRequest(ErrorCode.BAD_BODY, f"{command} body must be an array of {size} starting with sid")
        sid = body[0]
        sub = peer.attachments.get(sid) if peer is not None else None
        if sub is None:
            raise _BadRequest(
                ErrorCode.UNKNOWN_SUBSCRIPTION,
                f"sid {sid} is not attached on this connection (hub restarted? subscribe again)",
                sid,
            )
        return sid, sub

    def _seqs(self, sub: Subscription, sid: int, command: str, by_topic: Any) -> list[int]:
        if not isinstance(by_topic, dict):
            raise _BadRequest(ErrorCode.BAD_BODY, f"{command} needs a map of topic to sequences", sid)
        out: list[int] = []
        for topic, seqs in by_topic.items():
            if topic != sub.topic:
                raise _BadRequest(
                    ErrorCode.INVALID, f"{command}: subscription reads {sub.topic!r}, not {topic!r}", sid
                )
            if not isinstance(seqs, list) or len(seqs) > MAX_SEQS_PER_COMMAND:
                raise _BadRequest(ErrorCode.BAD_BODY, f"{command}: sequences must be a list", sid)
            for s in seqs:
                if type(s) is not int:
                    raise _BadRequest(ErrorCode.BAD_BODY, f"{command}: sequences must be integers", sid)
            out.extend(seqs)
        return out

    def _on_credit(self, identity, peer, body) -> None:
        sid, sub = self._attachment(identity, peer, body, "CREDIT", 2)
        credit = body[1]
        if type(credit) is not int or not 0 <= credit <= protocol.MAX_CREDIT:
            raise _BadRequest(ErrorCode.INVALID, f"credit must be 0..{protocol.MAX_CREDIT}", sid)
        sub.set_credit((identity, sid), credit)

    def _on_ack(self, identity, peer, body) -> None:
        sid, sub = self._attachment(identity, peer, body, "ACK", 2)
        seqs = self._seqs(sub, sid, "ACK", body[1])
        unknown = sub.ack((identity, sid), seqs)
        self.counters["acked"] += len(seqs) - len(unknown)
        if unknown:
            raise _BadRequest(
                ErrorCode.UNKNOWN_SEQUENCE,
                f"ACK of sequences never published on {sub.topic}: {unknown[:10]}",
                sid,
            )

    def _on_nack(self, identity, peer, body) -> None:
        sid, sub = self._attachment(identity, peer, body, "NACK", 3)
        seqs = self._seqs(sub, sid, "NACK", body[1])
        delay = body[2]
        if type(delay) is not int or not 0 <= delay <= 365 * 24 * 3600 * 1000:
            raise _BadRequest(ErrorCode.INVALID, "NACK delay_ms must be a non-negative integer", sid)
        self._dead(sub, sub.nack((identity, sid), seqs, _monotonic_ms(), delay))

    def _on_release(self, identity, peer, body) -> None:
        sid, sub = self._attachment(identity, peer, body, "RELEASE", 2)
        sub.release((identity, sid), self._seqs(sub, sid, "RELEASE", body[1]))

    def _on_reject(self, identity, peer, body) -> None:
        sid, sub = self._attachment(identity, peer, body, "REJECT", 3)
        seqs = self._seqs(sub, sid, "REJECT", body[1])
        reason = body[2] if isinstance(body[2], str) else repr(body[2])
        self._dead(sub, sub.reject((identity, sid), seqs, reason[:1000]))

    def _on_progress(self, identity, peer, body) -> None:
        sid, sub = self._attachment(identity, peer, body, "PROGRESS", 2)
        sub.progress((identity, sid), self._seqs(sub, sid, "PROGRESS", body[1]), _monotonic_ms())

    def _on_detach(self, identity, peer, body) -> None:
        if not isinstance(body, list) or len(body) != 1 or type(body[0]) is not int:
            raise _BadRequest(ErrorCode.BAD_BODY, "DETACH body must be [sid]")
        sid = body[0]
        sub = peer.attachments.pop(sid, None) if peer is not None else None
        if sub is not None:
            self._dead(sub, sub.detach((identity, sid), _monotonic_ms(), failed=False))
            if not peer.attachments:
                del self._peers[identity]
        # Detaching twice, or after a hub restart, is fine: the reply says it is done either way.
        self._outbox.append((identity, Command.DETACHED, [sid]))

    def _on_topics(self, identity, peer, body) -> None:
        ref = body[0] if isinstance(body, list) and body else None
        self._outbox.append((identity, Command.REPLY, [ref, self.topics()]))

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
                    "actors": sub.actors,
                    "ack_wait_ms": sub.ack_wait_ms,
                    "max_deliver": sub.max_deliver,
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
    }


class _BadRequest(Exception):
    """A well-framed command the hub refuses; becomes an ERROR to its sender only."""

    def __init__(self, code: ErrorCode, message: str, ref: Any = None, index: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.index = index


def _int_field(body: dict, name: str, lo: int, hi: int, ref: Any, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise _BadRequest(ErrorCode.INVALID, f"{name} must be an integer in {lo}..{hi}", ref)
    return value
