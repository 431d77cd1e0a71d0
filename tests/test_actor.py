"""The Actor runtime: handlers, acks on return, graceful stop, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from zmq_mq.actors import Actor, Consumer, Producer

SLOW_ACTOR = textwrap.dedent(
    """
    import sys, time
    from zmq_mq.actors import Actor
    actor = Actor(sys.argv[1], name="slow")

    @actor.subscribe("work", group="workers", credit=5)
    def handle(msg):
        print(msg.seq, flush=True)
        time.sleep(0.2)

    actor.run()
    print("stopped", flush=True)
    """
)


def test_sigterm_stops_an_actor_gracefully_and_loses_nothing(hub, processes):
    # Given 20 messages and an actor process working slowly through them
    with Producer(hub.endpoint) as p:
        for i in range(20):
            p.publish_async("work", b"%d" % i)
        p.flush()
    proc = processes(subprocess.Popen([sys.executable, "-c", SLOW_ACTOR, hub.endpoint],
                                      stdout=subprocess.PIPE, text=True))
    started = [int(proc.stdout.readline())]  # it is inside a handler now

    # When it gets SIGTERM
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)

    # Then it finishes what it started, exits 0, and every other message is still there,
    # released without counting a delivery
    assert proc.returncode == 0
    lines = out.split()
    assert lines[-1] == "stopped"
    processed = set(started) | {int(x) for x in lines[:-1]}
    with Consumer(hub.endpoint) as c:
        c.subscribe("work", "workers", credit=50)
        rest = []
        while (m := c.receive(timeout=1)) is not None:
            rest.append((m.seq, m.deliveries))
            m.ack()
    assert {s for s, _ in rest} == set(range(1, 21)) - processed
    assert all(d == 1 for _, d in rest)


def test_explicit_settling_in_a_handler_wins_over_the_automatic_ack(hub):
    # Given a handler that rejects odd payloads itself and returns normally
    done = threading.Event()
    seen = []

    def handle(msg):
        if int(msg.payload) % 2:
            msg.reject("odd")
        seen.append(msg.seq)
        if len(seen) == 4:
            done.set()

    actor = Actor(hub.endpoint, name="picky")
    actor.add_handler("nums", handle, group="picky")
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            for i in range(4):
                p.publish("nums", b"%d" % i)
        assert done.wait(10)
    finally:
        actor.stop()
    with Consumer(hub.endpoint) as c:
        c.subscribe("dlq.picky", "audit")
        dead = [c.receive(timeout=5) for _ in range(2)]
    assert sorted(d.payload for d in dead) == [b"1", b"3"]


def test_a_work_queue_spreads_messages_over_competing_actors(hub):
    # Given three actors attached to one subscription
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()
    all_done = threading.Event()

    def handler(name):
        def handle(msg):
            with lock:
                seen.setdefault(name, []).append(msg.seq)
                if sum(map(len, seen.values())) == 300:
                    all_done.set()
        return handle

    actors = []
    for name in ("w1", "w2", "w3"):
        a = Actor(hub.endpoint, name=name)
        a.add_handler("tasks", handler(name), group="pool", credit=5)
        actors.append(a.start())
    try:
        with Producer(hub.endpoint) as p:
            for i in range(300):
                p.publish_async("tasks", b"t%d" % i)
            p.flush()
        assert all_done.wait(30)
    finally:
        for a in actors:
            a.stop()
    # Then each message went to exactly one actor, and every actor got a share
    everything = [s for seqs in seen.values() for s in seqs]
    assert sorted(everything) == list(range(1, 301))
    assert len(seen) == 3 and all(len(v) > 0 for v in seen.values())


def test_run_refuses_an_actor_without_handlers(hub):
    with pytest.raises(RuntimeError, match="no handlers"):
        Actor(hub.endpoint).run()


def test_a_handler_that_raises_systemexit_stops_the_actor_and_its_message_goes_elsewhere(hub):
    # Given an actor whose handler asks the process to exit
    def handle(msg):
        raise SystemExit(3)

    actor = Actor(hub.endpoint, name="quitter", concurrency=2)
    actor.add_handler("exits", handle, group="g")
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("exits", b"hot potato")
        # Then the actor stops by itself instead of hanging with a dead worker
        actor.join(30)
        assert not actor.running
    finally:
        actor.stop()
    # And the message was given back, not counted as a failed attempt
    with Consumer(hub.endpoint) as c:
        c.subscribe("exits", "g")
        msg = c.receive(timeout=10)
        assert msg is not None and msg.payload == b"hot potato" and msg.deliveries == 1
        msg.ack()


class _WakeDuringDrain:
    """A wake socket whose first recv lets another thread call ``wake`` first: the moment a
    handler finishes while the loop is emptying the wake pipe."""

    def __init__(self, sock, waker):
        self.sock, self.waker, self.fired = sock, waker, False

    def recv(self, flags=0):
        if not self.fired:
            self.fired = True
            self.waker.wake()
        return self.sock.recv(flags)


def test_a_wake_up_sent_while_the_loop_drains_the_pipe_never_silences_later_ones(context):
    # Given the wake pipe of an actor (and of a producer: actors/wake.py) holding one wake-up
    from zmq_mq.actors.wake import Waker

    waker = Waker(context, "wakes")
    rx = waker.rx
    try:
        waker.wake()
        assert rx.poll(1000)
        # When a worker wakes the loop again while the loop is draining the pipe
        waker.rx = _WakeDuringDrain(rx, waker)
        waker.drain()
        waker.rx = rx
        # Then the next finished handler still wakes the loop (before the fix the flag stayed
        # set with the pipe empty: the loop then saw results only at its heartbeat timeout)
        waker.wake()
        assert rx.poll(1000), "a wake-up was suppressed with nothing in the pipe"
    finally:
        waker.rx = rx
        waker.close()


def test_an_actor_wakes_its_loop_through_one_waker_and_a_wake_after_it_stopped_does_nothing(hub):
    # Given an actor that ran and stopped
    from zmq_mq.actors.wake import Waker

    actor = Actor(hub.endpoint, name="waker-user")
    seen = threading.Event()
    actor.subscribe("wake.t", group="g")(lambda msg: seen.set())
    actor.start()
    try:
        assert isinstance(actor._waker, Waker)
        with Producer(hub.endpoint) as p:
            p.publish("wake.t", b"x")
        assert seen.wait(10)
    finally:
        actor.stop()
    # When an abandoned handler settles late, Then nothing is sent on a closed pipe
    actor._wake()
    actor._waker.wake()


def test_async_handlers_see_each_message_at_once_however_long_the_heartbeat(tmp_path):
    # Given a hub whose heartbeat is 10 s (an actor whose loop missed a wake-up, from its socket
    # or from the asyncio side handing back a result, would only look again at the next one)
    from zmq_mq.testing import HubThread

    h = HubThread(tmp_path / "data", heartbeat_ms=10_000).start()
    seen: list[int] = []
    got = threading.Event()

    async def handle(msg):
        seen.append(msg.seq)
        got.set()

    actor = Actor(h.endpoint, name="edges", concurrency=8)
    actor.add_handler("edges", handle, group="g")
    try:
        actor.start()
        with Producer(h.endpoint) as p:
            # When messages come one at a time, each after the previous one was handled
            for i in range(30):
                got.clear()
                p.publish("edges", b"%d" % i)
                # Then each is handled long before the next heartbeat would wake the actor
                assert got.wait(4), f"message {i} not handled within 4 s"
    finally:
        actor.stop()
        h.stop()
    assert len(seen) == 30


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop", "auto"])
def test_async_handlers_run_on_the_event_loop_the_actor_was_asked_for(tmp_path, event_loop):
    # Given an actor told which asyncio loop runs its async def handlers
    import asyncio

    from zmq_mq.testing import HubThread

    try:
        import uvloop
    except ImportError:
        uvloop = None
    if event_loop == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    h = HubThread(tmp_path / "data").start()
    loops: list[type] = []
    got = threading.Event()

    async def handle(msg):
        loops.append(type(asyncio.get_running_loop()))
        got.set()

    actor = Actor(h.endpoint, name="loops", concurrency=4, event_loop=event_loop)
    actor.add_handler("loops", handle, group="g")
    try:
        actor.start()
        with Producer(h.endpoint) as p:
            p.publish("loops", b"x")
        # When a message comes, Then its handler ran on that kind of loop
        assert got.wait(10)
    finally:
        actor.stop()
        h.stop()
    wants_uvloop = event_loop == "uvloop" or event_loop == "auto" and uvloop is not None
    if wants_uvloop:
        assert loops[0] is uvloop.Loop
    else:
        assert issubclass(loops[0], asyncio.BaseEventLoop) and loops[0] is not getattr(
            uvloop, "Loop", None)


def test_an_unknown_event_loop_is_refused_in_one_line():
    with pytest.raises(ValueError, match="event_loop must be 'auto', 'asyncio' or 'uvloop'"):
        Actor("tcp://127.0.0.1:1", event_loop="trio")
