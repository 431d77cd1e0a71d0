"""The Actor at the speed of the log (issue 12): the adaptive credit window (a pure policy,
driven with an explicit clock), batched hand-off to the workers, and a work queue where a slow
actor does not hoard what a fast one could take."""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time

import pytest

from zmq_mq.actors import Actor, Consumer, Producer
from zmq_mq.actors.window import RATE_SAMPLE_MS, TARGET_HOLD_MS, CreditWindow

from conftest import sub_state, wait_for


# --- the window policy ---------------------------------------------------------------------


def _fill(w: CreditWindow) -> None:
    w.delivered(w.window - w.held)


def _drain(w: CreditWindow) -> None:
    w.finished(w.held)


def test_the_window_starts_at_the_concurrency_and_doubles_up_to_its_cap_while_workers_run_dry():
    w = CreditWindow(2, 50, now_ms=0)
    assert w.window == 2
    seen = []
    for t in range(1, 10):
        _fill(w)     # the hub gave all the window allows
        _drain(w)    # the workers finished it all and wait for more
        w.update(t, starved=True, oldest_wait_ms=None)
        seen.append(w.window)
    assert seen == [4, 8, 16, 32, 50, 50, 50, 50, 50]


def test_the_window_does_not_grow_when_the_hub_had_no_more_to_give():
    # Given a window of 4 of which only 1 was ever used (the topic is quiet)
    w = CreditWindow(4, 100, now_ms=0)
    for t in range(1, 20):
        w.delivered(1)
        w.finished(1)
        # When the workers are idle, Then the window stays: more credit would not help
        assert w.update(t, starved=True, oldest_wait_ms=None) is None
    assert w.window == 4


def test_the_window_does_not_grow_while_messages_wait_for_the_workers():
    w = CreditWindow(1, 100, now_ms=0)
    for t in range(1, 20):
        _fill(w)
        assert w.update(t, starved=False, oldest_wait_ms=1) is None
    assert w.window == 1


