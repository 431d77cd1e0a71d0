"""Cluster coordination against a real ZooKeeper (Debian's `zookeeper` package, started by the
`zookeeper` / `own_zookeeper` fixtures): membership, controller election and failover,
placement, leader failover with epochs, fencing, and a ZooKeeper restart.

Members are real ``ClusterMember``s (kazoo) with short sessions; tests wait on what the
members report (their ``on_change`` / ``on_controller`` callbacks, through a Condition), never
on sleeps. A hub's session is ended the way ZooKeeper ends it for a dead or paused hub:
expired (another connection takes the session over and closes it).
"""

from __future__ import annotations

import threading

import pytest
from kazoo.client import KazooClient
from zmq_mq.router.cluster import (
    NotEnoughHubsError,
    PartitionState,
    StaleEpochError,
    TopicExistsError,
    parse_cluster_address,
)
from zmq_mq.router.cluster.coordinator import FENCED, ClusterClient, ClusterMember

SESSION_TIMEOUT = 2.0  # s: ZooKeeper ends a silent member's session this fast (tickTime 500 ms)
WAIT = 30.0  # s: the longest any cluster change may take on a loaded machine


class Cluster:
    """Members on one ZooKeeper chroot, and what each has been told, under one Condition."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.cond = threading.Condition()
        self.members: dict[str, ClusterMember] = {}
        self.views: dict[str, dict[str, object]] = {}
        self.history: dict[str, list[tuple[str, object]]] = {}
        self.clients: list[ClusterClient] = []

    def start(self, node: str) -> ClusterMember:
        self.views[node] = {}
        self.history[node] = []

        def on_change(partition, state):
            with self.cond:
                self.views[node][partition] = state
                self.history[node].append((partition, state))
                self.cond.notify_all()

        def on_controller(value):
            with self.cond:
                self.cond.notify_all()

        member = ClusterMember(self.url, node, f"tcp://127.0.0.1:{5000 + len(self.members)}",
                               on_change=on_change, on_controller=on_controller,
                               session_timeout=SESSION_TIMEOUT)
        self.members[node] = member
        return member.start()

    def client(self) -> ClusterClient:
        c = ClusterClient(self.url, session_timeout=SESSION_TIMEOUT)
        self.clients.append(c)
        return c.start()

    def wait(self, predicate, what: str, timeout: float = WAIT):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; views: "
                                     f"{self.views}")

    def controllers(self) -> list[str]:
        return [n for n, m in self.members.items() if m.is_controller]

    def view_of(self, node: str, partition: str):
        return self.views[node].get(partition)

    def everyone_sees(self, partition: str, check, nodes=None) -> bool:
        nodes = nodes or list(self.members)
        return all(isinstance(self.view_of(n, partition), PartitionState)
                   and check(self.view_of(n, partition)) for n in nodes)

    def close(self) -> None:
        for m in self.members.values():
            m.close()
        for c in self.clients:
            c.close()


@pytest.fixture
def cluster(zookeeper):
    c = Cluster(zookeeper)
    yield c
    c.close()


def expire_session(member: ClusterMember) -> int:
    """End ``member``'s ZooKeeper session as ZooKeeper does for a hub that went silent: another
    connection takes the session over and closes it; the member's own connection then learns
    the session expired, and it rejoins with a new one. Returns the ended session's id."""
    session_id, password = member.zk.client_id
    thief = KazooClient(hosts=member.address.hosts, client_id=(session_id, password),
                        timeout=SESSION_TIMEOUT)
    thief.start(10)
    thief.stop()
    thief.close()
    return session_id


def wait_rejoined(member: ClusterMember, old_session: int) -> None:
    """Wait until ``member`` is back in the cluster with a new session and no longer fenced."""
    assert member.wait_for(lambda m: m.zk.client_id is not None
                           and m.zk.client_id[0] != old_session and not m.fenced, WAIT), \
        f"{member.node} did not rejoin within {WAIT:g} s"


