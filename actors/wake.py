"""The wake-up pipe: how any thread tells a thread blocked in ``zmq.Poller.poll`` to look again.

The producer's I/O thread and the actor's loop thread each poll their hub socket and a
``Waker``'s receiving end (``rx``); other threads queue their work, then call :meth:`wake`.
At most one wake-up is in flight: :meth:`wake` sends only while ``sent`` is False (a publisher
checks ``sent`` first, without the lock, and skips the call on the hot path), and the polling
thread, once ``rx`` is readable, calls :meth:`drain` and only then reads the queued work.

:meth:`drain` takes the wake-up out of the pipe *before* re-arming ``sent``. In this order a
wake-up suppressed meanwhile (``sent`` still True) belongs to work queued before the caller
reads it, so nothing is missed. The other order (re-arm, then empty) could swallow a wake-up
sent in between and leave ``sent`` True with the pipe empty: every later wake-up suppressed,
the loop then noticing work only at its poll timeout (an Actor crawling at credit per heartbeat
interval).
"""

from __future__ import annotations

import itertools
import threading

import zmq

__all__ = ["Waker"]

_NOBLOCK = int(zmq.NOBLOCK)
_counter = itertools.count(1)


class Waker:
    """An inproc PAIR pipe on ``context`` with at most one wake-up in flight.

    ``rx`` belongs to the polling thread (register it with its poller; :meth:`drain` when
    readable); :meth:`wake` may be called from any thread. :meth:`close` closes both ends once
    the polling thread is done with ``rx``; a :meth:`wake` after it does nothing.
    """

    __slots__ = ("rx", "sent", "_tx", "_lock")

    def __init__(self, context: zmq.Context, name: str = "wake") -> None:
        address = f"inproc://zmq-mq-{name}-{id(self)}-{next(_counter)}"
        self.rx: zmq.Socket = context.socket(zmq.PAIR)
        self.rx.setsockopt(zmq.LINGER, 0)
        self.rx.bind(address)
        self._tx: zmq.Socket | None = context.socket(zmq.PAIR)
        self._tx.setsockopt(zmq.LINGER, 0)
        self._tx.connect(address)
        self._lock = threading.Lock()
        # True only while a wake-up waits in the pipe or the polling thread has yet to look at
        # the work queued before it (see drain)
        self.sent = False

    def wake(self, force: bool = False) -> None:
        """Wake the polling thread (from any thread), once per round: call it after queueing the
        work it must see. ``force``: send even if a wake-up is in flight (closing)."""
        with self._lock:
            if self._tx is not None and (force or not self.sent):
                self.sent = True
                try:
                    self._tx.send(b"", _NOBLOCK)
                except zmq.ZMQError:
                    self.sent = False  # nothing in the pipe: the next call tries again

    def drain(self) -> None:
        """Take the wake-up out of the pipe, then re-arm :meth:`wake` (polling thread only; the
        caller reads its queued work next). One recv: without ``force`` the pipe never holds
        more than one, and a forced extra one only wakes the loop once more."""
        try:
            self.rx.recv(_NOBLOCK)
        except zmq.Again:
            pass
        with self._lock:
            self.sent = False

    def close(self) -> None:
        """Close both ends (after the polling thread is done with ``rx``)."""
        with self._lock:  # a thread waking later finds no pipe
            if self._tx is not None:
                self._tx.close(linger=0)
                self._tx = None
        self.rx.close(linger=0)
