"""Ordering and priorities end to end: real hub, real sockets, the client API and the CLI."""

from __future__ import annotations

import json
import threading
import time

import msgpack
import pytest
from conftest import run_cli, wait_for

from zmq_mq.actors import Actor, Admin, Consumer, Producer
from zmq_mq.actors.errors import HubError
from zmq_mq.router import protocol
from zmq_mq.router.protocol import SIGNATURE


def _ask(sock, frames):
    sock.send_multipart(frames)
    assert sock.poll(10_000), "no reply from the hub"
    reply = sock.recv_multipart()
    return reply[1], msgpack.unpackb(reply[2], raw=False)


def _subs_in(stats):
    """Every subscription map of a STATS document, wherever it nests them."""
    if isinstance(stats, dict):
        if "group" in stats and "ack_wait_ms" in stats:
            yield stats
        for v in stats.values():
            yield from _subs_in(v)
    elif isinstance(stats, list):
        for v in stats:
            yield from _subs_in(v)


def test_strict_ordering_hands_a_consumer_one_message_at_a_time_in_order_even_with_nacks(hub):
    # Given five messages and a strict subscription with a window of ten
    with Producer(hub.endpoint) as p:
        for i in range(1, 6):
            p.publish_async("jobs", b"%d" % i)
        p.flush()
    sub = lambda: hub.hub.subs[("jobs", "fifo")]  # noqa: E731
    got = []
    with Consumer(hub.endpoint) as c:
        c.subscribe("jobs", "fifo", credit=10, ordering="strict")
        nacked = set()
        while len(got) < 7:
            msg = c.receive(10)
            assert msg is not None, f"stalled after {got}"
            # Then the hub never has more than one of them out
            assert sub().in_flight == 1
            got.append((msg.seq, msg.deliveries))
            if msg.seq in (2, 4) and msg.seq not in nacked:  # When 2 and 4 fail once
                nacked.add(msg.seq)
                msg.nack()
            else:
                msg.ack()
    # And a failed message keeps its place: nothing after it goes before it
    assert got == [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1), (4, 2), (5, 1)]
    assert sub().snapshot()["ordering"] == "strict"


def test_key_ordering_two_actors_never_process_one_key_concurrently_or_out_of_order(hub):
    # Given 60 messages over three keys, and two actors with four workers each
    keys = ("a", "b", "c")
    with Producer(hub.endpoint) as p:
        for i in range(60):
            p.publish_async("events", b"%d" % i, key=keys[i % 3])
        p.flush()
    lock = threading.Lock()
    active: set[str] = set()
    overlaps: list[str] = []
    order: dict[str, list[int]] = {k: [] for k in keys}
    failed_once: set[int] = set()
    done = threading.Event()

    def handle(msg):
        with lock:
            if msg.key in active:
                overlaps.append(msg.key)
            active.add(msg.key)
        time.sleep(0.002)  # give another worker the chance to overlap, if the hub allowed it
        with lock:
            active.discard(msg.key)
            if msg.seq % 7 == 0 and msg.seq not in failed_once:  # some fail once: redelivered
                failed_once.add(msg.seq)
                raise RuntimeError("try again")
            order[msg.key].append(msg.seq)
            if sum(map(len, order.values())) == 60:
                done.set()

    actors = []
    for name in ("x", "y"):
        a = Actor(hub.endpoint, name=name, concurrency=4)
        a.add_handler("events", handle, group="projection", credit=4, ordering="key", retry=None)
        actors.append(a.start())
    try:
        assert done.wait(30), order
    finally:
        for a in actors:
            a.stop()
    # Then each key was processed one message at a time, in publish order, failures included
    assert overlaps == []
    for k, seqs in order.items():
        assert seqs == sorted(seqs) and len(seqs) == 20, (k, seqs)
    assert failed_once  # the redelivery path was exercised


def test_a_backlog_with_mixed_priorities_is_delivered_highest_first(hub):
    # Given a backlog of 30 messages with priorities 0..9 (and some without one)
    prios = [(i * 7) % 10 for i in range(30)]
    with Producer(hub.endpoint) as p:
        for i, prio in enumerate(prios):
            p.publish_async("mail", b"%d" % i, priority=prio or None)
        p.flush()
    # When a consumer takes one at a time
    got = []
    with Consumer(hub.endpoint) as c:
        c.subscribe("mail", "senders", credit=1)
        while len(got) < 30:
            msg = c.receive(10)
            assert msg is not None, got
            got.append((int(msg.headers.get(protocol.PRIORITY_HEADER, 0)), msg.seq))
            msg.ack()
    # Then the highest priority goes first, and publish order holds within a priority
    assert got == sorted(got, key=lambda e: (-e[0], e[1]))
    assert [pr for pr, _ in got] == sorted(prios, reverse=True)