def test_three_members_elect_exactly_one_controller(cluster):
    # Given three hubs joining one cluster
    for node in ("h1", "h2", "h3"):
        cluster.start(node)
    # Then exactly one of them is controller, and ZooKeeper says which
    cluster.wait(lambda: len(cluster.controllers()) == 1, "one controller")
    client = cluster.client()
    assert client.controller() == cluster.controllers()[0]
    assert client.controller_epoch() >= 1
    assert sorted(client.hubs()) == ["h1", "h2", "h3"]
    assert client.hubs()["h1"].endpoint.startswith("tcp://127.0.0.1:")


def test_when_the_controllers_session_ends_another_member_becomes_controller(cluster):
    for node in ("h1", "h2", "h3"):
        cluster.start(node)
    cluster.wait(lambda: len(cluster.controllers()) == 1, "one controller")
    first = cluster.controllers()[0]
    epoch = cluster.client().controller_epoch()
    # When the controller's session expires
    old_session = expire_session(cluster.members[first])
    # Then another member takes over, with a higher controller epoch
    # (the old one may believe it for a moment, until it learns its session is gone: its
    # writes are fenced by the controller epoch meanwhile)
    cluster.wait(lambda: len(cluster.controllers()) == 1 and cluster.controllers() != [first],
                 "another controller, and only it")
    assert cluster.client().controller() == cluster.controllers()[0]
    assert cluster.client().controller_epoch() > epoch
    # and the old one rejoins as a plain member
    wait_rejoined(cluster.members[first], old_session)
    assert sorted(cluster.client().hubs()) == ["h1", "h2", "h3"]
    assert not cluster.members[first].is_controller


def test_a_created_topic_spreads_its_partition_leaders_over_distinct_hubs(cluster):
    for node in ("h1", "h2", "h3"):
        cluster.start(node)
    admin = cluster.client()
    # When a topic of 6 partitions x 2 replicas is created
    spec = admin.create_topic("orders", 6, 2)
    # Then every partition has a state: led by its first replica, both replicas in sync
    states = admin.partitions("orders")
    assert sorted(states) == [f"orders.{i}" for i in range(6)]
    for i, state in enumerate(states.values()):
        assert state.replicas == spec.assignment[i]
        assert state.leader == state.replicas[0] and state.isr == state.replicas
        assert state.epoch == 0
    # and every hub leads two of them
    leaders = sorted(s.leader for s in states.values())
    assert leaders == ["h1", "h1", "h2", "h2", "h3", "h3"]
    # and every member is told every partition's state
    cluster.wait(lambda: all(cluster.everyone_sees(name, lambda s: s.epoch == 0)
                             for name in states), "every member's view of orders")
    assert spec.min_insync == 2
    with pytest.raises(TopicExistsError):
        admin.create_topic("orders", 1, 1)
    with pytest.raises(NotEnoughHubsError):
        admin.create_topic("wide", 1, 4)
    with pytest.raises(ValueError, match="bad topic name"):
        admin.create_topic("bad name", 1, 1)
    # and the status an operator sees says the same
    status = admin.status()
    assert status["controller"] in ("h1", "h2", "h3") and sorted(status["hubs"]) == [
        "h1", "h2", "h3"]
    assert status["topics"]["orders"] == {"partitions": 6, "replicas": 2, "min_insync": 2}
    assert status["partitions"]["orders.0"] == {
        "leader": states["orders.0"].leader, "epoch": 0,
        "replicas": list(states["orders.0"].replicas), "isr": list(states["orders.0"].isr)}


