"""Cluster hubs (router/cluster_hub.py) on threads of the test, against a real ZooKeeper:
METADATA, leader-only publishes (``not_leader`` with a leader hint), replication to the
followers with the leader's sequences, confirms held until the in-sync replicas hold them.

The kill -9 / SIGSTOP failover tests with hub processes are in test_cluster_failover.py.
"""

from __future__ import annotations

import pytest
import zmq
from conftest import wait_for
from zmq_mq.router import protocol
from zmq_mq.router.cluster.coordinator import ClusterClient
from zmq_mq.router.protocol import Command
from zmq_mq.testing import ClusterHubThread

SESSION_TIMEOUT = 2.0
WAIT = 30.0


class Raw:
    """A DEALER speaking the raw protocol to one hub."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, command: bytes, body) -> None:
        self.sock.send_multipart(protocol.encode(command, body))

    def recv(self, timeout: float = WAIT):
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no answer from the hub")
        return protocol.decode(self.sock.recv_multipart(), protocol.HUB_COMMANDS)

    def ask(self, command: bytes, body, timeout: float = WAIT):
        self.send(command, body)
        return self.recv(timeout)

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def raw(context):
    made = []

    def connect(endpoint: str) -> Raw:
        r = Raw(context, endpoint)
        made.append(r)
        return r

    yield connect
    for r in made:
        r.close()


def create_topic(url: str, name: str, partitions: int, replicas: int):
    with ClusterClient(url, session_timeout=SESSION_TIMEOUT) as client:
        return client.create_topic(name, partitions, replicas, wait=WAIT)


def metadata_when(raw_client: Raw, predicate) -> dict:
    """METADATA asked again until ``predicate(meta)`` holds."""
    found = {}

    def check():
        command, body = raw_client.ask(Command.METADATA, {})
        assert command == Command.METADATA
        found["meta"] = body
        return predicate(body)

    wait_for(check, WAIT, 0.05, "metadata")
    return found["meta"]


def settled(meta: dict, topic: str, partitions: int, isr: int) -> bool:
    parts = meta["partitions"]
    names = [f"{topic}.{i}" for i in range(partitions)]
    return all(n in parts and parts[n]["leader"] and len(parts[n]["isr"]) == isr
               for n in names) and topic in meta["topics"]


def test_a_hub_without_cluster_answers_metadata_with_cluster_false(raw, hub):
    command, body = raw(hub.endpoint).ask(Command.METADATA, {})
    assert command == Command.METADATA
    assert body["cluster"] is False


def test_a_single_hub_refuses_replicate(raw, hub):
    command, body = raw(hub.endpoint).ask(
        Command.REPLICATE, {"partition": "t.0", "epoch": 1, "node": "x", "from_seq": 1, "max": 1})
    assert command == Command.ERROR and body["code"] == "not_leader"


def test_metadata_names_every_partitions_leader_epoch_and_in_sync_replicas(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b", "c")
    create_topic(cluster_hubs.url, "orders", 6, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "orders", 6, 2))
    assert meta["cluster"] is True and meta["node"] == "a"
    assert set(meta["hubs"]) == {"a", "b", "c"}
    assert meta["hubs"]["b"]["endpoint"] == hubs["b"].endpoint
    assert meta["topics"]["orders"] == {"partitions": 6, "replicas": 2, "min_insync": 2}
    for state in meta["partitions"].values():
        assert state["leader"] in state["isr"] and type(state["epoch"]) is int


def test_a_publish_to_a_partition_this_hub_does_not_lead_is_refused_with_the_leader(
        cluster_hubs, raw):
    hubs = cluster_hubs("a", "b", "c")
    create_topic(cluster_hubs.url, "orders", 3, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "orders", 3, 2))
    name, state = next((n, s) for n, s in meta["partitions"].items() if s["leader"] != "a")
    wait_for(lambda: name in hubs["a"].hub.states, WAIT)
    client = raw(hubs["a"].endpoint)
    command, body = client.ask(Command.PUBLISH, ["b1", [[name, b"x", None, None]]])
    assert command == Command.ERROR
    assert body["code"] == "not_leader" and body["ref"] == "b1"
    assert body["leader"] == state["leader"]
    assert body["leader_endpoint"] == hubs[state["leader"]].endpoint
    assert hubs["a"].hub.store.topics.get(name) is None  # nothing stored


def test_a_confirmed_publish_is_on_every_in_sync_replica_with_the_same_seqs(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b", "c")
    create_topic(cluster_hubs.url, "orders", 3, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "orders", 3, 2))
    name, state = next(iter(meta["partitions"].items()))
    leader = hubs[state["leader"]]
    follower = hubs[next(r for r in state["replicas"] if r != state["leader"])]
    wait_for(lambda: name in leader.hub.leading, WAIT)
    client = raw(leader.endpoint)
    msgs = [[name, f"m{i}".encode(), None, None, {"msg_id": f"id-{i}"}] for i in range(5)]
    command, body = client.ask(Command.PUBLISH, ["b1", msgs])
    assert command == Command.CONFIRM, body
    assert body == ["b1", [1, 2, 3, 4, 5]]
    # confirmed: the follower holds them already (the leader waited for its fetch)
    records = follower.hub.store.read(name, [1, 2, 3, 4, 5])
    assert [protocol.unpack_record(r)[3] for r in records] == [f"m{i}".encode() for i in range(5)]
    assert follower.hub.store.dedup_lookup([(name, "id-3")], 0) == {(name, "id-3"): 4}


def test_a_follower_on_a_stale_epoch_is_refused(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b")
    create_topic(cluster_hubs.url, "t", 1, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
    state = meta["partitions"]["t.0"]
    leader = hubs[state["leader"]]
    wait_for(lambda: "t.0" in leader.hub.leading, WAIT)
    follower = next(n for n in state["replicas"] if n != state["leader"])
    command, body = raw(leader.endpoint).ask(Command.REPLICATE, {
        "partition": "t.0", "epoch": state["epoch"] - 1, "node": follower, "from_seq": 1,
        "max": 10})
    assert command == Command.ERROR and body["code"] == "not_leader"


def test_subscription_cursors_reach_the_follower(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b")
    create_topic(cluster_hubs.url, "t", 1, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
    state = meta["partitions"]["t.0"]
    leader = hubs[state["leader"]]
    follower = hubs[next(n for n in state["replicas"] if n != state["leader"])]
    wait_for(lambda: "t.0" in leader.hub.leading, WAIT)
    client = raw(leader.endpoint)
    assert client.ask(Command.PUBLISH, ["b", [["t.0", b"x", None, None]] * 3])[0] == \
        Command.CONFIRM
    assert client.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                          "credit": 10})[0] == Command.SUBSCRIBED
    command, body = client.recv()
    assert command == Command.DELIVER
    client.send(Command.ACK, [1, {"t.0": [1, 2]}])

    def floor() -> int:
        blob = follower.hub.store.load_subs().get(("t.0", "g"))
        return protocol.unpack(blob)["floor"] if blob else -1

    wait_for(lambda: floor() == 2, WAIT, message="the follower's cursor")



def leader_and_follower(hubs, meta, name):
    state = meta["partitions"][name]
    leader = hubs[state["leader"]]
    follower = hubs[next(n for n in state["replicas"] if n != state["leader"])]
    wait_for(lambda: name in leader.hub.leading, WAIT)
    return leader, follower


def test_a_subscription_resumes_on_the_new_leader_from_the_replicated_cursor(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b", "c")
    create_topic(cluster_hubs.url, "t", 1, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    client = raw(leader.endpoint)
    batch = [["t.0", f"m{i}".encode(), None, None] for i in range(1, 21)]
    assert client.ask(Command.PUBLISH, ["b", batch]) == (Command.CONFIRM, ["b", list(range(1, 21))])
    assert client.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                          "credit": 10})[0] == Command.SUBSCRIBED
    command, body = client.recv()
    assert command == Command.DELIVER
    client.send(Command.ACK, [1, {"t.0": list(range(1, 11))}])

    def floor() -> int:
        blob = follower.hub.store.load_subs().get(("t.0", "g"))
        return protocol.unpack(blob)["floor"] if blob else -1

    wait_for(lambda: floor() == 10, WAIT, message="the ack replicated")
    leader.stop()  # leaves the cluster at once: the controller promotes the follower
    again = raw(follower.endpoint)
    metadata_when(again, lambda m: m["partitions"]["t.0"]["leader"] == follower.node)
    wait_for(lambda: "t.0" in follower.hub.leading, WAIT)
    command, body = again.ask(Command.SUBSCRIBE, {"sid": 1, "topic": "t.0", "group": "g",
                                                  "credit": 100})
    assert command == Command.SUBSCRIBED, body
    assert body["ack_floor"] == 10
    seqs = []
    while len(seqs) < 10:
        command, body = again.recv()
        assert command == Command.DELIVER
        seqs += [entry[0] for entry in body[2]] if isinstance(body, list) else []
    assert seqs == list(range(11, 21))  # nothing acked comes again, nothing confirmed is lost


def test_a_leader_below_min_insync_refuses_publishes_and_takes_them_again_when_back(
        cluster_hubs, raw):
    hubs = cluster_hubs("a", "b")
    create_topic(cluster_hubs.url, "t", 1, 2)  # min_insync 2
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    client = raw(leader.endpoint)
    assert client.ask(Command.PUBLISH, ["b1", [["t.0", b"1", None, None]]])[0] == Command.CONFIRM
    follower.stop()
    wait_for(lambda: leader.hub.leading["t.0"].isr == (leader.node,), WAIT,
             message="the follower out of the in-sync set")
    command, body = client.ask(Command.PUBLISH, ["b2", [["t.0", b"2", None, None]]])
    assert command == Command.ERROR and body["code"] == "not_enough_replicas"
    assert leader.hub.store.topics["t.0"].last_seq == 1  # nothing stored


def test_publishing_resumes_after_a_zookeeper_restart(tmp_path, own_zookeeper, raw):
    url = own_zookeeper.url("/zk-restart")
    hubs = {n: ClusterHubThread(tmp_path / n, url, n, session_timeout=SESSION_TIMEOUT).start()
            for n in ("a", "b")}
    try:
        create_topic(url, "t", 1, 2)
        meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
        leader, _ = leader_and_follower(hubs, meta, "t.0")
        client = raw(leader.endpoint)
        assert client.ask(Command.PUBLISH, ["b1", [["t.0", b"1", None, None]]])[0] == \
            Command.CONFIRM
        own_zookeeper.restart()

        def confirmed():
            reply = client.ask(Command.PUBLISH, ["again", [["t.0", b"2", None,
                                                            None, {"msg_id": "two"}]]], 3)
            return reply[0] == Command.CONFIRM

        wait_for(confirmed, WAIT, 0.2, "a confirmed publish after the restart")
    finally:
        for h in hubs.values():
            h.stop()


def test_a_min_insync_1_topic_keeps_confirming_on_its_leader_alone(cluster_hubs, raw):
    hubs = cluster_hubs("a", "b")
    with ClusterClient(cluster_hubs.url, session_timeout=SESSION_TIMEOUT) as client:
        client.create_topic("t", 1, 2, min_insync=1, wait=WAIT)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    follower.stop()
    wait_for(lambda: leader.hub.leading["t.0"].isr == (leader.node,), WAIT,
             message="the follower out of the in-sync set")
    command, body = raw(leader.endpoint).ask(Command.PUBLISH, ["b", [["t.0", b"x", None, None]]])
    assert command == Command.CONFIRM, body


def test_topic_limits_reach_the_follower_and_apply_once_it_leads(cluster_hubs, raw):
    from zmq_mq.actors.admin import Admin

    hubs = cluster_hubs("a", "b", "c")
    create_topic(cluster_hubs.url, "t", 1, 2)
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 1, 2))
    leader, follower = leader_and_follower(hubs, meta, "t.0")
    client = raw(leader.endpoint)
    assert client.ask(Command.PUBLISH, ["b", [["t.0", b"x", None, None]]])[0] == Command.CONFIRM
    with Admin(leader.endpoint, timeout=10) as admin:
        admin.configure_topic("t.0", max_messages=5)
    wait_for(lambda: follower.hub.store.configs.get("t.0", {}).get("max_messages") == 5, WAIT,
             message="the limits replicated")
    leader.stop()
    wait_for(lambda: "t.0" in follower.hub.leading, WAIT)
    assert follower.hub.trimmer.limits["t.0"].max_messages == 5
