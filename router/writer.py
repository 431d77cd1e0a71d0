"""The writer stage: makes the loop's commits durable off the loop, and says how far they are.

With ``--sync full`` the store commits each turn with its data pages flushed but not the page
that makes it current (storage/log.py, ``group_sync``); the :class:`Writer` thread flushes that
(``Store.sync``, one fsync for every commit made while the previous one ran: a group fsync)
while the loop reads, hands out credit and commits the next turn. ``durable`` is the watermark:
the highest commit number (``Store.last_commit``) known to be on disk. The hub holds each
turn's replies (confirms, admin answers, SUBSCRIBED, ...) until the watermark reaches the
commit that made them true. A later condition (replicas holding a batch) is one more
watermark the hub takes the minimum of; the hub asks :meth:`Writer.want` and is woken by
``notify(commit)`` when its fsync moved the watermark to ``commit``.

Each commit of the store fsyncs its own data pages before it writes its meta page, and that
fsync also flushes the meta page of the commit before it: so once commit ``k`` is made, commit
``k - 1`` is durable too. The hub tells the writer (:meth:`Writer.covered`), so under a stream
of commits a turn's replies leave after the next commit, without waiting for the thread.

With ``--sync none`` nothing waits: every commit counts as durable as soon as it is made (the
OS flushes it when it likes, as before).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..storage import StorageError, Store

__all__ = ["Writer"]

log = logging.getLogger("zmq_mq.hub")

# After a failed fsync the writer tries again this much later (s); the held replies wait.
RETRY_DELAY = 0.1


class Writer:
    """Flushes commits on its own thread; ``durable`` is the last commit known on disk."""

    def __init__(self, store: Store, notify: Callable[[int], None], *, threaded: bool) -> None:
        self._store = store
        self._notify = notify
        self._threaded = threaded
        self.durable = 0  # highest commit number known durable (read by the loop, no lock)
        # The hub fsyncs on its loop instead when nothing waits to be read there (no hop
        # between threads for a lone publish); False: always this thread (tests of a stall).
        self.inline_when_idle = True
        self._wanted = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def want(self, commit: int) -> None:
        """Make commit number ``commit`` (and every one before it) durable; ``notify`` is
        called once ``durable`` reaches it."""
        if commit <= self.durable:
            return
        if not self._threaded:  # --sync none: a made commit is as durable as it gets
            self.durable = commit
            return
        with self._cond:
            if commit > self._wanted:
                self._wanted = commit
                self._cond.notify()
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="zmq-mq-writer", daemon=True
                )
                self._thread.start()

    def covered(self, commit: int) -> None:
        """Commit number ``commit`` is known durable without this thread (the fsync of a
        later commit's data pages flushed it): move the watermark there."""
        if commit > self.durable:
            with self._cond:
                if commit > self.durable:
                    self.durable = commit
                    self._cond.notify_all()

    def wait(self, commit: int, timeout: float | None = None) -> bool:
        """Block until ``durable >= commit`` (the hub driven by hand, and its exit)."""
        self.want(commit)
        with self._cond:
            return self._cond.wait_for(lambda: self.durable >= commit, timeout)

    def close(self) -> None:
        """Flush what was wanted, then stop the thread (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                cond.wait_for(lambda: self._wanted > self.durable or self._stopping)
                if self._wanted <= self.durable:  # stopping, nothing owed
                    return
            try:
                covered = self._store.sync()
            except StorageError as exc:
                log.error("fsync failed, replies held, retrying: %s", exc)
                with cond:
                    if self._stopping:
                        return
                    cond.wait(RETRY_DELAY)
                continue
            with cond:
                if covered > self.durable:
                    self.durable = covered
                cond.notify_all()
            self._notify(covered)
