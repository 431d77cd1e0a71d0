"""The actor runtime: credit that follows the workers, retry backoff, async handlers."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from zmq_mq.actors import Actor, Backoff, Consumer, Producer, compute_backoff

from conftest import sub_state, subscription_stats, wait_for


# --- credit --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch, held", [(1, 2), (3, 6)])
def test_an_actor_holds_workers_times_prefetch_messages_and_runs_only_its_workers(hub, prefetch, held):
    # Given an actor with 2 workers and a fixed window (prefetch given) whose handlers block
    gate = threading.Event()
    started = []
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    def handle(msg):
        with lock:
            started.append(msg.seq)
            running[0] += 1
            running[1] = max(running)
        gate.wait(30)
        with lock:
            running[0] -= 1

    topic, group = f"jobs.p{prefetch}", f"narrow{prefetch}"
    actor = Actor(hub.endpoint, name=group, concurrency=2, prefetch=prefetch)
    actor.add_handler(topic, handle, group=group)
    actor.start()
    try:
        # When 10 messages are waiting
        with Producer(hub.endpoint) as p:
            for i in range(10):
                p.publish_async(topic, b"%d" % i)
            p.flush()
        wait_for(lambda: len(started) == 2, message="two handlers running")
        # Then the hub has handed out 2 x prefetch (the rest stay in the hub for other actors)
        # while only the 2 workers run
        wait_for(lambda: (s := sub_state(hub.endpoint, topic, group))
                 and s["in_flight"] == held and s["pending"] == 10 - held,
                 message=f"{held} in flight, {10 - held} pending")
        assert len(started) == 2
        gate.set()
        wait_for(lambda: len(started) == 10, message="all processed")
    finally:
        gate.set()
        actor.stop()
    assert sorted(started) == list(range(1, 11)) and running[1] == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_prefetch_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="prefetch"):
        Actor("tcp://127.0.0.1:1", prefetch=bad)


# --- retry backoff -------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_its_maximum_without_jitter():
    policy = Backoff(initial=1.0, factor=2.0, max=60.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(10_000) == 60.0  # no overflow for absurd delivery counts


def test_backoff_jitter_stays_within_its_band_and_is_reproducible_with_a_seed():
    policy = Backoff(initial=1.0, factor=3.0, max=100.0, jitter=0.2)
    first = [policy.delay(n, random.Random(7)) for n in range(1, 6)]
    again = [policy.delay(n, random.Random(7)) for n in range(1, 6)]
    assert first == again
    rng = random.Random(42)
    for n in range(1, 8):
        base = min(100.0, 3.0 ** (n - 1))
        for _ in range(200):
            d = policy.delay(n, rng)
            assert base * 0.8 - 1e-9 <= d <= min(100.0, base * 1.2) + 1e-9
    spread = {round(policy.delay(2, rng), 6) for _ in range(50)}
    assert len(spread) > 10  # it really is spread out


def test_compute_backoff_never_goes_below_zero_or_above_the_cap():
    rng = random.Random(1)
    for n in range(0, 50):
        d = compute_backoff(n, initial=5.0, factor=10.0, maximum=7.5, jitter=1.0, rng=rng)
        assert 0.0 <= d <= 7.5


def test_backoff_refuses_nonsense():
    with pytest.raises(ValueError):
        Backoff(factor=0.5)
    with pytest.raises(ValueError):
        Backoff(jitter=2.0)
    with pytest.raises(TypeError):
        Actor().add_handler("t", lambda m: None, group="g", retry=3)


def test_a_failing_handler_is_retried_after_its_backoff_then_dead_lettered(fake_clock_hub):
    # Given a handler that always fails, with a 0.3 s, 0.6 s backoff and 3 attempts, on a hub
    # whose clock stands still
    hub, clock = fake_clock_hub()
    seen: list[int] = []

    def handle(msg):
        seen.append(msg.deliveries)
        raise RuntimeError("smtp down")

    def tried_and_nacked(tries: int) -> bool:
        sub = subscription_stats(hub.endpoint, "mail", "mailer")
        return len(seen) == tries and sub.get("delivered") == tries and sub["in_flight"] == 0

    actor = Actor(hub.endpoint, name="retrier")
    actor.add_handler("mail", handle, group="mailer", max_deliver=3,
                      retry=Backoff(initial=0.3, factor=2.0, max=10.0, jitter=0.0))
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("mail", b"to: bounce@example.com")
        wait_for(lambda: tried_and_nacked(1), message="the first try's nack")
        # When the hub's clock moves: each retry comes not 1 ms before its backoff, but at it
        for backoff_ms, tries in ((300, 1), (600, 2)):
            clock.advance(backoff_ms - 1)
            assert subscription_stats(hub.endpoint, "mail", "mailer")["delivered"] == tries
            clock.advance(1)
            wait_for(lambda: tried_and_nacked(tries + 1), message=f"try {tries + 1}")
        # Then after 3 tries it is dead-lettered
        with Consumer(hub.endpoint) as c:
            c.subscribe("dlq.mailer", "inspect")
            dead = c.receive(timeout=20)
            assert dead is not None
            dead.ack()
    finally:
        actor.stop()
    assert seen == [1, 2, 3]
    assert dead.headers["x-deliveries"] == 3 and dead.payload == b"to: bounce@example.com"


# --- async handlers ------------------------------------------------------------------------


def test_async_handlers_run_concurrently_up_to_the_concurrency_and_ack_or_nack(hub):
    # Given an async handler that fails once on message 3 and otherwise sleeps a little
    running = 0
    peak = 0
    done: list[int] = []
    attempts: dict[int, int] = {}
    loops = set()
    all_done = threading.Event()

    async def handle(msg):
        nonlocal running, peak
        loops.add(id(asyncio.get_running_loop()))
        attempts[msg.seq] = attempts.get(msg.seq, 0) + 1
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.05)
            if msg.seq == 3 and msg.deliveries == 1:
                raise ValueError("first try fails")
        finally:
            running -= 1
        done.append(msg.seq)
        if len(done) == 20:
            all_done.set()

    actor = Actor(hub.endpoint, name="aio", concurrency=4)
    actor.add_handler("aio", handle, group="aio", retry=None)
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            for i in range(20):
                p.publish_async("aio", b"%d" % i)
            p.flush()
        assert all_done.wait(30)
    finally:
        actor.stop()
    # Then at most 4 ran at once (and more than one did), all on one loop, all acked
    assert 1 < peak <= 4
    assert len(loops) == 1
    assert sorted(done) == list(range(1, 21))
    assert attempts[3] == 2
    state = sub_state(hub.endpoint, "aio", "aio")
    assert state["ack_floor"] == 20 and state["in_flight"] == 0


def _reading_threads(monkeypatch) -> list[str]:
    """The names of the threads that read DELIVER frames (Session._on_deliver), as they come."""
    from zmq_mq.actors.session import Session

    names: list[str] = []
    original = Session._on_deliver

    def on_deliver(self, body):
        names.append(threading.current_thread().name)
        return original(self, body)

    monkeypatch.setattr(Session, "_on_deliver", on_deliver)
    return names


@pytest.mark.parametrize("kinds, loop_io, reader", [(("async",), True, "asyncio"),
                                                    (("async", "sync"), True, "loop"),
                                                    (("async",), False, "loop")])
def test_an_actor_of_async_handlers_only_reads_the_hub_on_its_asyncio_loop(
        hub, monkeypatch, kinds, loop_io, reader):
    # Given an actor whose handlers are all async (or one of them a plain function, or
    # loop_io=False)
    readers = _reading_threads(monkeypatch)
    handler_threads: set[str] = set()
    done = threading.Semaphore(0)

    async def handle_async(msg):
        handler_threads.add(threading.current_thread().name)
        done.release()

    def handle_sync(msg):
        done.release()

    actor = Actor(hub.endpoint, name=f"reader-{len(kinds)}", concurrency=4, loop_io=loop_io)
    for kind in kinds:
        actor.add_handler(f"reader.{kind}", handle_async if kind == "async" else handle_sync,
                          group="g")
    actor.start()
    try:
        # When messages come
        with Producer(hub.endpoint) as p:
            for kind in kinds:
                for i in range(5):
                    p.publish(f"reader.{kind}", b"%d" % i)
        for _ in range(5 * len(kinds)):
            assert done.acquire(timeout=10)
    finally:
        actor.stop()
    # Then with only async handlers the DELIVER frames were read on the asyncio loop that runs
    # them (no hand-off between threads); with a plain handler too (or loop_io=False), on the
    # actor's loop thread
    asyncio_thread = f"{actor.name}-asyncio"
    assert handler_threads == {asyncio_thread}
    after_attach = readers[-1:]  # the first ones may come with SUBSCRIBED, read by run()
    if reader == "asyncio":
        assert after_attach == [asyncio_thread]
    else:
        assert asyncio_thread not in readers


@pytest.mark.slow
def test_an_actor_of_async_handlers_reattaches_after_a_hub_restart_and_handles_what_follows(
        hub_process):
    # Given an actor of async handlers, its hub heartbeating every 200 ms
    hub = hub_process(extra=["--heartbeat-ms", "200"])
    seen: set[int] = set()
    got = threading.Condition()

    async def handle(msg):
        with got:
            seen.add(msg.seq)
            got.notify_all()

    actor = Actor(hub.endpoint, name="aio-restart", concurrency=4, timeout=5)
    actor.add_handler("aiorestart", handle, group="g")
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("aiorestart", b"1")
        with got:
            assert got.wait_for(lambda: 1 in seen, 10)
        # When the hub is killed -9 and restarted on its data
        hub.kill9()
        time.sleep(0.5)  # down for a few heartbeats: the actor finds it silent
        hub.restart()
        with Producer(hub.endpoint) as p:
            p.publish("aiorestart", b"2")
            p.publish("aiorestart", b"3")
        # Then the actor reconnected, re-attached and handles what came after
        with got:
            assert got.wait_for(lambda: {2, 3} <= seen, 30), f"seen {sorted(seen)}"
    finally:
        actor.stop()
    assert not actor.running
    wait_for(lambda: sub_state(hub.endpoint, "aiorestart", "g").get("ack_floor") == 3,
             message="all three acked")


def test_stopping_waits_for_running_async_handlers_within_grace(hub):
    # Given an async handler in the middle of slow work
    entered = threading.Event()
    finished = []

    async def handle(msg):
        entered.set()
        await asyncio.sleep(0.5)
        finished.append(msg.seq)

    actor = Actor(hub.endpoint, name="aio-stop", concurrency=2, grace=10)
    actor.add_handler("slowaio", handle, group="g")
    actor.start()
    with Producer(hub.endpoint) as p:
        p.publish("slowaio", b"x")
    assert entered.wait(10)
    # When the actor is stopped
    actor.stop()
    # Then the running task finished and its ack was committed
    assert finished == [1]
    assert sub_state(hub.endpoint, "slowaio", "g")["ack_floor"] == 1


def test_async_handlers_past_grace_are_cancelled_and_their_messages_released(hub):
    entered = threading.Event()
    cancelled = []

    async def handle(msg):
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(msg.seq)
            raise

    actor = Actor(hub.endpoint, name="aio-cancel", grace=0.2)
    actor.add_handler("stuck", handle, group="g")
    actor.start()
    with Producer(hub.endpoint) as p:
        p.publish("stuck", b"x")
    assert entered.wait(10)
    actor.stop()
    assert cancelled == [1]
    with Consumer(hub.endpoint) as c:
        c.subscribe("stuck", "g")
        again = c.receive(timeout=10)
        assert again is not None and again.seq == 1 and again.deliveries == 1  # released, not failed
        again.ack()


def test_a_redelivery_of_a_message_still_running_is_folded_into_it_not_run_twice(fake_clock_hub):
    # Given a handler slower than its subscription's ack_wait, with a free worker to spare, on a
    # hub whose clock stands still
    hub, clock = fake_clock_hub()
    runs: list[int] = []
    started = threading.Event()
    redelivered = threading.Event()

    def handle(msg):
        runs.append(msg.deliveries)
        started.set()
        # the hub gives up on this delivery after 0.3 s and delivers the message again
        wait_for(lambda: sub_state(hub.endpoint, "slowpoke", "g").get("in_flight") == 1
                 and actor.session is not None and redelivered.is_set(), timeout=10,
                 message="redelivery")

    actor = Actor(hub.endpoint, name="folder", concurrency=2)
    actor.add_handler("slowpoke", handle, group="g", ack_wait=0.3, max_deliver=0)
    original = actor._take_inbox

    def spy(session):  # notes the second delivery arriving while the first still runs
        if any(m.deliveries > 1 for m in session.inbox):
            redelivered.set()
        original(session)

    actor._take_inbox = spy
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("slowpoke", b"x")
        # When the hub's clock passes ack_wait while the handler runs
        assert started.wait(10), "the handler never ran"
        clock.advance(300)
        wait_for(lambda: sub_state(hub.endpoint, "slowpoke", "g").get("ack_floor") == 1,
                 message="acked")
    finally:
        actor.stop()
    # Then the handler ran once, and both deliveries were settled by its ack
    assert runs == [1]
    assert sub_state(hub.endpoint, "slowpoke", "g")["in_flight"] == 0


def test_plain_and_async_handlers_share_one_actor(hub):
    got: dict[str, list[int]] = {"sync": [], "async": []}
    done = threading.Event()

    def check():
        if len(got["sync"]) == 5 and len(got["async"]) == 5:
            done.set()

    def plain(msg):
        got["sync"].append(msg.seq)
        check()

    async def coro(msg):
        await asyncio.sleep(0)
        got["async"].append(msg.seq)
        check()

    actor = Actor(hub.endpoint, name="mixed", concurrency=3)
    actor.add_handler("a", plain, group="g")
    actor.add_handler("b", coro, group="g")
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            for i in range(5):
                p.publish_async("a", b"%d" % i)
                p.publish_async("b", b"%d" % i)
            p.flush()
        assert done.wait(20)
    finally:
        actor.stop()
    assert got == {"sync": [1, 2, 3, 4, 5], "async": [1, 2, 3, 4, 5]}
