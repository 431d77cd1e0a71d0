"""What a new user hits in the client runtime: heartbeats under load, retries that count, a
Consumer used without ``with``, producer timeouts against a dead hub, hung handlers at stop."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time

import pytest

from zmq_mq.actors import Actor, Backoff, Consumer, Producer
from zmq_mq.actors.connection import request
from zmq_mq.actors.errors import HubUnavailable
from zmq_mq.router.clock import FakeClock
from zmq_mq.router.protocol import Command
from zmq_mq.testing import HubThread

from conftest import settled_stats, step_hub_clock_while_idle, sub_state, wait_for, zmq_mq_command


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
        wait_for(lambda: sub_state(hub.endpoint, "slowwork", "g").get("ack_floor") == 1,
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
        wait_for(lambda: sub_state(quick_hub.endpoint, "jobs", "g").get("ack_floor") == 1,
                 message="the ack")
    finally:
        worker.close()
        other.close()


def test_an_async_handler_blocking_the_loop_past_the_hubs_liveness_keeps_its_message(quick_hub):
    # Given an actor of async handlers (its hub socket served on its asyncio loop) whose handler
    # blocks that loop for 2 s, over three of the hub's liveness windows (3 x 200 ms)
    runs: list[tuple[int, int]] = []
    done = threading.Event()

    async def handle(msg):
        runs.append((msg.seq, msg.deliveries))
        time.sleep(2.0)  # sync work in an async def: the loop does nothing else meanwhile
        done.set()

    actor = Actor(quick_hub.endpoint, name="blocker", concurrency=1)
    actor.add_handler("blocking", handle, group="g", ack_wait=60)
    other = Consumer(quick_hub.endpoint, name="other")
    actor.start()
    try:
        with Producer(quick_hub.endpoint) as p:
            p.publish("blocking", b"x")
        wait_for(lambda: bool(runs), message="the handler started")
        # When another member of the group asks while the loop is blocked
        other.subscribe("blocking", "g")
        # Then the hub still counts the actor alive (its thread heartbeats): nobody else gets
        # the message, and it runs once and is acked
        assert other.receive(timeout=1.0) is None
        assert done.wait(10)
        wait_for(lambda: sub_state(quick_hub.endpoint, "blocking", "g").get("ack_floor") == 1,
                 message="the ack")
    finally:
        other.close()
        actor.stop()
    assert runs == [(1, 1)]


def test_a_consumer_keeps_its_receive_and_close_timeouts_while_its_hub_is_gone(hub):
    # Given a subscribed consumer whose hub has died
    c = Consumer(hub.endpoint, timeout=10.0)
    try:
        c.subscribe("gone", "g")
        hub.stop()
        # When it keeps calling receive(0.5) through the time it tries to reconnect
        end = time.monotonic() + 5.0
        slowest = 0.0
        while time.monotonic() < end:
            start = time.monotonic()
            assert c.receive(timeout=0.5) is None
            slowest = max(slowest, time.monotonic() - start)
        # Then no call took much longer than asked, reconnect attempts included
        assert slowest < 0.5 + 0.4, f"receive(0.5) took {slowest:.1f} s"
        start = time.monotonic()
        c.close(timeout=1.0)
        assert time.monotonic() - start < 1.0 + 0.5
    finally:
        c.close(timeout=0)


# --- producer timeouts against a dead hub ------------------------------------------------------


def test_close_does_not_raise_or_wait_again_for_a_message_whose_publish_already_raised(tmp_path):
    # Given a producer whose hub died after it connected
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


# --- hung handlers and grace -------------------------------------------------------------------


def _hung_actor(endpoint: str, kind: str, grace: float, entered: threading.Event) -> Actor:
    """An actor of 3 workers whose handlers never return, on topic ``hung``."""
    never = threading.Event()

    def sync_handler(msg):
        entered.set()
        never.wait()  # blocked for good: a thread cannot be cancelled

    async def async_handler(msg):
        entered.set()
        never.wait()  # blocks the actor's asyncio loop itself: cancelling it cannot work

    handler = sync_handler if kind == "sync" else async_handler
    actor = Actor(endpoint, name=f"hung-{kind}", concurrency=3, grace=grace)
    actor.add_handler("hung", handler, group="g", max_deliver=0)
    return actor


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_actor_with_hung_handlers_stops_within_its_grace_and_leaves_them_unacked(hub, kind):
    # Given an actor whose handlers hang forever
    entered = threading.Event()
    actor = _hung_actor(hub.endpoint, kind, 0.5, entered)
    with Producer(hub.endpoint) as p:
        for i in range(3):
            p.publish("hung", b"%d" % i)
    actor.start()
    assert entered.wait(10)
    wait_for(lambda: sub_state(hub.endpoint, "hung", "g").get("in_flight") == 3,
             message="three handlers running")
    # When it is stopped with a grace of 0.5 s
    start = time.monotonic()
    actor.stop(timeout=30)
    took = time.monotonic() - start
    # Then it has stopped within its grace (and a moment to detach), and the hub has the
    # messages back, unacked, for another actor
    assert not actor.running
    assert took < 0.5 + 2.0, f"stop took {took:.1f} s"
    state = sub_state(hub.endpoint, "hung", "g")
    assert state["ack_floor"] == 0 and state["in_flight"] == 0


HUNG_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from zmq_mq.actors import Actor

    actor = Actor(name="hung-run", concurrency=4, grace=0.5)

    @actor.subscribe("hungrun", group="g", max_deliver=0)
    def handle(msg):
        sys.stdout.write(f"in {msg.seq}\\n")
        sys.stdout.flush()
        threading.Event().wait()  # never returns
    """
)


