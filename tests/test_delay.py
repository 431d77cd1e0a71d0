"""Delayed delivery: ``publish(..., delay=S)`` / ``deliver_at=``.

The core holds a never-handed-out seq back until its due time (fake clock, no sockets); the hub
stores the due time with the message, so a hub restart keeps it held back; end to end through
the client API and the CLI.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest import run_cli, subscription_stats

from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.actors.errors import HubError, InvalidMessage
from zmq_mq.router import protocol
from zmq_mq.router.subscription import Subscription

A = "actor-a"


def _seqs(deliveries):
    return [s for d in deliveries for s in d.seqs]


# --- the core, on a fake clock ------------------------------------------------------------


def test_a_deferred_seq_is_held_back_until_due_and_then_goes_out_as_a_first_delivery():
    # Given seqs 1..4 of which 2 is due at t=1000
    sub = Subscription("t", "g", last_seq=4)
    sub.defer([(2, 1000)])
    sub.attach(A, 10)
    # When dispatching before its time: the others go out, 2 does not
    assert _seqs(sub.dispatch(0)) == [1, 3, 4]
    assert sub.deferred == 1 and sub.pending == 1
    assert sub.next_deadline() == 1000
    sub.tick(999)
    assert sub.dispatch(999) == []
    # Then at its time it goes out, counted as its first delivery
    sub.tick(1000)
    out = sub.dispatch(1000)
    assert _seqs(out) == [2] and out[0].deliveries == [1]
    assert sub.deferred == 0


def test_strict_ordering_does_not_wait_for_a_deferred_message():
    sub = Subscription("t", "g", last_seq=3, ordering="strict")
    sub.defer([(1, 500)])
    sub.attach(A, 10)
    assert _seqs(sub.dispatch(0)) == [2]
    sub.ack(A, [2])
    assert _seqs(sub.dispatch(0)) == [3]
    sub.ack(A, [3])
    assert sub.dispatch(0) == []
    sub.tick(500)
    assert _seqs(sub.dispatch(500)) == [1]


def test_key_ordering_gets_the_key_of_a_deferred_message_when_it_is_due():
    keys = {1: "k", 2: "k", 3: "k"}
    sub = Subscription("t", "g", last_seq=3, ordering="key",
                       lookup=lambda seqs: [(keys[s], 0) for s in seqs])
    sub.defer([(1, 100)])
    sub.attach(A, 10)
    # 2 and 3 share the key: one at a time
    assert _seqs(sub.dispatch(0)) == [2]
    sub.tick(100)  # 1 is due while 2 is in flight: it waits for its key
    assert sub.dispatch(100) == []
    sub.ack(A, [2])
    assert _seqs(sub.dispatch(100)) == [1]
    sub.ack(A, [1])
    assert _seqs(sub.dispatch(100)) == [3]


def test_defer_ignores_seqs_handed_out_done_or_unknown_and_an_ack_cancels_a_deferral():
    sub = Subscription("t", "g", last_seq=5)
    sub.attach(A, 2)
    assert _seqs(sub.dispatch(0)) == [1, 2]
    sub.ack(A, [1])
    sub.defer([(1, 100), (2, 100), (9, 100), (4, 100)])
    assert sub.deferred == 1  # only 4: 1 is done, 2 is in flight, 9 was never published
    sub.ack(A, [4])  # acked before it was ever delivered: nothing to hold back any more
    assert sub.deferred == 0
    sub.ack(A, [2])
    assert _seqs(sub.dispatch(0)) == [3, 5]
    sub.tick(100)
    assert sub.dispatch(100) == []


def test_a_subscription_snapshot_restores_without_the_deferral_which_the_hub_gives_again():
    sub = Subscription("t", "g", last_seq=3)
    sub.defer([(2, 100)])
    again = Subscription.restore("t", "g", sub.snapshot(), last_seq=3)
    again.defer([(2, 100)])
    again.attach(A, 10)
    assert _seqs(again.dispatch(0)) == [1, 3]


# --- end to end ---------------------------------------------------------------------------


def test_a_delayed_message_is_not_delivered_before_its_delay_and_others_pass_it(fake_clock_hub):
    # Given a hub whose clock stands still, a message published with delay=1.5 s, then one without
    hub, clock = fake_clock_hub()
    with Consumer(hub.endpoint) as c:
        c.subscribe("mail", "sender", credit=10)
        with Producer(hub.endpoint) as p:
            published_ms = clock.wall_ms()
            late = p.publish("mail", b"later", delay=1.5)
            now = p.publish("mail", b"now")
        # Then the other one passes it at once
        first = c.receive(10)
        assert first is not None and first.seq == now
        first.ack()
        # and the delayed one is not handed out 1 ms before its delay is over
        clock.advance(1499)
        sub = subscription_stats(hub.endpoint, "mail", "sender")
        assert sub["delivered"] == 1 and sub["scheduled"] == 1
        assert c.receive(0.05) is None
        # but is once it is, as its first delivery, with its due time as a header
        clock.advance(1)
        msg = c.receive(10)
    assert msg is not None and msg.seq == late and msg.deliveries == 1
    assert msg.headers[protocol.DELIVER_AT_HEADER] == published_ms + 1500


def test_a_delayed_message_is_not_handed_out_one_nanosecond_before_its_due_time(fake_clock_hub):
    # Given a hub whose clock stands 0.6 ms into a millisecond when a 1.5 s delay is published
    # (rounding the receipt down, as the hub once did, made the due time 0.6 ms early)
    hub, clock = fake_clock_hub()
    clock.advance(0.6)
    received_ns = clock.wall_ns()
    with Consumer(hub.endpoint) as c:
        c.subscribe("mail", "sender", credit=10)
        with Producer(hub.endpoint) as p:
            late = p.publish("mail", b"later", delay=1.5)
            now = p.publish("mail", b"now")
        first = c.receive(10)
        assert first is not None and first.seq == now
        first.ack()
        # (the due time is a whole ms: the receipt rounded up, plus the delay)
        due_ms = -(-received_ns // 1_000_000) + 1500
        assert due_ms * 1_000_000 >= received_ns + 1_500_000_000
        # When the clock stops 1 ns before 1.5 s after the receipt, then 1 ns before the due ms:
        # nothing more is handed out
        for stop_ns in (received_ns + 1_500_000_000 - 1, due_ms * 1_000_000 - 1):
            clock.advance((stop_ns - clock.wall_ns()) / 1e6)
            assert clock.wall_ns() == stop_ns
            sub = subscription_stats(hub.endpoint, "mail", "sender")
            assert sub["delivered"] == 1 and sub["scheduled"] == 1
            assert c.receive(0.05) is None
        # Then at the due time it is, as its first delivery, with the due time as its header
        clock.advance(1e-6)
        assert clock.wall_ns() == due_ms * 1_000_000
        msg = c.receive(10)
        assert msg is not None and msg.seq == late and msg.deliveries == 1
        assert msg.headers[protocol.DELIVER_AT_HEADER] == due_ms


def test_deliver_at_takes_a_datetime_and_a_time_in_the_past_delivers_at_once(fake_clock_hub):
    # Given a hub whose clock stands still (at the machine's wall time when it started)
    hub, clock = fake_clock_hub()
    published_ms = clock.wall_ms()
    with Consumer(hub.endpoint) as c:
        c.subscribe("mail", "sender", credit=10)
        # When one message is due at a datetime 1 s ahead of the hub, and one 60 s ago
        with Producer(hub.endpoint) as p:
            soon = p.publish("mail", b"soon", deliver_at=dt.datetime.fromtimestamp(
                published_ms / 1000, dt.timezone.utc) + dt.timedelta(seconds=1))
            past = p.publish("mail", b"past", deliver_at=published_ms / 1000 - 60)
        # Then the one in the past is delivered at once, as an ordinary message
        first = c.receive(10)
        assert first is not None and first.seq == past
        assert protocol.DELIVER_AT_HEADER not in first.headers
        first.ack()
        # and the datetime one not 1 ms before its time, but at it
        clock.advance(999)
        assert subscription_stats(hub.endpoint, "mail", "sender")["delivered"] == 1
        assert c.receive(0.05) is None
        clock.advance(1)
        second = c.receive(10)
    assert second is not None and second.seq == soon
    assert second.headers[protocol.DELIVER_AT_HEADER] == published_ms + 1000


def test_bad_delays_are_refused_before_sending_and_by_the_hub(hub, raw_client):
    with Producer(hub.endpoint) as p:
        for kwargs in ({"delay": -1}, {"delay": "soon"}, {"delay": 1, "deliver_at": 5},
                       {"deliver_at": "tomorrow"}, {"delay": 400 * 86400}):
            with pytest.raises(InvalidMessage):
                p.publish("mail", b"x", **kwargs)
    sock = raw_client()
    for opts, words in (({"delay_ms": -5}, "delay_ms"), ({"delay_ms": 1, "deliver_at_ms": 1}, "not both"),
                        ({"deliver_at_ms": "x"}, "deliver_at_ms")):
        sock.send_multipart(protocol.encode(protocol.Command.PUBLISH,
                                            [7, [["mail", b"x", None, None, opts]]]))
        assert sock.poll(10_000)
        command, body = protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
        assert command == protocol.Command.ERROR
        assert body["code"] == "invalid" and words in body["message"] and body["ref"] == 7
    assert "mail" not in hub.hub.store.topics  # nothing was stored


@pytest.mark.slow
def test_a_delayed_message_survives_a_hub_kill_and_is_still_held_back_after_restart(hub_process):
    # Given a message published with delay=1 h to a hub process, and one without a delay
    hub = hub_process(bind="tcp://127.0.0.1:0")
    endpoint = hub.endpoint
    with Producer(endpoint) as p:
        delayed = p.publish("reminders", b"in an hour", delay=3600.0)
        p.publish("reminders", b"at once")
    # When the hub is killed -9 while it holds the message back, and restarted on its data
    hub.kill9()
    hub = hub_process(bind=endpoint)
    # Then a subscription (created after the restart) gets the other one at once, and the
    # delayed one is still held back, with its due time stored (a hub on a real clock: when it
    # is handed out after a restart is the next test's, on a clock the test moves)
    with Consumer(endpoint) as c:
        c.subscribe("reminders", "r", credit=10)
        first = c.receive(10)
        assert first is not None and first.payload == b"at once"
        first.ack()
        sub = subscription_stats(endpoint, "reminders", "r")
        assert sub["delivered"] == 1 and sub["scheduled"] == 1
        assert c.receive(0.2) is None
    with Admin(endpoint) as admin:
        (stored,) = admin.fetch("reminders", delayed, 1)
    assert stored.headers[protocol.DELIVER_AT_HEADER] >= stored.timestamp + 3_600_000


def test_a_delayed_message_is_delivered_at_its_due_time_after_a_hub_restart(fake_clock_hub):
    # Given a message published with delay=2 s to a hub whose clock stands still, and one
    # without a delay
    hub, clock = fake_clock_hub()
    published_ms = clock.wall_ms()
    with Producer(hub.endpoint) as p:
        delayed = p.publish("reminders", b"in two seconds", delay=2.0)
        p.publish("reminders", b"at once")
    # When the hub stops, and starts again on its data 1 s later
    hub.stop()
    clock.advance(1000)
    hub, _ = fake_clock_hub(clock=clock, data_dir=hub.config.data_dir)
    # Then a subscription (created after the restart) gets the other one at once, and the
    # delayed one not 1 ms before 2 s after its publish, but at it
    with Consumer(hub.endpoint) as c:
        c.subscribe("reminders", "r", credit=10)
        first = c.receive(10)
        assert first is not None and first.payload == b"at once"
        first.ack()
        clock.advance(999)
        assert subscription_stats(hub.endpoint, "reminders", "r")["delivered"] == 1
        assert c.receive(0.05) is None
        clock.advance(1)
        msg = c.receive(10)
    assert msg is not None and msg.seq == delayed and msg.deliveries == 1
    assert msg.headers[protocol.DELIVER_AT_HEADER] == published_ms + 2000


def test_the_cli_publishes_with_delay_and_stats_count_the_held_back_message(hub):
    r = run_cli("publish", "mail", "hello", "--delay", "30", "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    bad = run_cli("publish", "mail", "x", "--delay", "1", "--deliver-at", "2030-01-01T00:00:00",
                  "--hub", hub.endpoint)
    assert bad.returncode == 2 and b"not both" in bad.stderr
    with Consumer(hub.endpoint) as c:
        c.subscribe("mail", "g", credit=10)
        assert c.receive(0.5) is None
    r = run_cli("stats", "--json", "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    subs = [s for s in json.loads(r.stdout)["subscriptions"] if s["group"] == "g"]
    assert subs[0]["scheduled"] == 1 and subs[0]["pending"] == 1
