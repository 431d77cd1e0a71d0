"""Producer: publish messages and learn when each one is durable.

``publish_async`` queues a message and returns a ``concurrent.futures.Future`` that resolves to
the message's sequence number once the hub has committed it to LMDB. A background I/O thread
owns the socket: it sends whatever has queued up as one PUBLISH batch (so batching adapts to the
load: one message per frame when idle, up to ``max_batch`` under pressure) and resolves futures
as CONFIRMs arrive. ``publish`` is ``publish_async(...).result()``.

Publishing is at-least-once: if the hub restarts before confirming a batch, the batch is sent
again, so a message whose confirm was lost may be stored twice.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from concurrent.futures import Future
from typing import Any

import zmq

from ..router import protocol
from ..router.protocol import Command
from .connection import Connection, monotonic_ms
from .errors import ClosedError, HubError, HubUnavailable

log = logging.getLogger("zmq_mq.producer")

DEFAULT_MAX_BATCH = 1000  # messages per PUBLISH frame: large enough to amortise, small for latency
MAX_BATCH_BYTES = 1024 * 1024  # payload bytes per frame, far below the hub's frame limit
DEFAULT_MAX_PENDING = 100_000  # unconfirmed messages before publish_async blocks (bounded memory)

_counter = itertools.count(1)


class Producer:
    """Publishes to a zmq-mq hub. Thread-safe: any thread may publish."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_pending: int = DEFAULT_MAX_PENDING,
        context: zmq.Context | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._conn = Connection(endpoint, name=name or f"producer-{next(_counter)}", context=self._ctx)
        self.endpoint = self._conn.endpoint
        self.timeout = timeout
        self._max_batch = max_batch
        self._queue: collections.deque = collections.deque()
        self._space = threading.BoundedSemaphore(max_pending)
        self._wake_lock = threading.Lock()
        self._wake_sent = False
        self._wake_addr = f"inproc://zmq-mq-producer-{id(self)}-{next(_counter)}"
        self._wake_tx: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closing = False
        self._closed = False
        self._lock = threading.Lock()
        self._unconfirmed = 0
        self._all_done = threading.Condition(self._lock)
        self._first_error: BaseException | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "Producer":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and handshake; raises HubUnavailable if the hub does not answer in time."""
        if self._closed:
            raise ClosedError("producer is closed")
        if self._thread is not None:
            return
        wake_rx = self._ctx.socket(zmq.PAIR)
        wake_rx.bind(self._wake_addr)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(self._wake_addr)
        self._thread = threading.Thread(
            target=self._io_main, args=(wake_rx,), name="zmq-mq-producer", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            self._wake_tx.close(linger=0)
            self._closed = True
            raise self._start_error

    def close(self, timeout: float | None = None) -> None:
        """Wait for every pending confirm (up to ``timeout``, default the producer's), then stop."""
        if self._closed:
            return
        if self._thread is not None:
            try:
                self.flush(self.timeout if timeout is None else timeout, raise_errors=False)
            finally:
                self._closing = True
                self._wake()
                self._thread.join()
                self._wake_tx.close(linger=0)
        self._closed = True

    # --- publishing ------------------------------------------------------------------------

    def publish_async(
        self,
        topic: str,
        payload: bytes,
        *,
        key: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> Future:
        """Queue one message; the Future resolves to its sequence number once it is durable."""
        if self._thread is None:
            self.connect()
        if self._closing or self._closed:
            raise ClosedError("producer is closed")
        self._conn.check_message(topic, payload, key, headers)
        if not self._space.acquire(timeout=self.timeout):
            raise HubUnavailable(f"{self.timeout:g} s without room: the hub is not confirming")
        future: Future = Future()
        with self._lock:
            self._unconfirmed += 1
        self._queue.append(([topic, bytes(payload), key, headers], future))
        if not self._wake_sent:
            self._wake()
        return future

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        key: str | None = None,
        headers: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Publish one message and return its sequence number once it is durable."""
        future = self.publish_async(topic, payload, key=key, headers=headers)
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except TimeoutError:
            raise HubUnavailable(
                f"no confirm from the hub at {self.endpoint} within "
                f"{self.timeout if timeout is None else timeout:g} s"
            ) from None

    def flush(self, timeout: float | None = None, *, raise_errors: bool = True) -> None:
        """Block until every message published so far is confirmed (or failed).

        Raises HubUnavailable on timeout, and the first publish error since the last flush.
        """
        limit = self.timeout if timeout is None else timeout
        with self._all_done:
            if not self._all_done.wait_for(lambda: self._unconfirmed == 0, limit):
                raise HubUnavailable(
                    f"{self._unconfirmed} messages not confirmed within {limit:g} s "
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
        with self._wake_lock:
            if not self._wake_sent or self._closing:
                self._wake_sent = True
                self._wake_tx.send(b"", zmq.NOBLOCK)

    def _io_main(self, wake_rx: zmq.Socket) -> None:
        conn = self._conn
        try:
            conn.open(self.timeout)
        except BaseException as exc:
            self._start_error = exc
            conn.close()
            wake_rx.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        outstanding: dict[int, tuple[list, list[Future]]] = {}  # batch id -> (messages, futures)
        batch_ids = itertools.count(1)
        poller = zmq.Poller()
        poller.register(wake_rx, zmq.POLLIN)
        poller.register(conn.socket, zmq.POLLIN)
        try:
            while True:
                timeout = conn.heartbeat_ms if outstanding else None
                events = dict(poller.poll(timeout))
                if wake_rx in events:
                    while True:
                        try:
                            wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                    self._wake_sent = False
                if conn.socket in events:
                    self._receive(conn, outstanding)
                self._send_queued(conn, outstanding, batch_ids)
                now = monotonic_ms()
                if outstanding:
                    if conn.hub_silent(now) and now - conn.last_sent > conn.heartbeat_ms:
                        poller.unregister(conn.socket)
                        self._reconnect(conn, outstanding)
                        poller.register(conn.socket, zmq.POLLIN)
                    elif conn.heartbeat_due(now) or now - conn.last_heard > conn.heartbeat_ms:
                        conn.send(Command.HEARTBEAT, [])
                if self._closing and not self._queue:
                    break
        finally:
            for _, futures in outstanding.values():
                for f in futures:
                    self._resolve(f, error=HubUnavailable("producer closed before confirm"))
            while self._queue:
                _, f = self._queue.popleft()
                self._resolve(f, error=HubUnavailable("producer closed before send"))
            conn.close()
            wake_rx.close(linger=0)

    def _send_queued(self, conn: Connection, outstanding: dict, batch_ids) -> None:
        queue = self._queue
        max_batch = self._max_batch
        while queue:
            messages: list = []
            futures: list[Future] = []
            size = 0
            while queue and len(messages) < max_batch and size < MAX_BATCH_BYTES:
                msg, fut = queue.popleft()
                messages.append(msg)
                futures.append(fut)
                size += len(msg[1])
            batch_id = next(batch_ids)
            outstanding[batch_id] = (messages, futures)
            conn.send(Command.PUBLISH, [batch_id, messages])

    def _receive(self, conn: Connection, outstanding: dict) -> None:
        sock = conn.socket
        while sock.poll(0, zmq.POLLIN):
            command, body = conn.recv()
            if command == Command.CONFIRM:
                batch = outstanding.pop(body[0], None)
                if batch is not None:
                    for fut, seq in zip(batch[1], body[1]):
                        self._resolve(fut, result=seq)
            elif command == Command.ERROR:
                err = protocol.parse_error(body)
                batch = outstanding.pop(err.get("ref"), None) if err.get("command") == "PUBLISH" else None
                if batch is None:
                    log.warning("hub error: %s: %s", err["code"], err["message"])
                    continue
                exc = HubError.from_body(err)
                for fut in batch[1]:
                    self._resolve(fut, error=exc)
            elif command == Command.HEARTBEAT:
                instance = body[0] if isinstance(body, list) and body else None
                if instance and conn.hub_instance and instance != conn.hub_instance:
                    log.warning("hub restarted (%s -> %s): resending unconfirmed", conn.hub_instance, instance)
                    conn.hub_instance = instance
                    self._resend(conn, outstanding)
            elif command == Command.WELCOME:
                conn._welcomed(body)

    def _resend(self, conn: Connection, outstanding: dict) -> None:
        for batch_id, (messages, _) in sorted(outstanding.items()):
            conn.send(Command.PUBLISH, [batch_id, messages])

    def _reconnect(self, conn: Connection, outstanding: dict) -> None:
        """The hub went silent with batches unconfirmed: new socket, handshake, resend."""
        log.warning("hub at %s silent; reconnecting", conn.endpoint)
        while True:
            try:
                conn.open(conn.heartbeat_ms * conn.liveness / 1000)
                break
            except HubUnavailable:
                if self._closing:
                    return
        self._resend(conn, outstanding)

    def _resolve(self, future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        self._space.release()
        with self._all_done:
            self._unconfirmed -= 1
            if error is not None and self._first_error is None:
                self._first_error = error
            if self._unconfirmed == 0:
                self._all_done.notify_all()