def test_zmq_mq_run_with_hung_handlers_exits_soon_after_its_grace_on_sigterm(hub, processes,
                                                                            tmp_path):
    # Given `zmq-mq run` of an actor whose four handlers hang forever
    with Producer(hub.endpoint) as p:
        for i in range(4):
            p.publish("hungrun", b"%d" % i)
    script = tmp_path / "hung_run_actor.py"
    script.write_text(HUNG_SCRIPT)
    env = dict(os.environ, ZMQ_MQ_HUB=hub.endpoint)
    proc = processes(subprocess.Popen([*zmq_mq_command(), "run", str(script)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    for _ in range(4):
        assert proc.stdout.readline().startswith("in")
    # When it gets SIGTERM
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    took = time.monotonic() - start
    # Then it exits cleanly soon after its 0.5 s grace, and the hub has the messages back,
    # unacked and not counted as tries
    assert proc.returncode == 0
    assert took < 0.5 + 2.5, f"exit took {took:.1f} s"
    with Consumer(hub.endpoint) as c:
        c.subscribe("hungrun", "g", credit=10)
        back = []
        while (m := c.receive(timeout=2)) is not None:
            back.append((m.seq, m.deliveries))
            m.ack()
    assert sorted(back) == [(1, 1), (2, 1), (3, 1), (4, 1)]


HUNG_ASYNC_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from zmq_mq.actors import Actor

    actor = Actor(name="hung-run-async", concurrency=4, grace=0.5)

    @actor.subscribe("hungrunasync", group="g", max_deliver=0)
    async def handle(msg):
        sys.stdout.write(f"in {msg.seq}\\n")
        sys.stdout.flush()
        threading.Event().wait()  # blocks the actor's asyncio loop for good
    """
)


def test_zmq_mq_run_with_an_async_handler_blocking_its_loop_exits_soon_after_grace_on_sigterm(
        hub, processes, tmp_path):
    # Given `zmq-mq run` of an actor of async handlers (its hub socket served on its asyncio
    # loop), one of which blocks that loop for good while it holds four messages
    with Producer(hub.endpoint) as p:
        for i in range(4):
            p.publish("hungrunasync", b"%d" % i)
    script = tmp_path / "hung_run_async_actor.py"
    script.write_text(HUNG_ASYNC_SCRIPT)
    env = dict(os.environ, ZMQ_MQ_HUB=hub.endpoint)
    proc = processes(subprocess.Popen([*zmq_mq_command(), "run", str(script)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    assert proc.stdout.readline().startswith("in")
    wait_for(lambda: sub_state(hub.endpoint, "hungrunasync", "g").get("in_flight") == 4,
             message="four messages held")
    # When it gets SIGTERM
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    took = time.monotonic() - start
    # Then it exits cleanly soon after its 0.5 s grace (the loop never runs again), and the
    # hub has the four messages back, unacked
    assert proc.returncode == 0
    assert took < 0.5 + 2.5, f"exit took {took:.1f} s"
    state = sub_state(hub.endpoint, "hungrunasync", "g")
    assert state["ack_floor"] == 0 and state["in_flight"] == 0


# --- max_deliver counts tries ------------------------------------------------------------------


def _always_failing_actor(endpoint: str, name: str, runs: list, work: float, ack_wait: float,
                          retry: Backoff | None, topics: tuple[str, ...],
                          clock: FakeClock | None = None) -> Actor:
    """An actor whose handlers work ``work`` seconds, then raise. With ``clock`` (the hub's
    FakeClock) the work lasts until that clock has moved on by ``work``: the test moves it."""
    def handle(msg):
        runs.append((msg.topic, msg.deliveries))
        if clock is None:
            time.sleep(work)  # the work: part of the scenario, not a wait for an event
        else:
            end = clock.monotonic_ms() + round(work * 1000)
            wait_for(lambda: clock.monotonic_ms() >= end, interval=0.002, message="the work")
        raise RuntimeError("always fails")

    actor = Actor(endpoint, name=name)
    for topic in topics:
        actor.add_handler(topic, handle, group=f"g-{topic}", ack_wait=ack_wait, max_deliver=3,
                          retry=retry)
    return actor


def _move_hub_clock_until(hub, clock: FakeClock, done, step_ms: int = 50,
                          limit_ms: int = 30_000) -> None:
    """Move the hub's clock on in ``step_ms`` steps, each after a full hub turn saw the last
    one, until ``done()``: hub time passes as it would in real time, only no test waits for it."""
    moved = 0
    while not done():
        assert moved < limit_ms, f"not done after {moved} ms of hub time"
        clock.advance(step_ms)
        moved += step_ms
        settled_stats(hub.endpoint)


def _dead_lettered(endpoint: str, groups: list[str]) -> int:
    return sum(r["dead_lettered"] for r in settled_stats(endpoint)["subscriptions"]
               if r["group"] in groups)


def _dead_letters(endpoint: str, groups: list[str]) -> list:
    dead = []
    with Consumer(endpoint) as c:
        for g in groups:
            c.subscribe(f"dlq.{g}", "inspect")
        while len(dead) < len(groups):
            m = c.receive(timeout=30)
            assert m is not None, "a message never reached its dead-letter topic"
            dead.append(m)
            m.ack()
    return dead


@pytest.mark.parametrize("retry", [Backoff(initial=0.1, jitter=0.0), None],
                         ids=["backoff", "no-retry-delay"])
def test_a_handler_slower_than_ack_wait_that_always_fails_runs_exactly_max_deliver_times(
        fake_clock_hub, retry):
    # Given a handler that fails after 0.8 s of work, ack_wait 0.5 s and max_deliver 3: each
    # delivery expires while its handler runs, and the hub delivers the message again (the
    # hub's clock, which the work is measured on, moves in 50 ms steps; heartbeats every 10 s)
    hub, clock = fake_clock_hub(heartbeat_ms=10_000)
    runs: list = []
    actor = _always_failing_actor(hub.endpoint, "slowfail", runs, 0.8, 0.5, retry, ("slowfail",),
                                  clock)
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("slowfail", b"x")
        _move_hub_clock_until(hub, clock, lambda: _dead_lettered(hub.endpoint, ["g-slowfail"]))
        dead = _dead_letters(hub.endpoint, ["g-slowfail"])
        _move_hub_clock_until(hub, clock, lambda: not actor._running)  # the last run's end
    finally:
        actor.stop()
    # Then the handler ran exactly 3 times before the message was dead-lettered after 3
    assert [d for _, d in runs] == [1, 2, 3]
    assert dead[0].headers["x-deliveries"] == 3


def test_an_always_failing_message_of_an_actor_with_two_subscriptions_runs_max_deliver_times(
        fake_clock_hub):
    # Given the actor: two subscriptions, ack_wait 1 s, max_deliver 3, default backoff,
    # on a hub whose clock moves only when the test says (heartbeats every 10 s, so that the
    # seconds of backoff it moves through never take the actor for dead)
    hub, clock = fake_clock_hub(heartbeat_ms=10_000)
    runs: list = []
    actor = _always_failing_actor(hub.endpoint, "twosubs", runs, 0.0, 1.0, Backoff(),
                                  ("first", "second"))
    groups = ("g-first", "g-second")
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("first", b"x")
            p.publish("second", b"y")
        # When the hub's clock runs through the backoffs in 100 ms steps, each taken only once
        # no message is in flight (every try ran and was nacked: ack_wait never runs out)
        step_hub_clock_while_idle(hub.endpoint, clock, groups,
                                  lambda rows: all(r["dead_lettered"] == 1 for r in rows))
        dead = _dead_letters(hub.endpoint, list(groups))
    finally:
        actor.stop()
    # Then each message ran exactly 3 times and was dead-lettered after 3 deliveries
    for topic in ("first", "second"):
        assert [d for t, d in runs if t == topic] == [1, 2, 3]
    assert [m.headers["x-deliveries"] for m in dead] == [3, 3]


def test_messages_waiting_for_a_busy_worker_are_not_charged_tries_while_they_wait(hub):
    # Given one worker and two subscriptions whose handlers fail after 0.7 s, ack_wait 0.5 s:
    # each message waits for the worker longer than its ack_wait. (In real time: the actor keeps
    # a waiting message alive with PROGRESS on its own clock, so the hub's clock cannot be moved
    # alone; this waits for a FakeClock in the client too.)
    runs: list = []
    actor = _always_failing_actor(hub.endpoint, "queued", runs, 0.7, 0.5,
                                  Backoff(initial=0.1, jitter=0.0), ("qa", "qb"))
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("qa", b"x")
            p.publish("qb", b"y")
        dead = _dead_letters(hub.endpoint, ["g-qa", "g-qb"])
        wait_for(lambda: not actor._running, message="the last run to end")
    finally:
        actor.stop()
    # Then each ran exactly 3 times, none was dead-lettered without running its last try
    for topic in ("qa", "qb"):
        assert [d for t, d in runs if t == topic] == [1, 2, 3]
    assert [m.headers["x-deliveries"] for m in dead] == [3, 3]