def test_when_a_leaders_session_ends_its_partitions_move_to_an_in_sync_replica(cluster):
    for node in ("h1", "h2", "h3"):
        cluster.start(node)
    admin = cluster.client()
    admin.create_topic("orders", 6, 2)
    before = admin.partitions("orders")
    victim = "h2"
    led = {n: s for n, s in before.items() if s.leader == victim}
    followed = {n: s for n, s in before.items() if victim in s.followers()}
    assert led and followed
    cluster.wait(lambda: all(cluster.view_of(victim, n) == s for n, s in before.items()),
                 "h2 sees the placement")
    # When h2's session ends
    victim_session = expire_session(cluster.members[victim])
    # Then h2 is fenced at once: it is told FENCED for what it led
    cluster.wait(lambda: any(p in led and s is FENCED for p, s in cluster.history[victim]),
                 "h2 fenced")
    # and its partitions move to their other (in-sync) replica with the next epoch, without h2
    others = ["h1", "h3"]
    for name, old in led.items():
        cluster.wait(lambda: cluster.everyone_sees(
            name, lambda s: s.leader != victim and s.epoch == old.epoch + 1, others),
            f"{name} failed over")
        new = admin.partition(name)
        assert new.leader in old.isr and new.leader != victim
        assert new.isr == (new.leader,)
    # and where h2 only followed, the leader stays (same epoch) and h2 left the in-sync set
    for name, old in followed.items():
        cluster.wait(lambda: cluster.everyone_sees(
            name, lambda s: victim not in s.isr, others), f"{name} shrank")
        new = admin.partition(name)
        assert (new.leader, new.epoch) == (old.leader, old.epoch)
    # and h2, back with a new session, is told it leads none of them
    # (its own view may lag the others' for a moment after it rejoined)
    wait_rejoined(cluster.members[victim], victim_session)
    cluster.wait(lambda: all(cluster.everyone_sees(n, lambda s: s.leader != victim, [victim])
                             for n in led), "h2 told it no longer leads")
    assert cluster.members[victim].leading() == {}


def test_a_leader_may_grow_its_isr_but_a_stale_epoch_write_is_refused(cluster):
    for node in ("h1", "h2", "h3"):
        cluster.start(node)
    admin = cluster.client()
    admin.create_topic("orders", 3, 2)
    name, state = next((n, s) for n, s in admin.partitions("orders").items()
                       if s.leader == "h1")
    follower = state.followers()[0]
    leader = cluster.members["h1"]
    cluster.wait(lambda: cluster.view_of("h1", name) == state and not leader.fenced,
                 "h1 sees its partition")
    # Given the follower fell behind (the leader shrinks the ISR) and then caught up
    assert leader.update_isr(name, state.epoch, ["h1"]).isr == ("h1",)
    grown = leader.update_isr(name, state.epoch, ["h1", follower])
    assert grown.isr == state.isr and grown.epoch == state.epoch
    # When the follower's session ends, the controller moves nothing (h1 leads) but shrinks it
    follower_session = expire_session(cluster.members[follower])
    cluster.wait(lambda: cluster.everyone_sees(name, lambda s: follower not in s.isr, ["h1"]),
                 "the follower out of the ISR")
    wait_rejoined(cluster.members[follower], follower_session)
    # Then a write with an older epoch, or by a hub that does not lead, is refused
    with pytest.raises(StaleEpochError):
        leader.update_isr(name, state.epoch - 1 if state.epoch else state.epoch + 1, ["h1"])
    with pytest.raises(StaleEpochError):
        cluster.members[follower].update_isr(name, state.epoch, [follower])
    # When h1's session ends, the follower (back, but out of sync) cannot be elected...
    leader_session = expire_session(leader)

    def seen_by_follower():
        return [s for p, s in cluster.history[follower]
                if p == name and isinstance(s, PartitionState) and s.epoch > state.epoch]

    cluster.wait(lambda: seen_by_follower(), "h1 deposed")
    # (unavailable at epoch + 1: the follower was out of sync; h1 may already lead again, at
    # epoch + 2, and a watch may skip the intermediate state, so only what was seen is checked)
    assert all(s.leader is None for s in seen_by_follower() if s.epoch == state.epoch + 1)
    assert all(s.leader != follower for s in seen_by_follower())
    # ...and h1's old epoch is refused once it is back
    wait_rejoined(leader, leader_session)
    with pytest.raises(StaleEpochError):
        leader.update_isr(name, state.epoch, ["h1", follower])


