"""What a new user hits in the client runtime: heartbeats under load, retries that count, a
Consumer used without ``with``, producer timeouts against a dead hub, hung handlers at stop."""

from __future__ import annotations

import threading
import time

import pytest

from zmq_mq.actors import Actor, Backoff, Consumer, Producer
from zmq_mq.actors.connection import request
from zmq_mq.actors.errors import HubUnavailable
from zmq_mq.router.protocol import Command

from conftest import wait_for


def _sub_state(endpoint: str, topic: str, group: str) -> dict:
    for t in request(endpoint, Command.TOPICS):
        if t["topic"] == topic:
            for s in t["subscriptions"]:
                if s["group"] == group:
                    return s
    return {}


def _topic_messages(endpoint: str, topic: str) -> int:
    for t in request(endpoint, Command.TOPICS):
        if t["topic"] == topic:
            return t.get("messages", 0)
    return 0


# --- heartbeats ----------------------------------------------------------------------------


def test_a_handler_calling_progress_often_keeps_its_actor_alive_and_is_acked_once(hub):
    # Given a handler that works 8 s and calls progress() every 0.3 s, ack_wait 2 s, 2 tries
    runs: list[int] = []

    def handle(msg):
        runs.append(msg.deliveries)
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            time.sleep(0.3)
            msg.progress()

    actor = Actor(hub.endpoint, name="progressor")
    actor.add_handler("slowwork", handle, group="g", ack_wait=2.0, max_deliver=2)
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("slowwork", b"x")
        # When it runs to the end
        wait_for(lambda: _sub_state(hub.endpoint, "slowwork", "g").get("ack_floor") == 1,
                 timeout=30, message="the ack")
        reattached = actor.session.reattached
    finally:
        actor.stop()
    # Then it ran once, was acked, the actor never lost the hub and nothing was dead-lettered
    assert runs == [1]
    assert reattached == 0
    assert _topic_messages(hub.endpoint, "dlq.g") == 0


@pytest.fixture
def quick_hub(tmp_path):
    """A hub that takes a client silent for 0.6 s (3 x 200 ms) for dead: liveness tests run fast."""
    from zmq_mq.testing import HubThread

    h = HubThread(tmp_path / "quick", heartbeat_ms=200).start()
    yield h
    h.stop()


def test_a_consumer_used_without_with_keeps_its_message_while_the_user_works(quick_hub):
    # Given a Consumer used without `with` or connect(): subscribe, then receive
    with Producer(quick_hub.endpoint) as p:
        p.publish("jobs", b"x")
    worker = Consumer(quick_hub.endpoint, name="plain")
    other = Consumer(quick_hub.endpoint, name="other")
    try:
        worker.subscribe("jobs", "g", ack_wait=60)
        msg = worker.receive(timeout=10)
        assert msg is not None and msg.deliveries == 1
        # When the user works on it away from receive() for over 3 liveness windows
        time.sleep(2.0)
        # Then the hub still counts the worker alive: nobody else gets the message
        other.subscribe("jobs", "g")
        assert other.receive(timeout=1.0) is None
        msg.ack()
        worker.flush()
        wait_for(lambda: _sub_state(quick_hub.endpoint, "jobs", "g").get("ack_floor") == 1,
                 message="the ack")
    finally:
        worker.close()
        other.close()


# --- producer timeouts against a dead hub ------------------------------------------------------


def test_close_does_not_raise_or_wait_again_for_a_message_whose_publish_already_raised(tmp_path):
    # Given a producer whose hub died after it connected
    from zmq_mq.testing import HubThread

    h = HubThread(tmp_path / "dead").start()
    p = Producer(h.endpoint, timeout=3.0)
    try:
        p.connect()
        h.stop()
        # When publish() gives up and raises HubUnavailable
        with pytest.raises(HubUnavailable):
            p.publish("orders", b"x", timeout=0.5)
        # Then flush() and close() neither wait for that message nor raise for it again
        start = time.monotonic()
        p.flush()
        p.close()
        assert time.monotonic() - start < 1.0
    finally:
        p.close(timeout=0)
        h.stop()


def test_publish_with_a_timeout_returns_within_it_when_no_hub_answers(tmp_path):
    # Given a producer with a long default timeout and nothing at its endpoint
    p = Producer(f"ipc://{tmp_path}/nobody", timeout=30.0)
    try:
        # When publish() is given a short timeout
        start = time.monotonic()
        with pytest.raises(HubUnavailable):
            p.publish("orders", b"x", timeout=0.5)
        # Then it gives up within that timeout, connecting included
        assert time.monotonic() - start < 1.5
    finally:
        p.close(timeout=0)


def test_close_returns_within_its_timeout_while_the_producer_is_reconnecting(hub, caplog):
    # Given a producer with an unconfirmed message, trying to reach its dead hub again (each
    # handshake attempt waits heartbeat_ms * liveness = 3 s)
    p = Producer(hub.endpoint, timeout=30.0)
    p.connect()
    hub.stop()
    future = p.publish_async("orders", b"x")
    with caplog.at_level("WARNING", logger="zmq_mq.producer"):
        wait_for(lambda: "silent; reconnecting" in caplog.text, message="the reconnect")
    # When it is closed with a 0.2 s timeout
    start = time.monotonic()
    with pytest.raises(HubUnavailable):  # the message never confirmed, never reported before
        p.close(timeout=0.2)
    # Then close() is back within its timeout and a fraction of a second, not a handshake later
    assert time.monotonic() - start < 0.8
    assert isinstance(future.exception(0), HubUnavailable)
