"""Store.replicate / Store.truncate / epochs: a cluster follower's copy of its leader's log
(the leader's sequences, gaps kept, last_seq raised), and the diverged tail it drops."""

from __future__ import annotations

import pytest
from zmq_mq.storage import StorageError, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s", sync=False)
    yield s
    s.close()


def test_replicated_records_keep_the_leaders_sequences_and_gaps(store):
    store.replicate("t.0", [(3, b"c"), (4, b"d"), (7, b"g")], last_seq=9,
                    dedup=[("m4", 4)], now_ms=1000, epochs=[[1, 1]])
    info = store.topics["t.0"]
    assert (info.first_seq, info.last_seq, info.count) == (3, 9, 3)
    assert store.read_range("t.0", 1, 10) == [(3, b"c"), (4, b"d"), (7, b"g")]
    assert store.dedup_lookup([("t.0", "m4")], 0) == {("t.0", "m4"): 4}
    assert store.epochs("t.0") == [[1, 1]]
    # the ordinary commit goes on after the leader's last seq (a promoted follower)
    assert store.commit({"t.0": [b"j"]}) == {"t.0": 10}


def test_a_replicated_seq_at_or_below_the_stored_end_is_refused_and_nothing_written(store):
    store.replicate("t.0", [(1, b"a"), (2, b"b")], last_seq=2)
    with pytest.raises(StorageError):
        store.replicate("t.0", [(2, b"x"), (3, b"c")], last_seq=3)
    assert store.read_range("t.0", 1, 10) == [(1, b"a"), (2, b"b")]
    assert store.topics["t.0"].last_seq == 2


def test_replicated_subscription_state_is_stored_with_the_records(store):
    store.replicate("t.0", [(1, b"a")], last_seq=1, subs={("t.0", "g"): b"state"})
    assert store.load_subs() == {("t.0", "g"): b"state"}


def test_truncate_drops_the_diverged_tail_its_dedup_entries_and_moves_last_seq_back(store):
    store.commit({"t.0": [b"a", b"b", b"c"]}, dedup=[("t.0", "m1", 0), ("t.0", "m3", 2)],
                 now_ms=1000)
    assert store.truncate("t.0", 1, ["m1", "m3"]) == 2
    info = store.topics["t.0"]
    assert (info.last_seq, info.count) == (1, 1)
    assert store.read_range("t.0", 1, 10) == [(1, b"a")]
    assert store.dedup_lookup([("t.0", "m1"), ("t.0", "m3")], 0) == {("t.0", "m1"): 1}
    # the new leader's records take those sequences
    store.replicate("t.0", [(2, b"B"), (3, b"C")], last_seq=3)
    assert store.read_range("t.0", 1, 10) == [(1, b"a"), (2, b"B"), (3, b"C")]
    # and they survive a reopen
    path = store.path
    store.close()
    with Store(path, sync=False) as again:
        assert again.topics["t.0"].last_seq == 3
        assert again.read_range("t.0", 1, 10) == [(1, b"a"), (2, b"B"), (3, b"C")]


def test_gaps_are_the_runs_of_seqs_missing_between_the_log_start_and_a_position(store):
    store.commit({"t.0": [b"r"] * 10})
    assert store.gaps("t.0", 10) == []  # nothing missing: no scan
    store.delete("t.0", [1, 4, 5, 9])
    assert store.topics["t.0"].first_seq == 2
    assert store.gaps("t.0", 10) == [[4, 5], [9, 9]]
    assert store.gaps("t.0", 6) == [[4, 5]]
    store.delete("t.0", [10])
    assert store.gaps("t.0", 10) == [[4, 5], [9, 10]]
    assert store.gaps("t.0", 10, limit=1) == [[4, 5]]


def test_replicated_delay_entries_are_stored_with_their_records(store):
    store.replicate("t.0", [(1, b"a"), (2, b"b")], last_seq=2, schedule=[(2, 5000)])
    assert store.load_schedule() == [("t.0", 2, 5000)]


def test_an_empty_copy_raised_past_trimmed_seqs_starts_at_the_next_seq(store):
    store.replicate("t.0", [(1, b"a")], last_seq=1)
    store.delete("t.0", [1])
    store.replicate("t.0", [], last_seq=7)  # the leader trimmed 2..7
    info = store.topics["t.0"]
    assert (info.first_seq, info.last_seq, info.count) == (8, 7, 0)


def test_a_followers_state_stream_position_is_kept_with_the_leaders_epoch(store):
    assert store.stream_position("t.0") is None
    store.set_stream_position("t.0", 3, 17)
    assert store.stream_position("t.0") == (3, 17)
