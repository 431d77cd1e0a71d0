"""The pure parts of cluster coordination: the zk:// address, the ZooKeeper node codecs, and
placement and elections (no ZooKeeper here; tests/test_cluster_coordination.py has the real one).

Invariants checked on random histories (hypothesis): a leader is always a replica that held
every confirmed message (it was in sync), one epoch never has two leaders, epochs only grow,
and no election is unclean.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from zmq_mq.router.cluster import (
    ClusterPaths,
    HubInfo,
    LayoutError,
    NotEnoughHubsError,
    PartitionState,
    StaleEpochError,
    TopicSpec,
    assign,
    change_isr,
    elect,
    initial_state,
    make_topic,
    parse_cluster_address,
)
from zmq_mq.router.cluster.layout import (
    check_node_name,
    decode_hub,
    decode_partition,
    decode_topic,
    encode_hub,
    encode_partition,
    encode_topic,
    split_partition_name,
)

# --- the address ---------------------------------------------------------------------------------


def test_a_cluster_address_names_its_servers_and_chroot():
    a = parse_cluster_address("zk://10.0.0.1:2181,zk2.example:2182,[::1]:2183/prod/zmq-mq")
    assert a.servers == (("10.0.0.1", 2181), ("zk2.example", 2182), ("::1", 2183))
    assert a.chroot == "/prod/zmq-mq"
    assert a.hosts == "10.0.0.1:2181,zk2.example:2182,[::1]:2183"
    assert a.kazoo_hosts == a.hosts + "/prod/zmq-mq"
    assert parse_cluster_address(a.url) == a


@pytest.mark.parametrize("text, says", [
    ("127.0.0.1:2181/x", "must start with zk://"),
    ("http://127.0.0.1:2181/x", "must start with zk://"),
    ("zk://127.0.0.1:2181", "chroot path is missing"),
    ("zk://127.0.0.1:2181/", "chroot path is missing"),
    ("zk:///x", "no ZooKeeper server"),
    ("zk://127.0.0.1/x", "has no port"),
    ("zk://127.0.0.1:0/x", "bad port"),
    ("zk://127.0.0.1:65536/x", "bad port"),
    ("zk://127.0.0.1:21a/x", "bad port"),
    ("zk://a:1,,b:2/x", "empty server"),
    ("zk://a:1,a:1/x", "listed twice"),
    ("zk://[::1/x", "unclosed"),
    ("zk://a:1/x/", "must not end"),
    ("zk://a:1/x//y", "empty segment"),
    ("zk://a:1/x/../y", "bad chroot segment"),
    ("zk://a:1/zookeeper", "ZooKeeper's own"),
    ("zk://user@a:1/x", "no user"),
    ("zk://a:1/x?y=1", "no user, query"),
])
def test_a_bad_cluster_address_is_a_value_error_that_says_what_is_wrong(text, says):
    with pytest.raises(ValueError) as err:
        parse_cluster_address(text)
    message = str(err.value)
    assert says in message and "zk://HOST:PORT" in message and "\n" not in message


# --- the layout ----------------------------------------------------------------------------------


def test_cluster_paths_live_under_the_chroot():
    p = ClusterPaths("/c")
    assert (p.hubs, p.controller, p.controller_epoch, p.topics, p.partitions) == (
        "/c/hubs", "/c/controller", "/c/controller_epoch", "/c/topics", "/c/partitions")
    assert p.hub("h1") == "/c/hubs/h1"
    assert p.topic("orders") == "/c/topics/orders"
    assert p.partition("orders.3") == "/c/partitions/orders.3"


def test_partition_names_are_the_hub_topics_that_hold_them():
    assert split_partition_name("dlq.billing.12") == ("dlq.billing", 12)
    for bad in ("orders", "orders.", "orders.01", "orders.x"):
        with pytest.raises(ValueError):
            split_partition_name(bad)


def test_node_names_are_checked():
    assert check_node_name("hub-1.eu_west") is None
    for bad in ("", ".hidden", "a/b", "a b", "x" * 65, None):
        assert check_node_name(bad) is not None


def test_every_node_codec_round_trips():
    hub = HubInfo("h1", "tcp://10.0.0.1:5555", None)
    assert decode_hub(encode_hub(hub)) == hub
    spec = make_topic("orders", 4, 2, ["a", "b", "c"])
    assert decode_topic(encode_topic(spec)) == spec
    state = PartitionState("orders", 3, "b", 7, ("a", "b", "c"), ("b", "c"), 2)
    assert decode_partition(encode_partition(state)) == state
    unavailable = PartitionState("orders", 0, None, 8, ("a", "b"), ("a",), 2)
    assert decode_partition(encode_partition(unavailable)) == unavailable


@pytest.mark.parametrize("data", [
    None, b"", b"not json", b"[]", b'{"v": 2}',
    b'{"v":1,"topic":"t","partition":0,"leader":"x","epoch":0,"replicas":["a"],"isr":["a"]}',
    b'{"v":1,"topic":"t","partition":0,"leader":"a","epoch":-1,"replicas":["a"],"isr":["a"]}',
    b'{"v":1,"topic":"t","partition":0,"leader":"a","epoch":0,"replicas":["a"],"isr":[]}',
    b'{"v":1,"topic":"t","partition":0,"leader":"a","epoch":"1","replicas":["a"],"isr":["a"]}',
])
def test_a_partition_node_this_version_did_not_write_is_a_layout_error(data):
    with pytest.raises(LayoutError):
        decode_partition(data)


def test_a_topic_spec_refuses_impossible_settings():
    with pytest.raises(ValueError):
        TopicSpec("t", 1, 2, 3, (("a", "b"),))  # min_insync above the replicas
    with pytest.raises(ValueError):
        TopicSpec("t", 2, 2, 1, (("a", "b"),))  # a partition without replicas
    with pytest.raises(ValueError):
        TopicSpec("t", 1, 2, 1, (("a", "a"),))  # the same hub twice


# --- assignment ----------------------------------------------------------------------------------

hub_sets = st.sets(st.text("abcdefghij", min_size=1, max_size=3), min_size=1, max_size=9)


@settings(max_examples=300, deadline=None)
@given(hubs=hub_sets, partitions=st.integers(1, 64), replicas=st.integers(1, 5),
       start=st.none() | st.integers(0, 1000))
def test_assignment_spreads_leaders_and_replicas_evenly_over_distinct_hubs(
        hubs, partitions, replicas, start):
    # Given H live hubs and a topic of N partitions x R replicas (R <= H)
    if replicas > len(hubs):
        with pytest.raises(NotEnoughHubsError):
            assign("t", partitions, replicas, hubs, start)
        return
    # When it is assigned
    out = assign("t", partitions, replicas, hubs, start)
    # Then every partition has R distinct live hubs
    assert len(out) == partitions
    for chosen in out:
        assert len(chosen) == replicas and len(set(chosen)) == replicas
        assert set(chosen) <= hubs
    # and for every replica position (the leader first), the hubs' counts differ by at most 1
    for position in range(replicas):
        counts = Counter(chosen[position] for chosen in out)
        per_hub = [counts.get(h, 0) for h in hubs]
        assert max(per_hub) - min(per_hub) <= 1
    # and it depends on the set of hubs only
    assert assign("t", partitions, replicas, list(reversed(sorted(hubs))), start) == out


def test_a_full_round_of_partitions_puts_the_same_number_of_replicas_on_every_hub():
    out = assign("orders", 6, 2, ["h1", "h2", "h3"])
    assert Counter(r for chosen in out for r in chosen) == {"h1": 4, "h2": 4, "h3": 4}
    assert Counter(chosen[0] for chosen in out) == {"h1": 2, "h2": 2, "h3": 2}


def test_a_topic_needing_more_replicas_than_live_hubs_is_refused_with_the_reason():
    with pytest.raises(NotEnoughHubsError, match="needs 3 replicas but only 2 hub"):
        make_topic("orders", 2, 3, ["a", "b"])


def test_min_insync_defaults_to_two_with_two_or_more_replicas():
    assert make_topic("t", 1, 1, ["a"]).min_insync == 1
    assert make_topic("t", 1, 2, ["a", "b"]).min_insync == 2
    assert make_topic("t", 1, 3, ["a", "b", "c"]).min_insync == 2
    assert make_topic("t", 1, 3, ["a", "b", "c"], min_insync=3).min_insync == 3


# --- elections -----------------------------------------------------------------------------------

ABC = ("a", "b", "c")


def test_a_dead_leader_is_replaced_by_the_first_live_in_sync_replica_with_a_higher_epoch():
    s = PartitionState("t", 0, "a", 4, ABC, ABC)
    new = elect(s, {"b", "c"})
    assert (new.leader, new.epoch, new.isr) == ("b", 5, ("b", "c"))


def test_an_out_of_sync_replica_is_never_elected():
    s = PartitionState("t", 0, "a", 4, ABC, ("a", "c"))
    assert elect(s, {"b", "c"}).leader == "c"


def test_with_no_live_in_sync_replica_the_partition_is_unavailable_and_keeps_its_isr():
    # Given a partition whose only in-sync replica is its leader
    s = PartitionState("t", 0, "a", 4, ABC, ("a",))
    # When the leader dies (b and c are live but were not in sync)
    new = elect(s, {"b", "c"})
    # Then nobody leads (no unclean election), the epoch grows to fence the old leader,
    # and the in-sync set remembers who may lead again
    assert (new.leader, new.epoch, new.isr, new.available) == (None, 5, ("a",), False)
    assert elect(new, {"b", "c"}) is new  # nothing more to write while it stays so
    # When a comes back, it leads again at the next epoch
    back = elect(new, {"a", "b", "c"})
    assert (back.leader, back.epoch, back.isr) == ("a", 6, ("a",))


def test_a_dead_follower_leaves_the_isr_without_changing_the_epoch():
    s = PartitionState("t", 0, "a", 4, ABC, ABC)
    new = elect(s, {"a", "c"})
    assert (new.leader, new.epoch, new.isr) == ("a", 4, ("a", "c"))


def test_nothing_changes_while_every_replica_is_live():
    s = PartitionState("t", 0, "b", 4, ABC, ("b", "c"))
    assert elect(s, set(ABC)) is s


def test_only_the_current_leader_at_its_epoch_may_change_the_isr():
    s = PartitionState("t", 0, "a", 4, ABC, ("a",))
    assert change_isr(s, "a", 4, ["c", "a"]).isr == ("a", "c")  # kept in replica order
    with pytest.raises(StaleEpochError):
        change_isr(s, "a", 3, ["a", "b"])  # a stale epoch
    with pytest.raises(StaleEpochError):
        change_isr(s, "b", 4, ["a", "b"])  # not the leader
    with pytest.raises(ValueError):
        change_isr(s, "a", 4, ["b"])  # the leader left out
    with pytest.raises(ValueError):
        change_isr(s, "a", 4, ["a", "z"])  # not a replica


def test_a_new_partition_is_led_by_its_first_live_replica():
    s = elect(initial_state("t", 2, ABC), {"b", "c"})
    assert (s.name, s.leader, s.epoch, s.isr) == ("t.2", "b", 1, ("b", "c"))
    assert elect(initial_state("t", 2, ABC), set(ABC)).epoch == 0


class PartitionHistory(RuleBasedStateMachine):
    """A partition on hubs a..d through random deaths, returns, confirms, catch-ups and
    follower drops. ``holders``: the replicas holding every confirmed message (the leader
    confirms only what the whole in-sync set holds)."""

    HUBS = ("a", "b", "c", "d")

    def __init__(self) -> None:
        super().__init__()
        self.live = set(self.HUBS)
        self.state = elect(initial_state("t", 0, ("a", "b", "c")), self.live)
        self.holders = set(self.state.replicas)  # nothing confirmed yet: all hold it
        self.leaders_by_epoch = {self.state.epoch: self.state.leader}
        self.last_epoch = self.state.epoch

    def _set(self, new: PartitionState) -> None:
        old = self.state
        assert new.epoch >= old.epoch
        if new.leader != old.leader:
            assert new.epoch == old.epoch + 1  # every leader change is a new epoch
        else:
            assert new.epoch == old.epoch
        if new.leader is not None:
            # never unclean: the new leader was in sync and is live
            assert new.leader in old.isr and new.leader in self.live
        self.state = new
        seen = self.leaders_by_epoch.setdefault(new.epoch, new.leader)
        assert seen == new.leader, "two leaders in one epoch"

    @rule(hub=st.sampled_from(HUBS))
    def hub_dies(self, hub):
        self.live.discard(hub)
        self._set(elect(self.state, self.live))

    @rule(hub=st.sampled_from(HUBS))
    def hub_returns(self, hub):
        self.live.add(hub)
        self._set(elect(self.state, self.live))

    @precondition(lambda self: self.state.leader is not None)
    @rule()
    def leader_confirms_a_publish(self):
        self.holders = set(self.state.isr)

    @precondition(lambda self: self.state.leader is not None)
    @rule(hub=st.sampled_from(("a", "b", "c")))
    def follower_catches_up(self, hub):
        if hub in self.live and hub not in self.state.isr:
            self.holders.add(hub)  # it fetched everything the leader holds
            self._set(change_isr(self.state, self.state.leader, self.state.epoch,
                                 [*self.state.isr, hub]))

    @precondition(lambda self: self.state.leader is not None and len(self.state.isr) > 1)
    @rule(data=st.data())
    def follower_falls_behind(self, data):
        follower = data.draw(st.sampled_from([r for r in self.state.isr
                                              if r != self.state.leader]))
        self._set(change_isr(self.state, self.state.leader, self.state.epoch,
                             [r for r in self.state.isr if r != follower]))

    @invariant()
    def the_isr_holds_every_confirmed_message(self):
        assert set(self.state.isr) <= self.holders
        if self.state.leader is not None:
            assert self.state.leader in self.holders

    @invariant()
    def a_live_in_sync_replica_means_a_leader(self):
        if set(self.state.isr) & self.live:
            assert self.state.leader is not None


TestPartitionHistoryNeverLosesAConfirmedMessage = PartitionHistory.TestCase
TestPartitionHistoryNeverLosesAConfirmedMessage.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None)