def test_with_no_in_sync_replica_live_a_partition_stays_unavailable(cluster):
    for node in ("h1", "h2"):
        cluster.start(node)
    admin = cluster.client()
    admin.create_topic("solo", 1, 1)  # one replica: nothing else is ever in sync
    state = admin.partition("solo.0")
    owner, other = state.leader, ({"h1", "h2"} - {state.leader}).pop()
    cluster.wait(lambda: cluster.everyone_sees("solo.0", lambda s: s == state), "placement")
    # When its only replica's hub closes (h2 or h1: whichever was not controller stays)
    cluster.members.pop(owner).close()
    # Then the partition has no leader, a higher epoch, and its in-sync set is kept
    cluster.wait(lambda: cluster.everyone_sees("solo.0", lambda s: s.leader is None, [other]),
                 "solo.0 unavailable")
    down = admin.partition("solo.0")
    assert (down.leader, down.epoch, down.isr) == (None, state.epoch + 1, (owner,))
    # When that hub comes back, it leads again
    cluster.start(owner)
    cluster.wait(lambda: cluster.everyone_sees("solo.0", lambda s: s.leader == owner),
                 "solo.0 back on its hub")
    assert admin.partition("solo.0").epoch == state.epoch + 2


def test_members_reconnect_and_the_state_survives_a_zookeeper_restart(own_zookeeper):
    cluster = Cluster(own_zookeeper.url("/restart"))
    try:
        for node in ("h1", "h2", "h3"):
            cluster.start(node)
        admin = cluster.client()
        admin.create_topic("orders", 3, 2)
        before = admin.partitions("orders")
        cluster.wait(lambda: all(cluster.everyone_sees(n, lambda s, n=n: s == before[n])
                                 for n in before), "the placement everywhere")
        # When ZooKeeper restarts
        own_zookeeper.restart()
        # Then every member was fenced meanwhile, and is told the states again once back
        cluster.wait(lambda: all(any(s is FENCED for _, s in h) for h in cluster.history.values()),
                     "every member fenced")
        # (if the restart outlasted the sessions, the controller moves leaders meanwhile: wait
        # until every member agrees on a led state of every partition)
        def agreed() -> bool:
            return all(not m.fenced for m in cluster.members.values()) and all(
                cluster.everyone_sees(n, lambda s: s.leader is not None)
                and len({cluster.view_of(node, n) for node in cluster.members}) == 1
                for n in before)

        cluster.wait(agreed, "every member back, agreeing on every partition")
        cluster.wait(lambda: len(cluster.controllers()) == 1, "a controller")
        # and ZooKeeper kept the topic and its placement
        after = {n: cluster.view_of("h1", n) for n in before}
        assert {n: s.replicas for n, s in after.items()} == {n: s.replicas
                                                             for n, s in before.items()}
        assert all(after[n].epoch >= before[n].epoch for n in before)
        assert admin.topic("orders") is not None
        assert sorted(admin.hubs()) == ["h1", "h2", "h3"]
    finally:
        cluster.close()


def test_a_member_that_cannot_reach_zookeeper_fails_to_start_with_the_reason(tmp_path):
    from zmq_mq.router.cluster import ClusterTimeout

    from zmq_mq.testing import free_loopback_port

    member = ClusterMember(f"zk://127.0.0.1:{free_loopback_port()}/x", "h1", "tcp://x:1")
    with pytest.raises(ClusterTimeout, match="could not reach ZooKeeper"):
        member.start(timeout=1.0)


def test_the_zookeeper_harness_restarts_on_the_same_port_and_data_after_kill_9(own_zookeeper):
    server = own_zookeeper
    port = server.port
    zk = KazooClient(hosts=server.hosts)
    zk.start(10)
    try:
        zk.create("/kept", b"yes")
    finally:
        zk.stop()
        zk.close()
    server.kill9()
    assert not server.serving()
    server.start()
    assert server.port == port and server.url("/c") == f"zk://127.0.0.1:{port}/c"
    zk = KazooClient(hosts=server.hosts)
    zk.start(10)
    try:
        assert zk.get("/kept")[0] == b"yes"
    finally:
        zk.stop()
        zk.close()


