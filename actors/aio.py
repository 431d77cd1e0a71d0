"""asyncio-native clients: ``AsyncProducer`` and ``AsyncConsumer``, for async web handlers.

::

    async with AsyncProducer("tcp://127.0.0.1:5555") as producer:
        seq = await producer.publish("user.signup", b"...", msg_id="signup:alice")  # durable now

    async with AsyncConsumer("tcp://127.0.0.1:5555") as consumer:
        await consumer.subscribe("user.signup", "emails")
        async for msg in consumer:
            ...
            await msg.ack()

Same options, errors and guarantees as ``Producer`` and ``Consumer``; neither ever blocks the
event loop on the hub: a publish that waits for its commit, a hub that is down, a reconnect,
all leave the loop serving other coroutines.

How, chosen by measurement (bench/RESULTS.md, "asyncio clients"; bench/signup_api.py puts
each next to its sync twin): ``AsyncProducer`` bridges from the ``Producer``'s own I/O thread, which keeps its
batching, resending after a hub restart and reconnecting. The I/O thread hands each resolved
CONFIRM batch to the event loop with *one* ``call_soon_threadsafe``, where the batch's asyncio
futures are resolved together; one wake-up per message would cost the loop more than the
publish itself. Driving the producer on the loop instead (no I/O thread) measured about 0.1 ms
less per round trip but a quarter less throughput: the I/O thread sends while callers queue. ``AsyncConsumer`` drives the consumer ``Session`` on the event loop itself: the
socket's file descriptor is watched with ``loop.add_reader`` (no thread hop per delivery or
ack), heartbeats run on a loop timer, and only a reconnect, which waits for the hub's
handshake, runs on a worker thread while the loop goes on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import zmq

from ..router.clock import Clock
from ..router.protocol import Command
from .connection import CurveKeys
from .errors import ClosedError, HubError, HubUnavailable
from .message import Message
from .producer import DEFAULT_MAX_BATCH, DEFAULT_MAX_PENDING, Producer, PublishFuture
from .session import (
    DEFAULT_CREDIT,
    MIN_RECONNECT_MS,
    Session,
    SubscriptionSpec,
    check_subscribe,
)

__all__ = ["AsyncConsumer", "AsyncMessage", "AsyncProducer"]

log = logging.getLogger("zmq_mq.consumer")

_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


# --- producing -------------------------------------------------------------------------------


class _Entry:
    """A message waiting in ``AsyncProducer`` for the connection or for room (max_pending): its
    arguments, the PublishFuture it will resolve, and the timer that fails it after timeout."""

    __slots__ = ("args", "future", "timer", "report")

    def __init__(self, args: tuple, future: PublishFuture, report: bool) -> None:
        self.args = args
        self.future = future
        self.timer: asyncio.TimerHandle | None = None
        # publish_async: a failure here is flush()'s to report; publish(): its caller's only
        self.report = report


class AsyncProducer:
    """Publishes to a zmq-mq hub from asyncio code; one event loop (the one that connects it).

    ``await publish(...)`` returns the sequence number once the message is durable (committed
    by the hub), like ``Producer.publish``; ``publish_async(...)`` queues the message without
    waiting and returns its ``PublishFuture`` (``await`` it for the sequence); ``await
    flush()`` waits for everything published so far; ``async with`` connects and closes. The
    keyword options are ``Producer``'s (see its docstrings), and so are the errors:
    ``HubUnavailable`` when no confirm comes within ``timeout``, ``InvalidMessage``,
    ``HubError``, ``ClosedError``. A producer whose connect failed is closed, as a
    ``Producer`` is: make a new one.
    """

    def __init__(self, endpoint: str | None = None, *, name: str | None = None,
                 timeout: float = 10.0, max_batch: int = DEFAULT_MAX_BATCH,
                 max_pending: int = DEFAULT_MAX_PENDING, context: zmq.Context | None = None,
                 curve: CurveKeys | None = None, clock: Clock | None = None) -> None:
        self._producer = Producer(endpoint, name=name, timeout=timeout, max_batch=max_batch,
                                  max_pending=max_pending, context=context, curve=curve,
                                  clock=clock)
        self.endpoint = self._producer.endpoint
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future | None = None
        self._connected = False
        self._closed = False
        # messages not handed to the producer yet (not connected, or max_pending reached), in
        # publish order: a later publish never overtakes them
        self._backlog: collections.deque[_Entry] = collections.deque()
        self._progress: list[asyncio.Future] = []  # flush() and close() waiting for confirms

    @property
    def hub_instance(self) -> str | None:
        return self._producer.hub_instance

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> "AsyncProducer":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and handshake (the wait on a worker thread); raises HubUnavailable if the hub
        does not answer within ``timeout``."""
        if self._closed:
            raise ClosedError("producer is closed")
        if self._connected:
            return
        await asyncio.shield(self._start_connect())

    def _start_connect(self) -> asyncio.Future:
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            if self._loop is not None and self._loop is not loop:
                raise RuntimeError("an AsyncProducer is used from one event loop only")
            self._loop = loop
            self._connecting = asyncio.ensure_future(self._connect())
            # its error reaches connect()'s caller and the waiting messages, not the log
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._connecting

    async def _connect(self) -> None:
        producer = self._producer
        producer._on_resolved = self._from_io_thread
        producer._async_loop = self._loop  # awaiting its PublishFutures: one wake-up per batch
        try:
            await asyncio.to_thread(producer.connect)
        except BaseException as exc:
            # as Producer: a producer that could not connect is closed (make a new one)
            self._closed = True
            self._fail_backlog(exc if isinstance(exc, Exception) else ClosedError("not connected"))
            raise
        self._connected = True
        self._drain_backlog()

    async def close(self, timeout: float | None = None) -> None:
        """Wait for every pending confirm (up to ``timeout``, default the producer's), then stop.
        Raises HubUnavailable if some are still unconfirmed then (as ``Producer.close``)."""
        if self._closed:
            return
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            if self._connecting is not None and not self._connected:
                try:
                    await asyncio.shield(self._connecting)
                except Exception:
                    pass
            if self._connected:
                try:
                    await self._wait_backlog(deadline)
                except HubUnavailable:
                    pass  # failed below, and Producer.close raises for them
        finally:
            self._closed = True
            self._fail_backlog(HubUnavailable("producer closed before send"))
            if self._connected:
                await asyncio.to_thread(self._producer.close, max(0.0, deadline - loop.time()))

    # --- publishing --------------------------------------------------------------------------

    def publish_async(self, topic: str, payload: bytes, *, key: str | None = None,
                      headers: dict[str, Any] | None = None, msg_id: str | None = None,
                      priority: int | None = None, delay: float | None = None,
                      deliver_at: Any = None) -> PublishFuture:
        """Queue one message and return at once its ``PublishFuture``: ``await`` it for the
        sequence number once the message is durable (or the publish error). Never blocks the
        loop: before the connection is up, or with ``max_pending`` messages unconfirmed, the
        message waits here, in order, and fails with HubUnavailable if that lasts ``timeout``.

        An error of the message itself (InvalidMessage) raises here when it can be checked at
        once, else from the future. Options: see ``Producer.publish_async``."""
        if self._closed:
            raise ClosedError("producer is closed")
        producer = self._producer
        if (self._connected and not self._backlog
                and producer._last_submitted - producer._resolved < producer._max_pending):
            # the common case: straight to the I/O thread (room and connection are there, so
            # _submit neither waits nor connects)
            return producer._submit(topic, payload, key, headers, msg_id, priority, delay,
                                    deliver_at, self.timeout)
        return self._wait_in_backlog((topic, payload, key, headers, msg_id, priority, delay,
                                      deliver_at), self.timeout)

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None,
                      headers: dict[str, Any] | None = None, timeout: float | None = None,
                      msg_id: str | None = None, priority: int | None = None,
                      delay: float | None = None, deliver_at: Any = None) -> int:
        """Publish one message and return its sequence number once it is durable; the event
        loop serves other coroutines meanwhile.

        Returns or raises within ``timeout`` s (default the producer's), connecting included:
        HubUnavailable then. As with ``Producer.publish``, such a message may still be stored
        later, and ``flush()`` / ``close()`` no longer wait for it: publish it again with the
        same ``msg_id`` to retry without a duplicate."""
        limit = self.timeout if timeout is None else timeout
        if self._closed:
            raise ClosedError("producer is closed")
        producer = self._producer
        args = (topic, payload, key, headers, msg_id, priority, delay, deliver_at)
        if (self._connected and not self._backlog
                and producer._last_submitted - producer._resolved < producer._max_pending):
            pf = producer._submit(*args, limit)
        else:
            pf = self._wait_in_backlog(args, limit, report=False)
        if not pf._done:
            loop = self._loop
            waiter = pf._waiter = loop.create_future()  # resolved with its batch (_resolved)
            timer = loop.call_later(limit, self._give_up, pf, waiter, limit)
            try:
                await waiter
            except asyncio.CancelledError:
                self._forget(pf, ClosedError("publish cancelled"))
                raise
            finally:
                timer.cancel()
        return pf.result(0)

    async def flush(self, timeout: float | None = None, *, raise_errors: bool = True) -> None:
        """Wait until every message published so far is confirmed (or failed).

        Raises HubUnavailable on timeout, and the first publish error since the last flush."""
        if self._closed:
            raise ClosedError("producer is closed")
        limit = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + limit
        await self._wait_backlog(deadline)
        producer = self._producer
        target = producer._last_submitted

        def unresolved() -> int:
            return target - producer._resolved - producer._abandoned

        while unresolved() > 0:
            if not await self._wait_progress(deadline):
                raise HubUnavailable(f"{unresolved()} messages not confirmed within {limit:g} s "
                                     f"by the hub at {self.endpoint}")
        with producer._cond:
            error, producer._first_error = producer._first_error, None
        if error is not None and raise_errors:
            raise error

    # --- inside --------------------------------------------------------------------------------

    def _wait_in_backlog(self, args: tuple, timeout: float, report: bool = True) -> PublishFuture:
        """The message waits here for the connection or for room; HubUnavailable after timeout."""
        entry = _Entry(args, PublishFuture(self._producer), report)
        if not self._connected:
            self._start_connect()  # binds the loop
        entry.timer = self._loop.call_later(timeout, self._expire, entry, timeout)
        self._backlog.append(entry)
        return entry.future

    def _drain_backlog(self) -> None:
        producer = self._producer
        backlog = self._backlog
        while (backlog and self._connected
               and producer._last_submitted - producer._resolved < producer._max_pending):
            entry = backlog.popleft()
            entry.timer.cancel()
            try:
                producer._submit(*entry.args, self.timeout, future=entry.future)
            except Exception as exc:  # InvalidMessage, ClosedError: this message's own error
                self._fail(entry.future, exc, entry.report)

    def _fail_backlog(self, exc: Exception) -> None:
        while self._backlog:
            entry = self._backlog.popleft()
            entry.timer.cancel()
            self._fail(entry.future, exc, entry.report)
        self._wake_progress()

    def _expire(self, entry: _Entry, timeout: float) -> None:
        try:
            self._backlog.remove(entry)
        except ValueError:
            return
        self._fail(entry.future, HubUnavailable(
            f"{timeout:g} s without room or connection: the hub at {self.endpoint} is not "
            f"confirming"), entry.report)
        self._wake_progress()

    def _fail(self, pf: PublishFuture, exc: Exception, report: bool = True) -> None:
        """Resolve a PublishFuture that never reached the I/O thread (so took no number)."""
        producer = self._producer
        with producer._cond:
            if pf._done:
                return
            pf._error = exc
            pf._done = True
            if report and producer._first_error is None:
                producer._first_error = exc  # flush() raises it, as for a failed batch
            producer._cond.notify_all()
        for fn in pf._callbacks or ():
            fn(pf)
        waiter, pf._waiter = pf._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _give_up(self, pf: PublishFuture, waiter: asyncio.Future, limit: float) -> None:
        """publish() timed out: the caller hears HubUnavailable, flush() stops waiting for it."""
        if waiter.done():
            return
        error = HubUnavailable(f"no confirm from the hub at {self.endpoint} within {limit:g} s")
        self._forget(pf, error)
        waiter.set_exception(error)

    def _forget(self, pf: PublishFuture, error: Exception) -> None:
        """Its caller was told it failed: flush() and close() stop waiting for it."""
        pf._waiter = None
        for entry in self._backlog:
            if entry.future is pf:
                self._backlog.remove(entry)
                entry.timer.cancel()
                self._fail(pf, error, report=False)
                break
        else:
            self._producer._abandon(pf)
        self._wake_progress()

    def _from_io_thread(self, futures: list[PublishFuture]) -> None:
        """The producer's I/O thread resolved a batch: one wake-up of the loop for all of it."""
        try:
            self._loop.call_soon_threadsafe(self._resolved, futures)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            pass

    def _resolved(self, futures: list[PublishFuture]) -> None:
        """On the loop: wake whoever awaits a future of this batch, then the backlog and flush."""
        for pf in futures:
            waiter = pf._waiter
            if waiter is not None:
                pf._waiter = None
                if not waiter.done():  # else publish() gave up on it, or was cancelled
                    waiter.set_result(None)
        if self._backlog:
            self._drain_backlog()
        if self._progress:
            self._wake_progress()

    def _wake_progress(self) -> None:
        waiting, self._progress = self._progress, []
        for w in waiting:
            if not w.done():
                w.set_result(None)

    async def _wait_progress(self, deadline: float) -> bool:
        """Wait for the next resolved batch (or expiry); False once ``deadline`` has passed."""
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        if left <= 0:
            return False
        w = loop.create_future()
        self._progress.append(w)
        timer = loop.call_later(left, _set_none, w)
        try:
            await w
        finally:
            timer.cancel()
        return True

    async def _wait_backlog(self, deadline: float) -> None:
        while self._backlog:
            if not await self._wait_progress(deadline):
                raise HubUnavailable(f"{len(self._backlog)} messages not sent within the timeout: "
                                     f"the hub at {self.endpoint} is not confirming")


