"""Producer: publish messages and learn when each one is durable.

``publish_async`` queues a message and returns a ``PublishFuture`` that resolves to the message's
sequence number once the hub has committed it to LMDB. A background I/O thread
owns the socket: it sends whatever has queued up as one PUBLISH batch (so batching adapts to the
load: one message per frame when idle, up to ``max_batch`` under pressure) and resolves futures
as CONFIRMs arrive. ``publish`` is ``publish_async(...).result()``.

Publishing is at-least-once: if the hub restarts before confirming a batch, the batch is sent
again, so a message whose confirm was lost may be stored twice.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import itertools
import logging
import os
import threading
from typing import Any

import zmq

from ..router import protocol
from ..router.clock import Clock
from ..router.endpoint import is_cluster_address
from ..router.protocol import Command, publish_body, publish_message
from .connection import ENV_HUB, Connection, CurveKeys, monotonic_ms
from .errors import ClosedError, HubError, HubUnavailable, InvalidMessage
from .wake import Waker

log = logging.getLogger("zmq_mq.producer")

DEFAULT_MAX_BATCH = 1000  # messages per PUBLISH frame: large enough to amortise, small for latency
MAX_BATCH_BYTES = 1024 * 1024  # payload bytes per frame, far below the hub's frame limit
DEFAULT_MAX_PENDING = 100_000  # unconfirmed messages before publish_async blocks (bounded memory)

_counter = itertools.count(1)


class PublishFuture:
    """The outcome of one ``publish_async``: ``result()`` is the sequence number once durable.

    A light stand-in for ``concurrent.futures.Future`` (``result``, ``exception``, ``done``,
    ``add_done_callback``): the producer resolves them a batch at a time under one condition
    variable, which is several times cheaper per message than a Future with its own lock.
    It is awaitable too: ``seq = await future`` in a coroutine waits without blocking the
    event loop (``AsyncProducer`` in ``actors/aio.py`` is the asyncio-native client).
    """

    __slots__ = ("_producer", "_done", "_result", "_error", "_callbacks", "_abandoned", "_waiter")

    def __init__(self, producer: "Producer") -> None:
        self._producer = producer
        self._done = False
        # publish() gave up on it and raised: flush() and close() no longer wait for it
        self._abandoned = False
        self._result: int | None = None
        self._error: BaseException | None = None
        self._callbacks: list | None = None
        # the asyncio future an AsyncProducer resolves with a whole batch (actors/aio.py)
        self._waiter: Any = None

    def done(self) -> bool:
        return self._done

    def _wait(self, timeout: float | None) -> None:
        if not self._done:
            with self._producer._cond:
                if not self._producer._cond.wait_for(lambda: self._done, timeout):
                    raise TimeoutError("publish not confirmed in time")

    def result(self, timeout: float | None = None) -> int:
        """The sequence number; raises the publish error, or TimeoutError after ``timeout``."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def add_done_callback(self, fn) -> None:
        """Call ``fn(future)`` once resolved (from the producer's I/O thread), exactly once."""
        with self._producer._cond:  # the resolver gathers callbacks under the same lock
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def __await__(self):
        """``await future``: the sequence number once durable, or the publish error; the event
        loop keeps running meanwhile."""
        if not self._done:
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            if self._producer._async_loop is loop and self._waiter is None:
                # an AsyncProducer's loop: woken with the whole batch, one call per CONFIRM
                self._waiter = waiter
            else:
                def wake(_: "PublishFuture") -> None:
                    try:
                        loop.call_soon_threadsafe(_set_none, waiter)
                    except RuntimeError:  # the loop is closed: nobody waits any more
                        pass

                self.add_done_callback(wake)
            yield from waiter.__await__()
        return self.result(0)


