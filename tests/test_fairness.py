"""Who waits for what in a hub turn: a flooding producer cannot make another client's publish
wait for its whole backlog, and a consumer's next message does not wait for the fsync of its ack.

Driven turn by turn over inproc sockets (a message is queued at the hub when send returns), so
the test counts what each turn committed instead of timing anything; bench/fairness.py measures
the latencies.
"""

from __future__ import annotations

import itertools

import zmq

from zmq_mq.router import protocol
from zmq_mq.router.config import HubConfig
from zmq_mq.router.hub import Hub
from zmq_mq.router.protocol import Command

_ids = itertools.count()


def _dealer(socket, endpoint: str) -> zmq.Socket:
    # on the hub's context: inproc endpoints live in one context
    sock = socket(zmq.DEALER, ctx=zmq.Context.instance())
    sock.connect(endpoint)
    return sock


def _replies(sock: zmq.Socket) -> list:
    out = []
    while sock.poll(0):
        out.append(protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS))
    return out


def test_a_flooding_producer_cannot_make_a_small_publish_wait_for_its_whole_backlog(tmp_path, socket):
    endpoint = f"inproc://zmq-mq-fairness-{next(_ids)}"
    hub = Hub(HubConfig(data_dir=str(tmp_path / "data"), bind=endpoint, pub=None,
                        max_turn_messages=2000))
    hub.bind()
    flood, small = _dealer(socket, endpoint), _dealer(socket, endpoint)
    try:
        # Given a producer whose backlog of 20 batches of 1000 messages is queued at the hub
        for batch in range(20):
            messages = [["flood", b"x" * 16, None, None]] * 1000
            flood.send_multipart(protocol.encode(Command.PUBLISH, [batch, messages]))
        # When another client publishes one message
        small.send_multipart(protocol.encode(Command.PUBLISH, [7, [["small", b"hi", None, None]]]))
        hub.serve_once()
        # Then it is confirmed by the first turn, which committed only a bounded share of the flood
        assert _replies(small) == [(Command.CONFIRM, [7, [1]])]
        assert hub.store.topics["flood"].count <= 3000
        # And the flood's backlog follows in later turns, every batch confirmed, nothing lost
        confirmed = len(_replies(flood))
        for _ in range(100):
            if confirmed == 20:
                break
            hub.serve_once()
            confirmed += len(_replies(flood))
        assert confirmed == 20
        assert hub.store.topics["flood"].count == 20_000
    finally:
        flood.close(linger=0)
        small.close(linger=0)
        hub.close()


def test_credit_freed_by_acks_is_handed_out_before_the_commit_and_a_new_attachment_hears_subscribed_first(tmp_path, socket):
    endpoint = f"inproc://zmq-mq-early-{next(_ids)}"
    hub = Hub(HubConfig(data_dir=str(tmp_path / "data"), bind=endpoint, pub=None))
    hub.bind()
    producer, consumer = _dealer(socket, endpoint), _dealer(socket, endpoint)
    seen_at_commit = []  # what the consumer had received when each commit began
    real_commit = hub.store.commit

    def commit(*args, **kwargs):
        seen_at_commit.append(_replies(consumer))
        return real_commit(*args, **kwargs)

    hub.store.commit = commit
    try:
        # Given two stored messages
        producer.send_multipart(protocol.encode(
            Command.PUBLISH, [1, [["jobs", b"a", None, None], ["jobs", b"b", None, None]]]))
        hub.serve_once()
        # When a consumer with credit 1 attaches
        consumer.send_multipart(protocol.encode(
            Command.SUBSCRIBE, {"sid": 1, "topic": "jobs", "group": "g", "credit": 1}))
        seen_at_commit.clear()
        hub.serve_once()
        # Then nothing reaches it before the commit, and SUBSCRIBED comes before the first DELIVER
        assert seen_at_commit == [[]]
        first = _replies(consumer)
        assert [c for c, _ in first] == [Command.SUBSCRIBED, Command.DELIVER]
        assert [seq for seq, _, _ in first[1][1][2]] == [1]
        # When it acks seq 1 (a turn without publishes)
        consumer.send_multipart(protocol.encode(Command.ACK, [1, {"jobs": [1]}]))
        seen_at_commit.clear()
        hub.serve_once()
        # Then seq 2 was on its way before the commit that makes the ack durable
        (before,) = seen_at_commit
        assert [c for c, _ in before] == [Command.DELIVER]
        assert [seq for seq, _, _ in before[0][1][2]] == [2]
        assert hub.subs[("jobs", "g")].ack_floor == 1
    finally:
        hub.store.commit = real_commit
        producer.close(linger=0)
        consumer.close(linger=0)
        hub.close()
