"""A partition's state besides its records and cursors, on cluster hubs (threads of the test)
and a real ZooKeeper: only the leader takes PURGE / REDRIVE / TOPIC changes; dead letters,
retention deletes, purges, topic limits and delay schedules reach the followers, so a promoted
follower serves what its leader served; a confirm held for replication counts in the publish
latency when it leaves. docs/CLUSTER.md "The state stream"."""

# ruff: noqa: F811  (the raw fixture comes from test_cluster_hub; cluster_hubs is conftest's)
from __future__ import annotations

import time

from conftest import wait_for
from test_cluster_hub import (  # noqa: F401  (fixtures)
    SESSION_TIMEOUT,
    WAIT,
    leader_and_follower,
    metadata_when,
    raw,
    settled,
)
from zmq_mq.actors.admin import Admin
from zmq_mq.actors.cluster_admin import ClusterAdmin
from zmq_mq.router import protocol
from zmq_mq.router.cluster.coordinator import ClusterClient
from zmq_mq.router.protocol import Command


def one_partition(cluster_hubs, raw, nodes=("a", "b"), min_insync=1):
    """Hubs ``nodes``, topic ``t`` of one partition on two of them; (hubs, leader, follower)."""
    hubs = cluster_hubs(*nodes)
    with ClusterClient(cluster_hubs.url, session_timeout=SESSION_TIMEOUT) as client:
        client.create_topic("t", 1, 2, min_insync=min_insync, wait=WAIT)
    meta = metadata_when(raw(hubs[nodes[0]].endpoint), lambda m: settled(m, "t", 1, 2))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    wait_for(lambda: "t.0" in follower.hub.following, WAIT)
    return hubs, leader, follower


def publish(client, n: int, batch: str = "b", **opts) -> list[int]:
    msgs = [["t.0", f"m{i}".encode(), None, None, *([opts] if opts else [])] for i in range(n)]
    command, body = client.ask(Command.PUBLISH, [batch, msgs])
    assert command == Command.CONFIRM, body
    return body[1]


def fail_over(leader, follower, raw) -> None:
    """The leader leaves (its session ends at once); the follower leads."""
    leader.stop()
    metadata_when(raw(follower.endpoint),
                  lambda m: m["partitions"]["t.0"]["leader"] == follower.node)
    wait_for(lambda: "t.0" in follower.hub.leading, WAIT, message="the follower promoted")


def log_of(hub) -> tuple[int, int, int]:
    info = hub.hub.store.topics.get("t.0")
    return (info.first_seq, info.last_seq, info.count) if info else (1, 0, 0)


