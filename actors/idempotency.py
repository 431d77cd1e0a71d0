"""The idempotency store: which messages a handler has already processed, in LMDB.

An Actor opens one per process (``Actor(..., state_dir=...)``) when a handler is subscribed with
``idempotent=True``. Before running such a handler the actor asks :meth:`IdempotencyStore.seen`;
after it returned, the actor records the message id (:meth:`record`) in the same step that
queues its ack, and acks a redelivery of a recorded id without running the handler again.

Ids are kept ``ttl`` seconds and then forgotten (expired a bounded batch per write, never by a
full scan). A message id is the producer's ``msg_id`` when it gave one, else ``topic:seq``.

The window that remains: a handler whose side effect is done, in a process that dies before the
id is recorded, runs again on redelivery. To close it, make the side effect and the id one LMDB
transaction with :meth:`transaction`::

    store = actor.idempotency
    @actor.subscribe("payments", group="ledger", idempotent=True)
    def apply(msg):
        with store.transaction(msg) as txn:          # commits both, or neither
            balances = store.db("balances")
            old = int(txn.get(b"alice", b"0", db=balances))
            txn.put(b"alice", str(old + int(msg.payload)).encode(), db=balances)
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb

__all__ = ["IdempotencyStore", "DEFAULT_TTL"]

DEFAULT_TTL = 7 * 24 * 3600.0  # a week: longer than any sane redelivery horizon
# Expired ids removed per write: bounds the time one record() can take.
EXPIRE_BATCH = 1000
_MAX_DBS = 32  # two of ours, the rest for the application's own data (db())
_TS = struct.Struct(">Q")
_DB_DONE = b"done"  # key -> expiry ts_ms (8 bytes BE)
_DB_EXPIRY = b"expiry"  # ts_ms (8 bytes BE) + key -> b""
_SEP = "\x00"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def message_key(msg: Any) -> bytes:
    """The store key of a message: its subscription (topic and group) and its id."""
    return f"{msg.topic}{_SEP}{msg.group}{_SEP}{msg.msg_id}".encode()


class IdempotencyStore:
    """Processed message ids with a TTL, in an LMDB environment at ``path`` (thread-safe)."""

    def __init__(self, path: str | Path, *, ttl: float = DEFAULT_TTL,
                 map_size: int = 256 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.ttl_ms = int(ttl * 1000)
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=_MAX_DBS, sync=True)
        self._done = self.env.open_db(_DB_DONE)
        self._expiry = self.env.open_db(_DB_EXPIRY)
        self._dbs: dict[str, Any] = {}
        self._lock = threading.Lock()
        # The write transaction this thread has open in transaction(), and the names of the
        # databases first opened inside it (their handles die with it if it aborts).
        self._local = threading.local()

    def close(self) -> None:
        self.env.close()

    def db(self, name: str):
        """A named database of yours in the same environment, for :meth:`transaction`.

        Safe anywhere, also inside ``with store.transaction(msg)``: there it is opened with that
        transaction (LMDB has one writer at a time, so opening it in a transaction of its own
        would wait for ours forever).
        """
        if name.encode() in (_DB_DONE, _DB_EXPIRY):
            raise ValueError(f"{name!r} is reserved")
        with self._lock:
            handle = self._dbs.get(name)
        if handle is not None:
            return handle
        current = getattr(self._local, "txn", None)
        if current is not None:
            return self._open_db(name, current[0], current[1])
        # Take the write lock before ours: a thread inside transaction() holds the write lock
        # and may want ours, so ours is only ever taken while holding LMDB's.
        with self.env.begin(write=True) as txn:
            return self._open_db(name, txn, None)

    def _open_db(self, name: str, txn: lmdb.Transaction, opened: list[str] | None):
        with self._lock:
            handle = self._dbs.get(name)
            if handle is None:
                handle = self._dbs[name] = self.env.open_db(name.encode(), txn=txn)
                if opened is not None:
                    opened.append(name)
            return handle

    # --- ids -------------------------------------------------------------------------------

    def seen(self, keys: Iterable[bytes], now_ms: int | None = None) -> set[bytes]:
        """Those of ``keys`` recorded and not yet expired (one read transaction)."""
        now = _wall_ms() if now_ms is None else now_ms
        out = set()
        with self.env.begin(db=self._done) as txn:
            for key in keys:
                value = txn.get(key)
                if value is not None and _TS.unpack(value)[0] > now:
                    out.add(key)
        return out

    def record(self, keys: Iterable[bytes], now_ms: int | None = None) -> None:
        """Remember ``keys`` as processed for ``ttl`` (one write transaction, fsync'd)."""
        now = _wall_ms() if now_ms is None else now_ms
        with self.env.begin(write=True) as txn:
            self._put(txn, keys, now)
            self._expire(txn, now)

    @contextlib.contextmanager
    def transaction(self, msg: Any) -> Iterator[lmdb.Transaction]:
        """A write transaction that also records ``msg`` as processed when it commits.

        Your own writes (in databases from :meth:`db`) and the id commit together or not at
        all, so a side effect kept here happens exactly once per message id.
        """
        if getattr(self._local, "txn", None) is not None:
            raise RuntimeError("store.transaction() is already open on this thread")
        opened: list[str] = []
        try:
            with self.env.begin(write=True) as txn:
                self._local.txn = (txn, opened)
                yield txn
                self._put(txn, [message_key(msg)], _wall_ms())
        except BaseException:
            # Aborted: the handles of databases first opened in it are no longer valid.
            with self._lock:
                for name in opened:
                    self._dbs.pop(name, None)
            raise
        finally:
            self._local.txn = None

    def _put(self, txn: lmdb.Transaction, keys: Iterable[bytes], now: int) -> None:
        expires = now + self.ttl_ms
        ts = _TS.pack(expires)
        for key in keys:
            txn.put(key, ts, db=self._done)
            txn.put(ts + key, b"", db=self._expiry)

    def _expire(self, txn: lmdb.Transaction, now: int) -> int:
        """Forget at most EXPIRE_BATCH ids whose time is up; returns how many."""
        cursor = txn.cursor(db=self._expiry)
        removed = 0
        if not cursor.first():
            return 0
        while removed < EXPIRE_BATCH:
            entry = cursor.key()
            expires = _TS.unpack(entry[:8])[0]
            if expires > now:
                break
            key = entry[8:]
            current = txn.get(key, db=self._done)
            if current is not None and _TS.unpack(current)[0] == expires:
                txn.delete(key, db=self._done)  # not re-recorded since: forget it
            removed += 1
            if not cursor.delete():  # moves to the next entry; False at the end
                break
            if not cursor.key():
                break
        return removed
