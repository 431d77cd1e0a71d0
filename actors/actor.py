"""Actor: run handler functions on the messages of durable subscriptions.

::

    actor = Actor("tcp://127.0.0.1:5555", name="billing-1", concurrency=8)

    @actor.subscribe("orders", group="billing", ack_wait=30.0, max_deliver=5,
                     retry=Backoff(initial=1.0, factor=2.0, max=60.0, jitter=0.2))
    def handle(msg):
        ...   # return: acked; raise: nacked with a backoff delay (dead-lettered at max_deliver)

    @actor.subscribe("signups", group="emails", idempotent=True)
    async def welcome(msg):   # async handlers run on the actor's asyncio loop
        ...

    actor.run()   # blocks until actor.stop(), SIGINT or SIGTERM

The loop thread owns the connection (heartbeats keep going however long a handler runs). Plain
handlers run on ``concurrency`` worker threads, ``async def`` handlers as tasks on one asyncio
loop thread; at most ``concurrency`` messages run at once in all. Credit follows the workers:
each subscription grants the hub ``min(credit, concurrency * prefetch)``. With ``prefetch=1``
(the default) an actor holds no more messages of a subscription than it can start at once, and
a message waiting locally is one that another of its subscriptions is keeping the workers
from. A higher ``prefetch`` keeps the next messages at hand (fewer round trips to the hub: more
throughput for short handlers) at the price of messages waiting here that another actor of the
group could have taken. A message waiting here for a worker is kept alive with PROGRESS, so
the wait never counts as a try against ``max_deliver``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import os
import queue
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from ..router import protocol
from ..router.clock import Clock
from .cluster import resolve_hub_address
from .cluster_session import new_session  # a Session, or a cluster's
from .connection import CurveKeys, monotonic_ms
from .errors import ClosedError
from .idempotency import DEFAULT_TTL, IdempotencyStore, message_key
from .message import Message
from .retry import DEFAULT_RETRY, Backoff
from .session import DEFAULT_ACK_WAIT_MS, DEFAULT_CREDIT, Session
from .wake import Waker

log = logging.getLogger("zmq_mq.actor")

Handler = Callable[[Message], Any]
_counter = itertools.count(1)
# How long stop() lets running handlers finish before detaching without them.
DEFAULT_GRACE = 30.0
# Where idempotency stores live unless Actor(state_dir=...) says otherwise: one per actor name.
DEFAULT_STATE_ROOT = "./zmq-mq-actor-state"
# After the grace period, how long cancelled async handlers get to unwind.
CANCEL_WAIT_MS = 500
# Once drained, how long stopping waits for idle worker threads and the asyncio loop to end.
# A thread still inside a handler (hung, or past grace) is not waited for: it is a daemon
# thread, abandoned, and whatever it settles later goes nowhere.
THREADS_EXIT_MS = 200


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__ if callable(handler) else None
    )


@dataclass(slots=True)
class _Route:
    topic: str
    group: str
    handler: Handler
    credit: int
    ack_wait: float | None
    max_deliver: int | None
    start: str
    retry: Backoff | None = DEFAULT_RETRY
    idempotent: bool = False
    is_async: bool = False
    sid: int = 0
    ordering: str | None = None


class Actor:
    """A named process of handlers, each attached to a subscription (see module docstring).

    ``state_dir``: where the idempotency store of ``idempotent=True`` handlers lives (default
    ``./zmq-mq-actor-state/<name>``); ``idempotency_ttl``: seconds a processed id is remembered.
    ``rng``: the random source of retry jitter (tests pass a seeded one).
    ``prefetch``: messages per worker an actor may hold per subscription (see module docstring).
    ``clock``: what heartbeats and hub-silence detection read (tests move it; default the
    system clock); timeouts, grace and the PROGRESS of queued messages are real time.
    """

    def __init__(self, endpoint: str | None = None, *, name: str | None = None,
                 concurrency: int = 1, timeout: float = 10.0, grace: float = DEFAULT_GRACE,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None,
                 state_dir: str | os.PathLike | None = None,
                 idempotency_ttl: float = DEFAULT_TTL, rng: random.Random | None = None,
                 prefetch: int = 1, clock: Clock | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError("prefetch must be an integer of at least 1")
        resolve_hub_address(endpoint)  # a malformed address fails here, not in the actor's thread
        self.name = name or f"actor-{next(_counter)}"
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.timeout = timeout
        self.grace = grace
        self.state_dir = state_dir
        self.idempotency_ttl = idempotency_ttl
        self.idempotency: IdempotencyStore | None = None  # opened by run() when a handler wants it
        self._rng = rng or random.Random()
        self._ctx = context or zmq.Context.instance()
        self.curve = curve
        self.clock = clock
        self._routes: list[_Route] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._results: collections.deque = collections.deque()
        # the loop thread's wake-up pipe (actors/wake.py), made by run(): workers and settling
        # threads wake the loop after queueing a result
        self._waker: Waker | None = None
        # Loop-thread state: messages waiting for a free worker, and those running, by
        # (sid, seq); a redelivery of a running message is folded into it, never run twice.
        # _pending_keys: key -> when to send the queued message's next PROGRESS (see _enqueue)
        self._pending: collections.deque[Message] = collections.deque()
        self._pending_keys: dict[tuple[int, int], int] = {}
        self._next_keepalive: int | None = None  # no PROGRESS due before this (a lower bound)
        self._running: dict[tuple[int, int], Message] = {}
        self._folded: dict[tuple[int, int], list[Message]] = {}
        self._folded_at: dict[tuple[int, int], int] = {}  # when the newest folded copy came
        # NACKs of running messages, held until the handler is done: if the hub delivered the
        # message again meanwhile, that delivery is the next try and runs instead (see "done")
        self._nacks: dict[tuple[int, int], int] = {}
        self._by_sid: dict[int, _Route] = {}
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._tasks: set = set()
        self.error: BaseException | None = None
        self.session: Session | None = None

    # --- declaring handlers ----------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str, credit: int = DEFAULT_CREDIT,
                  ack_wait: float | None = None, max_deliver: int | None = None,
                  start: str = "first", retry: Backoff | None = DEFAULT_RETRY,
                  idempotent: bool = False,
                  ordering: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator: run the function on every message of subscription ``group`` on ``topic``.

        ``retry``: the delay before redelivering a message whose handler raised (``None``: at
        once). ``idempotent=True``: a message already processed (same ``msg.msg_id``) is acked
        without running the handler again. ``ordering``: ``"none"``, ``"key"`` (messages of one
        key are handled one at a time, in order, whatever the concurrency) or ``"strict"`` (one
        message at a time); default ``"none"`` for a new subscription.
        """

        def register(handler: Handler) -> Handler:
            self.add_handler(topic, handler, group=group, credit=credit, ack_wait=ack_wait,
                             max_deliver=max_deliver, start=start, retry=retry,
                             idempotent=idempotent, ordering=ordering)
            return handler

        return register

    def add_handler(self, topic: str, handler: Handler, *, group: str, credit: int = DEFAULT_CREDIT,
                    ack_wait: float | None = None, max_deliver: int | None = None,
                    start: str = "first", retry: Backoff | None = DEFAULT_RETRY,
                    idempotent: bool = False, ordering: str | None = None) -> None:
        if self._started.is_set():
            raise RuntimeError("add handlers before the actor runs")
        if ordering is not None and ordering not in protocol.ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(protocol.ORDERINGS)}")
        if retry is not None and not isinstance(retry, Backoff):
            raise TypeError("retry must be a Backoff or None")
        self._routes.append(_Route(topic, group, handler, credit, ack_wait, max_deliver, start,
                                   retry, bool(idempotent), _is_async(handler),
                                   ordering=ordering))

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
        not started go back to the hub, acks are committed, then the actor detaches. Handlers
        still running after ``grace`` do not hold it: async ones are cancelled, threads are
        abandoned (daemon threads); their messages go back to the hub unacked."""
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

    def _open_state(self) -> None:
        if any(r.idempotent for r in self._routes) and self.idempotency is None:
            path = self.state_dir or os.path.join(DEFAULT_STATE_ROOT, self.name)
            self.idempotency = IdempotencyStore(path, ttl=self.idempotency_ttl)

    def run(self, install_signals: bool = True) -> None:
        """Attach every handler and process messages until ``stop()``, SIGINT or SIGTERM."""
        if not self._routes:
            raise RuntimeError("no handlers: decorate a function with @actor.subscribe(...) first")
        if self._finished.is_set():
            raise ClosedError("an actor runs once; create a new one")
        self._open_state()
        previous = self._install_signals() if install_signals else {}
        waker = self._waker = Waker(self._ctx, "actor")
        session = self.session = new_session(self.endpoint, name=self.name, timeout=self.timeout,
                                             context=self._ctx, curve=self.curve, clock=self.clock)
        session.settler = self
        n_workers = self.concurrency if any(not r.is_async for r in self._routes) else 0
        workers = [threading.Thread(target=self._worker, name=f"{self.name}-worker-{i}", daemon=True)
                   for i in range(n_workers)]
        aloop_thread = None
        try:
            if any(r.is_async for r in self._routes):
                aloop_thread = self._start_async_loop()
            session.connect()
            for route in self._routes:
                spec = session.subscribe(
                    route.topic, route.group,
                    credit=max(1, min(route.credit, self.concurrency * self.prefetch)),
                    ack_wait_ms=None if route.ack_wait is None else int(route.ack_wait * 1000),
                    max_deliver=route.max_deliver, start=route.start, ordering=route.ordering,
                )
                route.sid = spec.sid
                self._by_sid[spec.sid] = route
            for w in workers:
                w.start()
            self._started.set()
            log.info("actor %s attached to %s", self.name,
                     ", ".join(f"{r.topic}/{r.group}" for r in self._routes))
            self._loop(session, waker)
            self._drain(session, waker)
        finally:
            for _ in workers:
                self._work.put(None)
            if aloop_thread is not None:
                self._aloop.call_soon_threadsafe(self._aloop.stop)
            # one budget for all: hung handlers must not hold the stop past grace
            exit_deadline = monotonic_ms() + THREADS_EXIT_MS
            for t in [*workers, *([aloop_thread] if aloop_thread is not None else [])]:
                if t.is_alive():
                    t.join(max(0, exit_deadline - monotonic_ms()) / 1000)
            session.close()
            waker.close()  # an abandoned handler settling later finds no pipe
            if self.idempotency is not None:
                self.idempotency.close()
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

    def _loop(self, session: Session, waker: Waker) -> None:
        wake_rx = waker.rx
        poller = zmq.Poller()
        poller.register(wake_rx, zmq.POLLIN)
        sock = session.conn.socket
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            if session.conn.socket is not sock:  # reconnected: a new socket to watch
                poller.unregister(sock)
                sock = session.conn.socket
                poller.register(sock, zmq.POLLIN)
            timeout = session.conn.heartbeat_ms
            if self._next_keepalive is not None:
                timeout = max(0, min(timeout, self._next_keepalive - monotonic_ms()))
            events = dict(poller.poll(timeout))
            if wake_rx in events:
                waker.drain()  # before reading _results (see actors/wake.py)
            if sock in events:
                session.pump(0)
            else:
                session.keepalive()
            self._apply_results(session)
            self._take_inbox(session)
            self._start_pending()
            self._keep_queued_alive(session)

    def _enqueue(self, msg: Message, since: int | None = None) -> None:
        """Queue a delivered message for the next free worker.

        While it waits, the actor sends PROGRESS for it every half ``ack_wait``: its wait for a
        worker (busy with another subscription's messages, or with ``prefetch`` > 1) is not a
        try, and an expiry would charge one (``max_deliver``) without running the handler.
        ``since``: when the message arrived, if it waited elsewhere first (folded).
        """
        self._pending.append(msg)
        due = (monotonic_ms() if since is None else since) + self._keepalive_ms(msg.sid)
        self._pending_keys[(msg.sid, msg.seq)] = due
        if self._next_keepalive is None or due < self._next_keepalive:
            self._next_keepalive = due

    def _keepalive_ms(self, sid: int) -> int:
        spec = self.session.specs.get(sid) if self.session is not None else None
        ack_wait = spec.granted_ack_wait_ms if spec is not None else None
        return max(1, (ack_wait or DEFAULT_ACK_WAIT_MS) // 2)

    def _keep_queued_alive(self, session: Session) -> None:
        """PROGRESS for queued messages whose time has come (see ``_enqueue``)."""
        if self._next_keepalive is None:
            return
        now = monotonic_ms()
        if now < self._next_keepalive:
            return
        dues = self._pending_keys
        for msg in self._pending:
            key = (msg.sid, msg.seq)
            due = dues.get(key)
            if due is not None and due <= now:
                session.settle(msg, "progress")
                dues[key] = now + self._keepalive_ms(msg.sid)
        self._next_keepalive = min(dues.values()) if dues else None

    def _take_inbox(self, session: Session) -> None:
        """Move delivered messages to the pending queue; ack at once those already processed."""
        inbox = session.inbox
        if not inbox:
            return
        msgs = list(inbox)
        inbox.clear()
        done: set[bytes] = set()
        store = self.idempotency
        if store is not None:
            keys = [message_key(m) for m in msgs if self._by_sid[m.sid].idempotent]
            if keys:
                done = store.seen(keys)
        by_sid = self._by_sid
        for msg in msgs:
            key = (msg.sid, msg.seq)
            if key in self._running:  # delivered again while it runs: its outcome covers both
                self._folded.setdefault(key, []).append(msg)
                self._folded_at[key] = monotonic_ms()
            elif key in self._pending_keys:
                # the queued copy's delivery expired meanwhile (its PROGRESS came too late, or
                # the hub restarted): this one is in flight now, with the hub's count of
                # deliveries; it runs in the queued copy's place
                pending = self._pending
                for i, queued in enumerate(pending):
                    if (queued.sid, queued.seq) == key:
                        pending[i] = msg
                        break
            elif done and by_sid[msg.sid].idempotent and message_key(msg) in done:
                log.info("%s/%s seq %d (%s) already processed: acked without running",
                         msg.topic, msg.group, msg.seq, msg.msg_id)
                msg.settled = "ack"
                session.settle(msg, "ack")
            else:
                self._enqueue(msg)
        session.flush_acks()

    def _start_pending(self) -> None:
        """Hand waiting messages to free workers: never more than ``concurrency`` at once."""
        pending = self._pending
        while pending and len(self._running) < self.concurrency:
            msg = pending.popleft()
            key = (msg.sid, msg.seq)
            self._pending_keys.pop(key, None)
            if key in self._running:
                self._folded.setdefault(key, []).append(msg)
                self._folded_at[key] = monotonic_ms()
                continue
            self._running[key] = msg
            route = self._by_sid[msg.sid]
            if route.is_async:
                self._aloop.call_soon_threadsafe(self._spawn, msg, route)
            else:
                self._work.put((msg, route))

    def _drain(self, session: Session, waker: Waker) -> None:
        """Stopping: let running handlers finish within the grace period, then detach."""
        # Messages not started yet: give them back.
        for msg in self._pending:
            msg.settled = "release"
            session.settle(msg, "release")
        self._pending.clear()
        self._pending_keys.clear()
        self._next_keepalive = None
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                msg = item[0]
                self._running.pop((msg.sid, msg.seq), None)
                msg.settled = "release"
                session.settle(msg, "release")
        deadline = monotonic_ms() + int(self.grace * 1000)
        cancel_deadline = None
        while self._running:
            now = monotonic_ms()
            if now >= deadline:
                if not self._tasks or cancel_deadline is not None and now >= cancel_deadline:
                    break
                if cancel_deadline is None:  # async handlers past grace: cancel (released)
                    log.warning("%d async handlers still running after %.1f s: cancelling",
                                len(self._tasks), self.grace)
                    self._aloop.call_soon_threadsafe(self._cancel_tasks)
                    cancel_deadline = now + CANCEL_WAIT_MS
            limit = cancel_deadline if cancel_deadline is not None else deadline
            if waker.rx.poll(min(session.conn.heartbeat_ms, max(1, limit - now))):
                waker.drain()
            session.keepalive()
            self._apply_results(session)
        if self._running:
            log.warning("%d handlers still running after the grace period: their messages go "
                        "back to the hub", len(self._running))
        if not session.detach_all(self.timeout):
            log.warning("hub did not confirm detach of %s", self.name)

    # --- worker side -----------------------------------------------------------------------

    def _failed(self, msg: Message, route: _Route, exc: BaseException) -> None:
        log.warning("handler for %s/%s failed on seq %d (delivery %d): %r",
                    msg.topic, msg.group, msg.seq, msg.deliveries, exc)
        if msg.settled is None:
            delay = route.retry.delay(msg.deliveries, self._rng) if route.retry else 0.0
            msg.nack(delay)

    def _wants_out(self, msg: Message, exc: BaseException) -> None:
        """SystemExit, KeyboardInterrupt in a handler: not a failure of the message."""
        log.error("handler for %s/%s raised %r on seq %d: stopping the actor",
                  msg.topic, msg.group, exc, msg.seq)
        if msg.settled is None:
            msg.release()  # another actor takes it
        self._stop.set()

    def _finished_one(self, msg: Message) -> None:
        self._results.append((msg, "done", None))
        self._waker.wake()  # only workers and tasks of a running actor get here

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            msg, route = item
            try:
                route.handler(msg)
            except Exception as exc:
                self._failed(msg, route, exc)
            except BaseException as exc:
                self._wants_out(msg, exc)
            else:
                if msg.settled is None:
                    msg.ack()
            finally:  # whatever happened, the worker is free again and keeps serving
                self._finished_one(msg)

    # --- async side ------------------------------------------------------------------------

    def _start_async_loop(self) -> threading.Thread:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._aloop = loop
            ready.set()
            try:
                loop.run_forever()
                if self._tasks:  # stopped with tasks left: cancel them and let them unwind
                    self._cancel_tasks()
                    loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            finally:
                loop.close()

        thread = threading.Thread(target=main, name=f"{self.name}-asyncio", daemon=True)
        thread.start()
        ready.wait()
        return thread

    def _spawn(self, msg: Message, route: _Route) -> None:
        task = self._aloop.create_task(self._run_async(msg, route))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _run_async(self, msg: Message, route: _Route) -> None:
        try:
            await route.handler(msg)
        except asyncio.CancelledError:
            if msg.settled is None:
                msg.release()  # stopped past the grace period: not processed, not failed
        except Exception as exc:
            self._failed(msg, route, exc)
        except BaseException as exc:
            self._wants_out(msg, exc)
        else:
            if msg.settled is None:
                msg.ack()
        finally:
            self._finished_one(msg)

    # --- settling (any thread in, loop thread out) -------------------------------------------

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        """Message.ack() and friends, from any thread: handed to the loop thread."""
        self._results.append((msg, kind, arg))
        if kind == "progress":
            self._wake()

    def _wake(self) -> None:
        """Wake the loop thread (from any thread), once per round: call it after queueing the
        work it must see (a no-op before run() and after it ends)."""
        waker = self._waker
        if waker is not None:
            waker.wake()

    def _apply_results(self, session: Session) -> None:
        results = self._results
        if not results:
            session.flush_acks()
            return
        batch = []
        while results:
            batch.append(results.popleft())
        store = self.idempotency
        if store is not None:
            # Processed ids are recorded before their acks leave: an ack the hub has means the
            # id is durable here, so a redelivery is recognised.
            keys = [message_key(m) for m, kind, _ in batch
                    if kind == "ack" and self._by_sid[m.sid].idempotent]
            if keys:
                try:
                    store.record(keys)
                except Exception:
                    log.exception("could not record %d processed ids; acking anyway", len(keys))
        running = self._running
        for msg, kind, arg in batch:
            if kind == "done":
                key = (msg.sid, msg.seq)
                running.pop(key, None)
                dups = self._folded.pop(key, ())
                since = self._folded_at.pop(key, None)
                nack = self._nacks.pop(key, None)
                if nack is not None:
                    if dups:
                        # Delivered again while it ran (its ack_wait expired, or the hub
                        # restarted): the hub counted this run's failure then, and the newest
                        # delivery is the next try, in flight here. Run it now; a NACK would
                        # charge it as a second failure without running it.
                        self._enqueue(dups[-1], since)
                    else:
                        session.settle(msg, "nack", nack)
                elif msg.settled == "ack":
                    # an ack is sent again for each copy in case the first one reached a hub
                    # that then restarted; a reject or release covers the seq as it is
                    for dup in dups:
                        dup.settled = "ack"
                        session.settle(dup, "ack")
            elif kind == "nack" and running.get((msg.sid, msg.seq)) is msg:
                self._nacks[(msg.sid, msg.seq)] = arg  # sent when the handler is done
            else:
                session.settle(msg, kind, arg)
        session.flush_acks()