def test_purge_redrive_and_topic_changes_on_a_follower_are_refused_with_the_leader_hint(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    publish(raw(leader.endpoint), 3)
    wait_for(lambda: log_of(follower)[1] == 3, WAIT)
    client = raw(follower.endpoint)
    for command, body in [
        (Command.PURGE, [1, "t.0", "all"]),
        (Command.PURGE, [2, "t.0", [1]]),
        (Command.REDRIVE, [3, "t.0", [1]]),
        (Command.TOPIC, [4, "config", "t.0", {"max_messages": 1}]),
        (Command.TOPIC, [5, "create", "t.0", {"max_messages": 1}]),
    ]:
        reply, err = client.ask(command, body)
        assert reply == Command.ERROR, (command, err)
        assert err["code"] == "not_leader" and err["ref"] == body[0]
        assert err["leader"] == leader.node and err["leader_endpoint"] == leader.endpoint
    assert log_of(follower) == (1, 3, 3)  # nothing changed there
    assert "t.0" not in follower.hub.store.configs or \
        follower.hub.store.configs["t.0"].get("max_messages") is None
    # reading the limits is not a change: any replica answers
    reply, body = client.ask(Command.TOPIC, [7, "get", "t.0", None])
    assert reply == Command.REPLY and body[1]["topic"] == "t.0"
    # the cluster Admin sent to the follower follows the hint to the leader
    with ClusterAdmin(cluster_hubs.url, timeout=10) as admin:
        admin._leader = lambda topic: admin._admin(follower.endpoint)  # a stale placement
        assert admin.purge("t.0", [1])["purged"] == 1
        assert admin.configure_topic("t.0", max_messages=100)["config"]["max_messages"] == 100
    assert log_of(leader)[2] == 2


def test_a_dead_letter_on_the_leader_is_on_the_promoted_follower_and_redrives_there(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw, ("a", "b", "c"))
    client = raw(leader.endpoint)
    publish(client, 2)
    assert client.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                          "credit": 10})[0] == Command.SUBSCRIBED
    seqs = []
    while len(seqs) < 2:
        command, body = client.recv()
        assert command == Command.DELIVER
        seqs += [entry[0] for entry in body[2]]
    client.send(Command.REJECT, [1, {"t.0": [1, 2]}, "bad"])

    def dead_on(hub) -> list[int]:
        with Admin(hub.endpoint, timeout=10) as admin:
            return sorted(d["origin_seq"] for d in admin.dead_letters("g"))

    wait_for(lambda: dead_on(follower) == [1, 2], WAIT, message="the dead letters replicated")
    # a redrive on the leader takes the dead letter out of the follower's copy too
    with Admin(leader.endpoint, timeout=10) as admin:
        first = next(d["seq"] for d in admin.dead_letters("g") if d["origin_seq"] == 1)
        assert admin.redrive("dlq.g", [first])["redriven"] == 1
    wait_for(lambda: dead_on(follower) == [2], WAIT, message="the redriven one removed")
    with ClusterAdmin(cluster_hubs.url, timeout=10) as admin:  # listed once, by its leader
        assert [(d["node"], d["origin_seq"]) for d in admin.dead_letters("g")] == \
            [(leader.node, 2)]
    # a follower does not redrive a dead letter of a partition it does not lead
    with Admin(follower.endpoint, timeout=10) as admin:
        local = admin.dead_letters("g")[0]["seq"]
    reply, err = raw(follower.endpoint).ask(Command.REDRIVE, [9, "dlq.g", [local]])
    assert reply == Command.ERROR and err["code"] == "not_leader"
    assert err["leader"] == leader.node

    fail_over(leader, follower, raw)
    with ClusterAdmin(cluster_hubs.url, timeout=10) as admin:
        letters = admin.dead_letters("g")
        assert [(d["node"], d["origin_topic"], d["origin_seq"], d["reason"])
                for d in letters] == [(follower.node, "t.0", 2, "rejected: bad")]
        result = admin.redrive("dlq.g", [letters[0]["seq"]], node=follower.node)
    assert result["redriven"] == 1
    assert [r.get("topic") for r in result["results"]] == ["t.0"]
    new_seq = result["results"][0]["new_seq"]
    assert new_seq > 3  # after the redrive the old leader made (seq 3)
    record = follower.hub.store.read("t.0", [new_seq])[0]
    assert protocol.unpack_record(record)[3] == b"m1"
    assert dead_on(follower) == []


def test_retention_and_purges_on_the_leader_reach_the_follower_and_stay_after_failover(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw, ("a", "b", "c"))
    client = raw(leader.endpoint)
    publish(client, 10)
    with ClusterAdmin(cluster_hubs.url, timeout=10) as admin:
        admin.configure_topic("t.0", max_messages=6)  # retention trims 1..4 on the leader
        # answered once the follower holds the new limits
        assert follower.hub.store.configs["t.0"]["max_messages"] == 6
        wait_for(lambda: log_of(leader) == (5, 10, 6), WAIT, message="the leader trimmed")
        assert admin.purge("t.0", [6, 7])["purged"] == 2  # holes
    wait_for(lambda: log_of(follower) == log_of(leader) == (5, 10, 4), WAIT,
             message="the follower's log is the leader's")
    assert [s for s, _ in follower.hub.store.read_range("t.0", 0, 100)] == [5, 8, 9, 10]

    fail_over(leader, follower, raw)
    again = raw(follower.endpoint)
    reply, body = again.ask(Command.FETCH, [1, "t.0", 0, 100])
    assert reply == Command.REPLY
    assert [s for s, _ in body[1]] == [5, 8, 9, 10]  # nothing purged comes back
    assert follower.hub.trimmer.limits["t.0"].max_messages == 6  # the limits in force
    publish(again, 4, "b2")
    assert log_of(follower)[:2] == (8, 14)  # trimmed by the limits it holds