def test_a_follower_that_is_not_live_cannot_join_the_isr(cluster):
    for node in ("h1", "h2"):
        cluster.start(node)
    admin = cluster.client()
    admin.create_topic("pairs", 1, 2)
    state = admin.partition("pairs.0")
    leader, follower = state.leader, state.followers()[0]
    cluster.wait(lambda: cluster.everyone_sees("pairs.0", lambda s: s == state), "placement")
    # When the follower leaves, and the controller takes it out of the in-sync set
    cluster.members.pop(follower).close()
    cluster.wait(lambda: cluster.everyone_sees("pairs.0", lambda s: s.isr == (leader,),
                                               [leader]), "the ISR shrunk")
    # Then its leader cannot put it back: it is not live
    with pytest.raises(ValueError, match="not live"):
        cluster.members[leader].update_isr("pairs.0", state.epoch, [leader, follower])
    assert admin.partition("pairs.0").isr == (leader,)


def test_a_hub_restarted_before_its_old_session_expired_joins_once_that_session_ends(cluster):
    # Given the node h1 still held by a previous run's session (as after kill -9 of a hub)
    previous = KazooClient(hosts=parse_cluster_address(cluster.url).hosts)
    previous.start(10)
    try:
        admin = cluster.client()  # (makes the cluster's paths)
        previous.create(admin.paths.hub("h1"), b'{"v":1}', ephemeral=True)
        old_czxid = previous.exists(admin.paths.hub("h1")).czxid
        started = threading.Event()
        errors: list[BaseException] = []

        def start():
            try:
                cluster.start("h1")
            except BaseException as exc:  # reported below
                errors.append(exc)
            started.set()

        # When the new run starts, and then the previous session ends
        t = threading.Thread(target=start)
        t.start()
    finally:
        previous.stop()
        previous.close()
    # Then the new run joins, on a node of its own session
    assert started.wait(WAIT) and not errors, errors
    t.join()
    member = cluster.members["h1"]
    stat = member.zk.exists(member.paths.hub("h1"))
    assert stat.ephemeralOwner == member.zk.client_id[0] and stat.czxid > old_czxid
    assert admin.hubs()["h1"].endpoint.startswith("tcp://")


def test_bad_member_settings_are_value_errors():
    with pytest.raises(ValueError, match="bad node name"):
        ClusterMember("zk://127.0.0.1:2181/x", "a/b", "tcp://x:1")
    with pytest.raises(ValueError, match="bad cluster address"):
        ClusterMember("127.0.0.1:2181", "h1", "tcp://x:1")


def test_a_controller_deposed_by_a_newer_controller_epoch_writes_nothing(cluster):
    for node in ("h1", "h2", "h3"):
        cluster.start(node)
    admin = cluster.client()
    admin.create_topic("orders", 3, 2)
    cluster.wait(lambda: len(cluster.controllers()) == 1, "a controller")
    controller = cluster.controllers()[0]
    # Given a newer controller epoch taken behind the controller's back (as by a controller
    # elected while this one was cut off from ZooKeeper)
    data, stat = admin.zk.get(admin.paths.controller_epoch)
    stolen = admin.controller_epoch() + 1
    admin.zk.set(admin.paths.controller_epoch,
                 b'{"v":1,"epoch":%d,"node":"elsewhere"}' % stolen, version=stat.version)
    # When a hub that leads a partition leaves
    victim = next(n for n in cluster.members if n != controller)
    led = [n for n, s in admin.partitions("orders").items() if s.leader == victim]
    assert led
    cluster.members.pop(victim).close()
    # Then the old controller's term cannot write the failover: a controller elected after
    # the stolen epoch does
    for name in led:
        cluster.wait(lambda: cluster.everyone_sees(name, lambda s: s.leader != victim),
                     f"{name} failed over")
        state = admin.partition(name)
        assert state.controller_epoch > stolen, state