def _set_none(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


# --- consuming -------------------------------------------------------------------------------


class _Settled:
    """What ``AsyncMessage.ack()`` and friends return: already done, so ``await msg.ack()`` and
    a plain ``msg.ack()`` both settle the message (a forgotten ``await`` loses nothing)."""

    __slots__ = ()

    def __await__(self):
        return iter(())


_SETTLED = _Settled()


class AsyncMessage(Message):
    """A delivery to an ``AsyncConsumer``: a ``Message`` whose ``ack``, ``nack``, ``reject``,
    ``release`` and ``progress`` are awaitable. Each hands the decision to the consumer's
    session at once, with ``Message``'s guarantees: acks are batched and sent within a
    heartbeat interval (``await consumer.flush()`` sends them now), the others are sent at
    once, and ``await consumer.close()`` returns once the hub has committed all of them."""

    __slots__ = ()

    def ack(self) -> _Settled:  # type: ignore[override]
        self._settle("ack")
        return _SETTLED

    def nack(self, delay: float = 0.0) -> _Settled:  # type: ignore[override]
        self._settle("nack", int(delay * 1000))
        return _SETTLED

    def reject(self, reason: str = "rejected") -> _Settled:  # type: ignore[override]
        self._settle("reject", reason)
        return _SETTLED

    def release(self) -> _Settled:  # type: ignore[override]
        self._settle("release")
        return _SETTLED

    def progress(self) -> _Settled:  # type: ignore[override]
        Message.progress(self)
        return _SETTLED


class AsyncConsumer:
    """Read durable subscriptions from asyncio code (see the module docstring for how).

    ::

        async with AsyncConsumer(endpoint) as consumer:
            await consumer.subscribe("orders", "audit", credit=100)
            async for msg in consumer:
                print(msg.payload)
                await msg.ack()

    Options, errors and guarantees are ``Consumer``'s: heartbeats go on while the application
    works between messages, the session re-attaches by itself after a hub restart, and
    ``close`` flushes acks, releases every message received but not settled, and returns once
    the hub has committed that.
    """

    def __init__(self, endpoint: str | None = None, *, name: str = "consumer",
                 timeout: float = 10.0, context: zmq.Context | None = None,
                 curve: CurveKeys | None = None, clock: Clock | None = None) -> None:
        self._session = Session(endpoint, name=name, timeout=timeout, context=context,
                                curve=curve, clock=clock)
        self._session.message_type = AsyncMessage
        self._session.settler = self
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Future | None = None
        self._deferred: list[tuple[Message, str, Any]] = []  # settled during a reconnect
        self._readers: list[asyncio.Future] = []  # receive() calls waiting for traffic
        self._drain_scheduled = False
        self._closed = False
        self._connect_lock: asyncio.Lock | None = None

    async def __aenter__(self) -> "AsyncConsumer":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and handshake (the wait on a worker thread); raises HubUnavailable."""
        if self._closed:
            raise ClosedError("consumer is closed")
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._session.open:
                return
            self._loop = asyncio.get_running_loop()
            await asyncio.to_thread(self._session.connect)
            self._watch()
            self._tick()

    async def close(self, timeout: float | None = None) -> None:
        """Flush acks, release what was received but not settled, detach and wait for the hub
        to commit that (up to ``timeout``), then close."""
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._reconnecting is not None:
            try:
                await self._reconnecting
            except Exception:
                pass
        self._unwatch()
        self._wake_readers()
        session = self._session
        try:
            self._apply_deferred()
            if session.open and not await asyncio.to_thread(
                session.detach_all, self.timeout if timeout is None else timeout
            ):
                log.warning("hub did not confirm detach; unsettled messages return after "
                            "ack_wait")
        finally:
            session.close()

    # --- subscribing -------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, *, credit: int = DEFAULT_CREDIT,
                        ack_wait: float | None = None, max_deliver: int | None = None,
                        start: Any = "first", ordering: str | None = None) -> int:
        """Attach to subscription ``group`` on ``topic``; returns its handle (sid). Options and
        errors as ``Consumer.subscribe`` (ValueError, HubError, HubUnavailable)."""
        check_subscribe(topic, group, ordering)
        await self.connect()
        while self._reconnecting is not None:
            await asyncio.shield(self._reconnecting)
        session = self._session
        # As Session.subscribe, but the wait for SUBSCRIBED is the loop's: registered before
        # sending, since DELIVER frames may follow SUBSCRIBED in the same read.
        spec = SubscriptionSpec(session._next_sid, topic, group, credit,
                                None if ack_wait is None else int(ack_wait * 1000), max_deliver,
                                start, ordering=ordering)
        session._next_sid += 1
        session.specs[spec.sid] = spec
        loop = self._loop
        deadline = loop.time() + self.timeout
        try:
            session.conn.send(Command.SUBSCRIBE, spec.body())
            self._kick()
            while spec.sid not in session._waiting:
                left = deadline - loop.time()
                if left <= 0:
                    raise HubUnavailable(f"no answer to SUBSCRIBE within {self.timeout:g} s")
                await self._wait_traffic(left)
            answer = session._waiting.pop(spec.sid)
            if isinstance(answer, HubError):
                raise answer
        except BaseException:
            session.specs.pop(spec.sid, None)
            raise
        return spec.sid

    # --- receiving ---------------------------------------------------------------------------

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self) -> AsyncMessage:
        msg = await self.receive()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def receive(self, timeout: float | None = None) -> AsyncMessage | None:
        """The next message, or None after ``timeout`` seconds without one (None: wait until
        one comes, or until the consumer is closed)."""
        if not self._session.open and not self._closed:
            await self.connect()
        inbox = self._session.inbox
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            if inbox and self._reconnecting is None:
                return inbox.popleft()  # type: ignore[return-value]
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            self.flush()  # nothing at hand: the acks so far go to the hub now
            await self._wait_traffic(left)
        return None

    def flush(self) -> None:
        """Send the acks batched so far (returns at once; ``close`` makes them durable)."""
        if self._reconnecting is None and self._session.open:
            self._session.flush_acks()
            self._kick()

    # --- settling (AsyncMessage.ack() and friends) ---------------------------------------------

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        if self._closed:
            return  # close() detached: the hub gives back whatever was not settled
        if self._reconnecting is not None:
            # the session belongs to the reconnecting thread: applied once it is back
            self._deferred.append((msg, kind, arg))
            return
        if not self._session.open:
            return
        session = self._session
        session._settle(msg, kind, arg)  # the loop is the session's only user now
        if kind != "ack" or not session._ack_count:  # something was sent
            self._kick()

    def _apply_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for msg, kind, arg in deferred:
            self._session._settle(msg, kind, arg)

    # --- the socket on the event loop ------------------------------------------------------------

    def _watch(self) -> None:
        sock = self._session.conn.socket
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self._kick()

    def _unwatch(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None

    def _kick(self) -> None:
        """ZeroMQ's descriptor signals edges: after anything that touched the socket (which may
        have taken the edge), look for waiting input ourselves."""
        sock = self._session.conn.socket
        if (not self._drain_scheduled and sock is not None
                and sock.getsockopt(_EVENTS) & _POLLIN):
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._reconnecting is not None or not self._session.open:
            return
        # pump(0, 0): read all that arrived, heartbeat if due, never wait, never reconnect here
        try:
            self._session.pump(0, 0)
        except Exception:  # e.g. a frame that does not decode: logged, the next one is read
            log.exception("async consumer: reading from the hub")
        if self._readers:
            self._wake_readers()
        self._kick()  # a heartbeat sent in pump may have taken the edge

    def _wake_readers(self) -> None:
        waiting, self._readers = self._readers, []
        for w in waiting:
            if not w.done():
                w.set_result(None)

    async def _wait_traffic(self, timeout: float | None) -> None:
        w = self._loop.create_future()
        self._readers.append(w)
        timer = None if timeout is None else self._loop.call_later(timeout, _set_none, w)
        try:
            await w
        finally:
            if timer is not None:
                timer.cancel()

    def _tick(self) -> None:
        """Every half heartbeat interval: acks out, heartbeat, and a reconnect when the hub has
        gone silent (on a worker thread: the loop goes on meanwhile)."""
        if self._closed:
            return
        session = self._session
        interval = session.conn.heartbeat_ms / 2000
        self._ticker = self._loop.call_later(interval, self._tick)
        if self._reconnecting is not None or not session.open:
            return
        try:
            session.flush_acks()
            session.pump(0, 0)
        except Exception:  # never let the heartbeat timer die on a transient error
            log.exception("async consumer: heartbeat")
        conn = session.conn
        if session.inbox or session._waiting:
            self._wake_readers()
        if (session.specs and conn.hub_silent(conn.now_ms())
                and not conn.socket.getsockopt(_EVENTS) & _POLLIN):
            self._reconnecting = asyncio.ensure_future(self._reconnect())
        else:
            self._kick()

    async def _reconnect(self) -> None:
        self._unwatch()
        session = self._session
        wait = session.conn.heartbeat_ms * session.conn.liveness
        try:
            # Session.keepalive reconnects (or gives up until the next tick) and re-attaches
            await asyncio.to_thread(session.keepalive, max(wait, MIN_RECONNECT_MS),
                                    lambda: self._closed)
        finally:
            self._reconnecting = None
            if session.open and session.conn.socket is not None:
                self._apply_deferred()
                if not self._closed:
                    self._watch()
            self._wake_readers()

