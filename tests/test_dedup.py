"""Producer message ids: the hub stores a msg_id once within its dedup window."""

from __future__ import annotations

import msgpack
import pytest

from zmq_mq.actors import Consumer, InvalidMessage, Producer
from zmq_mq.actors.connection import request
from zmq_mq.router import protocol
from zmq_mq.router.protocol import Command
from zmq_mq.storage import log as store_log
from zmq_mq.storage import Store
from zmq_mq.testing import running_hub


def _count(endpoint: str, topic: str) -> int:
    for t in request(endpoint, Command.TOPICS):
        if t["topic"] == topic:
            return t["messages"]
    return 0


def _ask(sock, body) -> tuple[bytes, dict]:
    sock.send_multipart(protocol.encode(Command.PUBLISH, body))
    assert sock.poll(10_000), "no reply from the hub"
    reply = sock.recv_multipart()
    return reply[1], msgpack.unpackb(reply[2], raw=False)


# --- the store -----------------------------------------------------------------------------


def test_the_store_keeps_msg_ids_with_their_sequence_in_the_same_commit(tmp_path):
    with Store(tmp_path) as store:
        firsts = store.commit({"t": [b"a", b"b", b"c"]}, now_ms=1000, dedup=[("t", "id-b", 1)])
        assert firsts == {"t": 1}
        assert store.dedup_lookup([("t", "id-b"), ("t", "nope"), ("u", "id-b")], 0) == {("t", "id-b"): 2}
        assert store.dedup_lookup([("t", "id-b")], 1001) == {}  # older than asked: unknown
    with Store(tmp_path) as store:  # reopened: still there
        assert store.dedup_lookup([("t", "id-b")], 0) == {("t", "id-b"): 2}


def test_the_store_expires_msg_ids_in_bounded_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(store_log, "DEDUP_EXPIRE_BATCH", 3)
    with Store(tmp_path) as store:
        store.commit({"t": [b"x"] * 5}, now_ms=1000, dedup=[("t", f"m{i}", i) for i in range(5)])
        # the same id again later: its newer entry must survive the expiry of the old one
        store.commit({"t": [b"y"]}, now_ms=5000, dedup=[("t", "m0", 0)])
        ids = [("t", f"m{i}") for i in range(5)]
        store.commit({}, now_ms=6000, dedup_expire_before=2000)  # removes 3 of the old entries
        left = store.dedup_lookup(ids, 0)
        assert left == {("t", "m0"): 6, ("t", "m3"): 4, ("t", "m4"): 5}
        store.commit({}, now_ms=6000, dedup_expire_before=2000)
        assert store.dedup_lookup(ids, 0) == {("t", "m0"): 6}
        store.commit({}, now_ms=9000, dedup_expire_before=9000)
        assert store.dedup_lookup(ids, 0) == {}
        assert store._dedup_oldest is None  # nothing left: later commits skip the index


# --- the hub -------------------------------------------------------------------------------


def test_a_retried_publish_with_a_msg_id_is_stored_once_and_confirmed_with_its_sequence(hub):
    with Producer(hub.endpoint) as p:
        first = p.publish("signup", b"alice", msg_id="signup-alice")
        other = p.publish("signup", b"bob", msg_id="signup-bob")
        again = p.publish("signup", b"alice (retry)", msg_id="signup-alice")
        plain = p.publish("signup", b"no id")
        other_topic = p.publish("audit", b"alice", msg_id="signup-alice")  # ids are per topic
    assert (first, other, again, plain, other_topic) == (1, 2, 1, 3, 1)
    assert _count(hub.endpoint, "signup") == 3
    # And consumers see the id
    with Consumer(hub.endpoint) as c:
        c.subscribe("signup", "g")
        got = [c.receive(timeout=10) for _ in range(3)]
    assert [m.payload for m in got] == [b"alice", b"bob", b"no id"]
    assert [m.msg_id for m in got] == ["signup-alice", "signup-bob", "signup:3"]
    assert got[0].headers == {"x-msg-id": "signup-alice"}


def test_duplicates_within_one_batch_and_across_batches_of_one_turn_are_stored_once(hub, raw_client):
    sock = raw_client()
    batch = [1, [["t", b"a", None, {"h": "1"}, {"msg_id": "A"}], ["t", b"a again", None, None, {"msg_id": "A"}],
                 ["t", b"b", None, None, {"msg_id": "B", "future-option": 1}], ["t", b"plain", None, None]]]
    command, body = _ask(sock, batch)
    assert (command, body) == (b"CONFIRM", [1, [1, 1, 2, 3]])
    # two batches sent back to back (usually one hub turn), repeating A and a new C twice
    sock.send_multipart(protocol.encode(Command.PUBLISH, [2, [["t", b"c", None, None, {"msg_id": "C"}]]]))
    sock.send_multipart(protocol.encode(Command.PUBLISH, [3, [["t", b"c", None, None, {"msg_id": "C"}],
                                                             ["t", b"a", None, None, {"msg_id": "A"}]]]))
    replies = {}
    for _ in range(2):
        assert sock.poll(10_000)
        reply = sock.recv_multipart()
        assert reply[1] == b"CONFIRM"
        batch_id, seqs = msgpack.unpackb(reply[2])
        replies[batch_id] = seqs
    assert replies == {2: [4], 3: [4, 1]}
    assert _count(hub.endpoint, "t") == 4
    with Consumer(hub.endpoint) as c:
        c.subscribe("t", "g")
        first = c.receive(timeout=10)
    assert first.headers == {"h": "1", "x-msg-id": "A"}


