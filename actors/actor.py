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
handlers run on ``concurrency`` worker threads, ``async def`` handlers on one asyncio loop
thread, at most ``concurrency`` at once (of each kind). Everything is batched: a DELIVER frame
becomes one hand-off to the workers (they pull from a local queue; one wake-up per batch), the
messages finished in a loop turn become one ACK frame, and the window of messages held changes
at most once per turn (one CREDIT). An actor whose handlers are all ``async def`` has no
separate loop thread for the socket: the asyncio loop reads and writes it itself, between its
handlers (``_loop_on_aio``; ``loop_io=False`` opts out), and the thread that called ``run()``
only steps in to stop, reconnect, or heartbeat while a handler blocks the loop.

The window each subscription grants the hub adapts (``actors/window.py``): it starts at
``concurrency``, doubles while the workers run dry with the window full (the hub, not the
handlers, set the pace), and shrinks to what the workers finish in a few tens of ms once a
message waits here longer than that. ``credit`` (default 1000, or 1.5 x ``concurrency`` when
that is more) is its cap. A fast actor ends
at the cap; a slow one in a work queue holds about ``concurrency`` plus what it finishes in
50 ms, and leaves the rest to the other actors of the group. ``prefetch=N`` opts out: a fixed
window of ``min(credit, concurrency * N)``. A message waiting here for a worker longer than
half ``ack_wait`` (several subscriptions sharing the workers, or a large fixed window) is kept
alive with PROGRESS, so the wait never counts as a try against ``max_deliver``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import inspect
import itertools
import logging
import os
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
from .session import DEFAULT_ACK_WAIT_MS, Session
from .wake import Waker
from .window import CreditWindow

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
# An Actor subscription's default credit: the cap of its adaptive window (see module docstring),
# or one and a half times the concurrency when that is more: a credit equal to the concurrency
# leaves every handler slot idle for a round trip to the hub after each message (see
# default_credit).
DEFAULT_CREDIT = 1000


# While an Actor runs, the cyclic GC's first threshold (allocations between young-generation
# passes; CPython's default is 700) is at least this (see _GcThreshold).
GC_THRESHOLD = 50_000


