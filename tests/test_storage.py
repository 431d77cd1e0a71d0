"""Tests for the LMDB store (zmq_mq.storage): sequences, reads, reopen, subscriptions, full map."""

from __future__ import annotations

import copy
from pathlib import Path

import lmdb
import pytest

from zmq_mq.storage import StorageError, StorageFull, Store, TopicInfo

KIB = 1024
MIB = 1024 * KIB


def records(prefix: str, n: int, size: int = 0) -> list[bytes]:
    """n distinct records, each padded to at least size bytes."""
    return [f"{prefix}-{i}".encode().ljust(size, b".") for i in range(n)]


def snapshot(store: Store) -> dict[str, TopicInfo]:
    return copy.deepcopy(store.topics)


def all_records(store: Store, topic: str) -> list[tuple[int, bytes]]:
    return store.read_range(topic, 1, 1 << 30)


def test_appends_get_consecutive_sequences_from_1_per_topic_independently(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        # When two commits append to two topics
        first = store.commit({"a": [b"a1", b"a2"], "b": [b"b1"]}, now_ms=1000)
        second = store.commit({"a": [b"a3"], "b": [b"b2", b"b3", b"b4"]}, now_ms=2000)

        # Then each topic numbers its own records from 1, with no gap
        assert first == {"a": 1, "b": 1}
        assert second == {"a": 3, "b": 2}
        assert store.read("a", [1, 2, 3]) == [b"a1", b"a2", b"a3"]
        assert store.read("b", [1, 2, 3, 4]) == [b"b1", b"b2", b"b3", b"b4"]
        a, b = store.topics["a"], store.topics["b"]
        assert a == TopicInfo("a", id=1, first_seq=1, last_seq=3, count=3, bytes=6, created_ms=1000)
        assert b == TopicInfo("b", id=2, first_seq=1, last_seq=4, count=4, bytes=8, created_ms=1000)


def test_read_returns_none_for_unknown_sequences_and_topics(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        store.commit({"a": [b"a1", b"a2"], "b": [b"b1"]})

        assert store.read("a", [2, 0, 3, 1, 99, -1]) == [b"a2", None, None, b"a1", None, None]
        assert store.read("nope", [1, 2]) == [None, None]
        assert store.read("a", []) == []


def test_read_range_returns_records_in_order_from_start_up_to_limit(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        # Given interleaved commits to three topics (so "a" and "b" are not at the end of the log)
        for turn in range(5):
            store.commit({name: records(f"{name}{turn}", 3) for name in ("a", "b", "c")})

        # Then each topic reads back its own 15 records in order, nothing from its neighbours
        for name in ("a", "b", "c"):
            expected = [rec for turn in range(5) for rec in records(f"{name}{turn}", 3)]
            assert all_records(store, name) == list(enumerate(expected, start=1))
        assert store.read_range("b", 4, 2) == [(4, b"b1-0"), (5, b"b1-1")]
        assert store.read_range("b", 14, 10) == [(14, b"b4-1"), (15, b"b4-2")]
        assert store.read_range("b", 0, 1) == [(1, b"b0-0")]
        assert store.read_range("b", 16, 10) == []
        assert store.read_range("b", 1, 0) == []
        assert store.read_range("nope", 1, 10) == []


def test_appending_to_an_earlier_topic_after_a_later_one_loses_nothing(tmp_path: Path) -> None:
    # Regression: LMDB's append mode silently drops keys below the database's last key, and
    # topic "a" (id 1) sorts before topic "z" (id 2).
    with Store(tmp_path / "db") as store:
        store.commit({"a": [b"a1"]})
        store.commit({"z": [b"z1"]})

        assert store.commit({"a": [b"a2", b"a3"], "z": [b"z2"]}) == {"a": 2, "z": 2}
        assert store.commit({"a": records("x", 500)}) == {"a": 4}

        assert store.read("a", [1, 2, 3, 4, 503]) == [b"a1", b"a2", b"a3", b"x-0", b"x-499"]
        assert len(all_records(store, "a")) == 503
        assert all_records(store, "z") == [(1, b"z1"), (2, b"z2")]


def test_an_empty_append_list_creates_the_topic_without_records(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        assert store.commit({"empty": []}, now_ms=5) == {"empty": 1}

        info = store.topics["empty"]
        assert (info.id, info.first_seq, info.last_seq, info.count, info.bytes) == (1, 1, 0, 0, 0)
        assert info.created_ms == 5
        assert store.commit({"empty": [b"r"]}) == {"empty": 1}


def test_reopening_keeps_topics_ids_records_and_subs_and_sequences_continue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    with Store(path) as store:
        store.commit({"a": [b"a1", b"a2"], "b": [b"b1"]}, {("a", "g"): b"cursor-a"}, now_ms=7)
        before = snapshot(store)

    # When the store is reopened on the same path
    with Store(path) as store:
        # Then everything committed is there, with the same topic ids
        assert store.topics == before
        assert store.read("a", [1, 2]) == [b"a1", b"a2"]
        assert store.load_subs() == {("a", "g"): b"cursor-a"}

        # And sequences continue where they stopped; a new topic gets the next id
        assert store.commit({"a": [b"a3"], "c": [b"c1"]}) == {"a": 3, "c": 1}
        assert store.topics["c"].id == 3

    with Store(path) as store:
        assert store.read("a", [1, 2, 3]) == [b"a1", b"a2", b"a3"]
        assert {name: t.id for name, t in store.topics.items()} == {"a": 1, "b": 2, "c": 3}


def test_subs_are_put_overwritten_and_deleted_with_none(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        assert store.load_subs() == {}

        store.commit({}, {("orders", "billing"): b"v1", ("orders", "audit"): b"x"})
        store.commit({}, {("orders", "billing"): b"v2", ("dlq.orders", "billing"): b""})
        assert store.load_subs() == {
            ("orders", "billing"): b"v2",
            ("orders", "audit"): b"x",
            ("dlq.orders", "billing"): b"",
        }

        # Deleting, also something that does not exist, is fine
        store.commit({}, {("orders", "audit"): None, ("never", "there"): None})
        assert store.load_subs() == {("orders", "billing"): b"v2", ("dlq.orders", "billing"): b""}
        # Subs do not create topics
        assert store.topics == {}


def test_subs_and_appends_commit_together(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        assert store.commit({"t": [b"m"]}, {("t", "g"): b"acked:1"}) == {"t": 1}
        assert store.load_subs() == {("t", "g"): b"acked:1"}
        assert store.read("t", [1]) == [b"m"]


def test_empty_and_one_mib_records_are_stored_and_counted(tmp_path: Path) -> None:
    big = bytes(range(256)) * (4 * KIB)  # 1 MiB
    with Store(tmp_path / "db") as store:
        store.commit({"t": [b"", big, b"", big]})

        assert store.read("t", [1, 2, 3, 4]) == [b"", big, b"", big]
        assert store.topics["t"].bytes == 2 * MIB
        assert store.topics["t"].count == 4


def test_map_full_at_max_size_raises_storage_full_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with Store(path, map_size=64 * KIB, max_map_size=64 * KIB) as store:
        # Given a few committed records and a sub
        store.commit({"t": [b"kept"]}, {("t", "g"): b"v1"})
        before = snapshot(store)

        # When a commit needs more than the map can ever hold
        with pytest.raises(StorageFull):
            store.commit({"t": records("r", 2000, 150), "new": [b"x"]}, {("t", "g"): b"v2"})

        # Then nothing changed: not in memory, not on disk
        assert store.topics == before
        assert store.read("t", [1, 2]) == [b"kept", None]
        assert store.load_subs() == {("t", "g"): b"v1"}
        assert store.map_size() == 64 * KIB

        # And small commits still work (sequences continue with no gap)
        assert store.commit({"t": [b"next"]}, {("t", "g"): b"v3"}) == {"t": 2}
        assert store.read("t", [1, 2]) == [b"kept", b"next"]

    with Store(path, map_size=64 * KIB, max_map_size=64 * KIB) as store:
        assert "new" not in store.topics
        assert all_records(store, "t") == [(1, b"kept"), (2, b"next")]
        assert store.load_subs() == {("t", "g"): b"v3"}


def test_the_map_grows_automatically_up_to_max_map_size(tmp_path: Path) -> None:
    with Store(tmp_path / "db", map_size=256 * KIB, max_map_size=64 * MIB) as store:
        # When several MB are appended, in one commit and in many
        big_batch = records("big", 20_000, 150)  # ~3 MB in one transaction
        store.commit({"t": big_batch})
        for turn in range(10):
            store.commit({"t": records(f"small{turn}", 1000, 150), "u": [b"u"]})

        # Then the map grew and every record is readable
        assert store.map_size() > 256 * KIB
        assert store.map_size() <= 64 * MIB
        assert store.topics["t"].last_seq == 30_000
        got = all_records(store, "t")
        assert [rec for _, rec in got[:20_000]] == big_batch
        assert got[-1] == (30_000, records("small9", 1000, 150)[-1])


def test_a_failing_commit_leaves_earlier_topics_of_the_same_commit_unwritten(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "db") as store:
        store.commit({"a": [b"a1"]})
        before = snapshot(store)

        # When the second topic of a commit has a bad record (not bytes)
        with pytest.raises(TypeError):
            store.commit({"a": [b"a2"], "b": [b"ok", 42]})  # type: ignore[list-item]

        assert store.topics == before
        assert store.read("a", [2]) == [None]
        assert store.commit({"a": [b"a2"], "b": [b"b1"]}) == {"a": 2, "b": 1}
        assert store.topics["b"].id == 2


def test_a_full_disk_is_storage_full_and_other_lmdb_errors_are_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "db") as store:

        def fail(exc: Exception) -> None:
            def raiser(*args: object, **kwargs: object) -> None:
                raise exc

            monkeypatch.setattr(store, "_commit_once", raiser)

        fail(lmdb.DiskError("mdb_txn_commit", 28))
        with pytest.raises(StorageFull):
            store.commit({"t": [b"x"]})
        fail(lmdb.Error("mdb_txn_commit: No space left on device"))
        with pytest.raises(StorageFull):
            store.commit({"t": [b"x"]})
        fail(lmdb.CorruptedError("mdb_get: MDB_CORRUPTED: Located page was wrong type"))
        with pytest.raises(StorageError, match="MDB_CORRUPTED"):
            store.commit({"t": [b"x"]})
        # LMDB reports a short write on a full file system as EIO: full when space is short,
        # a plain storage error when there is room
        fail(lmdb.Error("mdb_txn_commit: Input/output error"))
        with pytest.raises(StorageError, match="Input/output") as err:
            store.commit({"t": [b"x"]})
        assert not isinstance(err.value, StorageFull)
        monkeypatch.setattr(store, "_free_bytes", lambda: 4096)
        with pytest.raises(StorageFull, match="4096 bytes free"):
            store.commit({"t": [b"x"]})


def test_close_is_idempotent_and_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.close()
    store.close()

    with pytest.raises(StorageError):
        store.commit({"t": [b"x"]})
    with pytest.raises(StorageError):
        store.read("t", [1])


def test_max_map_size_below_map_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path / "db", map_size=1 * MIB, max_map_size=64 * KIB)


def test_storage_errors_are_one_hierarchy_and_map_to_one_error_code_each() -> None:
    # Given the two storage failures the hub can meet
    from zmq_mq.router.errors import storage_error_code
    from zmq_mq.router.protocol import ErrorCode

    full, other = StorageFull("disk full"), StorageError("read failed")
    # Then catching StorageError catches both, and each maps to its own code
    assert isinstance(full, StorageError)
    assert storage_error_code(full) is ErrorCode.STORAGE_FULL
    assert storage_error_code(other) is ErrorCode.STORAGE_ERROR


def test_a_data_directory_in_use_is_a_storage_error_from_the_one_errors_module() -> None:
    # Given the storage errors, as the package, the store and the lock export them
    from zmq_mq.storage import DataDirInUse as from_package
    from zmq_mq.storage import errors, lock
    from zmq_mq.storage import log as store_log

    # Then each name is one class, defined in storage/errors.py, and all are StorageErrors
    assert from_package is errors.DataDirInUse is lock.DataDirInUse is store_log.DataDirInUse
    assert store_log.StorageFull is errors.StorageFull and store_log.StorageError is errors.StorageError
    assert issubclass(errors.DataDirInUse, errors.StorageError)
    assert issubclass(errors.StorageFull, errors.StorageError)
