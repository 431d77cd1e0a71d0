"""Headers starting with "x-" are the hub's: a publish carrying one is refused, from any client."""

from __future__ import annotations

import msgpack
import pytest

from zmq_mq.actors import Admin, InvalidMessage, Producer
from zmq_mq.router import protocol
from zmq_mq.router.protocol import SIGNATURE

from conftest import run_cli


def _ask(sock, frames: list[bytes]) -> tuple[bytes, dict]:
    sock.send_multipart(frames)
    assert sock.poll(10_000), "no reply from the hub"
    reply = sock.recv_multipart()
    return reply[1], msgpack.unpackb(reply[2], raw=False)


def _count(endpoint: str, topic: str) -> int:
    with Admin(endpoint) as admin:
        return sum(t["messages"] for t in admin.topics() if t["topic"] == topic)


@pytest.mark.parametrize("name", ["x-priority", "x-deliver-at", "x-reason", "x-msg-id", "x-anything"])
def test_the_hub_refuses_a_publish_carrying_a_reserved_header_and_stores_none_of_its_batch(hub, raw_client, name):
    # Given a batch whose second message sets a header the hub writes itself
    batch = [7, [["t", b"good", None, {"trace": "1"}], ["t", b"sneaky", None, {name: 5}]]]
    # When it is published
    command, body = _ask(raw_client(), [SIGNATURE, b"PUBLISH", msgpack.packb(batch)])
    # Then the sender gets a clear refusal naming the header, and nothing of the batch is stored
    assert command == b"ERROR"
    assert (body["code"], body["ref"], body["index"]) == ("invalid", 7, 1)
    assert name in body["message"] and "reserved" in body["message"]
    assert _count(hub.endpoint, "t") == 0
    with Producer(hub.endpoint) as p:
        assert p.publish("t", b"after", headers={"X-Trace": "mine"}) == 1  # case matters: yours


def test_the_producer_refuses_a_reserved_header_before_sending(hub):
    with Producer(hub.endpoint) as p:
        with pytest.raises(InvalidMessage, match="'x-priority' is reserved"):
            p.publish("t", b"x", headers={"x-priority": 9})
        with pytest.raises(InvalidMessage, match="'x-reason' is reserved"):
            p.publish_async("t", b"x", headers={"ok": "1", "x-reason": "fake"})
        # the hub's own headers still come from the options
        assert p.publish("t", b"y", priority=5, msg_id="m-1") == 1
    assert _count(hub.endpoint, "t") == 1


def test_zmq_mq_publish_with_a_reserved_header_fails_with_one_line(hub):
    done = run_cli("publish", "t", "hello", "--header", "x-priority=5", "--hub", hub.endpoint, timeout=60)
    err = done.stderr.decode().strip()
    assert done.returncode == 2, err  # a usage error
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "x-priority" in err and "reserved" in err
    assert _count(hub.endpoint, "t") == 0


def test_the_reserved_rule_is_the_x_dash_prefix():
    assert protocol.check_reserved_headers({"trace": 1, "X-Trace": 2, "xray": 3}) is None
    assert "reserved" in protocol.check_reserved_headers({"x-": 1})