@pytest.mark.parametrize(
    "opts, code",
    [("not a map", "bad_body"), ({"msg_id": 5}, "invalid"), ({"msg_id": ""}, "invalid"),
     ({"msg_id": "x" * 256}, "invalid")],
)
def test_bad_publish_options_are_refused_with_a_clear_error(hub, raw_client, opts, code):
    command, body = _ask(raw_client(), [5, [["t", b"x", None, None, opts]]])
    assert command == b"ERROR" and body["code"] == code and body["ref"] == 5 and body["index"] == 0
    assert _count(hub.endpoint, "t") == 0


def test_the_producer_refuses_a_bad_msg_id_before_sending(hub):
    with Producer(hub.endpoint) as p:
        with pytest.raises(InvalidMessage, match="msg_id"):
            p.publish("t", b"x", msg_id=42)
        with pytest.raises(InvalidMessage, match="msg_id"):
            p.publish_async("t", b"x", msg_id="")


def test_a_msg_id_is_stored_again_once_the_window_has_passed(fake_clock_hub):
    # Given a hub with a 200 ms dedup window whose clock stands still, and a stored msg_id
    hub, clock = fake_clock_hub(dedup_window_ms=200)
    with Producer(hub.endpoint) as p:
        assert p.publish("t", b"1", msg_id="same") == 1
        assert p.publish("t", b"1", msg_id="same") == 1
        # When the window's last ms comes, it is still a duplicate
        clock.advance(200)
        assert p.publish("t", b"1", msg_id="same") == 1
        # Then 1 ms later the window has passed and the id is stored again
        clock.advance(1)
        assert p.publish("t", b"1", msg_id="same") == 2


def test_a_zero_window_keeps_the_id_but_does_not_deduplicate(tmp_path):
    with running_hub(tmp_path, dedup_window_ms=0) as hub:
        with Producer(hub.endpoint) as p:
            assert [p.publish("t", b"1", msg_id="same") for _ in range(2)] == [1, 2]
        with Consumer(hub.endpoint) as c:
            c.subscribe("t", "g")
            assert c.receive(timeout=10).msg_id == "same"


def test_msg_ids_survive_a_hub_kill_9(hub_process):
    hub = hub_process(bind="tcp://127.0.0.1:0")
    endpoint = hub.endpoint
    with Producer(endpoint) as p:
        seqs = [p.publish("orders", b"o%d" % i, msg_id=f"order-{i}") for i in range(5)]
    hub.kill9()
    hub = hub_process(bind=endpoint)
    with Producer(endpoint) as p:
        again = [p.publish("orders", b"o%d" % i, msg_id=f"order-{i}") for i in range(5)]
        new = p.publish("orders", b"o5", msg_id="order-5")
    assert again == seqs == [1, 2, 3, 4, 5] and new == 6
    assert _count(endpoint, "orders") == 6


def test_in_one_hub_turn_a_repeated_msg_id_is_staged_once_across_batches(tmp_path):
    # Driven without sockets: two PUBLISH commands handled in the same turn (Hub.step), one commit
    from zmq_mq.router.config import HubConfig
    from zmq_mq.router.hub import Hub

    def publish(who: bytes, body: list) -> list[bytes]:
        return [who, *protocol.encode(Command.PUBLISH, body)]

    hub = Hub(HubConfig(data_dir=str(tmp_path)))
    try:
        sent = hub.step([
            publish(b"p1", [1, [["t", b"a", None, None, {"msg_id": "A"}], ["t", b"b", None, None]]]),
            publish(b"p2", [2, [["t", b"a", None, None, {"msg_id": "A"}],
                                ["u", b"a", None, None, {"msg_id": "A"}]]]),
        ])
        assert [hub.store.topics[t].count for t in ("t", "u")] == [2, 1]  # t: a, b; u: a
        assert sent == [(b"p1", Command.CONFIRM, [1, [1, 2]]), (b"p2", Command.CONFIRM, [2, [1, 1]])]
        # next turn: the stored id is found in LMDB, nothing is staged
        sent = hub.step([publish(b"p3", [3, [["t", b"a", None, None, {"msg_id": "A"}]]])])
        assert sent == [(b"p3", Command.CONFIRM, [3, [1]])]
        assert hub.store.topics["t"].count == 2
        # a batch mixing a stored id and a new message
        sent = hub.step([publish(b"p4", [4, [["t", b"a", None, None, {"msg_id": "A"}],
                                             ["t", b"c", None, None]]])])
        assert sent == [(b"p4", Command.CONFIRM, [4, [1, 3]])]
        assert hub.store.topics["t"].count == 3
    finally:
        hub.close()