def test_a_purge_is_answered_once_the_in_sync_follower_applied_it(cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    publish(raw(leader.endpoint), 5)
    wait_for(lambda: log_of(follower) == (1, 5, 5), WAIT)
    client = raw(leader.endpoint)
    reply, body = client.ask(Command.PURGE, [1, "t.0", [2, 3]])
    assert reply == Command.REPLY and body[1]["purged"] == 2
    assert [s for s, _ in follower.hub.store.read_range("t.0", 0, 10)] == [1, 4, 5]
    reply, body = client.ask(Command.PURGE, [2, "t.0", "all"])
    assert reply == Command.REPLY and body[1]["purged"] == 3
    assert log_of(follower) == log_of(leader) == (6, 5, 0)


def test_a_delayed_message_is_held_back_by_the_promoted_follower_until_due(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw, ("a", "b", "c"))
    delay_ms = 3000
    sent_ms = int(time.time() * 1000)
    publish(raw(leader.endpoint), 1, delay_ms=delay_ms)
    wait_for(lambda: any(t == "t.0" for t, _, _ in follower.hub.store.load_schedule()), WAIT,
             message="the delay entry replicated")
    (_, _, due), = [e for e in follower.hub.store.load_schedule() if e[0] == "t.0"]
    assert due >= sent_ms + delay_ms
    fail_over(leader, follower, raw)
    client = raw(follower.endpoint)
    assert client.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                          "credit": 10})[0] == Command.SUBSCRIBED
    command, body = client.recv(timeout=WAIT)
    assert command == Command.DELIVER and [e[0] for e in body[2]] == [1]
    assert time.time() * 1000 >= due  # not before its time


def test_a_confirm_held_for_replication_counts_in_publish_latency_when_it_leaves(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    follower.hub.fetcher.fetch = lambda *args: None  # the follower stops fetching
    started = time.monotonic()
    publish(raw(leader.endpoint), 1)  # held until the leader drops it from the in-sync set
    waited = time.monotonic() - started
    assert waited >= 1.0
    with Admin(leader.endpoint, timeout=10) as admin:
        latency = admin.stats()["publish_latency"]
    assert latency["count"] == 1
    assert latency["sum"] >= waited * 0.9  # what the client waited, not the commit's time


def test_a_follower_far_behind_catches_up_every_record_over_several_fetches(cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    follower.hub.fetcher.fetch = lambda *args: None  # away: the leader leaves it behind
    client = raw(leader.endpoint)
    for i in range(8):  # more than one REPLICA carries (MAX_REPLICA_RECORDS)
        publish(client, 500, f"b{i}")
    del follower.hub.fetcher.fetch  # back
    wait_for(lambda: log_of(follower) == (1, 4000, 4000), WAIT,
             message="every record on the follower")


def test_a_restarted_follower_does_not_append_a_dead_letter_twice(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b", "c")
    with ClusterClient(cluster_hubs.url, session_timeout=SESSION_TIMEOUT) as client:
        client.create_topic("t", 1, 3, min_insync=1, wait=WAIT)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 3))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    lagging = next(h for h in hubs.values() if h not in (leader, follower))
    wait_for(lambda: "t.0" in lagging.hub.following, WAIT)
    lagging.hub.fetcher.fetch = lambda *args: None  # the leader keeps its entries for it
    client = raw(leader.endpoint)
    publish(client, 1)
    assert client.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                          "credit": 10})[0] == Command.SUBSCRIBED
    assert client.recv()[0] == Command.DELIVER
    client.send(Command.REJECT, [1, {"t.0": [1]}, "bad"])

    def dead_letters(hub) -> int:
        info = hub.hub.store.topics.get("dlq.g")
        return info.count if info else 0

    wait_for(lambda: dead_letters(follower) == 1, WAIT, message="the dead letter replicated")
    follower.stop()
    again = cluster_hubs(follower.node)[follower.node]
    wait_for(lambda: again.node in leader.hub.leading["t.0"].pos
             and leader.hub.leading["t.0"].reported.get(again.node, (0, 0, 0))[2] == 2
             and leader.hub.leading["t.0"].pos[again.node] == 1, WAIT,
             message="the restarted follower fetching again")
    publish(raw(leader.endpoint), 1, "b2")  # one more round trip of fetches
    wait_for(lambda: again.hub.store.topics["t.0"].last_seq == 2, WAIT)
    assert dead_letters(again) == 1


