"""The LMDB store: per-topic append-only logs, topic metadata and subscription state.

One LMDB environment (a directory) holds these named databases:

``b"topics"``
    topic name (UTF-8) -> msgpack ``[id, first_seq, last_seq, count, bytes, created_ms]``
``b"log"``
    topic id (4 bytes big-endian) + sequence (8 bytes big-endian) -> record bytes. Big-endian keys
    sort numerically, so one topic's records are contiguous and in sequence order.
``b"subs"``
    topic (UTF-8) + ``b"\\x00"`` + group (UTF-8) -> opaque bytes (the hub's cursor state)
``b"dedup"``, ``b"dedup_exp"``
    producer message ids: topic + ``b"\\x00"`` + msg_id -> (seq, ts_ms) as 16 bytes big-endian,
    and the expiry index ts_ms (8 bytes) + that key -> ``b""``. Written in the same commit as
    the messages they name; expired a bounded batch per commit (see :meth:`Store.commit`).

Everything a loop turn produced is written in one write transaction (:meth:`Store.commit`, a group
commit), so the fsync cost is shared by all of its messages and a publish is confirmed only once
its transaction is durable. Record bytes are opaque here: the hub stores and forwards them as is.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable

import lmdb
import msgpack

from .errors import DataDirInUse, StorageError, StorageFull
from .lock import DataDirLock

__all__ = ["Store", "StorageError", "StorageFull", "TopicInfo", "DataDirInUse"]

# Named databases: three are used; the headroom lets later versions add some (e.g. a dedup
# window or per-topic retention marks) without a format migration.
_MAX_DBS = 16
# Read transactions are short and taken by the hub's own thread(s); LMDB's default reader table
# is ample, and every slot costs a little lock-file space.
_MAX_READERS = 126
# Growth factor on MapFullError: doubling keeps the number of grow-and-retry rounds logarithmic
# in the final size, while the map is address space, not disk, so over-reserving is cheap.
_MAP_GROWTH = 2

_DB_TOPICS = b"topics"
_DB_LOG = b"log"
_DB_SUBS = b"subs"
_SUB_SEP = b"\x00"  # cannot occur in topic or group names (protocol validates both)
_DB_DEDUP = b"dedup"
_DB_DEDUP_EXP = b"dedup_exp"
_DB_META = b"meta"  # store bookkeeping (the touch counter; a cluster partition's epochs)
_EPOCHS = b"epochs:"  # + topic: msgpack [[epoch, first seq], ...] (cluster mode only)
_STREAM = b"stream:"  # + topic: msgpack [leader epoch, next state-stream entry] (followers)
_DB_SCHED = b"sched"  # topic + NUL + 8-byte seq -> 8-byte due time (wall ms): delayed messages
_DB_TOPIC_CONFIG = b"topic_config"  # topic name -> msgpack map of its retention limits
_DB_PATTERNS = b"patterns"  # pattern + NUL + group -> msgpack options of a pattern subscription
_DEDUP_VALUE = struct.Struct(">QQ")  # seq, ts_ms
_DEDUP_TS = struct.Struct(">Q")
# Expired dedup entries removed per commit: bounds the work one commit adds.
DEDUP_EXPIRE_BATCH = 1000

_ID_BYTES = 4
_SEQ_BYTES = 8
# Log key = topic id + sequence, big-endian so that keys sort numerically. One precompiled Struct
# builds a key in one C call: the fastest way found (about 1.5x bytes concatenation).
_LOG_KEY = struct.Struct(">IQ")

_ENOSPC_TEXTS = ("no space left", "enospc")
# LMDB reports a short write on a full file system as EIO ("Input/output error"), not ENOSPC. A
# failed commit is taken for a full disk when the file system has less free space than the
# commit needed plus this much for the pages LMDB rewrites around it (B-tree branches, free list,
# meta pages): a real I/O error with that much room left stays a storage_error.
_DISK_SLACK = 1 << 20


@dataclass(slots=True)
class TopicInfo:
    """One topic's metadata, as committed.

    ``first_seq`` is the lowest retained sequence; with no messages retained it is
    ``last_seq + 1``. ``last_seq`` is the highest sequence ever assigned (0 for a new topic), so
    sequences never repeat, even after retention removes messages.
    """

    name: str
    id: int
    first_seq: int
    last_seq: int
    count: int
    bytes: int
    created_ms: int

    def _pack(self) -> bytes:
        return msgpack.packb(
            [self.id, self.first_seq, self.last_seq, self.count, self.bytes, self.created_ms]
        )

    @classmethod
    def _unpack(cls, name: str, value: bytes) -> TopicInfo:
        tid, first_seq, last_seq, count, nbytes, created_ms = msgpack.unpackb(value)
        return cls(name, tid, first_seq, last_seq, count, nbytes, created_ms)


def _topic_prefix(topic_id: int) -> bytes:
    """The first 4 bytes of every log key of a topic."""
    return topic_id.to_bytes(_ID_BYTES, "big")


def _sched_key(topic: str, seq: int) -> bytes:
    return topic.encode() + _SUB_SEP + seq.to_bytes(_SEQ_BYTES, "big")


def _sub_key(topic: str, group: str) -> bytes:
    return topic.encode() + _SUB_SEP + group.encode()


def _is_disk_full(exc: lmdb.Error) -> bool:
    """True when an LMDB error means the file system ran out of space (ENOSPC)."""
    if isinstance(exc, lmdb.DiskError):
        return True
    if any(arg == errno.ENOSPC for arg in exc.args):
        return True
    text = str(exc).lower()
    return any(t in text for t in _ENOSPC_TEXTS)


class Store:
    """Topic logs and subscription state in one LMDB environment; single-threaded use.

    Durability (``sync``):

    * ``sync=True``: every :meth:`commit` is fsync'd before it returns. A committed (confirmed)
      message survives a process crash *and* a power loss or kernel crash.
    * ``sync=False``: commits are written to the OS page cache and the OS flushes them later.
      Much faster. A process crash (even ``kill -9``) loses nothing committed, but a machine
      crash or power loss may lose the last commits (those not yet flushed); the database stays
      consistent (LMDB never exposes a torn transaction), it just goes back in time.

    The map (``map_size``) is address space, not disk: it starts at ``map_size`` and doubles on
    demand up to ``max_map_size`` (``None``: no cap). Reaching the cap, or a full disk, raises
    :class:`StorageFull` and writes nothing.

    ``topics`` mirrors what is committed: it changes only after a successful commit.

    One store per directory at a time: the store holds the directory's lock (``storage/lock.py``)
    from open to :meth:`close`; opening a directory another store holds, in this process or
    another, raises :class:`DataDirInUse` naming the holder.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 1 << 30,
        max_map_size: int | None = None,
        sync: bool = True,
    ) -> None:
        if max_map_size is not None and max_map_size < map_size:
            raise ValueError(f"max_map_size ({max_map_size}) < map_size ({map_size})")
        self.path = Path(path)
        self.max_map_size = max_map_size
        self.topics: dict[str, TopicInfo] = {}
        self.configs: dict[str, dict] = {}  # topic -> its stored config map (topic_config)
        self.last_deleted: dict[str, int] = {}  # records removed per topic by the last commit
        self._closed = False
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(self.path)
        try:
            self.lock.acquire()  # before LMDB: a refused store touches nothing
        except OSError as exc:
            raise StorageError(f"cannot lock the data directory {self.path}: {exc}") from exc
        try:
            self._env = lmdb.Environment(
                str(self.path),
                map_size=map_size,
                max_dbs=_MAX_DBS,
                sync=sync,
                metasync=sync,
                writemap=False,
                max_readers=_MAX_READERS,
            )
        except lmdb.Error as exc:
            self.lock.release()
            raise StorageError(f"cannot open store at {self.path}: {exc}") from exc
        try:
            with self._env.begin(write=True) as txn:
                self._topics_db = self._env.open_db(_DB_TOPICS, txn=txn)
                self._log_db = self._env.open_db(_DB_LOG, txn=txn)
                self._subs_db = self._env.open_db(_DB_SUBS, txn=txn)
                self._dedup_db = self._env.open_db(_DB_DEDUP, txn=txn)
                self._dedup_exp_db = self._env.open_db(_DB_DEDUP_EXP, txn=txn)
                self._meta_db = self._env.open_db(_DB_META, txn=txn)
                self._config_db = self._env.open_db(_DB_TOPIC_CONFIG, txn=txn)
                self._sched_db = self._env.open_db(_DB_SCHED, txn=txn)
                self._patterns_db = self._env.open_db(_DB_PATTERNS, txn=txn)
            with self._env.begin(db=self._topics_db) as txn:
                for key, value in txn.cursor():
                    name = bytes(key).decode()
                    self.topics[name] = TopicInfo._unpack(name, value)
            with self._env.begin(db=self._config_db) as txn:
                for key, value in txn.cursor():
                    self.configs[bytes(key).decode()] = msgpack.unpackb(value)
        except lmdb.Error as exc:
            self._env.close()
            self._closed = True
            self.lock.release()
            raise StorageError(f"cannot load store at {self.path}: {exc}") from exc
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self._env.close()
            self._closed = True
            self.lock.release()
            raise StorageError(f"corrupt topic metadata in {self.path}: {exc}") from exc
        # Oldest dedup timestamp stored (None: none), so that a hub whose producers never
        # give a msg_id never touches the dedup databases.
        self._dedup_oldest = self._first_dedup_ts()
        # Kept up to date by commit, so that it never scans all topics.
        self._next_id = max((t.id for t in self.topics.values()), default=0) + 1
        self._tail_id = max((t.id for t in self.topics.values() if t.last_seq > 0), default=0)

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the environment; idempotent. Further calls raise :class:`StorageError`."""
        if not self._closed:
            self._closed = True
            self._env.close()
            self.lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("store is closed")

    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        self._check_open()
        return int(self._env.info()["map_size"])

    # -- writes ----------------------------------------------------------------------------

    def commit(
        self,
        appends: dict[str, list[bytes]],
        subs: dict[tuple[str, str], bytes | None] | None = None,
        now_ms: int = 0,
        deletes: dict[str, Iterable[int]] | None = None,
        dedup: list[tuple[str, str, int]] | None = None,
        dedup_expire_before: int | None = None,
        schedule: list[tuple[str, int, int]] | None = None,
        unschedule: list[tuple[str, int]] | None = None,
    ) -> dict[str, int]:
        """Append records, delete records and put/delete subscription values in one write
        transaction.

        Topics in ``appends`` that do not exist are created (even with an empty list). Returns
        ``{topic: first sequence assigned in this commit}`` for every topic in ``appends``.
        ``deletes`` maps a topic to the sequences to remove (a ``range`` is removed with one
        cursor walk over what is stored in it, so a sparse range costs what it holds, not its
        length); sequences not stored are skipped, and the topic's ``count``, ``bytes`` and
        ``first_seq`` follow in the same transaction. Deletes apply after the appends.
        ``last_deleted`` then says how many records of each topic were removed.
        All or nothing: on any exception neither the disk nor ``self.topics`` changed.

        ``dedup``: ``(topic, msg_id, index)`` of appended records that carry a producer
        message id (``index`` into ``appends[topic]``), stored as ``msg_id -> (seq, now_ms)``
        in the same transaction. ``dedup_expire_before``: remove up to DEDUP_EXPIRE_BATCH
        entries older than this wall-clock time (ms).

        ``schedule``: ``(topic, index, due_ms)`` of appended records to hold back until
        ``due_ms`` (delayed delivery), stored as ``(topic, seq) -> due_ms`` in the same
        transaction; ``unschedule``: ``(topic, seq)`` entries to remove (their time has come).
        """
        self._check_open()
        touched = False
        while True:
            try:
                return self._commit_once(appends, subs, now_ms, deletes, dedup, dedup_expire_before,
                                         schedule, unschedule)
            except lmdb.MapFullError as exc:
                if not touched and self._at_max_size():
                    # LMDB reuses the pages a transaction freed only from the transaction after
                    # next; right after a purge (or retention) the next commit finds none. One
                    # tiny commit moves past that; then the freed space counts.
                    touched = True
                    if self._touch():
                        continue
                self._grow(exc)
            except lmdb.Error as exc:
                if _is_disk_full(exc):
                    raise StorageFull(f"disk full: {exc}") from exc
                free = self._free_bytes()
                need = sum(len(r) for records in appends.values() for r in records)
                need += sum(len(v or b"") for v in (subs or {}).values()) + _DISK_SLACK
                if free is not None and free < need:
                    raise StorageFull(
                        f"disk full: {free} bytes free on the file system of {self.path}, "
                        f"the commit needed about {need} ({exc})"
                    ) from exc
                raise StorageError(f"commit failed: {exc}") from exc

    def _at_max_size(self) -> bool:
        return self.max_map_size is not None and self.map_size() >= self.max_map_size

    def _touch(self) -> bool:
        """Commit a one-key change (a counter in the meta DB); False if even that does not fit."""
        try:
            with self._env.begin(write=True, db=self._meta_db) as txn:
                n = int.from_bytes(txn.get(b"touch") or b"\0", "big") + 1
                txn.put(b"touch", n.to_bytes(8, "big"))
            return True
        except lmdb.Error:
            return False
    def set_topic_config(self, topic: str, config: dict | None) -> None:
        """Store (or with None remove) a topic's config map, durably, in its own transaction."""
        self._check_open()
        key = topic.encode()
        try:
            with self._env.begin(write=True, db=self._config_db) as txn:
                if config is None:
                    txn.delete(key)
                else:
                    txn.put(key, msgpack.packb(config))
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise StorageFull(f"disk full: {exc}") from exc
            raise StorageError(f"topic config write failed: {exc}") from exc
        if config is None:
            self.configs.pop(topic, None)
        else:
            self.configs[topic] = dict(config)

    def _free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still use on the store's file system."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _grow(self, cause: lmdb.Error) -> None:
        """Double the map (within max_map_size) after MapFullError, or raise StorageFull."""
        current = self.map_size()
        limit = self.max_map_size
        if limit is not None and current >= limit:
            raise StorageFull(f"LMDB map full at its maximum size ({limit} bytes)") from cause
        new_size = current * _MAP_GROWTH
        if limit is not None:
            new_size = min(new_size, limit)
        try:
            self._env.set_mapsize(new_size)
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise StorageFull(f"disk full while growing the map: {exc}") from exc
            raise StorageError(f"cannot grow the map to {new_size} bytes: {exc}") from exc

    def _commit_once(
        self,
        appends: dict[str, list[bytes]],
        subs: dict[tuple[str, str], bytes | None] | None,
        now_ms: int,
        deletes: dict[str, Iterable[int]] | None = None,
        dedup: list[tuple[str, str, int]] | None = None,
        dedup_expire_before: int | None = None,
        schedule: list[tuple[str, int, int]] | None = None,
        unschedule: list[tuple[str, int]] | None = None,
    ) -> dict[str, int]:
        topics = self.topics
        next_id = self._next_id
        # LMDB's MDB_APPEND (putmulti append=True) is only valid for keys beyond the last key of
        # the whole database, and py-lmdb *silently skips* a record that is not. So it is used
        # only for topics whose id is >= the highest id holding records ("tail" topics); the
        # others take the ordinary B-tree insert (their pages end up about half full). Either
        # way, `added` is checked.
        tail_id = self._tail_id
        # (topic, info before or None if new, id, first_seq, new last_seq, added bytes, n)
        plan: list[tuple[str, TopicInfo | None, int, int, int, int, int]] = []
        for name, records in appends.items():
            info = topics.get(name)
            if info is None:
                tid, last = next_id, 0
                next_id += 1
            else:
                tid, last = info.id, info.last_seq
            n = len(records)
            plan.append((name, info, tid, last + 1, last + n, sum(map(len, records)), n))
        plan.sort(key=lambda p: p[2])  # increasing ids: tail topics stay appendable in order

        pack_key = _LOG_KEY.pack
        result: dict[str, int] = {}
        new_infos: dict[str, TopicInfo] = {}
        deleted: dict[str, int] = {}
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._log_db)
            for name, info, tid, first, last, nbytes, n in plan:
                result[name] = first
                if n:
                    # Streamed into putmulti: no intermediate list of keys.
                    keys = map(pack_key, repeat(tid, n), range(first, last + 1))
                    items = zip(keys, appends[name])
                    if tid >= tail_id:
                        _, added = cursor.putmulti(items, append=True)
                    else:  # NOOVERWRITE: an already stored key is reported, never replaced
                        _, added = cursor.putmulti(items, overwrite=False)
                    if added != n:
                        raise StorageError(
                            f"topic {name!r}: {n - added} of sequences {first}..{last} already"
                            " stored (log and topic metadata disagree); nothing written"
                        )
                    tail_id = max(tail_id, tid)
                if info is None:
                    new = TopicInfo(name, tid, 1, last, n, nbytes, now_ms)
                else:
                    new = TopicInfo(
                        name,
                        tid,
                        info.first_seq,
                        last,
                        info.count + n,
                        info.bytes + nbytes,
                        info.created_ms,
                    )
                txn.put(name.encode(), new._pack(), db=self._topics_db)
                new_infos[name] = new
            for name, seqs in (deletes or {}).items():
                info = new_infos.get(name) or topics.get(name)
                if info is None:
                    continue
                n, nbytes = self._delete_in(txn, cursor, info, seqs)
                deleted[name] = n
                if n:
                    new = TopicInfo(
                        name,
                        info.id,
                        self._first_stored(cursor, info),
                        info.last_seq,
                        info.count - n,
                        info.bytes - nbytes,
                        info.created_ms,
                    )
                    txn.put(name.encode(), new._pack(), db=self._topics_db)
                    new_infos[name] = new
            if subs:
                subs_db = self._subs_db
                for (topic, group), value in subs.items():
                    key = _sub_key(topic, group)
                    if value is None:
                        txn.delete(key, db=subs_db)
                    else:
                        txn.put(key, value, db=subs_db)
            oldest = self._dedup_oldest
            if (dedup_expire_before is not None and oldest is not None
                    and oldest < dedup_expire_before):
                oldest = self._expire_dedup(txn, dedup_expire_before)
            if dedup:
                self._put_dedup(txn, dedup, result, now_ms)
                oldest = now_ms if oldest is None else min(oldest, now_ms)
            if schedule or unschedule:
                sched_db = self._sched_db
                for topic, seq in unschedule or ():
                    txn.delete(_sched_key(topic, seq), db=sched_db)
                for topic, index, due in schedule or ():
                    txn.put(_sched_key(topic, result[topic] + index), due.to_bytes(8, "big"),
                            db=sched_db)
        # Committed: only now mirror it in memory (in place, so holders of a TopicInfo see it).
        self._dedup_oldest = oldest
        self._next_id = next_id
        self._tail_id = tail_id
        self.last_deleted = deleted
        for new in new_infos.values():
            old = topics.get(new.name)
            if old is None:
                topics[new.name] = new
            else:
                old.first_seq = new.first_seq
                old.last_seq = new.last_seq
                old.count = new.count
                old.bytes = new.bytes
        return result

    def _delete_in(
        self, txn: lmdb.Transaction, cursor: lmdb.Cursor, info: TopicInfo, seqs: Iterable[int]
    ) -> tuple[int, int]:
        """Remove the stored records of ``seqs`` from ``info``'s log; (records, bytes) removed."""
        prefix = _topic_prefix(info.id)
        n = nbytes = 0
        if isinstance(seqs, range) and seqs.step == 1:
            lo, hi = max(seqs.start, 0), seqs.stop - 1
            if hi < lo or not cursor.set_range(prefix + lo.to_bytes(_SEQ_BYTES, "big")):
                return 0, 0
            while True:
                key = cursor.key()
                if not key or key[:_ID_BYTES] != prefix:
                    break
                if int.from_bytes(key[_ID_BYTES:], "big") > hi:
                    break
                nbytes += len(cursor.value())
                n += 1
                if not cursor.delete():  # moves to the next record
                    break
            return n, nbytes
        pop = txn.pop
        log_db = self._log_db
        for s in seqs:
            if not 0 <= s < 1 << (8 * _SEQ_BYTES):
                continue
            value = pop(prefix + s.to_bytes(_SEQ_BYTES, "big"), db=log_db)
            if value is not None:
                n += 1
                nbytes += len(value)
        return n, nbytes

    @staticmethod
    def _first_stored(cursor: lmdb.Cursor, info: TopicInfo) -> int:
        """The lowest sequence still stored for ``info`` (``last_seq + 1`` if none)."""
        prefix = _topic_prefix(info.id)
        start = max(info.first_seq, 0).to_bytes(_SEQ_BYTES, "big")
        if cursor.set_range(prefix + start):
            key = cursor.key()
            if key[:_ID_BYTES] == prefix:
                return int.from_bytes(key[_ID_BYTES:], "big")
        return info.last_seq + 1

    # -- cluster followers (router/replication.py) ------------------------------------------

    def replicate(
        self,
        topic: str,
        records: list[tuple[int, bytes]],
        last_seq: int,
        subs: dict[tuple[str, str], bytes | None] | None = None,
        dedup: list[tuple[str, int]] | None = None,
        now_ms: int = 0,
        epochs: list[list[int]] | None = None,
        schedule: list[tuple[int, int]] | None = None,
    ) -> TopicInfo:
        """A follower's copy of its leader's log: store ``records`` (``(seq, record)``, seqs
        increasing, every one above this topic's ``last_seq``) at the leader's sequences, raise
        ``last_seq`` to the leader's (sequences never repeat, even where the leader trimmed), put
        the replicated subscription states ``subs`` and dedup entries ``dedup`` (``(msg_id,
        seq)``) and delay entries ``schedule`` (``(seq, due_ms)`` of replicated records the
        leader holds back), all in one write transaction. The ordinary :meth:`commit` (the hub's hot path)
        is untouched by this path. Returns the topic's new info."""
        self._check_open()
        info = self.topics.get(topic)
        last = info.last_seq if info else 0
        if records and records[0][0] <= last:
            raise StorageError(f"topic {topic!r}: replicated seq {records[0][0]} is not above the "
                               f"stored last seq {last}")
        for (a, _), (b, _) in zip(records, records[1:]):
            if b <= a:
                raise StorageError(f"topic {topic!r}: replicated seqs must increase")
        new_last = max(last, last_seq, records[-1][0] if records else 0)
        tid = info.id if info else self._next_id
        prefix_pack = _LOG_KEY.pack
        nbytes = sum(len(r) for _, r in records)
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor(db=self._log_db)
                if records:
                    items = [(prefix_pack(tid, seq), rec) for seq, rec in records]
                    _, added = cursor.putmulti(items, overwrite=False)
                    if added != len(records):
                        raise StorageError(f"topic {topic!r}: replicated seqs already stored")
                if info is None:
                    first = records[0][0] if records else new_last + 1
                    new = TopicInfo(topic, tid, first, new_last, len(records), nbytes, now_ms)
                else:
                    first = info.first_seq
                    if info.count == 0:  # none retained: the first is the next to come
                        first = records[0][0] if records else new_last + 1
                    new = TopicInfo(topic, tid, first, new_last, info.count + len(records),
                                    info.bytes + nbytes, info.created_ms)
                txn.put(topic.encode(), new._pack(), db=self._topics_db)
                for (t, group), value in (subs or {}).items():
                    key = _sub_key(t, group)
                    if value is None:
                        txn.delete(key, db=self._subs_db)
                    else:
                        txn.put(key, value, db=self._subs_db)
                if dedup:
                    self._put_dedup(txn, [(topic, m, s) for m, s in dedup], {topic: 0}, now_ms)
                if epochs is not None:
                    txn.put(_EPOCHS + topic.encode(), msgpack.packb(epochs), db=self._meta_db)
                for seq, due in schedule or ():
                    txn.put(_sched_key(topic, seq), due.to_bytes(8, "big"), db=self._sched_db)
        except lmdb.MapFullError:
            self._grow(lmdb.MapFullError("map full"))
            return self.replicate(topic, records, last_seq, subs, dedup, now_ms, epochs,
                                  schedule)
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise StorageFull(f"disk full: {exc}") from exc
            raise StorageError(f"replicated commit failed: {exc}") from exc
        if dedup:
            self._dedup_oldest = now_ms if self._dedup_oldest is None else min(
                self._dedup_oldest, now_ms)
        if info is None:
            self._next_id = tid + 1
            self.topics[topic] = new
        else:
            info.first_seq, info.last_seq = new.first_seq, new.last_seq
            info.count, info.bytes = new.count, new.bytes
        if records:
            self._tail_id = max(self._tail_id, tid)
        return self.topics[topic]

    def gaps(self, topic: str, upto: int, limit: int = 10_000) -> list[list[int]]:
        """The runs ``[lo, hi]`` of sequences between ``first_seq`` and ``upto`` that are not
        stored (a sparse PURGE's holes), at most ``limit`` runs: what a cluster leader sends a
        follower whose copy holds more records than its own."""
        self._check_open()
        info = self.topics.get(topic)
        if info is None:
            return []
        upto = min(upto, info.last_seq)
        if info.count >= info.last_seq - info.first_seq + 1:  # nothing missing anywhere
            return []
        prefix = _topic_prefix(info.id)
        out: list[list[int]] = []
        expect = info.first_seq
        with self._env.begin(db=self._log_db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix + expect.to_bytes(_SEQ_BYTES, "big")):
                for key in cursor.iternext(keys=True, values=False):
                    if key[:_ID_BYTES] != prefix:
                        break
                    seq = int.from_bytes(key[_ID_BYTES:], "big")
                    if seq > upto:
                        break
                    if seq > expect:
                        out.append([expect, seq - 1])
                        if len(out) >= limit:
                            return out
                    expect = seq + 1
        if expect <= upto:
            out.append([expect, upto])
        return out

    def epochs(self, topic: str) -> list[list[int]]:
        """A cluster partition's leader epochs: ``[[epoch, first seq it wrote], ...]`` in
        order (what a follower compares to find where its log diverged)."""
        self._check_open()
        with self._env.begin(db=self._meta_db) as txn:
            value = txn.get(_EPOCHS + topic.encode())
        return [list(e) for e in msgpack.unpackb(value)] if value else []

    def stream_position(self, topic: str) -> tuple[int, int] | None:
        """A cluster follower's place in its leader's state stream: ``(leader epoch, next
        entry)`` as last stored (None: never)."""
        self._check_open()
        with self._env.begin(db=self._meta_db) as txn:
            value = txn.get(_STREAM + topic.encode())
        return tuple(msgpack.unpackb(value)) if value else None  # type: ignore[return-value]

    def set_stream_position(self, topic: str, epoch: int, next_entry: int) -> None:
        self._check_open()
        try:
            with self._env.begin(write=True, db=self._meta_db) as txn:
                txn.put(_STREAM + topic.encode(), msgpack.packb([epoch, next_entry]))
        except lmdb.Error as exc:
            raise StorageError(f"stream position write failed: {exc}") from exc

    def set_epochs(self, topic: str, epochs: list[list[int]]) -> None:
        """Store a partition's epoch history (a new leader appends its epoch), durably."""
        self._check_open()
        try:
            with self._env.begin(write=True, db=self._meta_db) as txn:
                txn.put(_EPOCHS + topic.encode(), msgpack.packb(epochs))
        except lmdb.Error as exc:
            raise StorageError(f"epoch history write failed: {exc}") from exc

    def truncate(self, topic: str, after_seq: int, msg_ids: Iterable[str] = ()) -> int:
        """A cluster follower's diverged tail: remove every record above ``after_seq`` and the
        dedup entries of ``msg_ids`` that point above it, and set ``last_seq`` back to
        ``after_seq`` (those sequences were never confirmed: the new leader's records take
        them). One transaction; returns how many records went."""
        self._check_open()
        info = self.topics.get(topic)
        if info is None or info.last_seq <= after_seq:
            return 0
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor(db=self._log_db)
                n, nbytes = self._delete_in(txn, cursor, info,
                                            range(after_seq + 1, info.last_seq + 1))
                for msg_id in msg_ids:
                    key = topic.encode() + _SUB_SEP + msg_id.encode()
                    value = txn.get(key, db=self._dedup_db)
                    if value is not None and _DEDUP_VALUE.unpack(value)[0] > after_seq:
                        txn.delete(key, db=self._dedup_db)
                count = info.count - n
                first = info.first_seq if count else after_seq + 1
                new = TopicInfo(topic, info.id, min(first, after_seq + 1) if count == 0 else first,
                                after_seq, count, info.bytes - nbytes, info.created_ms)
                txn.put(topic.encode(), new._pack(), db=self._topics_db)
        except lmdb.Error as exc:
            raise StorageError(f"truncate failed: {exc}") from exc
        info.first_seq, info.last_seq, info.count, info.bytes = (
            new.first_seq, new.last_seq, new.count, new.bytes)
        return n

    def delete(self, topic: str, seqs: Iterable[int]) -> int:
        """Remove the stored records of ``seqs`` (a list or a ``range``); returns how many."""
        self.commit({}, None, deletes={topic: seqs})
        return self.last_deleted.get(topic, 0)

    # -- producer message ids (dedup) ------------------------------------------------------

    def _put_dedup(self, txn, dedup: list[tuple[str, str, int]], firsts: dict[str, int],
                   now_ms: int) -> None:
        ts = _DEDUP_TS.pack(now_ms)
        for topic, msg_id, index in dedup:
            key = topic.encode() + _SUB_SEP + msg_id.encode()
            txn.put(key, _DEDUP_VALUE.pack(firsts[topic] + index, now_ms), db=self._dedup_db)
            txn.put(ts + key, b"", db=self._dedup_exp_db)

    def _expire_dedup(self, txn, before_ms: int) -> int | None:
        """Delete up to DEDUP_EXPIRE_BATCH entries stored before ``before_ms``; returns the
        oldest timestamp left (None if none)."""
        cursor = txn.cursor(db=self._dedup_exp_db)
        if not cursor.first():
            return None
        for _ in range(DEDUP_EXPIRE_BATCH):
            entry = cursor.key()
            if not entry:
                return None
            (ts,) = _DEDUP_TS.unpack(entry[:8])
            if ts >= before_ms:
                return ts
            key = entry[8:]
            value = txn.get(key, db=self._dedup_db)
            # Only if not stored again since (a later publish of the same id has a later ts).
            if value is not None and _DEDUP_VALUE.unpack(value)[1] == ts:
                txn.delete(key, db=self._dedup_db)
            cursor.delete()  # moves to the next entry
        entry = cursor.key()
        return _DEDUP_TS.unpack(entry[:8])[0] if entry else None

    def _first_dedup_ts(self) -> int | None:
        with self._env.begin(db=self._dedup_exp_db) as txn:
            cursor = txn.cursor()
            if cursor.first():
                return _DEDUP_TS.unpack(cursor.key()[:8])[0]
        return None

    def dedup_lookup(self, ids: list[tuple[str, str]], since_ms: int) -> dict[tuple[str, str], int]:
        """The stored sequence of each ``(topic, msg_id)`` published at or after ``since_ms``
        (wall clock, ms); ids not known (or older) are absent. One read transaction."""
        self._check_open()
        if self._dedup_oldest is None:
            return {}
        out: dict[tuple[str, str], int] = {}
        try:
            with self._env.begin(db=self._dedup_db) as txn:
                for topic, msg_id in ids:
                    value = txn.get(topic.encode() + _SUB_SEP + msg_id.encode())
                    if value is not None:
                        seq, ts = _DEDUP_VALUE.unpack(value)
                        if ts >= since_ms:
                            out[(topic, msg_id)] = seq
        except lmdb.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc
        return out

    # -- reads -----------------------------------------------------------------------------

    def read(self, topic: str, seqs: list[int]) -> list[bytes | None]:
        """The record for each sequence in ``seqs`` (None where not stored), in one read txn."""
        self._check_open()
        info = self.topics.get(topic)
        if info is None:
            return [None] * len(seqs)
        prefix = _topic_prefix(info.id)
        try:
            with self._env.begin(db=self._log_db) as txn:
                get = txn.get
                return [get(prefix + s.to_bytes(_SEQ_BYTES, "big")) for s in seqs]
        except OverflowError:
            # A negative or > 2**64 sequence cannot be stored: answer per item.
            return [self._read_one(prefix, s) for s in seqs]
        except lmdb.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    def _read_one(self, prefix: bytes, seq: int) -> bytes | None:
        if not 0 <= seq < 1 << (8 * _SEQ_BYTES):
            return None
        with self._env.begin(db=self._log_db) as txn:
            return txn.get(prefix + seq.to_bytes(_SEQ_BYTES, "big"))

    def read_range(self, topic: str, start_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(seq, record)`` pairs with ``seq >= start_seq``, in order."""
        self._check_open()
        info = self.topics.get(topic)
        if info is None or limit <= 0 or start_seq > info.last_seq:
            return []
        prefix = _topic_prefix(info.id)
        start = max(start_seq, 0).to_bytes(_SEQ_BYTES, "big")
        out: list[tuple[int, bytes]] = []
        try:
            with self._env.begin(db=self._log_db) as txn:
                cursor = txn.cursor()
                if not cursor.set_range(prefix + start):
                    return out
                for key, value in cursor:
                    if key[:_ID_BYTES] != prefix:
                        break
                    out.append((int.from_bytes(key[_ID_BYTES:], "big"), value))
                    if len(out) >= limit:
                        break
        except lmdb.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc
        return out

    def delete_topic(self, topic: str) -> int:
        """Remove a topic for good in one write transaction: its records, its metadata, its
        config, and every subscription cursor, dedup entry and delay entry of it. Returns the
        number of records removed (0 for a topic that is not stored). Publishing to the name
        later creates a new topic, from sequence 1."""
        self._check_open()
        info = self.topics.get(topic)
        name = topic.encode()
        prefix = name + _SUB_SEP
        for attempt in (1, 2):
            try:
                with self._env.begin(write=True) as txn:
                    n = 0
                    if info is not None:
                        cursor = txn.cursor(db=self._log_db)
                        n, _ = self._delete_in(txn, cursor, info, range(0, info.last_seq + 1))
                        txn.delete(name, db=self._topics_db)
                    txn.delete(name, db=self._config_db)
                    for db in (self._subs_db, self._dedup_db, self._sched_db):
                        cursor = txn.cursor(db=db)
                        if cursor.set_range(prefix):
                            while cursor.key()[: len(prefix)] == prefix:
                                if not cursor.delete():
                                    break
                break
            except lmdb.MapFullError as exc:
                if attempt == 2:
                    raise StorageFull(f"cannot delete topic {topic!r}: {exc}") from exc
                self._grow(exc)
            except lmdb.Error as exc:
                if _is_disk_full(exc):
                    raise StorageFull(f"disk full: {exc}") from exc
                raise StorageError(f"cannot delete topic {topic!r}: {exc}") from exc
        self.topics.pop(topic, None)
        self.configs.pop(topic, None)
        return n

    def put_pattern(self, pattern: str, group: str, options: dict | None) -> None:
        """Store (or with None remove) a pattern subscription's options, in its own transaction."""
        self._check_open()
        key = _sub_key(pattern, group)
        try:
            with self._env.begin(write=True, db=self._patterns_db) as txn:
                if options is None:
                    txn.delete(key)
                else:
                    txn.put(key, msgpack.packb(options))
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise StorageFull(f"disk full: {exc}") from exc
            raise StorageError(f"pattern subscription write failed: {exc}") from exc

    def load_patterns(self) -> dict[tuple[str, str], dict]:
        """Every stored pattern subscription: ``(pattern, group) -> options``."""
        self._check_open()
        out = {}
        with self._env.begin(db=self._patterns_db) as txn:
            for key, value in txn.cursor():
                pattern, _, group = bytes(key).partition(_SUB_SEP)
                out[(pattern.decode(), group.decode())] = msgpack.unpackb(value)
        return out

    def load_schedule(self) -> list[tuple[str, int, int]]:
        """Every ``(topic, seq, due_ms)`` of delayed messages (see ``commit(schedule=...)``)."""
        self._check_open()
        out = []
        with self._env.begin(db=self._sched_db) as txn:
            for key, value in txn.cursor():
                key = bytes(key)
                out.append((key[:-9].decode(), int.from_bytes(key[-8:], "big"),
                            int.from_bytes(value, "big")))
        return out

    def load_subs(self) -> dict[tuple[str, str], bytes]:
        """Every stored subscription value, keyed by ``(topic, group)``."""
        self._check_open()
        out: dict[tuple[str, str], bytes] = {}
        try:
            with self._env.begin(db=self._subs_db) as txn:
                for key, value in txn.cursor():
                    topic, _, group = bytes(key).partition(_SUB_SEP)
                    out[(topic.decode(), group.decode())] = value
        except lmdb.Error as exc:
            raise StorageError(f"cannot load subscriptions: {exc}") from exc
        return out