def _set_none(waiter: "asyncio.Future") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Producer:
    """Publishes to a zmq-mq hub. Thread-safe: any thread may publish.

    Given a cluster address (``zk://...`` or ``tcp://a,tcp://b``) it is a
    :class:`~zmq_mq.actors.cluster_producer.ClusterProducer`."""

    def __new__(cls, endpoint: str | None = None, *args: Any, **kwargs: Any) -> "Producer":
        # the one cluster hook: decided once, here; a plain endpoint's path is unchanged
        if cls is Producer and is_cluster_address(endpoint or os.environ.get(ENV_HUB)):
            from .cluster_producer import ClusterProducer

            return super().__new__(ClusterProducer)
        return super().__new__(cls)

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_pending: int = DEFAULT_MAX_PENDING,
        context: zmq.Context | None = None,
        curve: CurveKeys | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        # clock: heartbeats and hub-silence detection (tests move it); timeouts are real time
        self._conn = Connection(endpoint, name=name or f"producer-{next(_counter)}", context=self._ctx,
                                curve=curve, clock=clock)
        self.endpoint = self._conn.endpoint
        self.timeout = timeout
        self._max_batch = max_batch
        self._queue: collections.deque = collections.deque()
        self._max_pending = max_pending
        self._waker: Waker | None = None  # the I/O thread's wake-up pipe (made by connect)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closing = False
        self._closed = False
        self._open_timeout = timeout
        self._init_accounting()

    def _init_accounting(self) -> None:
        """The counters and hooks that publish, flush, close and _resolve_batch share (a
        ClusterProducer, which routes to inner producers, keeps them too)."""
        # Accounting: user threads draw numbers under _number_lock (uncontended, cheap), so
        # _last_submitted only grows; only the I/O thread adds to _resolved, and it notifies
        # _cond once per batch.
        self._cond = threading.Condition()
        self._submitted = itertools.count(1)
        self._number_lock = threading.Lock()
        self._last_submitted = 0
        self._resolved = 0
        # messages whose publish() raised HubUnavailable before they resolved: already reported
        # to their caller, so flush() and close() neither wait for them nor raise for them
        self._abandoned = 0
        self._first_error: BaseException | None = None
        # called with each resolved batch's futures, from the I/O thread, after the waiters
        # are woken: AsyncProducer hands the batch to its event loop in one call (actors/aio.py)
        self._on_resolved: Any = None
        self._async_loop: Any = None  # that AsyncProducer's event loop

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "Producer":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and handshake; raises HubUnavailable if the hub does not answer in time."""
        self._connect(self.timeout)

    def _connect(self, timeout: float) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        if self._thread is not None:
            return
        self._waker = Waker(self._ctx, "producer")
        self._open_timeout = timeout
        self._thread = threading.Thread(
            target=self._io_main, args=(self._waker,), name="zmq-mq-producer", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            self._waker.close()
            self._closed = True
            raise self._start_error

    def close(self, timeout: float | None = None) -> None:
        """Wait for every pending confirm (up to ``timeout``, default the producer's), then stop.

        Raises HubUnavailable if some are still unconfirmed then, except those whose
        ``publish()`` already raised it. Returns within ``timeout`` (plus a fraction of a
        second) even when the hub is gone."""
        if self._closed:
            return
        if self._thread is not None:
            try:
                self.flush(self.timeout if timeout is None else timeout, raise_errors=False)
            finally:
                self._closing = True
                self._wake()
                self._thread.join()
                self._waker.close()
        self._closed = True

    # --- publishing ------------------------------------------------------------------------

    def publish_async(
        self,
        topic: str,
        payload: bytes,
        *,
        key: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_id: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        deliver_at: Any = None,
    ) -> PublishFuture:
        """Queue one message; the PublishFuture resolves to its sequence number once it is durable.

        ``msg_id``: your id for this message. The hub stores a message id once within its dedup
        window (``zmq-mq hub --dedup-window``, 120 s by default): publishing it again (a retry
        after a timeout, a resend after a hub restart) returns the original sequence and stores
        nothing. Consumers see it as ``msg.msg_id`` (header ``x-msg-id``).

        ``priority``: 0..9, higher is delivered first by every subscription (default 0, the
        priority of a message without one). Consumers see it as header ``x-priority``.

        ``delay``: seconds from now (the hub's clock) before any subscription may deliver the
        message; ``deliver_at``: the time to deliver it, a ``datetime`` (naive: local time) or
        Unix seconds. Give one or neither; a time in the past delivers at once. The message is
        durable and gets its sequence now, and is held back by every subscription until then,
        also across a hub restart. Consumers see the due time as header ``x-deliver-at``
        (Unix ms).
        """
        return self._submit(topic, payload, key, headers, msg_id, priority, delay, deliver_at,
                            self.timeout)

    def _submit(self, topic: str, payload: bytes, key: str | None, headers: dict[str, Any] | None,
                msg_id: str | None, priority: int | None, delay: float | None, deliver_at: Any,
                timeout: float, future: PublishFuture | None = None) -> PublishFuture:
        """publish_async, waiting at most ``timeout`` s to connect or for room; ``future``: the
        PublishFuture to resolve (an AsyncProducer made it while the message waited)."""
        if self._thread is None:
            self._connect(timeout)
        if self._closing or self._closed:
            raise ClosedError("producer is closed")
        size = self._conn.check_message(topic, payload, key, headers)
        if msg_id is not None:
            problem = protocol.check_msg_id(msg_id)
            if problem:
                raise InvalidMessage(problem)
            size += len(msg_id) + 16
        if priority is not None:
            problem = protocol.check_priority(priority)
            if problem:
                raise InvalidMessage(problem)
            size += 16
        hold = _hold_option(delay, deliver_at)
        if hold is not None:
            size += 24
        if self._last_submitted - self._resolved >= self._max_pending:
            # Wait for room before taking a number: a call that gives up leaves no gap that
            # flush() would wait for forever.
            self._wake()
            with self._cond:
                if not self._cond.wait_for(
                    lambda: self._last_submitted - self._resolved < self._max_pending, timeout
                ):
                    raise HubUnavailable(f"{timeout:g} s without room: the hub is not confirming")
            if self._closing or self._closed:  # closed while it waited (else: checked above)
                raise ClosedError("producer is closed")
        with self._number_lock:  # numbers and _last_submitted move together, in order
            self._last_submitted = next(self._submitted)
        if future is None:
            future = PublishFuture(self)
        opts: dict[str, Any] | None = None
        if msg_id is not None or priority or hold is not None:
            opts = {}
            if msg_id is not None:
                opts["msg_id"] = msg_id
            if priority:
                opts["priority"] = priority
            if hold is not None:
                opts[hold[0]] = hold[1]
        self._queue.append((publish_message(topic, bytes(payload), key, headers, opts), future, size))
        waker = self._waker
        if not waker.sent:  # one wake-up in flight is enough: the I/O thread takes the lot
            waker.wake()
        return future

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        key: str | None = None,
        headers: dict[str, Any] | None = None,
        timeout: float | None = None,
        msg_id: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        deliver_at: Any = None,
    ) -> int:
        """Publish one message and return its sequence number once it is durable (see
        ``publish_async`` for ``msg_id``, ``priority``, ``delay`` and ``deliver_at``).

        Returns or raises within ``timeout`` s (default the producer's), connecting included.
        A message that raised HubUnavailable here may still be stored later (the producer keeps
        sending it while it runs), but ``flush()`` and ``close()`` do not wait or raise for it
        again: publish it again with the same ``msg_id`` to retry without a duplicate."""
        limit = self.timeout if timeout is None else timeout
        deadline = monotonic_ms() + int(limit * 1000)
        future = self._submit(topic, payload, key, headers, msg_id, priority, delay, deliver_at,
                              limit)
        try:
            return future.result(max(0, deadline - monotonic_ms()) / 1000)
        except TimeoutError:
            self._abandon(future)
            raise HubUnavailable(
                f"no confirm from the hub at {self.endpoint} within {limit:g} s"
            ) from None

    def _abandon(self, future: PublishFuture) -> None:
        """The caller was told this message failed: flush() and close() stop waiting for it."""
        with self._cond:
            if not future._done and not future._abandoned:
                future._abandoned = True
                self._abandoned += 1

    def flush(self, timeout: float | None = None, *, raise_errors: bool = True) -> None:
        """Block until every message published so far is confirmed (or failed).

        Raises HubUnavailable on timeout, and the first publish error since the last flush.
        """
        limit = self.timeout if timeout is None else timeout
        target = self._last_submitted
        with self._cond:
            if not self._cond.wait_for(lambda: self._resolved + self._abandoned >= target, limit):
                raise HubUnavailable(
                    f"{target - self._resolved - self._abandoned} messages not confirmed "
                    f"within {limit:g} s "
                    f"by the hub at {self.endpoint}"
                )
            error, self._first_error = self._first_error, None
        if error is not None and raise_errors:
            raise error

    @property
    def hub_instance(self) -> str | None:
        return self._conn.hub_instance

    # --- the I/O thread --------------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the I/O thread; closing, even if a wake-up is already in flight."""
        self._waker.wake(force=self._closing)

    def _io_main(self, waker: Waker) -> None:
        conn = self._conn
        try:
            conn.open(self._open_timeout)
        except BaseException as exc:
            self._start_error = exc
            conn.close()
            self._ready.set()
            return
        self._ready.set()
        outstanding: dict[int, tuple[list, list[PublishFuture]]] = {}  # batch id -> (messages, futures)
        batch_ids = self._batch_ids = itertools.count(1)
        # After a hub restart seen on this connection: the id of the empty "marker" batch sent
        # then, and the batches sent before it, which are resent only if its confirm finds them
        # still unconfirmed (those queued behind the restart reached the new hub already).
        self._marker: Any = None
        self._before_marker: set = set()
        wake_rx = waker.rx
        poller = zmq.Poller()
        poller.register(wake_rx, zmq.POLLIN)
        poller.register(conn.socket, zmq.POLLIN)
        try:
            while True:
                timeout = conn.heartbeat_ms if outstanding else None
                events = dict(poller.poll(timeout))
                if wake_rx in events:
                    waker.drain()  # then read the queue (see actors/wake.py)
                if conn.socket in events:
                    self._receive(conn, outstanding)
                self._send_queued(conn, outstanding, batch_ids)
                now = conn.now_ms()
                if outstanding:
                    # silent although asked: a heartbeat went out an interval ago, unanswered
                    # (after an idle spell the hub may merely not have been asked yet)
                    if (conn.hub_silent(now) and conn.last_heartbeat > conn.last_heard
                            and now - conn.last_heartbeat >= conn.heartbeat_ms):
                        poller.unregister(conn.socket)
                        self._reconnect(conn, outstanding)
                        poller.register(conn.socket, zmq.POLLIN)
                    elif conn.heartbeat_due(now):
                        conn.heartbeat()
                if self._closing and not self._queue:
                    break
        finally:
            for _, futures in outstanding.values():
                self._resolve_batch(futures, error=HubUnavailable("producer closed before confirm"))
            leftover = []
            while self._queue:
                leftover.append(self._queue.popleft()[1])
            self._resolve_batch(leftover, error=HubUnavailable("producer closed before send"))
            conn.close()

    def _send_queued(self, conn: Connection, outstanding: dict, batch_ids) -> None:
        queue = self._queue
        limits = conn.limits
        max_batch = min(self._max_batch, limits.get("max_batch_messages", self._max_batch))
        # frames stay far below the hub's frame limit, counting keys and headers as well
        max_bytes = min(MAX_BATCH_BYTES, limits.get("max_frame_bytes", MAX_BATCH_BYTES * 4) // 4)
        while queue:
            messages: list = []
            futures: list[PublishFuture] = []
            size = 0
            while queue and len(messages) < max_batch and size < max_bytes:
                msg, fut, msg_size = queue.popleft()
                messages.append(msg)
                futures.append(fut)
                size += msg_size
            batch_id = next(batch_ids)
            try:
                conn.send(Command.PUBLISH, publish_body(batch_id, messages))
            except (TypeError, ValueError, OverflowError) as exc:  # publish_async checks; belt and braces
                self._resolve_batch(futures, error=InvalidMessage(f"cannot encode the batch: {exc}"))
                continue
            outstanding[batch_id] = (messages, futures)

    def _receive(self, conn: Connection, outstanding: dict) -> None:
        while True:
            got = conn.try_recv()
            if got is None:
                return
            command, body = got
            if command == Command.CONFIRM:
                if self._marker is not None and body[0] == self._marker:
                    self._resend_after_marker(conn, outstanding)
                    continue
                batch = outstanding.pop(body[0], None)
                if batch is not None:
                    self._resolve_batch(batch[1], body[1])
            elif command == Command.ERROR:
                err = protocol.parse_error(body)
                if self._marker is not None and err.get("ref") == self._marker:
                    self._resend_after_marker(conn, outstanding)
                    continue
                batch = outstanding.pop(err.get("ref"), None) if err.get("command") == "PUBLISH" else None
                if batch is None:
                    log.warning("hub error: %s: %s", err["code"], err["message"])
                    continue
                self._resolve_batch(batch[1], error=HubError.from_body(err))
            elif command == Command.HEARTBEAT:
                instance = body[0] if isinstance(body, list) and body else None
                if instance and conn.hub_instance and instance != conn.hub_instance:
                    log.warning("hub restarted (%s -> %s): resending unconfirmed", conn.hub_instance, instance)
                    conn.hub_instance = instance
                    # The hub answers in order: once this empty batch is confirmed, every batch
                    # sent before it that the new hub received is confirmed too; only the rest
                    # (lost with the old hub) is sent again, so nothing is stored twice.
                    self._before_marker |= set(outstanding)
                    self._marker = next(self._batch_ids)
                    conn.send(Command.PUBLISH, publish_body(self._marker, []))
            elif command == Command.WELCOME:
                conn._welcomed(body)

    def _resend(self, conn: Connection, outstanding: dict) -> None:
        self._marker, self._before_marker = None, set()
        for batch_id, (messages, _) in sorted(outstanding.items()):
            conn.send(Command.PUBLISH, publish_body(batch_id, messages))

    def _resend_after_marker(self, conn: Connection, outstanding: dict) -> None:
        lost = sorted(b for b in self._before_marker if b in outstanding)
        self._marker, self._before_marker = None, set()
        if lost:
            log.warning("resending %d batches the restarted hub never received", len(lost))
        for batch_id in lost:
            conn.send(Command.PUBLISH, publish_body(batch_id, outstanding[batch_id][0]))

    def _reconnect(self, conn: Connection, outstanding: dict) -> None:
        """The hub went silent with batches unconfirmed: new socket, handshake, resend."""
        log.warning("hub at %s silent; reconnecting", conn.endpoint)
        while True:
            try:
                # close() must not wait for a handshake attempt to time out
                conn.open(conn.heartbeat_ms * conn.liveness / 1000, cancel=lambda: self._closing)
                break
            except HubUnavailable:
                if self._closing:
                    return
            except HubError as exc:  # the hub answered, and refused us: tell the publishers
                log.error("hub at %s refused the connection: %s", conn.endpoint, exc)
                for _, futures in outstanding.values():
                    self._resolve_batch(futures, error=exc)
                outstanding.clear()
                return
        self._resend(conn, outstanding)

    def _resolve_batch(self, futures: list[PublishFuture], seqs: list[int] | None = None,
                       error: BaseException | None = None) -> None:
        """Resolve a batch's futures (I/O thread only), then wake waiters once."""
        if error is None:
            for fut, seq in zip(futures, seqs):
                fut._result = seq
                fut._done = True
        else:
            for fut in futures:
                fut._error = error
                fut._done = True
        with self._cond:
            self._resolved += len(futures)
            reported = 0
            if self._abandoned:
                reported = sum(1 for fut in futures if fut._abandoned)
                self._abandoned -= reported
            if error is not None and self._first_error is None and reported < len(futures):
                self._first_error = error
            self._cond.notify_all()
            callbacks = [fut for fut in futures if fut._callbacks]
        for fut in callbacks:
            for fn in fut._callbacks:
                try:
                    fn(fut)
                except Exception:
                    log.exception("publish callback failed")
        on_resolved = self._on_resolved
        if on_resolved is not None:
            try:
                on_resolved(futures)
            except Exception:
                log.exception("publish batch hook failed")


def _hold_option(delay: float | None, deliver_at: Any) -> tuple[str, int] | None:
    """The PUBLISH option for ``delay`` (seconds) or ``deliver_at`` (datetime or Unix seconds):
    ``("delay_ms", ms)`` or ``("deliver_at_ms", ms)``, or None to deliver at once."""
    if delay is not None and deliver_at is not None:
        raise InvalidMessage("give delay or deliver_at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            raise InvalidMessage(f"delay must be a number of seconds >= 0, got {delay!r}")
        ms = int(round(delay * 1000))
        if ms > protocol.MAX_DELAY_MS:
            raise InvalidMessage("delay is over 366 days")
        return ("delay_ms", ms) if ms > 0 else None
    if deliver_at is not None:
        if isinstance(deliver_at, _dt.datetime):
            seconds = deliver_at.timestamp()
        elif isinstance(deliver_at, (int, float)) and not isinstance(deliver_at, bool):
            seconds = float(deliver_at)
        else:
            raise InvalidMessage(f"deliver_at must be a datetime or Unix seconds, got {deliver_at!r}")
        if not seconds >= 0:
            raise InvalidMessage(f"deliver_at must not be before 1970, got {deliver_at!r}")
        return ("deliver_at_ms", int(round(seconds * 1000)))
    return None
