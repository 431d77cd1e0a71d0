"""Issue 3 acceptance for the actor runtime: a hub kill -9 under a concurrency=8 actor, and
SIGTERM to an actor mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter

import pytest

from zmq_mq.actors import Actor, Consumer, Producer
from zmq_mq.actors.connection import request
from zmq_mq.router.protocol import Command

from conftest import wait_for, zmq_mq_command

N = 400


def _lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_after_a_hub_kill_9_a_busy_actor_resumes_and_idempotent_side_effects_happen_once(
        hub_process, tmp_path):
    # Given a hub process and an actor with 8 workers on two subscriptions of one topic: an
    # idempotent handler and a plain one, each appending its side effect to a file
    hub = hub_process(bind="tcp://127.0.0.1:0")
    endpoint = hub.endpoint
    effects = {"once": tmp_path / "once.txt", "plain": tmp_path / "plain.txt"}
    lock = threading.Lock()

    def effect(group):
        def handle(msg):
            time.sleep(0.002)  # some work, so that messages are in flight when the hub dies
            with lock, open(effects[group], "a") as f:
                f.write(msg.msg_id + "\n")
        return handle

    actor = Actor(endpoint, name="busy", concurrency=8, state_dir=tmp_path / "state", timeout=30)
    actor.add_handler("stream", effect("once"), group="once", idempotent=True)
    actor.add_handler("stream", effect("plain"), group="plain")
    actor.start()

    # and a producer publishing a steady stream with message ids
    published = threading.Event()
    errors: list[BaseException] = []

    def produce():
        try:
            with Producer(endpoint, timeout=60) as p:
                for i in range(N):
                    p.publish_async("stream", b"%d" % i, msg_id=f"m{i}")
                    time.sleep(0.004)
                p.flush(60)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            published.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        # When the hub is killed with SIGKILL mid-stream and restarted on the same data and port
        wait_for(lambda: len(_lines(effects["once"])) >= N // 4, message="stream flowing")
        hub.kill9()
        hub = hub_process(bind=endpoint)

        # Then the actor resumes by itself and every message is processed
        assert published.wait(90) and not errors, errors
        wait_for(lambda: set(_lines(effects["once"])) >= {f"m{i}" for i in range(N)}
                 and set(_lines(effects["plain"])) >= {f"m{i}" for i in range(N)},
                 timeout=60, message="every message processed")
    finally:
        producer.join(90)
        actor.stop()
    assert actor.error is None
    assert actor.session.reattached >= 1
    # the producer's resends after the restart were stored once (msg_id de-duplication)
    (stream,) = [t for t in request(endpoint, Command.TOPICS) if t["topic"] == "stream"]
    assert stream["messages"] == N
    everything = {f"m{i}" for i in range(N)}
    # at least once for the plain handler
    assert set(_lines(effects["plain"])) == everything
    # exactly once for the idempotent one
    counts = Counter(_lines(effects["once"]))
    assert set(counts) == everything
    assert [m for m, c in counts.items() if c > 1] == []


ACTOR_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from zmq_mq.actors import Actor

    actor = Actor(name="steady", concurrency=8, grace=float(os.environ["GRACE"]))

    @actor.subscribe("jobs", group="workers")
    def handle(msg):
        if msg.payload == b"stuck":
            os.write(1, b"stuck\\n")  # one write: 8 threads print at once
            time.sleep(120)
        time.sleep(0.05)
        os.write(1, b"%d\\n" % msg.seq)
    """
)


def _run_actor(processes, tmp_path, endpoint, grace):
    script = tmp_path / "steady_actor.py"
    script.write_text(ACTOR_SCRIPT)
    out = open(tmp_path / "actor.out", "w")
    proc = processes(subprocess.Popen(
        [*zmq_mq_command(), "run", str(script), "--hub", endpoint],
        stdout=out, stderr=open(tmp_path / "actor.log", "w"), env={**os.environ, "GRACE": str(grace)},
    ))
    return proc, tmp_path / "actor.out"


def _rest(endpoint) -> list[tuple[int, int]]:
    with Consumer(endpoint) as c:
        c.subscribe("jobs", "workers", credit=100)
        rest = []
        while (m := c.receive(timeout=2)) is not None:
            rest.append((m.seq, m.deliveries))
            m.ack()
    return rest


@pytest.mark.slow
def test_sigterm_mid_stream_stops_the_actor_within_grace_and_loses_nothing(hub, processes, tmp_path):
    # Given an actor with 8 workers consuming a steady stream
    proc, out = _run_actor(processes, tmp_path, hub.endpoint, grace=10)
    total = 300
    stop_publishing = threading.Event()
    published = []

    def produce():
        with Producer(hub.endpoint) as p:
            for i in range(total):
                if stop_publishing.is_set():
                    break
                published.append(p.publish("jobs", b"%d" % i))
                time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: len(_lines(out)) >= 30, message="actor processing")

    # When it gets SIGTERM mid-stream
    proc.send_signal(signal.SIGTERM)
    # Then it exits cleanly within its grace period (plus start-up of the detach)
    assert proc.wait(10 + 10) == 0
    stop_publishing.set()
    producer.join(30)

    # And nothing is lost: every message was processed (and its ack committed), or is still
    # in the subscription, never both
    processed = {int(x) for x in _lines(out)}
    rest = _rest(hub.endpoint)
    assert processed.isdisjoint(s for s, _ in rest)
    assert processed | {s for s, _ in rest} == set(published)
    assert len(processed) >= 30


@pytest.mark.slow
def test_a_handler_overrunning_the_grace_period_does_not_keep_the_actor_and_its_message_returns(
        hub, processes, tmp_path):
    # Given an actor with a 1 s grace period stuck in a handler
    with Producer(hub.endpoint) as p:
        p.publish("jobs", b"stuck")
        for i in range(5):
            p.publish("jobs", b"%d" % i)
    proc, out = _run_actor(processes, tmp_path, hub.endpoint, grace=1)
    wait_for(lambda: "stuck" in _lines(out) and len(_lines(out)) >= 6, message="stuck handler")
    # When it is told to stop
    proc.send_signal(signal.SIGTERM)
    # Then it exits once the grace period is over, and the stuck message goes back to the queue
    assert proc.wait(20) == 0
    assert _rest(hub.endpoint) == [(1, 1)]