def test_a_purge_below_min_insync_is_answered_by_the_leader_alone(cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw, min_insync=2)
    publish(raw(leader.endpoint), 3)
    follower.stop()
    wait_for(lambda: leader.hub.leading["t.0"].isr == (leader.node,), WAIT,
             message="the follower out of the in-sync set")
    reply, body = raw(leader.endpoint).ask(Command.PURGE, [1, "t.0", [1]], timeout=10)
    assert reply == Command.REPLY and body[1]["purged"] == 1


def dead_on(hub) -> list[int]:
    """The origin seqs of the dead letters of t.0 in ``hub``'s own dlq.g."""
    with Admin(hub.endpoint, timeout=10) as admin:
        return sorted(d["origin_seq"] for d in admin.dead_letters("g")
                      if d["origin_topic"] == "t.0")


def reject(client, n: int) -> None:
    """Subscribe group g (sid 1) to t.0 and reject the next ``n`` deliveries: dead letters."""
    if client.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                      "credit": 10})[0] != Command.SUBSCRIBED:
        raise AssertionError("not subscribed")
    seqs: list[int] = []
    while len(seqs) < n:
        command, body = client.recv()
        assert command == Command.DELIVER
        seqs += [entry[0] for entry in body[2]]
    client.send(Command.REJECT, [1, {"t.0": seqs}, "bad"])


def test_a_follower_new_to_the_leadership_catches_up_the_dead_letters_it_missed(
        cluster_hubs, raw):
    hubs = cluster_hubs("a", "b", "c")
    with ClusterClient(cluster_hubs.url, session_timeout=SESSION_TIMEOUT) as client:
        client.create_topic("t", 1, 3, min_insync=1, wait=WAIT)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 3))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    away = next(h for h in hubs.values() if h not in (leader, follower))
    wait_for(lambda: "t.0" in away.hub.following, WAIT)
    client = raw(leader.endpoint)
    publish(client, 2)
    reject(client, 2)
    wait_for(lambda: dead_on(away) == dead_on(follower) == [1, 2], WAIT,
             message="the dead letters on both followers")
    away.hub.fetcher.fetch = lambda *args: None  # away: it misses what follows
    wait_for(lambda: away.node not in leader.hub.leading["t.0"].isr, WAIT,
             message="the away follower out of the in-sync set")
    with Admin(leader.endpoint, timeout=10) as admin:  # one dead letter out, one more in
        first = next(d["seq"] for d in admin.dead_letters("g") if d["origin_seq"] == 1)
        assert admin.redrive("dlq.g", [first])["redriven"] == 1
    publish(raw(leader.endpoint), 1, "b2")  # seq 4, after the redriven m0 at seq 3
    client = raw(leader.endpoint)  # the first went silent while the follower left
    assert client.ask(Command.SUBSCRIBE, {"sid": 2, "topic": "t.0", "group": "g",
                                          "credit": 10})[0] == Command.SUBSCRIBED
    got: list[int] = []
    while 4 not in got:
        command, body = client.recv()
        if command == Command.DELIVER:
            got += [entry[0] for entry in body[2]]
    client.send(Command.REJECT, [2, {"t.0": [4]}, "bad"])
    wait_for(lambda: dead_on(follower) == [2, 4], WAIT)
    assert dead_on(away) == [1, 2]

    fail_over(leader, follower, raw)  # the new leadership's stream starts empty
    del away.hub.fetcher.fetch  # back, following the new leader from its first entry
    wait_for(lambda: "t.0" in away.hub.following
             and away.hub.following["t.0"].leader == follower.node, WAIT)
    wait_for(lambda: dead_on(away) == [2, 4], WAIT,
             message="the away follower holds the new leader's dead letters")
    assert away.hub.following["t.0"].events_next >= 1


