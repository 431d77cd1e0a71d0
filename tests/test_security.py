"""CURVE hubs: who gets in, what they may do, and that every refusal is logged.

Keys (made with zmq.auth, as `zmq-mq keygen` does): the hub; alice, authorised and granted
everything; bob, authorised and limited to orders.*; mallory, with a valid key pair that is not
authorised.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess

import pytest
import zmq
import zmq.auth

from zmq_mq.actors import Actor, Consumer, CurveKeys, HubError, HubUnavailable, Listener, Producer
from zmq_mq.actors.connection import Connection
from zmq_mq.router import protocol
from zmq_mq.router.hub import Hub
from zmq_mq.router.config import HubConfig
from zmq_mq.router.security import SecurityError
from zmq_mq.testing import HubThread

from conftest import run_cli, wait_for, zmq_mq_command

ACL = """
[clients.alice]
publish = [">"]
subscribe = [">"]

[clients.bob]
publish = ["orders.*"]
subscribe = ["orders.*"]
"""


class Keys:
    def __init__(self, root):
        self.dir = root / "keys"
        self.authorized = self.dir / "authorized"
        self.authorized.mkdir(parents=True)
        for name in ("hub", "alice", "bob", "mallory"):
            zmq.auth.create_certificates(self.dir, name)
        for name in ("alice", "bob"):
            shutil.copy(self.dir / f"{name}.key", self.authorized)
        self.acl = root / "acl.toml"
        self.acl.write_text(ACL)

    def client(self, name: str) -> CurveKeys:
        return CurveKeys.load(self.dir / f"{name}.key_secret", self.dir / "hub.key")

    def z85(self, name: str) -> str:
        return zmq.auth.load_certificate(self.dir / f"{name}.key")[0].decode()


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path)


@pytest.fixture
def zap_log(caplog):
    caplog.set_level(logging.INFO, logger="zmq_mq")
    return caplog


@pytest.fixture
def curve_hub(tmp_path, keys):
    """A CURVE hub with the ACL: alice everything, bob orders.* only."""
    h = HubThread(tmp_path / "data", curve=True, keys_dir=str(keys.dir), acl_file=str(keys.acl)).start()
    yield h
    h.stop()


def _logged(caplog, *words) -> bool:
    return any(all(w in r.getMessage() for w in words) for r in caplog.records)


def test_an_authorised_client_publishes_and_subscribes(curve_hub, keys):
    alice = keys.client("alice")
    with Producer(curve_hub.endpoint, curve=alice, timeout=5) as producer:
        seqs = [producer.publish("payments", f"p{i}".encode()) for i in range(3)]
    assert seqs == [1, 2, 3]
    with Consumer(curve_hub.endpoint, curve=alice, timeout=5) as consumer:
        consumer.subscribe("payments", "audit")
        got = []
        while len(got) < 3:
            msg = consumer.receive(5)
            assert msg is not None, f"only {got} arrived"
            got.append(msg.payload)
            msg.ack()
    assert got == [b"p0", b"p1", b"p2"]


def test_an_actor_with_keys_processes_messages(curve_hub, keys):
    seen = []
    actor = Actor(curve_hub.endpoint, curve=keys.client("bob"), name="bob-worker")
    actor.add_handler("orders.eu", lambda m: seen.append(m.payload), group="billing")
    actor.start()
    try:
        with Producer(curve_hub.endpoint, curve=keys.client("bob"), timeout=5) as producer:
            producer.publish("orders.eu", b"o1")
        wait_for(lambda: seen == [b"o1"], 10, message="the actor to process o1")
    finally:
        actor.stop()


def test_a_client_without_an_authorised_key_gets_nothing_and_the_hub_logs_it(curve_hub, keys, zap_log):
    # Given mallory's valid key pair that is not in the authorised directory
    mallory = keys.client("mallory")
    # When mallory tries to publish and to subscribe
    with pytest.raises(HubUnavailable, match="authorised"):
        Producer(curve_hub.endpoint, curve=mallory, timeout=1.5).connect()
    consumer = Consumer(curve_hub.endpoint, curve=mallory, timeout=1.5)
    with pytest.raises(HubUnavailable):
        consumer.connect()
    consumer.close()
    # Then nothing was stored, and the hub's ZAP handler logged the refusal with the key
    assert curve_hub.hub.topics() == []
    wait_for(lambda: _logged(zap_log, "refused client key", keys.z85("mallory")), 5,
             message="the refusal in the hub log")
    assert not _logged(zap_log, "authenticated client", keys.z85("mallory"))


def test_a_plain_client_cannot_talk_to_a_curve_hub_and_the_hub_logs_it(curve_hub, zap_log):
    with pytest.raises(HubUnavailable, match="needs client keys"):
        Producer(curve_hub.endpoint, timeout=1.5).connect()
    # which side notices first is a race: the hub sees a mechanism mismatch, or the client hang up
    wait_for(lambda: _logged(zap_log, "refused a connection", "CURVE handshake failed",
                             "without CURVE keys"), 5, message="the refused handshake in the hub log")


def test_a_client_with_a_wrong_hub_key_is_refused(curve_hub, keys, zap_log):
    wrong = CurveKeys(keys.client("alice").public, keys.client("alice").secret,
                      zmq.curve_keypair()[0])
    with pytest.raises(HubUnavailable):
        Producer(curve_hub.endpoint, curve=wrong, timeout=1.5).connect()
    wait_for(lambda: _logged(zap_log, "CURVE handshake failed", "wrong hub"), 5, message="the log line")


def test_an_acl_limits_a_client_to_its_topics_and_the_hub_serves_others(curve_hub, keys, zap_log):
    bob, alice = keys.client("bob"), keys.client("alice")
    with Producer(curve_hub.endpoint, curve=bob, timeout=5) as producer:
        # bob may publish to orders.eu ...
        assert producer.publish("orders.eu", b"o1") == 1
        # ... but not to payments: forbidden, and nothing of the batch is stored
        with pytest.raises(HubError) as err:
            producer.publish("payments", b"stolen")
        assert err.value.code == protocol.ErrorCode.FORBIDDEN.value == "forbidden"
        assert "bob" in err.value.message and "payments" in err.value.message
        # a batch with one forbidden message is refused whole (one frame, sent as such: a
        # Producer's batching depends on timing)
        conn = Connection(curve_hub.endpoint, name="bob-raw", curve=bob)
        try:
            conn.open(5)
            batch = [["orders.eu", b"o2", None, None], ["payments.eu", b"stolen", None, None]]
            conn.send(protocol.Command.PUBLISH, [7, batch])
            assert conn.socket.poll(5000)
            reply, body = conn.recv()
        finally:
            conn.close()
        assert reply == protocol.Command.ERROR
        assert (body["code"], body["ref"], body["index"]) == ("forbidden", 7, 1)
        # and the same producer keeps working; nothing of the refused batch was stored
        assert producer.publish("orders.eu", b"o3") == 2
    with Consumer(curve_hub.endpoint, curve=bob, timeout=5) as consumer:
        # bob cannot read payments ...
        with pytest.raises(HubError) as err:
            consumer.subscribe("payments", "snoop")
        assert err.value.code == "forbidden"
        with pytest.raises(HubError, match="forbidden"):
            consumer.subscribe("orders.eu.west", "deep")  # '*' is exactly one token
        # ... but can read orders.eu
        consumer.subscribe("orders.eu", "billing")
        msg = consumer.receive(5)
        assert msg is not None and msg.payload == b"o1"
        msg.ack()
    # meanwhile alice is served as before
    with Producer(curve_hub.endpoint, curve=alice, timeout=5) as producer:
        assert producer.publish("payments", b"p1") == 1
    assert {t["topic"]: t["messages"] for t in curve_hub.hub.topics()} == {"orders.eu": 2, "payments": 1}
    assert _logged(zap_log, "forbidden: client bob", "publish to 'payments'")
    assert _logged(zap_log, "forbidden: client bob", "subscribe to 'payments'")


def test_topics_lists_only_what_a_client_may_use(curve_hub, keys):
    from zmq_mq.actors.connection import request

    with Producer(curve_hub.endpoint, curve=keys.client("alice"), timeout=5) as producer:
        producer.publish("payments", b"p")
        producer.publish("orders.eu", b"o")
    seen = request(curve_hub.endpoint, protocol.Command.TOPICS, timeout=5, curve=keys.client("bob"))
    assert [t["topic"] for t in seen] == ["orders.eu"]
    seen = request(curve_hub.endpoint, protocol.Command.TOPICS, timeout=5, curve=keys.client("alice"))
    assert [t["topic"] for t in seen] == ["orders.eu", "payments"]


def test_operator_commands_follow_the_acl(curve_hub, keys):
    from zmq_mq.actors import Admin

    with Producer(curve_hub.endpoint, curve=keys.client("alice"), timeout=5) as producer:
        producer.publish("payments", b"p")
        producer.publish("orders.eu", b"o")
    bob = Admin(curve_hub.endpoint, timeout=5, curve=keys.client("bob"))
    # bob may read the log of orders.eu, but not fetch, purge or see payments
    assert [m.seq for m in bob.fetch("orders.eu")] == [1]
    with pytest.raises(HubError, match="forbidden"):
        bob.fetch("payments")
    with pytest.raises(HubError, match="forbidden"):
        bob.purge("payments", "all")
    assert [t["topic"] for t in bob.stats()["topics"]] == ["orders.eu"]
    # and nothing of payments was touched
    alice = Admin(curve_hub.endpoint, timeout=5, curve=keys.client("alice"))
    assert [m.seq for m in alice.fetch("payments")] == [1]


def test_the_live_feed_with_an_acl_admits_only_keys_that_may_read_everything(curve_hub, keys, zap_log):
    with Listener(curve_hub.pub_endpoint, curve=keys.client("alice")) as alice, \
            Listener(curve_hub.pub_endpoint, curve=keys.client("bob")) as bob, \
            Producer(curve_hub.endpoint, curve=keys.client("alice"), timeout=5) as producer:
        # publish until alice's listener has joined (PUB drops before a SUB is connected)
        def alice_hears():
            producer.publish("payments", b"live")
            return alice.receive(0.1)

        msg = wait_for(alice_hears, 10, message="alice's listener to get a live message")
        assert msg.topic == "payments"
        wait_for(lambda: _logged(zap_log, "refused client bob", "live feed"), 5,
                 message="bob refused on the live feed")
        # and bob's listener hears of it, instead of waiting for messages that cannot come
        with pytest.raises(HubError, match="refused this listener") as refused:
            bob.receive(5)
        assert refused.value.code == "forbidden"


def test_a_routing_id_taken_over_by_another_key_does_not_inherit_its_rights(curve_hub, keys, zap_log,
                                                                         socket):
    # Given alice attached with a chosen routing id, then gone
    def dealer(name):
        s = socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, b"victim")
        keys.client(name).apply(s)
        s.connect(curve_hub.endpoint)
        return s

    def ask(sock, command, body):
        sock.send_multipart(protocol.encode(command, body))
        assert sock.poll(5000), "no answer"
        return protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)

    a = dealer("alice")
    try:
        reply, _ = ask(a, protocol.Command.SUBSCRIBE, {"sid": 1, "topic": "payments", "group": "g"})
        assert reply == protocol.Command.SUBSCRIBED
    finally:
        a.close(linger=0)
    # When bob connects with the same routing id (once the hub has let it go)
    def bob_gets_in():
        b = dealer("bob")
        b.send_multipart(protocol.encode(protocol.Command.SUBSCRIBE,
                                         {"sid": 2, "topic": "payments", "group": "g"}))
        if b.poll(500):
            return b, protocol.decode(b.recv_multipart(), protocol.HUB_COMMANDS)
        b.close(linger=0)
        return None

    b, (reply, body) = wait_for(bob_gets_in, 10, interval=0.1, message="bob's connection")
    try:
        # Then bob is judged as bob: forbidden, and alice's attachment was dropped
        assert reply == protocol.Command.ERROR and body["code"] == "forbidden"
        assert _logged(zap_log, "changed client key")
        reply, body = ask(b, protocol.Command.ACK, [1, {"payments": [1]}])
        assert body["code"] == "unknown_subscription"
    finally:
        b.close(linger=0)


def test_reconnecting_keeps_the_keys(curve_hub, keys):
    conn = Connection(curve_hub.endpoint, curve=keys.client("bob"))
    try:
        first = conn.open(5)
        second = conn.open(5)  # a new socket, as after a lost hub
        assert first["hub"] == second["hub"] == curve_hub.hub.instance
    finally:
        conn.close()


def test_a_producer_keeps_its_keys_across_a_hub_restart(tmp_path, keys):
    cfg = dict(curve=True, keys_dir=str(keys.dir), acl_file=str(keys.acl))
    h = HubThread(tmp_path / "data", **cfg).start()
    endpoint = h.endpoint
    try:
        with Producer(endpoint, curve=keys.client("bob"), timeout=15) as producer:
            assert producer.publish("orders.eu", b"before") == 1
            h.stop()
            h = HubThread(tmp_path / "data", bind=endpoint, **cfg).start()
            assert producer.publish("orders.eu", b"after") == 2
    finally:
        h.stop()


def test_plain_mode_stays_the_default(hub):
    assert hub.hub.keys is None
    with Producer(hub.endpoint, timeout=5) as producer:
        assert producer.publish("payments", b"x") == 1


def test_a_curve_hub_refuses_to_start_without_its_keys_or_with_a_bad_acl(tmp_path, keys):
    with pytest.raises(SecurityError, match="zmq-mq keygen"):
        Hub(HubConfig(data_dir=str(tmp_path / "d1"), curve=True, keys_dir=str(tmp_path / "none")))
    bad = tmp_path / "bad.toml"
    bad.write_text("[clients.carol]\npublish = ['a']\n")
    with pytest.raises(SecurityError, match="carol"):
        Hub(HubConfig(data_dir=str(tmp_path / "d2"), curve=True, keys_dir=str(keys.dir), acl_file=str(bad)))
    with pytest.raises(ValueError, match="curve"):
        Hub(HubConfig(data_dir=str(tmp_path / "d3"), acl_file=str(keys.acl)))


def test_client_keys_come_from_the_environment(monkeypatch, keys):
    monkeypatch.setenv("ZMQ_MQ_CURVE_KEY", str(keys.dir / "bob.key_secret"))
    monkeypatch.setenv("ZMQ_MQ_SERVER_KEY", keys.z85("hub"))  # the Z85 text works too
    assert CurveKeys.from_env() == keys.client("bob")
    monkeypatch.delenv("ZMQ_MQ_SERVER_KEY")
    with pytest.raises(ValueError, match="both"):
        CurveKeys.from_env()
    with pytest.raises(ValueError, match="no secret key"):
        CurveKeys.load(keys.dir / "bob.key", keys.dir / "hub.key")


def test_keygen_writes_a_pair_zmq_auth_reads_with_a_private_secret(tmp_path):
    out = tmp_path / "k"
    done = run_cli("keygen", "--out", str(out), "--name", "alice")
    assert done.returncode == 0, done.stderr
    public, secret = zmq.auth.load_certificate(out / "alice.key_secret")
    assert secret and public.decode() in done.stdout.decode()
    assert stat.S_IMODE(os.stat(out / "alice.key_secret").st_mode) == 0o600
    again = run_cli("keygen", "--out", str(out), "--name", "alice")
    assert again.returncode == 2 and b"--force" in again.stderr
    assert zmq.auth.load_certificate(out / "alice.key_secret") == (public, secret)


@pytest.mark.slow
def test_the_cli_end_to_end_with_a_curve_hub(tmp_path, keys, hub_process):
    # A real `zmq-mq hub --curve` process, and the CLI as a user types it
    h = hub_process(extra=["--curve", "--keys", str(keys.dir), "--acl", str(keys.acl)])
    assert "security curve" in h.log()
    env_bob = {"ZMQ_MQ_CURVE_KEY": str(keys.dir / "bob.key_secret"),
               "ZMQ_MQ_SERVER_KEY": str(keys.dir / "hub.key")}
    ok = _cli_env(env_bob, "publish", "orders.eu", "hello", "--hub", h.endpoint)
    assert ok.returncode == 0 and ok.stdout.strip() == b"1", ok.stderr
    no = _cli_env(env_bob, "publish", "payments", "x", "--hub", h.endpoint)
    assert no.returncode == 1 and b"forbidden" in no.stderr
    flags = ["--curve-key", str(keys.dir / "mallory.key_secret"), "--server-key", str(keys.dir / "hub.key")]
    out = run_cli("publish", "orders.eu", "x", "--hub", h.endpoint, "--timeout", "1.5", *flags)
    assert out.returncode == 1 and b"no answer" in out.stderr
    got = _cli_env(env_bob, "subscribe", "orders.eu", "--group", "g", "--count", "1", "--hub", h.endpoint)
    assert got.returncode == 0 and got.stdout.strip() == b"hello", got.stderr
    wait_for(lambda: f"refused client key {keys.z85('mallory')}" in h.log(), 5,
             message="the refusal in the hub process log")
    assert "forbidden: client bob" in h.log()


def _cli_env(env: dict, *args: str):
    return subprocess.run([*zmq_mq_command(), *args], capture_output=True, timeout=60,
                          env={**os.environ, **env})


def test_a_curve_hub_that_cannot_bind_cleans_up(tmp_path, keys, curve_hub):
    # Given a port already taken (by the running hub), a second CURVE hub fails to bind ...
    hub = Hub(HubConfig(data_dir=str(tmp_path / "d2"), bind=curve_hub.endpoint, curve=True,
                        keys_dir=str(keys.dir)))
    with pytest.raises(zmq.ZMQError):
        hub.bind()
    # ... and close() releases its sockets, ZAP thread and context (it would hang otherwise)
    hub.close()
    assert hub._auth is None and hub.router is None


def test_without_an_acl_every_authorised_key_may_do_everything(tmp_path, keys):
    h = HubThread(tmp_path / "data", curve=True, keys_dir=str(keys.dir)).start()
    try:
        with Producer(h.endpoint, curve=keys.client("bob"), timeout=5) as producer, \
                Listener(h.pub_endpoint, curve=keys.client("bob")) as live:
            def bob_hears():
                producer.publish("payments", b"p")
                return live.receive(0.1)

            assert wait_for(bob_hears, 10, message="bob on the live feed").topic == "payments"
        with pytest.raises(HubUnavailable):
            Producer(h.endpoint, curve=keys.client("mallory"), timeout=1).connect()
    finally:
        h.stop()