def test_the_window_shrinks_to_what_the_workers_finish_in_the_hold_time_when_messages_wait():
    # Given a window grown to 1000 for a handler that then slows down to 20 messages a second
    w = CreditWindow(1, 1000, now_ms=0, start=1000)
    _fill(w)
    t = 0
    for _ in range(10):  # 20 per second: one finished every 50 ms
        t += 50
        w.finished(1)
        w.update(t, starved=False, oldest_wait_ms=t)
    # Then it holds its one running message plus what it finishes in the hold time
    expected = 1 + -(-TARGET_HOLD_MS * 20 // 1000)
    assert w.window == expected
    assert w.window <= 3


def test_the_window_never_goes_below_its_floor_nor_above_its_cap():
    w = CreditWindow(8, 16, now_ms=0)
    w.update(10_000, starved=False, oldest_wait_ms=10_000)  # nothing finished: rate 0
    assert w.window == 8
    for t in range(1, 10):
        _fill(w)
        _drain(w)
        w.update(10_000 + t, starved=True, oldest_wait_ms=None)
    assert w.window == 16
    # a floor above the cap is the cap; a start outside the bounds is clamped
    assert CreditWindow(50, 10, now_ms=0).window == 10
    assert CreditWindow(2, 10, now_ms=0, start=500).window == 10


def test_the_completion_rate_is_sampled_over_the_sample_time_and_smoothed():
    w = CreditWindow(1, 100, now_ms=0)
    w.finished(0)
    w.delivered(10)
    w.finished(10)
    w.update(RATE_SAMPLE_MS - 1, starved=False, oldest_wait_ms=None)
    assert w.rate == 0.0  # not a full sample yet
    w.update(RATE_SAMPLE_MS, starved=False, oldest_wait_ms=None)
    assert w.rate == pytest.approx(10 / RATE_SAMPLE_MS)
    w.update(2 * RATE_SAMPLE_MS, starved=False, oldest_wait_ms=None)  # none finished since
    assert w.rate == pytest.approx(10 / RATE_SAMPLE_MS / 2)


def _steady_stream(w: CreditWindow, per_ms: int, finish_per_ms: float,
                   ms: int) -> tuple[list[int], int]:
    """Drive the window as the actor's loop does, one turn a ms: the hub receives ``per_ms``
    messages a ms and hands out what the window allows; the workers (as many as the floor)
    finish up to ``finish_per_ms`` a ms, the rest waits here. Returns the hub's backlog after
    each turn and the most messages the actor ever held."""
    hub_backlog, local, credit_done, backlog, most = 0, collections.deque(), 0.0, [], 0
    for now in range(1, ms + 1):
        hub_backlog += per_ms
        give = min(hub_backlog, w.window - w.held)
        if give > 0:
            hub_backlog -= give
            w.delivered(give)
            local.extend([now] * give)
            most = max(most, w.held)
        credit_done += finish_per_ms
        done = min(int(credit_done), len(local))
        credit_done -= done
        for _ in range(done):
            local.popleft()
        w.finished(done)
        waiting = len(local) > w.floor  # the first `floor` run, the rest wait here
        oldest = now - local[w.floor] if waiting else None
        w.update(now, starved=not local, oldest_wait_ms=oldest)
        backlog.append(hub_backlog)
    return backlog, most


def test_a_steady_stream_faster_than_the_window_grows_it_until_the_hub_holds_nothing_back():
    # Given W5's case: 10 messages a ms arriving at the hub, a default window (floor 1, cap
    # 1000) and a worker that finishes 100 a ms
    w = CreditWindow(1, 1000, now_ms=0)
    backlog, _ = _steady_stream(w, per_ms=10, finish_per_ms=100, ms=2000)
    # Then the window grows past the rate within a few turns and the hub keeps no backlog
    assert w.window >= 10
    assert max(backlog[100:]) == 0


def test_a_slow_worker_keeps_a_small_window_while_the_hub_holds_a_growing_backlog():
    # Given the same stream and a worker that finishes one message every 50 ms
    w = CreditWindow(1, 1000, now_ms=0)
    _, most = _steady_stream(w, per_ms=10, finish_per_ms=1 / 50, ms=3000)
    # Then it never holds more than it runs plus what it finishes in the hold time: the rest
    # stays at the hub for the other actors of the group
    assert w.window <= 1 + math.ceil(TARGET_HOLD_MS / 50) + 1
    assert most <= 1 + math.ceil(TARGET_HOLD_MS / 50) + 1


# --- end to end ----------------------------------------------------------------------------


def test_a_default_actor_holds_more_than_one_message_once_its_handler_keeps_up_with_a_backlog(hub):
    # Given 3,000 messages waiting and a default actor (one worker) whose handler is quick for
    # the first 1,500 messages and then blocks
    topic, group = "window.grow", "grow"
    with Producer(hub.endpoint) as p:
        for i in range(3000):
            p.publish_async(topic, b"%d" % i)
        p.flush()
    gate = threading.Event()
    seen = []

    def handle(msg):
        seen.append(msg.seq)
        if len(seen) >= 1500:
            gate.wait(30)

    actor = Actor(hub.endpoint, name="grower")
    actor.add_handler(topic, handle, group=group)
    actor.start()
    try:
        wait_for(lambda: len(seen) >= 1500, message="1,500 handled")
        # Then the hub has handed it many more than its one worker runs (a window of one
        # message per round trip was the old default: in_flight stayed 1)
        state = wait_for(lambda: (s := sub_state(hub.endpoint, topic, group))
                         and s["in_flight"] > 1 and s, message="more than one in flight")
        assert state["in_flight"] > 1
        gate.set()
        wait_for(lambda: len(seen) >= 3000, message="all handled")
    finally:
        gate.set()
        actor.stop()
    assert sorted(seen) == list(range(1, 3001))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_message_of_a_batch_is_handled_exactly_once_and_all_acks_reach_the_hub(hub, kind):
    # Given an actor with 4 workers attached before 5,000 messages arrive (DELIVER frames of
    # many messages each)
    topic, group = f"batch.{kind}", f"batch-{kind}"
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    done = threading.Event()
    n = 5000

    def record(msg):
        with lock:
            counts[msg.seq] += 1
            if len(counts) == n:
                done.set()

    actor = Actor(hub.endpoint, name=f"batcher-{kind}", concurrency=4)
    if kind == "async":
        async def handle(msg):
            await asyncio.sleep(0)
            record(msg)
        actor.add_handler(topic, handle, group=group)
    else:
        actor.add_handler(topic, record, group=group)
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            for i in range(n):
                p.publish_async(topic, b"%d" % i)
            p.flush()
        assert done.wait(60), f"{len(counts)} of {n} handled"
    finally:
        actor.stop()  # detached: the hub has committed its acks
    # Then each ran exactly once, and the hub holds none of them any more
    assert sorted(counts) == list(range(1, n + 1))
    assert set(counts.values()) == {1}
    state = sub_state(hub.endpoint, topic, group)
    assert state["in_flight"] == 0 and state["pending"] == 0
    with Consumer(hub.endpoint) as c:
        c.subscribe(topic, group)
        assert c.receive(timeout=0.3) is None


def test_a_slow_actor_of_a_work_queue_holds_a_small_window_and_a_fast_one_takes_the_rest(hub):
    # Given two actors of one group: one whose handler takes 50 ms, one whose handler does
    # nothing; ack_wait 10 s
    topic, group = "fair.work", "workers"
    n = 3000
    handled: dict[str, list[tuple[int, int]]] = {"slow": [], "fast": []}
    held_slow = []
    lock = threading.Lock()
    done = threading.Event()

    def make(name: str, work: float):
        def handle(msg):
            if work:
                time.sleep(work)  # the work: part of the scenario, not a wait for an event
            with lock:
                handled[name].append((msg.seq, msg.deliveries))
                if sum(map(len, handled.values())) >= n:
                    done.set()
        return handle

    slow = Actor(hub.endpoint, name="slow")
    slow.add_handler(topic, make("slow", 0.05), group=group, ack_wait=10.0)
    fast = Actor(hub.endpoint, name="fast")
    fast.add_handler(topic, make("fast", 0.0), group=group, ack_wait=10.0)
    slow.start()
    fast.start()
    try:
        with Producer(hub.endpoint) as p:
            for i in range(n):
                p.publish_async(topic, b"%d" % i)
            p.flush()
        while not done.wait(0.05):
            held_slow.append(len(slow._running))  # handed to its worker, not finished
        held_slow.append(len(slow._running))
    finally:
        fast.stop()
        slow.stop()
    seqs = [s for who in handled.values() for s, _ in who]
    # Then none was lost or handled twice, none was redelivered (none waited in the slow actor
    # until its ack_wait ran out), and the fast actor handled at least 90 %
    assert sorted(seqs) == list(range(1, n + 1))
    assert all(d == 1 for who in handled.values() for _, d in who)
    assert len(handled["fast"]) >= 0.9 * n, {k: len(v) for k, v in handled.items()}
    # and the slow actor never held more than a few messages (its cap is 1,000)
    assert max(held_slow) <= 10, max(held_slow)


def test_a_subscription_without_credit_holds_up_to_one_and_a_half_times_the_concurrency(hub):
    # Given actors that give no credit: one of 4 workers, one of 2,000 async handlers, and one
    # of 2,000 that asks for 2,000 explicitly
    async def handle(msg):
        pass

    caps = {}
    actors = (("few", 4, None), ("many", 2000, None), ("asked", 2000, 2000))
    for name, concurrency, credit in actors:
        actor = Actor(hub.endpoint, name=name, concurrency=concurrency)
        actor.add_handler("window.default", handle, group=name, credit=credit)
        actor.start()
        try:
            [window] = actor._windows.values()
            caps[name] = window.cap
        finally:
            actor.stop()
    # Then the cap is 1,000, or 1.5 x the concurrency when that is more (a slot that frees
    # finds its next message here instead of waiting for the round trip); an explicit credit
    # is kept as given
    assert caps == {"few": 1000, "many": 3000, "asked": 2000}


def test_a_running_actor_raises_the_gc_threshold_and_the_last_one_to_stop_restores_it(hub):
    import gc

    async def handle(msg):
        pass

    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        # Given two actors of the default gc_threshold and one that leaves the GC alone
        first = Actor(hub.endpoint, name="gc-1")
        second = Actor(hub.endpoint, name="gc-2")
        alone = Actor(hub.endpoint, name="gc-3", gc_threshold=None)
        for actor in (first, second, alone):
            actor.add_handler("gc.threshold", handle, group=actor.name)
        alone.start()
        assert gc.get_threshold() == (700, 10, 10)
        first.start()
        second.start()
        try:
            # Then while any of the first two runs the young generation is collected every
            # 50,000 allocations, not every 700
            assert gc.get_threshold() == (50_000, 10, 10)
            first.stop()
            assert gc.get_threshold() == (50_000, 10, 10)
        finally:
            second.stop()
            alone.stop()
        # And the application's setting is back once they stopped
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