class _GcThreshold:
    """Raise the GC's first threshold while any Actor that asks runs; restore it after the
    last one stops (if nobody changed it meanwhile).

    Thousands of handlers in flight keep tens of thousands of objects (tasks, futures, timers,
    messages) alive for the length of a handler: at the default threshold each one survives a
    few young passes, is promoted, and every full pass walks them all again. Measured in the
    seed model (5,000 ``async def`` handlers of 100 ms, bench/seed_model.py): 0.9 s of GC passes
    in a 3.5 s drain at 700 (full passes of ~60 ms), 0.07 s at 50,000 (three passes of ~17 ms).
    A short-lived object costs nothing either way: it is freed by its reference count."""

    lock = threading.Lock()
    users = 0
    saved: tuple[int, int, int] | None = None
    ours: tuple[int, int, int] | None = None

    @classmethod
    def enter(cls, threshold: int) -> None:
        with cls.lock:
            current = gc.get_threshold()
            if cls.users == 0:
                cls.saved = current
            cls.users += 1
            if 0 < current[0] < threshold:  # 0: the application turned the GC off this way
                cls.ours = (threshold, *current[1:])
                gc.set_threshold(*cls.ours)

    @classmethod
    def leave(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users == 0:
                if cls.ours is not None and gc.get_threshold() == cls.ours:
                    gc.set_threshold(*cls.saved)
                cls.saved = cls.ours = None


def default_credit(concurrency: int) -> int:
    """The credit of a subscription that did not give one: ``max(DEFAULT_CREDIT, 1.5 x
    concurrency)``. Measured with 5,000 handlers of 100 ms (``bench/seed_model.py``, a loaded
    2-core machine): credit 5,000 left each slot idle for the ack's round trip after every
    message (76-84 % of the ideal rate); the extra half keeps a message here for each slot that
    frees (86-90 %)."""
    return max(DEFAULT_CREDIT, concurrency + concurrency // 2)


# The longest acks of finished messages wait to be coalesced when the hub is not waiting for
# them (see Actor._flush_acks), in ms.
ACK_DELAY_MS = 5
# A finished message's result, when the runtime acked it on return (one entry instead of two).
_DONE_ACK = "done+ack"


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the handlers' asyncio loop (see ``Actor``'s ``event_loop``)."""
    if event_loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"event_loop must be 'auto', 'asyncio' or 'uvloop', got {event_loop!r}")
    if event_loop == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise ImportError("event_loop='uvloop' needs the uvloop package "
                              "(pip install uvloop)") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__ if callable(handler) else None
    )


@dataclass(slots=True)
class _Route:
    topic: str
    group: str
    handler: Handler
    credit: int | None  # None: default_credit(concurrency)
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
    ``prefetch``: None (default) for the adaptive window; N for a fixed window of
    ``concurrency * N`` messages per subscription (see module docstring).
    ``clock``: what heartbeats and hub-silence detection read (tests move it; default the
    system clock); timeouts, grace and the PROGRESS of queued messages are real time.
    ``gc_threshold``: while the actor runs, the cyclic GC's first threshold (``gc``) is at
    least this (default ``GC_THRESHOLD``, 50,000; restored when the last actor stops): with
    thousands of handlers in flight the default 700 spent ~25 % of the process in GC passes.
    ``None`` leaves the GC as the application set it.
    ``loop_io``: when every handler is ``async def``, serve the hub socket on the asyncio loop
    that runs them (default True; see ``_loop_on_aio``); False: on a thread of its own, as an
    actor with plain handlers does. Measured (bench/RESULTS.md, issue 12 i12-loop): True is
    faster when the handlers wait for the hub (credit about the concurrency; quick handlers),
    False slightly faster with thousands of slow handlers and a deeper window.
    ``event_loop``: the asyncio loop that runs ``async def`` handlers: ``"auto"`` (default)
    uvloop's when the ``uvloop`` package is installed (as uvicorn's ``--loop auto``), else the
    standard one; ``"asyncio"``: the standard one (``asyncio.new_event_loop()``, which follows
    the event loop policy the application set); ``"uvloop"``: uvloop's (an ImportError here if
    it is not installed). Measured with 5,000 handlers of 100 ms (bench/seed_model.py,
    bench/RESULTS.md issue 12 i12-trim): uvloop cuts the actor process's CPU per message by
    about a quarter (12.8 -> 9.3 us) and the lateness of the handlers' timers by half.
    """

    def __init__(self, endpoint: str | None = None, *, name: str | None = None,
                 concurrency: int = 1, timeout: float = 10.0, grace: float = DEFAULT_GRACE,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None,
                 state_dir: str | os.PathLike | None = None,
                 idempotency_ttl: float = DEFAULT_TTL, rng: random.Random | None = None,
                 prefetch: int | None = None, clock: Clock | None = None,
                 gc_threshold: int | None = GC_THRESHOLD, loop_io: bool = True,
                 event_loop: str = "auto") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int)
                                     or prefetch < 1):
            raise ValueError("prefetch must be None (adaptive) or an integer of at least 1")
        resolve_hub_address(endpoint)  # a malformed address fails here, not in the actor's thread
        self._new_loop = _loop_factory(event_loop)
        self.name = name or f"actor-{next(_counter)}"
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.gc_threshold = gc_threshold
        self.loop_io = loop_io
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
        self._results: collections.deque = collections.deque()
        # the loop thread's wake-up pipe (actors/wake.py), made by run(): workers and settling
        # threads wake the loop after queueing a result
        self._waker: Waker | None = None
        # Handed to the workers, not started yet: plain handlers' messages (worker threads pull
        # them, waiting on _tcond when there are none) and async ones (pulled by up to
        # `concurrency` chains on the asyncio loop, kicked once per batch).
        self._tq: collections.deque[Message] = collections.deque()
        self._tcond = threading.Condition()
        self._tidle = 0  # worker threads waiting for messages
        self._closing = False  # worker threads: exit
        self._aq: collections.deque[Message] = collections.deque()
        self._akick_due = False  # a kick of the asyncio side is scheduled
        self._achains = 0  # async chains running or parked (asyncio thread only)
        self._aparked: list[asyncio.Future] = []  # parked chains, waiting for messages
        # Loop-thread state: messages handed to the workers (queued or running), by (sid, topic,
        # seq) (a pattern's or partitioned topic's sid reads several topics, each numbered from
        # 1); a redelivery of a running message is folded into it, never run twice.
        self._running: dict[tuple[int, str, int], Message] = {}
        self._folded: dict[tuple[int, str, int], list[Message]] = {}
        self._folded_at: dict[tuple[int, str, int], int] = {}  # when the newest folded copy came
        # NACKs of running messages, held until the handler is done: if the hub delivered the
        # message again meanwhile, that delivery is the next try and runs instead (see "done")
        self._nacks: dict[tuple[int, str, int], int] = {}
        self._windows: dict[int, CreditWindow] = {}  # sid -> its window (adaptive or fixed)
        self._next_keepalive = 0  # no PROGRESS of queued messages due before this
        self._acks_due: int | None = None  # acks held back are sent by then (see _flush_acks)
        self._by_sid: dict[int, _Route] = {}
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._tasks: set = set()
        # All handlers async (and one hub socket): the session's I/O runs on the asyncio loop
        # while _io_on_loop (see _loop_on_aio); _io_lock is held by each of its turns, so the
        # run() thread takes the session back (stopping, reconnecting) between turns, never
        # waiting for a handler.
        self._io_on_loop = False
        self._io_lock = threading.Lock()
        self._aio_fd: int | None = None
        self._aio_turn_due = False
        self._aio_timer: asyncio.TimerHandle | None = None
        self._aio_timer_at = 0
        self._aio_turned = 0  # when the loop last took a turn (ms)
        self.error: BaseException | None = None
        self.session: Session | None = None

    # --- declaring handlers ----------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str, credit: int | None = None,
                  ack_wait: float | None = None, max_deliver: int | None = None,
                  start: str = "first", retry: Backoff | None = DEFAULT_RETRY,
                  idempotent: bool = False,
                  ordering: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator: run the function on every message of subscription ``group`` on ``topic``.

        ``credit``: the most messages this actor holds of the subscription (the cap of its
        adaptive window; with ``prefetch`` set, ``min(credit, concurrency * prefetch)``);
        default ``max(1000, 1.5 x concurrency)`` (:func:`default_credit`).
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

    def add_handler(self, topic: str, handler: Handler, *, group: str, credit: int | None = None,
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
        if self.gc_threshold is not None:
            _GcThreshold.enter(self.gc_threshold)
        try:
            if any(r.is_async for r in self._routes):
                aloop_thread = self._start_async_loop()
            session.connect()
            for route in self._routes:
                cap = max(1, route.credit if route.credit is not None
                          else default_credit(self.concurrency))
                if self.prefetch is not None:  # fixed window
                    cap = max(1, min(cap, self.concurrency * self.prefetch))
                window = CreditWindow(self.concurrency, cap, monotonic_ms(),
                                      start=cap if self.prefetch is not None else None)
                spec = session.subscribe(
                    route.topic, route.group,
                    credit=window.window,
                    ack_wait_ms=None if route.ack_wait is None else int(route.ack_wait * 1000),
                    max_deliver=route.max_deliver, start=route.start, ordering=route.ordering,
                )
                route.sid = spec.sid
                self._by_sid[spec.sid] = route
                self._windows[spec.sid] = window
            for w in workers:
                w.start()
            self._started.set()
            log.info("actor %s attached to %s", self.name,
                     ", ".join(f"{r.topic}/{r.group}" for r in self._routes))
            if (self.loop_io and aloop_thread is not None and not workers
                    and isinstance(session, Session)):
                self._loop_on_aio(session, waker)
            else:
                self._loop(session, waker)
            self._drain(session, waker)
        finally:
            with self._tcond:
                self._closing = True
                self._tcond.notify_all()
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
            if self.gc_threshold is not None:
                _GcThreshold.leave()
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
        adaptive = self.prefetch is None
        while not self._stop.is_set():
            if session.conn.socket is not sock:  # reconnected: a new socket to watch
                poller.unregister(sock)
                sock = session.conn.socket
                poller.register(sock, zmq.POLLIN)
            timeout = session.conn.heartbeat_ms
            if self._acks_due is not None:  # acks held back (see _flush_acks)
                timeout = min(timeout, max(0, self._acks_due - monotonic_ms()))
            if self._tq or self._aq:  # PROGRESS of queued messages, window shrinking
                timeout = min(timeout, max(1, self._next_keepalive - monotonic_ms()),
                              self._windows_hold_ms())
            events = dict(poller.poll(timeout))
            if wake_rx in events:
                waker.drain()  # before reading _results (see actors/wake.py)
            # Acks first: they free the hub's credit, and its next DELIVER is a round trip
            # away; decoding what the hub sent meanwhile can wait the few hundred us.
            self._apply_results(session)
            if sock in events:
                session.pump(0)
            else:
                session.keepalive()
            self._take_inbox(session)
            now = monotonic_ms()
            if adaptive:
                self._adapt(session, now)
            if now >= self._next_keepalive:
                self._keep_queued_alive(session, now)

    def _flush_acks(self, session: Session) -> None:
        """Send the acks of finished messages now if the hub waits for them, else within
        ``ACK_DELAY_MS``. The hub waits for them when a window is at least half used (its
        in-flight count, held here or finished and not yet acked): only acks free credit.
        Otherwise (a steady stream well under the window, e.g. W5) each ACK frame costs the
        hub a commit of its own, whose fsync every publish arriving meanwhile waits for;
        coalesced, a few ACK frames per ``ACK_DELAY_MS`` cover them all."""
        pending = session.pending_acks
        if not pending:
            self._acks_due = None
            return
        now = monotonic_ms()
        due = self._acks_due
        if due is None:
            due = self._acks_due = now + ACK_DELAY_MS
        if now < due:
            for window in self._windows.values():
                if (window.held + pending) * 2 >= window.window:
                    break
            else:
                return
        self._acks_due = None
        session.flush_acks()

    def _windows_hold_ms(self) -> int:
        return min(w.hold_ms for w in self._windows.values()) if self.prefetch is None else 1 << 30

    def _adapt(self, session: Session, now: int) -> None:
        """Once per turn: let each window follow how fast its messages are finished."""
        starved_t = self._tidle > 0 and not self._tq
        starved_a = (bool(self._aparked) or self._achains < self.concurrency) and not self._aq
        oldest: dict[int, int] = {}
        for q in (self._tq, self._aq):
            try:
                head = q[0]
            except IndexError:
                continue
            since = head._queued_at
            if since is not None:
                oldest[head.sid] = now - since
        by_sid = self._by_sid
        for sid, window in self._windows.items():
            starved = starved_a if by_sid[sid].is_async else starved_t
            new = window.update(now, starved=starved, oldest_wait_ms=oldest.get(sid))
            if new is not None and sid in session.specs:
                session.set_credit(sid, new)

    def _keep_queued_alive(self, session: Session, now: int) -> None:
        """PROGRESS for messages that have waited for a worker half their ``ack_wait``: the wait
        (for a worker busy with another subscription's messages, or with a large fixed window)
        is not a try, and an expiry would charge one (``max_deliver``) without running it."""
        half = self._keepalive_ms()
        due_next = now + half
        for q in (self._tq, self._aq):
            try:
                waiting = list(q)
            except RuntimeError:  # changed while copied (workers pull): look again soon
                due_next = now + 1
                continue
            for msg in waiting:
                since = msg._queued_at
                if since is None or msg.settled is not None:
                    continue
                if now - since >= half:
                    msg._queued_at = now
                    session.settle(msg, "progress")
                    since = now
                due_next = min(due_next, since + half)
        self._next_keepalive = due_next

    def _keepalive_ms(self) -> int:
        specs = self.session.specs if self.session is not None else {}
        waits = [s.granted_ack_wait_ms or DEFAULT_ACK_WAIT_MS for s in specs.values()]
        return max(1, min(waits, default=DEFAULT_ACK_WAIT_MS) // 2)

    def _take_inbox(self, session: Session) -> None:
        """Hand delivered messages to the workers (one hand-off per batch); ack at once those
        already processed."""
        inbox = session.inbox
        if not inbox:
            return
        msgs = list(inbox)
        inbox.clear()
        done: set[bytes] = set()
        store = self.idempotency
        by_sid = self._by_sid
        if store is not None:
            keys = [message_key(m) for m in msgs if by_sid[m.sid].idempotent]
            if keys:
                done = store.seen(keys)
        running = self._running
        windows = self._windows
        now = monotonic_ms()
        plain: list[Message] = []
        coros: list[Message] = []
        # a DELIVER frame is one sid: look its route and window up once per run of one sid
        sid = window = out = None
        taken = 0
        for msg in msgs:
            if msg.sid != sid:
                if taken:
                    window.delivered(taken)
                    taken = 0
                sid = msg.sid
                window = windows[sid]
                out = coros if by_sid[sid].is_async else plain
            key = (sid, msg.topic, msg.seq)
            held = running.get(key)
            if held is not None:  # delivered again while we hold it
                if held._queued_at is not None:
                    # not started: this delivery is the one in flight, with the hub's count
                    # (its next PROGRESS stays due as before: early, never late)
                    held.deliveries = msg.deliveries
                else:  # running: its outcome covers both
                    self._folded.setdefault(key, []).append(msg)
                    self._folded_at[key] = now
            elif done and by_sid[msg.sid].idempotent and message_key(msg) in done:
                log.info("%s/%s seq %d (%s) already processed: acked without running",
                         msg.topic, msg.group, msg.seq, msg.msg_id)
                msg.settled = "ack"
                session.settle(msg, "ack")
            else:
                running[key] = msg
                msg._queued_at = now
                taken += 1
                out.append(msg)
        if taken:
            window.delivered(taken)
        self._flush_acks(session)
        if plain or coros:
            self._hand_out(plain, coros)

    def _hand_out(self, plain: list[Message], coros: list[Message]) -> None:
        # the first PROGRESS due among them (see _keep_queued_alive), read before the workers
        # may start them
        since = min(m._queued_at for m in (plain[:1] + coros[:1] + plain[-1:] + coros[-1:]))
        due = since + self._keepalive_ms()
        if due < self._next_keepalive:
            self._next_keepalive = due
        if plain:
            self._tq.extend(plain)
            if self._tidle:
                with self._tcond:
                    self._tcond.notify(len(plain))
        if coros:
            self._aq.extend(coros)
            if self._io_on_loop:  # called on the asyncio loop (see _aio_turn): no hand-off
                self._akick()
            elif not self._akick_due:
                self._akick_due = True
                self._aloop.call_soon_threadsafe(self._akick)

    def _drain(self, session: Session, waker: Waker) -> None:
        """Stopping: let running handlers finish within the grace period, then detach."""
        # Messages not started yet: give them back (workers take no more once _stop is set).
        for q in (self._tq, self._aq):
            while True:
                try:
                    msg = q.popleft()
                except IndexError:
                    break
                self._running.pop((msg.sid, msg.topic, msg.seq), None)
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

    # --- all handlers async: the session's I/O on the asyncio loop -----------------------------

    def _loop_on_aio(self, session: Session, waker: Waker) -> None:
        """The loop of an actor whose handlers are all ``async def``: the hub socket is read and
        written on the asyncio loop (``_aio_turn``), so a DELIVER frame starts its handlers in
        the same loop iteration and the acks of handlers that finish go out in the next one:
        no hand-off between threads, no GIL passed back and forth per message.

        This thread stays the session's other owner: it takes the session (under
        ``_io_lock``, between two turns, never waiting for a handler) when stopping, so a
        handler that blocks the loop cannot hold the stop past grace (``_drain`` runs here as
        in the threaded loop); for a reconnect when the loop found the hub silent (a reconnect
        waits for the handshake; the handlers go on meanwhile); and for heartbeats while a
        handler blocks the loop."""
        loop = self._aloop
        with self._io_lock:
            self._io_on_loop = True
        loop.call_soon_threadsafe(self._aio_watch)
        try:
            while not self._stop.is_set():
                hb = session.conn.heartbeat_ms
                if waker.rx.poll(hb // 2):
                    waker.drain()
                if self._stop.is_set():
                    break
                if self._io_on_loop and monotonic_ms() - self._aio_turned > hb // 2:
                    # no turn for half a heartbeat interval: a handler blocks the loop; the
                    # heartbeats go on from here (between two turns), so the hub does not take
                    # the actor for dead and hand its messages to another one
                    with self._io_lock:
                        if self._io_on_loop:
                            session.keepalive(0)
                if not self._io_on_loop:  # the loop gave the session back: hub silent
                    session.keepalive()  # reconnect (or give up until the next try)
                    with self._io_lock:
                        self._io_on_loop = not self._stop.is_set()
                    if self._io_on_loop:
                        loop.call_soon_threadsafe(self._aio_watch)
        finally:
            with self._io_lock:  # after this no turn touches the session
                self._io_on_loop = False
            try:
                loop.call_soon_threadsafe(self._aio_unwatch)
            except RuntimeError:
                pass

    def _aio_watch(self) -> None:
        """On the loop: watch the hub socket (again, after a reconnect) and take a turn."""
        with self._io_lock:
            if not self._io_on_loop:
                return
            self._aio_unwatch()
            self._aio_fd = self.session.conn.socket.getsockopt(zmq.FD)
            self._aloop.add_reader(self._aio_fd, self._aio_turn)
        self._aio_turn()

    def _aio_unwatch(self) -> None:
        if self._aio_fd is not None:
            try:
                self._aloop.remove_reader(self._aio_fd)
            except (OSError, ValueError):
                pass
            self._aio_fd = None
        if self._aio_timer is not None:
            self._aio_timer.cancel()
            self._aio_timer = None

    def _aio_turn_soon(self) -> None:
        if not self._aio_turn_due:
            self._aio_turn_due = True
            self._aloop.call_soon(self._aio_turn)

    def _aio_timer_fired(self) -> None:
        self._aio_timer = None
        self._aio_turn()

    def _aio_turn(self) -> None:
        """One turn of ``_loop`` on the asyncio loop: acks and other results out, what the hub
        sent read and handed to the chains (started in this loop iteration), windows and
        PROGRESS; then the timer of the next thing due. Runs when the socket's descriptor
        signals, when handlers finish (once per loop iteration), and on that timer."""
        self._aio_turn_due = False
        self._aio_turned = monotonic_ms()
        with self._io_lock:
            if not self._io_on_loop:  # the run() thread has the session now
                if self._results:
                    self._waker.wake()
                return
            session = self.session
            conn = session.conn
            try:
                self._apply_results(session)
                sock = conn.socket
                if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    session.pump(0, 0)  # never waits, never reconnects
                else:
                    session.keepalive(0)
                self._take_inbox(session)
                now = monotonic_ms()
                if self.prefetch is None:
                    self._adapt(session, now)
                if now >= self._next_keepalive:
                    self._keep_queued_alive(session, now)
                readable = sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
                if not readable and session.specs and conn.hub_silent(conn.now_ms()):
                    # reconnecting waits for a handshake: the run() thread does it
                    self._io_on_loop = False
                    self._aio_unwatch()
                    self._waker.wake()
                    return
            except Exception:  # e.g. a frame that does not decode: logged, the loop goes on
                log.exception("actor %s: talking to the hub", self.name)
                readable = False
                now = monotonic_ms()
        # ZeroMQ's descriptor signals edges: what arrived while we read or wrote is looked
        # for here, not left for the next signal
        if readable or self._results:
            self._aio_turn_soon()
        timeout = session.conn.heartbeat_ms
        if self._acks_due is not None:
            timeout = min(timeout, max(0, self._acks_due - now))
        if self._aq:
            timeout = min(timeout, max(1, self._next_keepalive - now), self._windows_hold_ms())
        at = now + timeout
        timer = self._aio_timer
        if timer is None or at < self._aio_timer_at:
            if timer is not None:
                timer.cancel()
            self._aio_timer_at = at
            self._aio_timer = self._aloop.call_later(timeout / 1000, self._aio_timer_fired)

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

    def _finished_one(self, msg: Message, kind: str = "done") -> None:
        self._results.append((msg, kind, None))
        if self._io_on_loop:  # on the asyncio loop, which does the I/O: one turn for all
            if not self._aio_turn_due:
                self._aio_turn_due = True
                self._aloop.call_soon(self._aio_turn)
            return
        waker = self._waker  # only workers and tasks of a running actor get here
        if not waker.sent:
            waker.wake()

    def _worker(self) -> None:
        """A worker thread: pull queued messages and run them until the actor closes."""
        tq, cond, stop, by_sid = self._tq, self._tcond, self._stop, self._by_sid
        finished = self._finished_one
        while True:
            try:
                if stop.is_set():
                    raise IndexError  # stopping: take no more (the loop gives them back)
                msg = tq.popleft()
            except IndexError:
                with cond:
                    if self._closing:
                        return
                    if tq and not stop.is_set():
                        continue
                    self._tidle += 1
                    cond.wait(1.0 if stop.is_set() else None)
                    self._tidle -= 1
                continue
            msg._queued_at = None
            route = by_sid[msg.sid]
            kind = "done"
            try:
                route.handler(msg)
            except Exception as exc:
                self._failed(msg, route, exc)
            except BaseException as exc:
                self._wants_out(msg, exc)
            else:
                if msg.settled is None:
                    msg.settled = "ack"  # acked on return: sent with the "done"
                    kind = _DONE_ACK
            finally:  # whatever happened, the worker is free again and keeps serving
                finished(msg, kind)

    # --- async side ------------------------------------------------------------------------

    def _start_async_loop(self) -> threading.Thread:
        ready = threading.Event()

        def main() -> None:
            loop = self._new_loop()
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

    def _akick(self) -> None:
        """On the asyncio loop, once per batch handed out: wake parked chains for the queued
        async messages, and start new ones up to ``concurrency`` chains. A chain runs queued
        messages one after another and parks (a future) when there are none: no task per
        message."""
        self._akick_due = False
        aq = self._aq
        if self._stop.is_set():
            return
        parked = self._aparked
        want = len(aq)
        while want and parked:
            fut = parked.pop()
            if not fut.done():
                fut.set_result(None)
                want -= 1
        while want and self._achains < self.concurrency:
            self._achains += 1
            want -= 1
            task = self._aloop.create_task(self._achain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _achain(self) -> None:
        """A chain: run queued async messages one after another, parking (a future) when there
        are none. The handler runs in this frame (no coroutine of ours per message); a
        cancelled handler (stopping past the grace period) ends the chain."""
        aq, stop, by_sid, parked = self._aq, self._stop, self._by_sid, self._aparked
        loop = self._aloop
        finished = self._finished_one
        try:
            while not stop.is_set():
                if not aq:  # tested first: a raised IndexError per park costs ~1 us
                    fut = loop.create_future()
                    parked.append(fut)
                    await fut  # woken by _akick (or cancelled when stopping)
                    continue
                try:
                    msg = aq.popleft()
                except IndexError:  # taken back by the loop thread meanwhile (stopping)
                    continue
                msg._queued_at = None
                route = by_sid[msg.sid]
                kind = "done"
                try:
                    await route.handler(msg)
                except asyncio.CancelledError:
                    if msg.settled is None:
                        msg.release()  # stopped past the grace period: not processed, not failed
                    return
                except Exception as exc:
                    self._failed(msg, route, exc)
                except BaseException as exc:
                    self._wants_out(msg, exc)
                else:
                    if msg.settled is None:
                        msg.settled = "ack"
                        kind = _DONE_ACK
                finally:
                    finished(msg, kind)
        finally:
            self._achains -= 1

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

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
        if self._io_on_loop:
            try:
                self._aloop.call_soon_threadsafe(self._aio_turn_soon)
            except RuntimeError:  # the loop is closed
                pass

    def _apply_results(self, session: Session) -> None:
        results = self._results
        if not results:
            self._flush_acks(session)
            return
        batch = []
        pop = results.popleft
        while results:
            batch.append(pop())
        store = self.idempotency
        if store is not None:
            # Processed ids are recorded before their acks leave: an ack the hub has means the
            # id is durable here, so a redelivery is recognised.
            keys = [message_key(m) for m, kind, _ in batch
                    if (kind == "ack" or kind == _DONE_ACK) and self._by_sid[m.sid].idempotent]
            if keys:
                try:
                    store.record(keys)
                except Exception:
                    log.exception("could not record %d processed ids; acking anyway", len(keys))
        running = self._running
        folded = self._folded
        nacks = self._nacks
        windows = self._windows
        acks: list[Message] = []
        redo: list[Message] = []
        sid = window = None
        ended = 0  # finished of sid's window, not yet told to it
        for msg, kind, arg in batch:
            if kind == _DONE_ACK or kind == "done":
                if msg.sid != sid:
                    if ended:
                        window.finished(ended)
                        ended = 0
                    sid = msg.sid
                    window = windows.get(sid)
                key = (sid, msg.topic, msg.seq)
                running.pop(key, None)
                if window is not None:
                    ended += 1
                if kind == _DONE_ACK:
                    acks.append(msg)
                if not folded and not nacks:
                    continue
                dups = folded.pop(key, ())
                since = self._folded_at.pop(key, None)
                nack = nacks.pop(key, None)
                if nack is not None:
                    if dups:
                        # Delivered again while it ran (its ack_wait expired, or the hub
                        # restarted): the hub counted this run's failure then, and the newest
                        # delivery is the next try, in flight here. Run it now; a NACK would
                        # charge it as a second failure without running it.
                        dup = dups[-1]
                        running[key] = dup
                        dup._queued_at = since if since is not None else monotonic_ms()
                        if window is not None:
                            window.finished(ended)  # in order: held counts this one again
                            ended = 0
                            window.delivered()
                        redo.append(dup)
                    else:
                        session.settle(msg, "nack", nack)
                elif msg.settled == "ack":
                    # an ack is sent again for each copy in case the first one reached a hub
                    # that then restarted; a reject or release covers the seq as it is
                    for dup in dups:
                        dup.settled = "ack"
                        acks.append(dup)
            elif kind == "nack" and running.get((msg.sid, msg.topic, msg.seq)) is msg:
                nacks[(msg.sid, msg.topic, msg.seq)] = arg  # sent when the handler is done
            else:
                session.settle(msg, kind, arg)
        if ended:
            window.finished(ended)
        if acks:
            session.ack_many(acks)
        self._flush_acks(session)
        if redo:
            due = min(m._queued_at for m in redo) + self._keepalive_ms()
            self._next_keepalive = min(self._next_keepalive, due)  # before the workers see them
            self._hand_out([m for m in redo if not self._by_sid[m.sid].is_async],
                           [m for m in redo if self._by_sid[m.sid].is_async])
