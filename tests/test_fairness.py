"""Fairness: a flooding producer cannot make another client's publish wait for its whole backlog.

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


def _dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _replies(sock: zmq.Socket) -> list:
    out = []
    while sock.poll(0):
        out.append(protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS))
    return out


def test_a_flooding_producer_cannot_make_a_small_publish_wait_for_its_whole_backlog(tmp_path):
    endpoint = f"inproc://zmq-mq-fairness-{next(_ids)}"
    hub = Hub(HubConfig(data_dir=str(tmp_path / "data"), bind=endpoint, pub=None,
                        max_turn_messages=2000))
    hub.bind()
    flood, small = _dealer(endpoint), _dealer(endpoint)
    try:
        # Given a producer whose backlog of 20 batches of 1000 messages is queued at the hub
        for batch in range(20):
            messages = [["flood", b"x" * 16, None, None]] * 1000
            flood.send_multipart(protocol.encode(Command.PUBLISH, [batch, messages]))
        # When another client publishes one message
        small.send_multipart(protocol.encode(Command.PUBLISH, [7, [["small", b"hi", None, None]]]))
        hub._read_commands()
        hub._turn()
        # Then it is confirmed by the first turn, which committed only a bounded share of the flood
        assert _replies(small) == [(Command.CONFIRM, [7, [1]])]
        assert hub.store.topics["flood"].count <= 3000
        # And the flood's backlog follows in later turns, every batch confirmed, nothing lost
        confirmed = len(_replies(flood))
        for _ in range(100):
            if confirmed == 20:
                break
            hub._read_commands()
            hub._turn()
            confirmed += len(_replies(flood))
        assert confirmed == 20
        assert hub.store.topics["flood"].count == 20_000
    finally:
        flood.close(linger=0)
        small.close(linger=0)
        hub.close()
