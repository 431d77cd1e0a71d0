"""Deleting records (dead-letter purge and redrive): counts, bytes and first_seq follow."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq_mq.storage import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db", map_size=1 << 22)
    yield s
    s.close()


def _fill(store: Store, topic: str, n: int) -> None:
    store.commit({topic: [b"r%d" % i for i in range(1, n + 1)]})


def test_deleting_chosen_seqs_updates_count_bytes_and_first_seq_and_survives_reopen(tmp_path, store):
    # Given topic a with seqs 1..5 (records r1..r5) and topic b beside it
    _fill(store, "a", 5)
    _fill(store, "b", 3)
    # When seqs 1, 3 and a never-stored 99 are deleted
    assert store.delete("a", [1, 3, 99]) == 2
    # Then only 2, 4, 5 remain and the metadata says so
    info = store.topics["a"]
    assert (info.first_seq, info.last_seq, info.count) == (2, 5, 3)
    assert info.bytes == len(b"r2") + len(b"r4") + len(b"r5")
    assert [s for s, _ in store.read_range("a", 1, 100)] == [2, 4, 5]
    assert [s for s, _ in store.read_range("b", 1, 100)] == [1, 2, 3]
    store.close()
    with Store(tmp_path / "db") as again:
        info = again.topics["a"]
        assert (info.first_seq, info.last_seq, info.count) == (2, 5, 3)
        # and new appends keep numbering after the highest ever assigned
        assert again.commit({"a": [b"r6"]}) == {"a": 6}


def test_deleting_a_range_removes_what_it_holds_and_an_emptied_topic_keeps_its_last_seq(store):
    _fill(store, "a", 10)
    _fill(store, "z", 2)  # a later topic id: the range walk must stop at topic a's end
    assert store.delete("a", range(1, 1_000_000)) == 10
    info = store.topics["a"]
    assert (info.count, info.bytes, info.first_seq, info.last_seq) == (0, 0, 11, 10)
    assert store.read_range("z", 1, 10) == [(1, b"r1"), (2, b"r2")]
    assert store.commit({"a": [b"x"]}) == {"a": 11}
    assert store.topics["a"].first_seq == 11


def test_appends_and_deletes_in_one_commit_are_all_or_nothing(store):
    # Given a DLQ record to move back to its origin topic
    _fill(store, "dlq.g", 2)
    _fill(store, "orders", 1)
    # When the move is one commit
    firsts = store.commit({"orders": [b"moved"]}, deletes={"dlq.g": [1]})
    # Then both happened together
    assert firsts == {"orders": 2} and store.last_deleted == {"dlq.g": 1}
    assert store.read("orders", [2]) == [b"moved"]
    assert store.read("dlq.g", [1, 2]) == [None, b"r2"]
    assert store.topics["dlq.g"].count == 1 and store.topics["dlq.g"].first_seq == 2


def test_deleting_from_an_unknown_topic_or_nothing_changes_nothing(store):
    _fill(store, "a", 2)
    assert store.delete("nope", [1]) == 0
    assert store.delete("a", []) == 0
    assert store.topics["a"].count == 2 and "nope" not in store.topics


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from("ab"), st.integers(0, 6)),
    st.tuples(st.just("delete"), st.sampled_from("ab"), st.lists(st.integers(0, 40), max_size=8)),
    st.tuples(st.just("range"), st.sampled_from("ab"), st.tuples(st.integers(0, 40), st.integers(0, 40))),
), max_size=25))
def test_any_mix_of_appends_and_deletes_matches_a_model(tmp_path_factory, ops):
    # Invariant: after any sequence of appends and deletes (lists or ranges), each topic's stored
    # records, count, bytes, first_seq and last_seq are exactly those of a dict model.
    store = Store(tmp_path_factory.mktemp("db"), map_size=1 << 22)
    model: dict[str, dict[int, bytes]] = {"a": {}, "b": {}}
    last = {"a": 0, "b": 0}
    try:
        for op, topic, arg in ops:
            if op == "append":
                records = [b"%s%d" % (topic.encode(), last[topic] + i) * (i + 1) for i in range(1, arg + 1)]
                first = store.commit({topic: records})[topic]
                assert first == last[topic] + 1
                for i, r in enumerate(records):
                    model[topic][first + i] = r
                last[topic] += arg
            else:
                seqs = arg if op == "delete" else range(arg[0], arg[1])
                expected = sum(1 for s in set(seqs) if s in model[topic])
                assert store.delete(topic, seqs) == (expected if topic in store.topics else 0)
                for s in set(seqs):
                    model[topic].pop(s, None)
            for name, recs in model.items():
                info = store.topics.get(name)
                if info is None:
                    assert not recs
                    continue
                assert store.read_range(name, 0, 1000) == sorted(recs.items())
                assert info.count == len(recs) and info.bytes == sum(map(len, recs.values()))
                assert info.last_seq == last[name]
                assert info.first_seq == (min(recs) if recs else last[name] + 1)
    finally:
        store.close()
