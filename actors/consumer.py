"""Consumer: a pull-style reader of durable subscriptions.

``Consumer`` drives a ``Session`` (``actors/session.py``: the connection, subscriptions, acks,
heartbeats and re-attaching) from the caller's thread, with a keeper thread answering
heartbeats while the application is away from ``receive``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import zmq

from ..router.clock import Clock
from ..router.endpoint import is_cluster_address
from .connection import ENV_HUB, CurveKeys, monotonic_ms
from .errors import ClosedError
from .message import Message
# The session moved to its own module; these names stay importable from here.
from .session import (  # noqa: F401
    ACK_RESEND_MAX_SEQS,
    ACK_RESEND_MS,
    DEFAULT_ACK_WAIT_MS,
    DEFAULT_CREDIT,
    MIN_RECONNECT_MS,
    Session,
    SubscriptionSpec,
    wire_start,
)

log = logging.getLogger("zmq_mq.consumer")


class Consumer:
    """Read durable subscriptions one message at a time, from the calling thread.

    ::

        with Consumer("tcp://127.0.0.1:5555") as consumer:
            consumer.subscribe("orders", group="audit", credit=100)
            while (msg := consumer.receive(timeout=5.0)) is not None:
                print(msg.payload)
                msg.ack()

    ``with``, ``connect()`` or the first ``subscribe()`` connects. From then on a keeper thread
    answers heartbeats while the application is busy between ``receive`` calls,
    so slow work is not mistaken for a dead consumer; a message not settled within ``ack_wait``
    is delivered again to another consumer all the same. ``close`` flushes acks and releases
    every message received but not settled, and returns once the hub has committed that.
    """

    # What a consumer's session is; a ClusterConsumer's is a ClusterSession
    # (actors/cluster_session.py).
    _session_class: Any = Session

    def __new__(cls, endpoint: str | None = None, *args: Any, **kwargs: Any) -> "Consumer":
        # the one cluster hook: decided once, here; a plain endpoint's path is unchanged
        if cls is Consumer and is_cluster_address(endpoint or os.environ.get(ENV_HUB)):
            from .cluster_session import ClusterConsumer

            return super().__new__(ClusterConsumer)
        return super().__new__(cls)

    def __init__(self, endpoint: str | None = None, *, name: str = "consumer", timeout: float = 10.0,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None,
                 clock: Clock | None = None) -> None:
        # clock: heartbeats and hub-silence detection (tests move it); timeouts are real time
        self._session = self._session_class(endpoint, name=name, timeout=timeout, context=context,
                                            curve=curve, clock=clock)
        self.timeout = timeout
        self._closed = False
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()

    def __enter__(self) -> "Consumer":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        if self._closed:
            raise ClosedError("consumer is closed")
        if not self._session.open:
            self._session.connect()
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="zmq-mq-consumer-keeper", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        """Heartbeats and incoming traffic while the application is away from receive()."""
        session = self._session
        interval = session.conn.heartbeat_ms / 2000
        while not self._stop_keeper.wait(interval):
            if session.lock.acquire(timeout=interval):
                try:
                    if session.open and session.conn.socket is not None:
                        session.flush_acks()  # acks of an app that stopped calling receive()
                        # a reconnect here holds the lock: short, and cut off by close()
                        session.pump(0, MIN_RECONNECT_MS, self._stop_keeper.is_set)
                except Exception:  # never let the keeper die silently on a transient error
                    log.exception("consumer keeper")
                finally:
                    session.lock.release()

    def subscribe(self, topic: str, group: str, *, credit: int = DEFAULT_CREDIT,
                  ack_wait: float | None = None, max_deliver: int | None = None,
                  start: str = "first", ordering: str | None = None) -> int:
        """Attach to subscription ``group`` on ``topic``; returns its handle (sid).

        ``ordering``: ``"none"`` (parallel), ``"key"`` (one message per key in flight, in key
        order) or ``"strict"`` (one in flight: a FIFO queue); default: ``"none"`` for a new
        subscription, unchanged for an existing one.

        Connects first if ``connect()`` (or ``with``) has not: from here on the keeper thread
        answers heartbeats while the application works between ``receive`` calls."""
        self.connect()
        spec = self._session.subscribe(
            topic, group, credit=credit,
            ack_wait_ms=None if ack_wait is None else int(ack_wait * 1000),
            max_deliver=max_deliver, start=start, ordering=ordering,
        )
        return spec.sid

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or None after ``timeout`` seconds without one (None: wait forever)."""
        session = self._session
        deadline = None if timeout is None else monotonic_ms() + int(timeout * 1000)
        lock = session.lock  # the keeper thread may re-attach, which empties the inbox
        while True:
            # the keeper may hold the lock through a (short) reconnect: wait no longer than asked
            if not lock.acquire(timeout=-1 if deadline is None
                                else max(0, deadline - monotonic_ms()) / 1000):
                return None
            try:
                left = None if deadline is None else deadline - monotonic_ms()
                session.keepalive(left)  # a reconnect waits no longer than the caller does
                if session.inbox:
                    return session.inbox.popleft()
                session.flush_acks()
                left = None if deadline is None else deadline - monotonic_ms()
                if left is not None and left <= 0:
                    return None
                session.pump(left, left)
            finally:
                lock.release()

    def flush(self) -> None:
        """Send the acks batched so far."""
        self._session.flush_acks()

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_keeper.set()
        if self._keeper is not None:
            self._keeper.join()
        try:
            if self._session.open and not self._session.detach_all(
                self.timeout if timeout is None else timeout
            ):
                log.warning("hub did not confirm detach; unsettled messages return after ack_wait")
        finally:
            self._session.close()
