"""Cluster mode, the client side (actors/cluster.py): addresses, routing, following leaders.

Three layers, as the hub side (METADATA, not_leader, replication) is built elsewhere:
- pure routing: metadata parsing, partition choice, addresses (no sockets);
- metadata from a real ZooKeeper, where each "hub" of the cluster is a ClusterMember whose
  advertised endpoint is an ordinary single hub (HubThread): it takes ``NAME.i`` as a plain
  topic, so a message for ``NAME.i`` must land on the hub ZooKeeper says leads it;
- a fake hub (a raw ROUTER) that refuses with ``not_leader`` as the contract says.
"""

from __future__ import annotations

import sys
import threading

import pytest
import zmq

from zmq_mq.actors import Actor, Admin, Consumer, Producer
from zmq_mq.actors.cluster import Metadata, choose_partition
from zmq_mq.actors.cluster_admin import ClusterAdmin
from zmq_mq.actors.cluster_producer import ClusterProducer
from zmq_mq.actors.cluster_session import ClusterConsumer
from zmq_mq.actors.errors import HubError, InvalidMessage, ZmqMqError
from zmq_mq.router import protocol
from zmq_mq.router.endpoint import endpoint_problem, hub_address_problem, is_cluster_address
from zmq_mq.router.protocol import Command
from zmq_mq.testing import HubThread

from conftest import run_cli, wait_for

SESSION_TIMEOUT = 2.0
WAIT = 30.0

# --- pure: addresses, metadata, partition choice ----------------------------------------------

STATUS = {
    "cluster": True,
    "node": "a",
    "hubs": {"a": {"endpoint": "tcp://127.0.0.1:1001", "pub": None},
             "b": {"endpoint": "tcp://127.0.0.1:1002", "pub": None}},
    "topics": {"orders": {"partitions": 3, "replicas": 2, "min_insync": 2}},
    "partitions": {"orders.0": {"leader": "a", "epoch": 1, "isr": ["a", "b"],
                                "replicas": ["a", "b"]},
                   "orders.1": {"leader": "b", "epoch": 3, "isr": ["b"], "replicas": ["b", "a"]},
                   "orders.2": {"leader": None, "epoch": 2, "isr": ["c"], "replicas": ["c", "a"]}},
}


def test_metadata_maps_each_partition_to_its_leaders_endpoint_and_none_when_it_has_no_live_leader():
    meta = Metadata.parse(STATUS)
    assert meta.partitions_of("orders") == ["orders.0", "orders.1", "orders.2"]
    assert meta.leader_map() == {"orders.0": "tcp://127.0.0.1:1001",
                                 "orders.1": "tcp://127.0.0.1:1002", "orders.2": None}
    assert meta.epochs["orders.1"] == 3
    assert meta.partitions_of("orders.1") == ["orders.1"]  # a partition named directly
    assert meta.partitions_of("nope") == []
    assert Metadata.parse({"cluster": False}).cluster is False


def test_a_keyed_message_goes_where_the_single_hub_would_put_it_and_keyless_ones_take_turns():
    parts = protocol.partition_topics("orders", 6)
    for key in ("alice", "bob", "", "ünïcode"):
        assert choose_partition(parts, key, 99) == parts[protocol.partition_of(key, 6)]
    assert [choose_partition(parts, None, t) for t in range(7)] == [*parts, parts[0]]


@pytest.mark.parametrize("address", ["zk://127.0.0.1:2181/zmq-mq", "zk://a:1,b:2/prod/mq",
                                     "tcp://127.0.0.1:5555,tcp://127.0.0.1:5556"])
def test_a_client_accepts_a_cluster_address_but_the_hubs_bind_does_not(address):
    assert is_cluster_address(address)
    assert hub_address_problem(address) is None
    assert endpoint_problem(address, bind=True)  # the hub binds one endpoint


@pytest.mark.parametrize("address, words", [
    ("zk://127.0.0.1:2181", "chroot"), ("zk://127.0.0.1/x", "no port"),
    ("tcp://127.0.0.1:5555,localhost:5556", "did you mean tcp://localhost:5556?"),
])
def test_a_malformed_cluster_address_gets_one_sentence_naming_the_problem(address, words):
    problem = hub_address_problem(address)
    assert problem and words in problem and "\n" not in problem


def test_a_plain_endpoint_makes_the_single_hub_classes_exactly():
    # the single-hub path is untouched: the same classes, nothing of the cluster layer
    assert type(Producer("tcp://127.0.0.1:5555")) is Producer
    assert type(Consumer("tcp://127.0.0.1:5555")) is Consumer
    assert type(Admin("tcp://127.0.0.1:5555")) is Admin
    assert not is_cluster_address("tcp://127.0.0.1:5555")


NO_KAZOO = r"^a zk:// address needs kazoo: pip install 'zmq-mq\[cluster\]'$"


