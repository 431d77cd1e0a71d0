"""Actor: run handler functions on the messages of durable subscriptions.

::

    actor = Actor("tcp://127.0.0.1:5555", name="billing-1")

    @actor.subscribe("orders", group="billing", credit=100, ack_wait=30.0, max_deliver=5)
    def handle(msg):
        ...   # return: acked; raise: nacked (redelivered, dead-lettered at max_deliver)

    actor.run()   # blocks until actor.stop(), SIGINT or SIGTERM

The loop thread owns the connection (heartbeats keep going however long a handler runs);
handlers run on ``concurrency`` worker threads. Credit bounds what the hub sends, so an actor
never holds more than ``credit`` messages per subscription.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from .connection import CurveKeys, monotonic_ms
from .consumer import DEFAULT_CREDIT, Session
from .errors import ClosedError
from .message import Message

log = logging.getLogger("zmq_mq.actor")

Handler = Callable[[Message], Any]
_counter = itertools.count(1)
# How long stop() lets running handlers finish before detaching without them.
DEFAULT_GRACE = 30.0


@dataclass(slots=True)
class _Route:
    topic: str
    group: str
    handler: Handler
    credit: int
    ack_wait: float | None
    max_deliver: int | None
    start: str
    sid: int = 0


class Actor:
    """A named process of handlers, each attached to a subscription (see module docstring)."""

    def __init__(self, endpoint: str | None = None, *, name: str | None = None,
                 concurrency: int = 1, timeout: float = 10.0, grace: float = DEFAULT_GRACE,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name or f"actor-{next(_counter)}"
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.timeout = timeout
        self.grace = grace
        self._ctx = context or zmq.Context.instance()
        self.curve = curve
        self._routes: list[_Route] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._results: collections.deque = collections.deque()
        self._wake_addr = f"inproc://zmq-mq-actor-{id(self)}-{next(_counter)}"
        self._wake_lock = threading.Lock()
        self._wake_tx: zmq.Socket | None = None
        self._wake_sent = False
        self._busy = 0  # messages handed to workers and not yet finished
        self.error: BaseException | None = None
        self.session: Session | None = None

    # --- declaring handlers ----------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str, credit: int = DEFAULT_CREDIT,
                  ack_wait: float | None = None, max_deliver: int | None = None,
                  start: str = "first") -> Callable[[Handler], Handler]:
        """Decorator: run the function on every message of subscription ``group`` on ``topic``."""

        def register(handler: Handler) -> Handler:
            self.add_handler(topic, handler, group=group, credit=credit, ack_wait=ack_wait,
                             max_deliver=max_deliver, start=start)
            return handler

        return register

    def add_handler(self, topic: str, handler: Handler, *, group: str, credit: int = DEFAULT_CREDIT,
                    ack_wait: float | None = None, max_deliver: int | None = None,
                    start: str = "first") -> None:
        if self._started.is_set():
            raise RuntimeError("add handlers before the actor runs")
        self._routes.append(_Route(topic, group, handler, credit, ack_wait, max_deliver, start))

    # --- running ---------------------------------------------------------------------------

    def start(self) -> "Actor":
        """Run in a background thread; returns once attached (raises what attaching raised)."""
        self._thread = threading.Thread(target=self._run_quietly, name=f"zmq-mq-{self.name}", daemon=True)
        self._thread.start()
        while not self._started.wait(0.05):
            if self._finished.is_set():
                break
        if self.error is not None:
            raise self.error
        return self

    def _run_quietly(self) -> None:
        try:
            self.run(install_signals=False)
        except BaseException as exc:  # kept for start() and join() to report
            self.error = exc

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Ask the actor to finish: running handlers complete (up to ``grace`` s), messages
        not started go back to the hub, acks are committed, then the actor detaches."""
        self._stop.set()
        self._wake()
        if wait and self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout if timeout is not None else self.grace + self.timeout + 5)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._started.is_set() and not self._finished.is_set()

    def run(self, install_signals: bool = True) -> None:
        """Attach every handler and process messages until ``stop()``, SIGINT or SIGTERM."""
        if not self._routes:
            raise RuntimeError("no handlers: decorate a function with @actor.subscribe(...) first")
        if self._finished.is_set():
            raise ClosedError("an actor runs once; create a new one")
        previous = self._install_signals() if install_signals else {}
        wake_rx = self._ctx.socket(zmq.PAIR)
        wake_rx.bind(self._wake_addr)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(self._wake_addr)
        session = self.session = Session(self.endpoint, name=self.name, timeout=self.timeout,
                                         context=self._ctx, curve=self.curve)
        session.settler = self
        workers = [threading.Thread(target=self._worker, name=f"{self.name}-worker-{i}", daemon=True)
                   for i in range(self.concurrency)]
        try:
            session.connect()
            for route in self._routes:
                spec = session.subscribe(
                    route.topic, route.group, credit=route.credit,
                    ack_wait_ms=None if route.ack_wait is None else int(route.ack_wait * 1000),
                    max_deliver=route.max_deliver, start=route.start,
                )
                route.sid = spec.sid
            self._handlers = {route.sid: route.handler for route in self._routes}
            for w in workers:
                w.start()
            self._started.set()
            log.info("actor %s attached to %s", self.name,
                     ", ".join(f"{r.topic}/{r.group}" for r in self._routes))
            self._loop(session, wake_rx)
            self._drain(session, wake_rx)
        finally:
            for _ in workers:
                self._work.put(None)
            for w in workers:
                if w.is_alive():
                    w.join(1.0)
            session.close()
            wake_rx.close(linger=0)
            self._wake_tx.close(linger=0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._finished.set()
            log.info("actor %s stopped", self.name)

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: self.stop(wait=False))
        return previous

    def _loop(self, session: Session, wake_rx: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(wake_rx, zmq.POLLIN)
        sock = session.conn.socket
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            if session.conn.socket is not sock:  # reconnected: a new socket to watch
                poller.unregister(sock)
                sock = session.conn.socket
                poller.register(sock, zmq.POLLIN)
            events = dict(poller.poll(session.conn.heartbeat_ms))
            if wake_rx in events:
                self._drain_wakes(wake_rx)
            if sock in events:
                session.pump(0)
            else:
                session.keepalive()
            self._apply_results(session)
            while session.inbox:
                msg = session.inbox.popleft()
                self._busy += 1
                self._work.put(msg)

    def _drain(self, session: Session, wake_rx: zmq.Socket) -> None:
        """Stopping: let running handlers finish within the grace period, then detach."""
        # Messages still queued for workers were not started: give them back.
        while True:
            try:
                msg = self._work.get_nowait()
            except queue.Empty:
                break
            if msg is not None:
                self._busy -= 1
                msg.settled = "release"
                session.settle(msg, "release")
        deadline = monotonic_ms() + int(self.grace * 1000)
        while self._busy > 0 and monotonic_ms() < deadline:
            if wake_rx.poll(min(session.conn.heartbeat_ms, max(1, deadline - monotonic_ms()))):
                self._drain_wakes(wake_rx)
            session.keepalive()
            self._apply_results(session)
        if not session.detach_all(self.timeout):
            log.warning("hub did not confirm detach of %s", self.name)

    # --- worker side -----------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            msg = self._work.get()
            if msg is None:
                return
            handler = self._handlers.get(msg.sid)
            try:
                handler(msg)
            except Exception as exc:
                log.warning("handler for %s/%s failed on seq %d (delivery %d): %r",
                            msg.topic, msg.group, msg.seq, msg.deliveries, exc)
                if msg.settled is None:
                    msg.nack()
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: the handler wants out
                log.error("handler for %s/%s raised %r on seq %d: stopping the actor",
                          msg.topic, msg.group, exc, msg.seq)
                if msg.settled is None:
                    msg.release()  # not a failure of the message: another actor takes it
                self._stop.set()
            else:
                if msg.settled is None:
                    msg.ack()
            finally:  # whatever happened, the worker is free again and keeps serving
                self._results.append((None, "done", None))
                self._wake()

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        """Message.ack() and friends, from any thread: handed to the loop thread."""
        self._results.append((msg, kind, arg))
        if kind == "progress":
            self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_tx is not None and not self._wake_sent:
                self._wake_sent = True
                try:
                    self._wake_tx.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def _drain_wakes(self, wake_rx: zmq.Socket) -> None:
        with self._wake_lock:
            self._wake_sent = False
        while True:
            try:
                wake_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _apply_results(self, session: Session) -> None:
        results = self._results
        while results:
            msg, kind, arg = results.popleft()
            if msg is None:
                self._busy -= 1
            else:
                session.settle(msg, kind, arg)
        session.flush_acks()