def test_priorities_of_a_backlog_hold_after_a_hub_restart(tmp_path):
    from zmq_mq.testing import running_hub

    with running_hub(tmp_path / "data") as hub, Producer(hub.endpoint) as p:
        for prio in (0, 3, 0, 9, 3):
            p.publish("mail", b"x", priority=prio)
        with Consumer(hub.endpoint) as c:  # the subscription exists before the restart
            c.subscribe("mail", "senders", credit=0)
    with running_hub(tmp_path / "data") as hub, Consumer(hub.endpoint) as c:
        c.subscribe("mail", "senders", credit=1)
        got = []
        for _ in range(5):
            msg = c.receive(10)
            got.append(msg.seq)
            msg.ack()
    assert got == [4, 2, 5, 1, 3]


def test_bad_ordering_and_bad_priority_get_invalid_errors(hub, raw_client):
    sock = raw_client()
    command, body = _ask(sock, protocol.encode(
        b"SUBSCRIBE", {"sid": 1, "topic": "t", "group": "g", "ordering": "fifo"}))
    assert command == b"ERROR" and body["code"] == "invalid" and body["ref"] == 1
    for bad in (10, -1, "high", True):
        batch = [5, [["t", b"x", None, None, {"priority": bad}]]]
        command, body = _ask(sock, [SIGNATURE, b"PUBLISH", msgpack.packb(batch)])
        assert command == b"ERROR" and body["code"] == "invalid" and body["index"] == 0, bad
    with Producer(hub.endpoint) as p:
        with pytest.raises(Exception, match="priority"):
            p.publish("t", b"x", priority=12)
        assert p.publish("t", b"ok", priority=9) == 1  # nothing bad was stored
    with Consumer(hub.endpoint) as c, pytest.raises(ValueError, match="ordering"):
        c.subscribe("t", "g", ordering="fifo")


def test_an_existing_subscription_keeps_its_ordering_unless_told_otherwise(hub):
    with Consumer(hub.endpoint) as c:
        c.subscribe("t", "g", ordering="key")
    with Consumer(hub.endpoint) as c:
        c.subscribe("t", "g")
    assert hub.hub.subs[("t", "g")].ordering == "key"
    with Admin(hub.endpoint) as admin:
        [topic] = admin.topics()
        assert topic["subscriptions"][0]["ordering"] == "key"
        stats = admin.stats()
        assert any(s.get("ordering") == "key" for s in _subs_in(stats)), stats
    with Consumer(hub.endpoint) as c:
        c.subscribe("t", "g", ordering="none")
    assert hub.hub.subs[("t", "g")].ordering == "none"


def test_cli_publish_priority_and_subscribe_ordering(hub):
    for text, prio in (("low", "1"), ("high", "8"), ("mid", "4")):
        r = run_cli("publish", "news", text, "--priority", prio, "--hub", hub.endpoint)
        assert r.returncode == 0, r.stderr
    r = run_cli("publish", "news", "x", "--priority", "10", "--hub", hub.endpoint)
    assert r.returncode == 2 and b"priority" in r.stderr
    r = run_cli("subscribe", "news", "--group", "g", "--ordering", "fifo", "--count", "1",
                "--hub", hub.endpoint)
    assert r.returncode == 2 and b"ordering" in r.stderr
    r = run_cli("subscribe", "news", "--group", "reader", "--ordering", "strict", "--credit", "1",
                "--count", "3", "--json", "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    # strict is publish order (priorities do not reorder a FIFO queue)
    assert [json.loads(line)["payload"] for line in r.stdout.decode().splitlines()] == [
        "low", "high", "mid"]
    assert hub.hub.subs[("news", "reader")].ordering == "strict"
    r = run_cli("subscribe", "news", "--group", "ranked", "--credit", "1", "--count", "3",
                "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["high", "mid", "low"]


def test_subscribed_reports_the_ordering(hub, raw_client):
    command, body = _ask(raw_client(), protocol.encode(
        b"SUBSCRIBE", {"sid": 3, "topic": "t", "group": "g", "ordering": "strict", "credit": 0}))
    assert command == b"SUBSCRIBED" and body["ordering"] == "strict"
    wait_for(lambda: ("t", "g") in hub.hub.subs)


def test_a_redriven_dead_letter_keeps_its_priority(hub):
    with Producer(hub.endpoint) as p, Consumer(hub.endpoint) as c, Admin(hub.endpoint) as admin:
        p.publish("mail", b"plain")
        p.publish("mail", b"urgent", priority=9)
        c.subscribe("mail", "senders", credit=1)
        urgent = c.receive(10)
        assert urgent.payload == b"urgent"
        urgent.reject("mail server down")
        held = c.receive(10)  # 1, held so that what follows waits
        assert held.seq == 1
        p.publish("mail", b"later")  # seq 3, no priority
        wait_for(lambda: admin.topics() and any(
            t["topic"] == "dlq.senders" and t["messages"] == 1 for t in admin.topics()))
        admin.redrive("dlq.senders", [1])  # back to mail as seq 4, still priority 9
        wait_for(lambda: any(t["topic"] == "mail" and t["last_seq"] == 4 for t in admin.topics()))
        held.ack()
        nxt = c.receive(10)
        assert (nxt.seq, nxt.payload) == (4, b"urgent")