def test_a_zk_address_without_kazoo_says_which_extra_to_install_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "kazoo.client", None)  # importing it raises ImportError
    monkeypatch.delitem(sys.modules, "zmq_mq.router.cluster.coordinator", raising=False)
    address = "zk://127.0.0.1:2181/zmq-mq"
    for use in (lambda: Producer(address).connect(), lambda: Consumer(address).connect(),
                lambda: Admin(address).stats()):
        with pytest.raises(ZmqMqError, match=NO_KAZOO):
            use()


def test_the_cli_without_kazoo_says_which_extra_to_install_in_one_line(tmp_path, monkeypatch):
    fake = tmp_path / "nokazoo" / "kazoo"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('kazoo is not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    for args in (["publish", "orders", "x"], ["topics"], ["subscribe", "orders", "--group", "g"]):
        result = run_cli(*args, "--hub", "zk://127.0.0.1:1/zmq-mq", timeout=60)
        err = result.stderr.decode()
        assert result.returncode == 1, (args, err)
        assert err.count("\n") == 1 and "pip install 'zmq-mq[cluster]'" in err, (args, err)


def test_the_cli_refuses_a_bad_cluster_address_with_one_line_and_exit_2():
    result = run_cli("publish", "orders", "x", "--hub", "zk://127.0.0.1:2181")
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and "chroot" in result.stderr.decode()


# --- a cluster in ZooKeeper whose "hubs" are ordinary single hubs --------------------------------


class FakeCluster:
    """ClusterMembers in ZooKeeper, each advertising the endpoint of a real single hub."""

    def __init__(self, url: str, tmp_path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.hubs: dict[str, HubThread] = {}
        self.members: dict[str, object] = {}

    def add(self, node: str, endpoint: str | None = None):
        from zmq_mq.router.cluster.coordinator import ClusterMember

        if endpoint is None:
            hub = self.hubs[node] = HubThread(self.tmp_path / node).start()
            endpoint = hub.endpoint
        member = ClusterMember(self.url, node, endpoint, session_timeout=SESSION_TIMEOUT)
        self.members[node] = member.start()
        return endpoint

    def leave(self, node: str) -> None:
        self.members.pop(node).close()

    def client(self):
        from zmq_mq.router.cluster.coordinator import ClusterClient

        return ClusterClient(self.url, session_timeout=SESSION_TIMEOUT).start()

    def leaders(self, topic: str) -> dict[str, str | None]:
        c = self.client()
        try:
            return {name: s.leader for name, s in c.partitions(topic).items()}
        finally:
            c.close()

    def endpoint_of(self, node: str) -> str:
        return self.hubs[node].endpoint

    def close(self) -> None:
        for member in self.members.values():
            member.close()
        for hub in self.hubs.values():
            hub.stop()


@pytest.fixture
def cluster(zookeeper, tmp_path):
    c = FakeCluster(zookeeper, tmp_path)
    yield c
    c.close()


def _key_of(partition: int, partitions: int) -> str:
    """A key that goes to ``partition``."""
    return next(k for k in (f"k{i}" for i in range(1000))
                if protocol.partition_of(k, partitions) == partition)


def _moved_to(cluster, topic: str, partition: str, node: str) -> None:
    wait_for(lambda: cluster.leaders(topic)[partition] == node, WAIT, message="failover")


def _stored(endpoint: str, topic: str) -> list:
    with Admin(endpoint) as admin:
        return admin.fetch(topic)


def test_admin_creates_a_cluster_topic_through_zookeeper_and_lists_every_hubs_topics(cluster):
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        assert isinstance(admin, ClusterAdmin)
        created = admin.create_topic("orders", partitions=4, replicas=2)
        assert created["partitions"] == 4 and created["replicas"] == 2
        assert len(created["assignment"]) == 4
        assert set(admin.metadata().leaders) == {f"orders.{i}" for i in range(4)}
        assert set(admin.stats()["hubs"]) == {"a", "b"}
        with Producer(cluster.url) as producer:
            producer.publish("orders", b"x", key="k")
        rows = admin.topics()
        assert [r for r in rows if r["messages"]] and {r["node"] for r in rows} <= {"a", "b"}


def test_each_message_lands_on_the_hub_zookeeper_names_leader_of_its_partition(cluster):
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("orders", partitions=4, replicas=1)
    leaders = cluster.leaders("orders")
    assert set(leaders.values()) == {"a", "b"}  # spread over both
    keys = [f"customer-{i}" for i in range(40)]
    with Producer(cluster.url) as producer:
        assert isinstance(producer, ClusterProducer)
        for key in keys:
            producer.publish("orders", key.encode(), key=key)
        futures = [producer.publish_async("orders", b"keyless") for _ in range(8)]
        producer.flush()
    assert all(f.result() >= 1 for f in futures)
    for partition, node in leaders.items():
        stored = _stored(cluster.endpoint_of(node), partition)
        expected = [k for k in keys if f"orders.{protocol.partition_of(k, 4)}" == partition]
        assert [m.key for m in stored if m.key] == expected
        assert sum(1 for m in stored if m.key is None) == 2  # keyless: round robin
        # every cluster publish carries a msg_id (a resend is stored once)
        assert all(m.headers.get(protocol.MSG_ID_HEADER) for m in stored)
        other = "b" if node == "a" else "a"
        assert _stored(cluster.endpoint_of(other), partition) == []


def test_publishing_to_a_topic_the_cluster_does_not_have_says_how_to_create_it(cluster):
    cluster.add("a")
    with Producer(cluster.url, timeout=5) as producer:
        with pytest.raises(InvalidMessage, match="zmq-mq topic create nope --partitions N"):
            producer.publish("nope", b"x")


def test_unconfirmed_messages_go_to_the_new_leader_when_the_old_one_dies_stored_once(cluster):
    # Given a topic whose partitions each live on both hubs
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("orders", partitions=2, replicas=2)
    leaders = cluster.leaders("orders")
    victim = leaders["orders.0"]
    survivor = "b" if victim == "a" else "a"
    key = _key_of(0, 2)
    with Producer(cluster.url, timeout=WAIT) as producer:
        producer.publish("orders", b"before", key=key)  # connected to the victim
        # When the leader's hub dies (nothing confirmed any more), messages are published,
        cluster.hubs[victim].stop()
        futures = [producer.publish_async("orders", f"m{i}".encode(), key=key) for i in range(5)]
        # and ZooKeeper then moves the partition to the other hub
        cluster.leave(victim)
        _moved_to(cluster, "orders", "orders.0", survivor)
        # Then every message is confirmed by the new leader, once each
        seqs = [f.result(WAIT) for f in futures]
    stored = _stored(cluster.endpoint_of(survivor), "orders.0")
    assert [m.payload for m in stored] == [f"m{i}".encode() for i in range(5)]
    assert seqs == [m.seq for m in stored]
    assert producer.resent >= 5


# --- not_leader from a (fake) hub -------------------------------------------------------------


class NotLeaderHub:
    """A raw ROUTER that welcomes clients, answers METADATA with ``metadata`` (if given) and
    refuses every PUBLISH and SUBSCRIBE with ``code`` (not_leader), naming ``leader_endpoint``
    as the contract says."""

    def __init__(self, sock: zmq.Socket, leader_endpoint: str | None, *, code: str = "not_leader",
                 metadata: dict | None = None) -> None:
        self.sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.leader_endpoint = leader_endpoint
        self.code = code
        self.metadata = metadata
        self.refused: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "NotLeaderHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, *frames = self.sock.recv_multipart()
            command, body = protocol.decode(frames, protocol.CLIENT_COMMANDS | {b"METADATA"})
            if command == Command.HELLO:
                reply = (Command.WELCOME, {"hub": "fake", "heartbeat_ms": 1000, "liveness": 3,
                                           "limits": {}, "pub": None})
            elif command == b"METADATA" and self.metadata is not None:
                reply = (b"METADATA", self.metadata)
            elif command in (Command.PUBLISH, Command.SUBSCRIBE):
                self.refused.append(command)
                ref = body[0] if command == Command.PUBLISH else body["sid"]
                reply = (Command.ERROR, {"code": self.code, "message": "not the leader",
                                         "command": command.decode(), "ref": ref,
                                         "leader": "real", "leader_endpoint": self.leader_endpoint,
                                         "epoch": 2})
            elif command == Command.HEARTBEAT:
                reply = (Command.HEARTBEAT, ["fake", []])
            else:
                continue
            self.sock.send_multipart([peer, *protocol.encode(*reply)])


def test_a_not_leader_refusal_sends_the_batch_to_the_leader_it_names_and_it_is_stored_once(
        cluster, socket, tmp_path):
    # Given ZooKeeper naming a hub as leader that refuses with not_leader pointing at the real one
    real = HubThread(tmp_path / "real").start()
    try:
        router = socket(zmq.ROUTER)
        router.bind("tcp://127.0.0.1:*")
        with NotLeaderHub(router, real.endpoint) as fake:
            cluster.add("fake", fake.endpoint)
            with Admin(cluster.url) as admin:
                admin.create_topic("orders", partitions=1, replicas=1)
            # When a message is published
            with Producer(cluster.url, timeout=WAIT) as producer:
                seq = producer.publish("orders", b"hello", msg_id="m-1")
                # Then the refused batch went to the named leader, which stored it
                assert fake.refused == [Command.PUBLISH]
            stored = _stored(real.endpoint, "orders.0")
            assert [(m.seq, m.payload, m.msg_id) for m in stored] == [(seq, b"hello", "m-1")]
    finally:
        real.stop()


# --- consuming ------------------------------------------------------------------------------------


def test_a_consumer_of_a_cluster_topic_reads_each_partition_from_its_leader_and_acks_there(cluster):
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("orders", partitions=4, replicas=1)
    sent = {f"m{i}".encode() for i in range(20)}
    with Producer(cluster.url) as producer:
        for payload in sorted(sent):
            producer.publish("orders", payload, key=payload.decode())
    got = set()
    with Consumer(cluster.url, timeout=WAIT) as consumer:
        assert isinstance(consumer, ClusterConsumer)
        consumer.subscribe("orders", group="audit")
        while got != sent:
            msg = consumer.receive(timeout=WAIT)
            assert msg is not None, f"missing {sent - got}"
            assert msg.topic.startswith("orders.")
            got.add(msg.payload)
            msg.ack()
    # acked on the leaders: nothing left for the group
    leaders = cluster.leaders("orders")
    for partition, node in leaders.items():
        with Admin(cluster.endpoint_of(node)) as admin:
            rows = {r["topic"]: r for r in admin.topics()}
        subs = {s["group"]: s for s in rows[partition]["subscriptions"]}
        assert subs["audit"]["lag"] == 0 and subs["audit"]["in_flight"] == 0


def test_a_consumer_re_attaches_to_the_new_leader_when_a_partition_moves(cluster):
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("orders", partitions=2, replicas=2)
    leaders = cluster.leaders("orders")
    victim = leaders["orders.0"]
    survivor = "b" if victim == "a" else "a"
    key = _key_of(0, 2)
    with Consumer(cluster.url, timeout=WAIT) as consumer:
        consumer.subscribe("orders", group="g")
        # When the leader of orders.0 leaves the cluster and the other hub leads it
        cluster.leave(victim)
        _moved_to(cluster, "orders", "orders.0", survivor)
        with Producer(cluster.url) as producer:
            producer.publish("orders", b"after", key=key)
        # Then the consumer gets what the new leader holds
        msg = consumer.receive(timeout=WAIT)
        assert msg is not None and msg.payload == b"after" and msg.topic == "orders.0"
        msg.ack()


def test_an_actor_on_a_cluster_handles_the_messages_of_every_partition(cluster):
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("jobs", partitions=3, replicas=1)
    done = []
    all_done = threading.Event()

    actor = Actor(cluster.url, name="cluster-actor", timeout=WAIT)

    @actor.subscribe("jobs", group="workers")
    def handle(msg):
        done.append(msg.payload)
        if len(done) == 12:
            all_done.set()

    actor.start()
    try:
        with Producer(cluster.url) as producer:
            for i in range(12):
                producer.publish("jobs", f"j{i}".encode())
        assert all_done.wait(WAIT)
    finally:
        actor.stop()
    assert sorted(done) == sorted(f"j{i}".encode() for i in range(12))


# --- the command line on a cluster ------------------------------------------------------------


def test_the_cli_creates_a_cluster_topic_publishes_to_it_and_lists_and_stats_every_hub(cluster):
    cluster.add("a")
    cluster.add("b")
    created = run_cli("topic", "create", "orders", "--partitions", "4", "--replicas", "2",
                      "--hub", cluster.url)
    assert created.returncode == 0, created.stderr
    assert '"replicas": 2' in created.stdout.decode()
    published = run_cli("publish", "orders", "hello", "--key", "k1", "--hub", cluster.url)
    assert published.returncode == 0, published.stderr
    listed = run_cli("topics", "--json", "--hub", cluster.url)
    assert listed.returncode == 0, listed.stderr
    partition = f"orders.{protocol.partition_of('k1', 4)}"
    leader = cluster.leaders("orders")[partition]
    rows = [r for r in __import__("json").loads(listed.stdout) if r["topic"] == partition]
    assert [(r["node"], r["messages"]) for r in rows] == [(leader, 1)]
    stats = run_cli("stats", "--hub", cluster.url)
    assert stats.returncode == 0 and partition in stats.stdout.decode(), stats.stderr
    got = run_cli("subscribe", "orders", "--group", "g", "--count", "1", "--timeout", "20",
                  "--hub", cluster.url)
    assert got.returncode == 0 and got.stdout == b"hello\n", got.stderr


def test_listening_to_a_cluster_says_the_live_feed_is_one_hubs_in_one_line():
    result = run_cli("listen", "--hub", "zk://127.0.0.1:1/zmq-mq", "--timeout", "5")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "ask one hub, by its endpoint" in err


def test_replicas_without_a_cluster_is_a_usage_error(hub):
    result = run_cli("topic", "create", "orders", "--replicas", "2", "--hub", hub.endpoint)
    assert result.returncode == 2 and b"--hub zk://" in result.stderr


def test_a_consumer_refused_with_not_leader_attaches_on_the_leader_the_refusal_names(
        cluster, socket, tmp_path):
    real = HubThread(tmp_path / "real").start()
    try:
        router = socket(zmq.ROUTER)
        router.bind("tcp://127.0.0.1:*")
        with NotLeaderHub(router, real.endpoint) as fake:
            cluster.add("fake", fake.endpoint)
            with Admin(cluster.url) as admin:
                admin.create_topic("orders", partitions=1, replicas=1)
            with Producer(real.endpoint) as producer:  # straight to the real leader
                producer.publish("orders.0", b"hello")
            with Consumer(cluster.url, timeout=WAIT) as consumer:
                consumer.subscribe("orders", group="g")
                msg = consumer.receive(timeout=WAIT)
                assert msg is not None and msg.payload == b"hello"
                msg.ack()
            assert fake.refused == [Command.SUBSCRIBE]
    finally:
        real.stop()


# --- bootstrapping from a list of hubs (METADATA) ---------------------------------------------


def _free_endpoint(socket) -> str:
    probe = socket(zmq.ROUTER)
    probe.bind("tcp://127.0.0.1:*")
    endpoint = probe.getsockopt_string(zmq.LAST_ENDPOINT)
    probe.unbind(endpoint)
    return endpoint


def test_a_hub_list_bootstraps_from_the_first_hub_that_answers_metadata_and_routes_by_it(
        socket, tmp_path):
    # Given two real hubs, and a hub that answers METADATA saying they lead orders.0 / orders.1
    a = HubThread(tmp_path / "a").start()
    b = HubThread(tmp_path / "b").start()
    try:
        router = socket(zmq.ROUTER)
        router.bind("tcp://127.0.0.1:*")
        metadata = {"cluster": True, "node": "meta",
                    "hubs": {"a": {"endpoint": a.endpoint, "pub": None},
                             "b": {"endpoint": b.endpoint, "pub": None}},
                    "topics": {"orders": {"partitions": 2, "replicas": 1, "min_insync": 1}},
                    "partitions": {
                        "orders.0": {"leader": "a", "epoch": 1, "isr": ["a"], "replicas": ["a"]},
                        "orders.1": {"leader": "b", "epoch": 1, "isr": ["b"], "replicas": ["b"]}}}
        with NotLeaderHub(router, None, metadata=metadata) as meta_hub:
            # When a producer is given a list whose first hub is down
            address = f"{_free_endpoint(socket)},{meta_hub.endpoint}"
            keys = {p: _key_of(p, 2) for p in (0, 1)}
            with Producer(address, timeout=4) as producer:
                assert isinstance(producer, ClusterProducer)
                for p, key in keys.items():
                    producer.publish("orders", f"to {p}".encode(), key=key)
        # Then each message is on the hub METADATA named leader of its partition
        assert [m.payload for m in _stored(a.endpoint, "orders.0")] == [b"to 0"]
        assert [m.payload for m in _stored(b.endpoint, "orders.1")] == [b"to 1"]
    finally:
        a.stop()
        b.stop()


def test_a_hub_list_of_hubs_not_in_a_cluster_says_to_give_the_endpoint_alone(hub):
    with pytest.raises(ZmqMqError, match="not in a cluster .* give its endpoint alone"):
        Producer(f"{hub.endpoint},{hub.endpoint}", timeout=5).connect()


def _topic_led_by(cluster, node: str, partitions: int = 1, replicas: int = 2) -> str:
    """A new cluster topic whose partition 0 ``node`` leads (placement starts at a hash of the
    name, so try names until one starts there)."""
    with Admin(cluster.url) as admin:
        for i in range(50):
            name = f"t{i}"
            admin.create_topic(name, partitions=partitions, replicas=replicas)
            if cluster.leaders(name)[f"{name}.0"] == node:
                return name
    raise AssertionError(f"no topic led by {node}")


def test_an_unavailable_partition_is_retried_until_zookeeper_names_a_leader_that_takes_it(
        cluster, socket):
    router = socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    with NotLeaderHub(router, None, code="unavailable") as fake:
        cluster.add("fake", fake.endpoint)
        cluster.add("real")
        topic = _topic_led_by(cluster, "fake")
        with Producer(cluster.url, timeout=WAIT) as producer:
            future = producer.publish_async(topic, b"hello")
            wait_for(lambda: len(fake.refused) >= 2, WAIT, message="refusals")  # retried
            assert not future.done()
            cluster.leave("fake")  # ZooKeeper moves the partition to the real hub
            seq = future.result(WAIT)
    stored = _stored(cluster.endpoint_of("real"), f"{topic}.0")
    assert [(m.seq, m.payload) for m in stored] == [(seq, b"hello")]


def test_a_partition_refused_until_the_timeout_raises_the_hubs_error(cluster, socket):
    router = socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    with NotLeaderHub(router, None, code="unavailable") as fake:
        cluster.add("fake", fake.endpoint)
        with Admin(cluster.url) as admin:
            admin.create_topic("orders", partitions=1, replicas=1)
        with Producer(cluster.url, timeout=1.5) as producer:
            with pytest.raises(HubError, match="^unavailable"):
                producer.publish("orders", b"x")


def test_a_message_settled_after_its_partition_moved_is_acked_on_the_new_leader(cluster):
    from conftest import subscription_stats

    # Given a partition on two hubs that both hold its message as seq 1 (as replication would)
    old, new = _orders_on_two_hubs(cluster)
    for node in (old, new):
        with Producer(cluster.endpoint_of(node)) as producer:
            assert producer.publish("orders.0", b"m") == 1
    with Consumer(cluster.url, timeout=WAIT) as consumer:
        consumer.subscribe("orders", group="g")
        msg = consumer.receive(timeout=WAIT)  # delivered by the old leader
        assert msg is not None and msg.seq == 1
        # When the partition moves and the consumer re-attaches to the new leader
        cluster.leave(old)
        _moved_to(cluster, "orders", "orders.0", new)
        again = consumer.receive(timeout=WAIT)  # the new leader delivers it (in flight: again)
        assert again is not None and again.seq == 1
        # Then settling the first delivery acks it on the new leader
        msg.ack()
        consumer.flush()
        wait_for(lambda: subscription_stats(cluster.endpoint_of(new), "orders.0", "g")
                 .get("ack_floor") == 1, WAIT, message="ack on the new leader")
    assert subscription_stats(cluster.endpoint_of(old), "orders.0", "g").get("ack_floor") == 0


def test_resends_keep_publish_order_and_wait_while_their_partition_has_no_leader():
    from zmq_mq.actors.cluster_producer import _Pending, moved, resend_order

    meta = Metadata.parse(STATUS)

    def item(number, partition, endpoint):
        p = _Pending(number, "orders", partition, b"", None, None, "id", None, None, None, 0)
        p.endpoint = endpoint
        return p

    a, b = "tcp://127.0.0.1:1001", "tcp://127.0.0.1:1002"
    items = [item(3, "orders.0", b), item(1, "orders.0", b), item(2, "orders.1", b),
             item(4, "orders.2", a)]
    # orders.0 moved to a: resent, oldest first; orders.1 stays on b; orders.2 has no leader now
    assert [i.number for i in resend_order(moved(items, meta))] == [1, 3]


def test_an_actor_follows_a_partition_to_its_new_leader_when_the_old_leaders_hub_dies(cluster):
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("jobs", partitions=2, replicas=2)
    victim = cluster.leaders("jobs")["jobs.0"]
    survivor = "b" if victim == "a" else "a"
    handled = []
    got = threading.Event()
    actor = Actor(cluster.url, name="follower", timeout=WAIT)

    @actor.subscribe("jobs", group="workers")
    def handle(msg):
        handled.append((msg.topic, msg.payload))
        got.set()

    actor.start()
    try:
        # When the hub leading jobs.0 dies and ZooKeeper moves jobs.0 to the other hub
        cluster.hubs[victim].stop()
        cluster.leave(victim)
        _moved_to(cluster, "jobs", "jobs.0", survivor)
        with Producer(cluster.url, timeout=WAIT) as producer:
            producer.publish("jobs", b"after", key=_key_of(0, 2))
        # Then the actor handles what the new leader holds
        assert got.wait(WAIT), "the actor did not follow jobs.0 to its new leader"
    finally:
        actor.stop()
    assert handled == [("jobs.0", b"after")]


class ConfirmLosingHub(NotLeaderHub):
    """A hub that passes each PUBLISH on to the real leader, which stores it, then loses the
    confirm: it answers not_leader naming that leader, as a deposed leader would have."""

    def __init__(self, sock: zmq.Socket, leader_endpoint: str) -> None:
        super().__init__(sock, leader_endpoint)
        self.forwarded: list = []

    def _serve(self) -> None:
        from zmq_mq.actors.connection import Connection

        upstream = Connection(self.leader_endpoint, name="confirm-loser")
        upstream.open(WAIT)
        try:
            while not self._stop.is_set():
                if not self.sock.poll(50):
                    continue
                peer, *frames = self.sock.recv_multipart()
                command, body = protocol.decode(frames)
                if command == Command.PUBLISH:
                    upstream.send(Command.PUBLISH, body)
                    while True:  # stored upstream: its CONFIRM is what this hub loses
                        assert upstream.socket.poll(int(WAIT * 1000))
                        reply, answer = upstream.recv()
                        if reply == Command.CONFIRM:
                            self.forwarded.append(answer)
                            break
                    self.refused.append(command)
                    error = {"code": "not_leader", "message": "deposed", "command": "PUBLISH",
                             "ref": body[0], "leader": "real",
                             "leader_endpoint": self.leader_endpoint, "epoch": 2}
                    self.sock.send_multipart([peer, *protocol.encode(Command.ERROR, error)])
                elif command == Command.HELLO:
                    welcome = {"hub": "fake", "heartbeat_ms": 1000, "liveness": 3, "limits": {},
                               "pub": None}
                    self.sock.send_multipart([peer, *protocol.encode(Command.WELCOME, welcome)])
                elif command == Command.HEARTBEAT:
                    self.sock.send_multipart(
                        [peer, *protocol.encode(Command.HEARTBEAT, ["fake", []])])
        finally:
            upstream.close()


def test_a_message_resent_after_a_lost_confirm_is_stored_once_thanks_to_its_automatic_msg_id(
        cluster, socket, tmp_path):
    # Given a leader that stored a batch but lost its confirm and said not_leader
    real = HubThread(tmp_path / "real").start()
    try:
        router = socket(zmq.ROUTER)
        router.bind("tcp://127.0.0.1:*")
        with ConfirmLosingHub(router, real.endpoint) as loser:
            cluster.add("loser", loser.endpoint)
            with Admin(cluster.url) as admin:
                admin.create_topic("orders", partitions=1, replicas=1)
            # When a message without a msg_id is published
            with Producer(cluster.url, timeout=WAIT) as producer:
                seq = producer.publish("orders", b"once")
            assert loser.forwarded == [[1, [seq]]]  # stored by the first attempt
        # Then the resend to the named leader was recognised: one copy, the first sequence
        stored = _stored(real.endpoint, "orders.0")
        assert [(m.seq, m.payload) for m in stored] == [(seq, b"once")]
    finally:
        real.stop()


def _topic_on_one_hub(cluster, name: str) -> None:
    """Hub a alone, and a topic ``name`` of 1 partition on it."""
    cluster.add("a")
    with Admin(cluster.url) as admin:
        admin.create_topic(name, partitions=1, replicas=1)


def test_automatic_msg_ids_are_distinct_without_reading_the_kernels_random_source_per_message(
        cluster, monkeypatch):
    # os.urandom (uuid4 per message) was a third of the cluster producer's publish_async time
    _topic_on_one_hub(cluster, "ids")
    import os as _os

    real_urandom = _os.urandom
    calls = []

    def counting(n):
        calls.append(n)
        return real_urandom(n)

    with Producer(cluster.url, timeout=WAIT) as producer:
        producer.publish("ids", b"first")  # connected, metadata read
        monkeypatch.setattr(_os, "urandom", counting)
        futures = [producer.publish_async("ids", b"x") for _ in range(200)]
        producer.flush()
        monkeypatch.setattr(_os, "urandom", real_urandom)
    assert all(f.result() >= 1 for f in futures)
    assert len(calls) < 10, f"{len(calls)} reads of os.urandom for 200 publishes"
    ids = [m.headers.get(protocol.MSG_ID_HEADER) for m in _stored(cluster.endpoint_of("a"),
                                                                  "ids.0")]
    assert len(ids) == 201 and all(ids) and len(set(ids)) == 201


# --- placement changes reach clients through ZooKeeper watches, not a poll ----------------------

NEVER_MS = 3_600_000  # a poll period no test waits for: only a watch can bring the change


def _expire_session(zk, url: str) -> None:
    """End a kazoo client's ZooKeeper session as ZooKeeper does for a silent client: another
    connection takes the session over and closes it (the client then reconnects with a new
    session, its one-shot watches gone)."""
    from kazoo.client import KazooClient

    from zmq_mq.router.cluster.address import parse_cluster_address

    session_id, password = zk.client_id
    thief = KazooClient(hosts=parse_cluster_address(url).hosts, client_id=(session_id, password),
                        timeout=SESSION_TIMEOUT)
    thief.start(10)
    thief.stop()
    thief.close()


def _leader_seen(client_meta, partition: str) -> str | None:
    meta = client_meta()
    return meta.leaders.get(partition) if meta is not None else None


def _orders_on_two_hubs(cluster) -> tuple[str, str]:
    """Hubs a and b, topic orders of 1 partition on both: (its leader, the other hub)."""
    cluster.add("a")
    cluster.add("b")
    with Admin(cluster.url) as admin:
        admin.create_topic("orders", partitions=1, replicas=2)
    old = cluster.leaders("orders")["orders.0"]
    return old, "b" if old == "a" else "a"


def _publish_on(cluster, node: str, payload: bytes) -> None:
    """Publish to orders.0 on ``node``'s hub directly (a plain Producer)."""
    with Producer(cluster.endpoint_of(node)) as direct:
        direct.publish("orders.0", payload)


def test_a_subscribed_consumer_follows_a_leader_change_at_once_without_a_poll_or_a_refusal(
        cluster, monkeypatch):
    import zmq_mq.actors.cluster_session as cluster_session

    monkeypatch.setattr(cluster_session, "IDLE_REFRESH_MS", NEVER_MS)
    old, new = _orders_on_two_hubs(cluster)
    with Consumer(cluster.url, timeout=WAIT) as consumer:
        consumer.subscribe("orders", group="g")
        session = consumer._session
        assert session.attachments[1]["orders.0"].endpoint == cluster.endpoint_of(old)
        # When ZooKeeper moves orders.0 while its old leader still runs and never refuses (a
        # plain hub): only ZooKeeper can tell the consumer, and it does not poll
        cluster.leave(old)
        _moved_to(cluster, "orders", "orders.0", new)
        _publish_on(cluster, new, b"after")
        # Then the consumer re-attached to the new leader and gets what it holds
        msg = consumer.receive(timeout=WAIT)
        assert msg is not None and msg.payload == b"after"
        assert session.attachments[1]["orders.0"].endpoint == cluster.endpoint_of(new)
        assert session.reattached == 1
        msg.ack()


def test_a_producer_routes_to_the_new_leader_once_zookeeper_names_it_without_a_poll(
        cluster, monkeypatch):
    import zmq_mq.actors.cluster_producer as cluster_producer

    monkeypatch.setattr(cluster_producer, "REFRESH_MS", NEVER_MS)
    old, new = _orders_on_two_hubs(cluster)
    with Producer(cluster.url, timeout=WAIT) as producer:
        producer.publish("orders", b"before")
        cluster.leave(old)  # the old leader still runs and would confirm: no refusal to follow
        _moved_to(cluster, "orders", "orders.0", new)
        # the producer's view follows ZooKeeper's by itself (no publish, no poll)
        wait_for(lambda: _leader_seen(lambda: producer._cache.meta, "orders.0") == new, WAIT,
                 message="the producer seeing the new leader")
        producer.publish("orders", b"after")
    assert [m.payload for m in _stored(cluster.endpoint_of(old), "orders.0")] == [b"before"]
    assert [m.payload for m in _stored(cluster.endpoint_of(new), "orders.0")] == [b"after"]


def test_a_client_watches_again_after_its_zookeeper_session_expired(cluster, monkeypatch):
    import zmq_mq.actors.cluster_producer as cluster_producer

    monkeypatch.setattr(cluster_producer, "REFRESH_MS", NEVER_MS)
    old, new = _orders_on_two_hubs(cluster)
    with Producer(cluster.url, timeout=WAIT) as producer:
        producer.publish("orders", b"before")
        zk = producer._cache.source.client().zk
        first = zk.client_id[0]
        # Given the producer's ZooKeeper session ended (its one-shot watches with it)
        _expire_session(zk, cluster.url)
        wait_for(lambda: zk.connected and zk.client_id[0] != first, WAIT,
                 message="a new ZooKeeper session")
        # When the partition moves afterwards
        cluster.leave(old)
        _moved_to(cluster, "orders", "orders.0", new)
        # Then the producer learns it all the same
        wait_for(lambda: _leader_seen(lambda: producer._cache.meta, "orders.0") == new, WAIT,
                 message="the producer seeing the new leader after its session expired")


def test_a_consumer_watches_again_after_zookeeper_restarts(own_zookeeper, tmp_path, monkeypatch):
    import zmq_mq.actors.cluster_session as cluster_session

    monkeypatch.setattr(cluster_session, "IDLE_REFRESH_MS", NEVER_MS)
    cluster = FakeCluster(own_zookeeper.url("/restart"), tmp_path)
    try:
        old, new = _orders_on_two_hubs(cluster)
        with Consumer(cluster.url, timeout=WAIT) as consumer:
            consumer.subscribe("orders", group="g")
            # Given ZooKeeper restarted under the subscribed consumer
            own_zookeeper.restart()
            assert consumer.receive(timeout=0.5) is None  # pumps: it reconnects meanwhile
            # When the partition moves afterwards
            cluster.leave(old)
            _moved_to(cluster, "orders", "orders.0", new)
            _publish_on(cluster, new, b"after")
            # Then the consumer follows it to the new leader all the same
            msg = consumer.receive(timeout=WAIT)
            assert msg is not None and msg.payload == b"after"
            msg.ack()
    finally:
        cluster.close()


def test_a_cluster_producer_settles_its_confirms_a_batch_at_a_time_not_one_by_one(
        cluster, monkeypatch):
    # resolving each confirm alone (a done-callback per message, a lock and a wake-up each)
    # held the cluster producer to a fraction of the plain one's rate (bench/RESULTS.md)
    _topic_on_one_hub(cluster, "batched")
    with Producer(cluster.url, timeout=WAIT) as producer:
        producer.publish("batched", b"first")  # connected, metadata read
        resolutions = []
        real = producer._resolve_batch

        def counting(futures, *args, **kwargs):
            resolutions.append(len(futures))
            return real(futures, *args, **kwargs)

        monkeypatch.setattr(producer, "_resolve_batch", counting)
        futures = [producer.publish_async("batched", b"x") for _ in range(500)]
        producer.flush()
    assert sorted(f.result() for f in futures) == list(range(2, 502))
    assert sum(resolutions) == 500
    assert len(resolutions) < 100, f"{len(resolutions)} resolutions for 500 confirms"