def test_a_follower_away_past_the_kept_entries_converges_to_the_leaders_dead_letters(
        cluster_hubs, raw, monkeypatch):
    from zmq_mq.router import replication

    monkeypatch.setattr(replication, "MAX_EVENTS", 2)  # entries kept for a replica away
    hubs = cluster_hubs("a", "b", "c")
    with ClusterClient(cluster_hubs.url, session_timeout=SESSION_TIMEOUT) as client:
        client.create_topic("t", 1, 3, min_insync=1, wait=WAIT)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 3))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    away = next(h for h in hubs.values() if h not in (leader, follower))
    wait_for(lambda: "t.0" in away.hub.following, WAIT)
    wait_for(lambda: leader.hub.leading["t.0"].reported.get(away.node, (0, 0, 0))[2] >= 1,
             WAIT, message="the away follower past its snapshot")
    away.hub.fetcher.fetch = lambda *args: None
    client = raw(leader.endpoint)
    publish(client, 4)
    reject(client, 4)  # four entries, two kept
    wait_for(lambda: dead_on(follower) == [1, 2, 3, 4], WAIT)
    assert leader.hub.leading["t.0"].events[0][0] > 1  # the oldest dropped
    assert dead_on(away) == []
    del away.hub.fetcher.fetch
    wait_for(lambda: dead_on(away) == [1, 2, 3, 4], WAIT,
             message="the away follower caught up through a snapshot")


def test_a_dead_letter_topics_retention_on_the_leader_removes_those_dead_letters_from_followers(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    client = raw(leader.endpoint)
    publish(raw(leader.endpoint), 3)
    reject(client, 3)
    wait_for(lambda: dead_on(follower) == [1, 2, 3], WAIT)
    with Admin(leader.endpoint, timeout=10) as admin:  # the leader's own dlq.g limits
        admin.configure_topic("dlq.g", max_messages=1)
    wait_for(lambda: dead_on(leader) == [3], WAIT, message="the leader's dlq.g trimmed")
    wait_for(lambda: dead_on(follower) == [3], WAIT,
             message="the trimmed dead letters gone from the follower too")


def test_a_dead_letter_purge_on_a_hub_not_leading_their_partition_leaves_them_to_the_leader(
        cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    client = raw(leader.endpoint)
    publish(raw(leader.endpoint), 2)
    reject(client, 2)
    wait_for(lambda: dead_on(follower) == [1, 2], WAIT)
    with Admin(follower.endpoint, timeout=10) as admin:
        local = admin.dead_letters("g")[0]["seq"]
    on_follower = raw(follower.endpoint)
    reply, err = on_follower.ask(Command.PURGE, [1, "dlq.g", [local]])
    assert reply == Command.ERROR and err["code"] == "not_leader", err
    assert err["leader"] == leader.node and err["leader_endpoint"] == leader.endpoint
    reply, body = on_follower.ask(Command.PURGE, [2, "dlq.g", "all"])
    assert reply == Command.REPLY and body[1]["purged"] == 0  # not this hub's to remove
    assert dead_on(follower) == [1, 2]
    with ClusterAdmin(cluster_hubs.url, timeout=10) as admin:  # every hub purges its own
        assert admin.purge("dlq.g", "all")["purged"] == 2
    assert dead_on(leader) == dead_on(follower) == []  # answered once the follower applied it


def test_a_cluster_partition_is_not_deleted_on_one_hub(cluster_hubs, raw):
    _, leader, follower = one_partition(cluster_hubs, raw)
    publish(raw(leader.endpoint), 3)
    wait_for(lambda: log_of(follower) == (1, 3, 3), WAIT)
    for hub in (leader, follower):
        reply, err = raw(hub.endpoint).ask(Command.TOPIC, [1, "delete", "t.0", None])
        assert reply == Command.ERROR and err["code"] == "invalid", err
        assert "PURGE" in err["message"]
    assert log_of(leader) == log_of(follower) == (1, 3, 3)
