"""The asyncio clients (actors/aio.py): AsyncProducer and AsyncConsumer keep the event loop free
while the hub commits, is stopped or restarts, with the sync clients' options, errors and
guarantees; a PublishFuture can be awaited."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from zmq_mq.actors import (Admin, AsyncConsumer, AsyncProducer, ClosedError, Consumer,
                           HubUnavailable, InvalidMessage, Producer)


class Ticker:
    """A coroutine that ticks every 5 ms: its count shows whether the loop was free."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.ticks += 1

    def __enter__(self) -> "Ticker":
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()

    async def wait_ticks(self, n: int, timeout: float = 10.0) -> None:
        start = self.ticks
        deadline = time.monotonic() + timeout
        while self.ticks - start < n:
            assert time.monotonic() < deadline, "the ticker stopped: the loop is blocked"
            await asyncio.sleep(0.005)


@pytest.fixture
def stoppable_hub(hub_process):
    """A hub process that a test may SIGSTOP (it is always SIGCONTed before it is stopped)."""
    h = hub_process()
    yield h
    if h.running():
        os.kill(h.pid, signal.SIGCONT)


# --- PublishFuture ---------------------------------------------------------------------------


def test_a_publish_future_of_the_sync_producer_can_be_awaited_in_a_coroutine(hub):
    # Given a sync Producer (its own I/O thread) and a coroutine holding one of its futures
    async def main(p: Producer) -> list[int]:
        futures = [p.publish_async("aw", b"%d" % i) for i in range(3)]
        # When it awaits them
        return [await f for f in futures]

    with Producer(hub.endpoint) as p:
        # Then each gives its sequence number, as result() does
        assert asyncio.run(main(p)) == [1, 2, 3]


# --- AsyncProducer -----------------------------------------------------------------------------


def test_an_async_publish_returns_the_sequence_once_durable_with_the_sync_options(hub):
    async def main() -> tuple:
        async with AsyncProducer(hub.endpoint) as p:
            first = await p.publish("orders", b"a", key="k1", headers={"h": 1}, msg_id="m-1",
                                    priority=5)
            again = await p.publish("orders", b"a", msg_id="m-1")  # a retry: stored once
            later = await p.publish("orders", b"b", delay=60)
            return first, again, later

    first, again, later = asyncio.run(main())
    assert (first, again, later) == (1, 1, 2)
    stored = Admin(hub.endpoint).fetch("orders")
    assert [m.seq for m in stored] == [1, 2]
    assert stored[0].key == "k1" and stored[0].headers["h"] == 1 and stored[0].priority == 5
    assert stored[0].msg_id == "m-1" and "x-deliver-at" in stored[1].headers


def test_publish_async_queues_without_waiting_and_flush_waits_for_all_of_them(hub):
    async def main() -> list[int]:
        async with AsyncProducer(hub.endpoint, max_pending=50) as p:
            # more than max_pending: the rest waits in the producer, in order, not in the loop
            futures = [p.publish_async("many", b"%d" % i) for i in range(500)]
            await p.flush()
            assert all(f.done() for f in futures)
            return [await f for f in futures]

    assert asyncio.run(main()) == list(range(1, 501))
    assert [int(m.payload) for m in Admin(hub.endpoint).fetch("many", 0, 500)] == list(range(500))


def test_messages_published_before_the_connection_is_up_go_out_in_order(hub):
    async def main() -> list[int]:
        p = AsyncProducer(hub.endpoint)
        futures = [p.publish_async("early", b"%d" % i) for i in range(20)]  # not connected yet
        seqs = [await f for f in futures]
        await p.close()
        return seqs

    assert asyncio.run(main()) == list(range(1, 21))


def test_the_async_producer_refuses_what_the_sync_one_refuses_with_the_same_errors(hub):
    async def main() -> None:
        async with AsyncProducer(hub.endpoint) as p:
            with pytest.raises(InvalidMessage):
                p.publish_async("bad topic!", b"x")
            with pytest.raises(InvalidMessage):
                await p.publish("ok", "not bytes")  # type: ignore[arg-type]
            with pytest.raises(InvalidMessage):
                await p.publish("ok", b"x", delay=1, deliver_at=5)
        with pytest.raises(ClosedError):
            await p.publish("ok", b"x")
        with pytest.raises(ClosedError):
            p.publish_async("ok", b"x")

    asyncio.run(main())


def test_connecting_to_no_hub_raises_hub_unavailable_within_the_timeout_and_the_loop_runs_on():
    async def main() -> float:
        with Ticker() as ticker:
            p = AsyncProducer("tcp://127.0.0.1:9", timeout=0.5)  # nothing listens on port 9
            t0 = time.monotonic()
            with pytest.raises(HubUnavailable):
                await p.publish("x", b"x")
            took = time.monotonic() - t0
            assert ticker.ticks >= 10  # the handshake waited on a worker thread
        again = AsyncProducer("tcp://127.0.0.1:9", timeout=0.2)
        with pytest.raises(HubUnavailable):
            await again.connect()
        with pytest.raises(ClosedError):  # as Producer: a producer that could not connect
            await again.publish("x", b"x")
        return took

    assert asyncio.run(main()) < 3.0


@pytest.mark.slow
def test_the_event_loop_keeps_serving_other_coroutines_while_a_publish_waits_for_its_commit(
        stoppable_hub):
    hub = stoppable_hub

    async def main() -> None:
        async with AsyncProducer(hub.endpoint, timeout=30) as p:
            assert await p.publish("held", b"warm") == 1
            with Ticker() as ticker:
                # Given a hub that cannot commit (SIGSTOP) while a publish waits for it
                os.kill(hub.pid, signal.SIGSTOP)
                publish = asyncio.ensure_future(p.publish("held", b"x"))
                # When other coroutines run meanwhile (the ticker, a concurrent "request")
                await ticker.wait_ticks(40)
                assert await asyncio.wait_for(asyncio.sleep(0, "answered"), 1) == "answered"
                # Then they were served while the publish was still waiting
                assert not publish.done()
                # And once the hub runs again, the publish returns its sequence
                os.kill(hub.pid, signal.SIGCONT)
                assert await publish == 2

    asyncio.run(main())


@pytest.mark.slow
def test_a_publish_to_a_stopped_hub_raises_hub_unavailable_at_its_timeout_and_flush_goes_on(
        stoppable_hub):
    hub = stoppable_hub

    async def main() -> None:
        async with AsyncProducer(hub.endpoint, timeout=30) as p:
            await p.publish("stuck", b"warm")
            os.kill(hub.pid, signal.SIGSTOP)
            with Ticker() as ticker:
                t0 = time.monotonic()
                with pytest.raises(HubUnavailable, match="within 0.5 s"):
                    await p.publish("stuck", b"x", timeout=0.5, msg_id="retry-me")
                assert 0.4 < time.monotonic() - t0 < 2.0
                assert ticker.ticks >= 20
            os.kill(hub.pid, signal.SIGCONT)
            # the abandoned message is not waited for again; a retry with its msg_id stores once
            await p.flush(10)
            seq = await p.publish("stuck", b"x", msg_id="retry-me")
        assert [m.seq for m in Admin(hub.endpoint).fetch("stuck")] == [1, seq]

    asyncio.run(main())


# --- AsyncConsumer -----------------------------------------------------------------------------


def _publish(endpoint: str, topic: str, n: int) -> None:
    with Producer(endpoint) as p:
        for i in range(n):
            p.publish_async(topic, b"%d" % i)
        p.flush()


def test_an_async_consumer_receives_every_message_and_close_makes_its_acks_durable(hub):
    _publish(hub.endpoint, "feed", 300)

    async def main() -> list[int]:
        got = []
        async with AsyncConsumer(hub.endpoint) as c:
            await c.subscribe("feed", "readers", credit=50)
            async for msg in c:
                got.append(int(msg.payload))
                await msg.ack()
                if len(got) == 300:
                    break
        return got

    assert asyncio.run(main()) == list(range(300))
    # the acks were committed at close: the group has nothing left
    with Consumer(hub.endpoint) as c:
        c.subscribe("feed", "readers")
        assert c.receive(timeout=0.5) is None


def test_async_nack_reject_and_progress_settle_as_the_sync_ones_do(hub):
    _publish(hub.endpoint, "jobs", 2)

    async def main() -> None:
        async with AsyncConsumer(hub.endpoint) as c:
            await c.subscribe("jobs", "workers", ack_wait=30, max_deliver=5)
            first = await c.receive(timeout=10)
            second = await c.receive(timeout=10)
            await first.progress()
            await first.nack()  # redelivered
            second.reject("bad input")  # without await: settles all the same
            again = await c.receive(timeout=10)
            assert (again.seq, again.deliveries) == (first.seq, 2)
            await again.ack()
            with pytest.raises(ValueError):
                await c.subscribe("bad topic!", "g")
        async with AsyncConsumer(hub.endpoint) as c:
            await c.subscribe("dlq.workers", "inspect")
            dead = await c.receive(timeout=10)
            assert dead.seq and "bad input" in dead.headers["x-reason"]
            await dead.ack()

    asyncio.run(main())


def test_receive_returns_none_after_its_timeout_and_close_ends_an_async_for(hub):
    async def main() -> None:
        c = AsyncConsumer(hub.endpoint)
        await c.subscribe("quiet", "g")
        t0 = time.monotonic()
        assert await c.receive(timeout=0.3) is None
        assert 0.25 < time.monotonic() - t0 < 3.0

        async def iterate() -> int:
            return len([msg async for msg in c])

        reader = asyncio.ensure_future(iterate())
        await asyncio.sleep(0.1)
        assert not reader.done()  # waiting for a message, without blocking the loop
        await c.close()
        assert await asyncio.wait_for(reader, 5) == 0
        with pytest.raises(ClosedError):
            await c.subscribe("quiet", "g2")

    asyncio.run(main())


def test_an_async_consumer_keeps_heartbeating_while_the_application_awaits_something_else(tmp_path):
    # Given a hub that takes a client silent for 3 x 100 ms as gone
    from zmq_mq.testing import running_hub
    from conftest import sub_state

    with running_hub(tmp_path / "data", heartbeat_ms=100) as hub:
        _publish(hub.endpoint, "slow", 2)

        async def main() -> None:
            async with AsyncConsumer(hub.endpoint) as c:
                await c.subscribe("slow", "g")
                first = await c.receive(timeout=10)
                # When the application awaits other work for 10 heartbeat intervals
                await asyncio.sleep(1.0)
                # Then the hub still counts it attached, and nothing was re-attached or redelivered
                assert sub_state(hub.endpoint, "slow", "g").get("actors") == 1
                assert c._session.reattached == 0
                await first.ack()
                second = await c.receive(timeout=10)
                assert (second.seq, second.deliveries) == (2, 1)
                await second.ack()

        asyncio.run(main())


@pytest.mark.slow
def test_an_async_consumer_reattaches_after_a_hub_restart_without_blocking_its_loop(hub_process):
    hub = hub_process(extra=["--heartbeat-ms", "200"])
    _publish(hub.endpoint, "r", 1)

    async def main() -> set[int]:
        after: set[int] = set()
        async with AsyncConsumer(hub.endpoint) as c:
            await c.subscribe("r", "g")
            msg = await c.receive(timeout=10)
            await msg.ack()
            c.flush()
            with Ticker() as ticker:
                # When the hub dies and stays down a while, then restarts on its data
                hub.kill9()
                await ticker.wait_ticks(100)  # the loop ran on throughout
                await asyncio.to_thread(hub.restart)
                await asyncio.to_thread(_publish, hub.endpoint, "r", 2)
                # Then the consumer re-attached by itself and receives what came after (seq 1
                # again too, if the killed hub had not committed its ack: at-least-once)
                while not {2, 3} <= after:
                    msg = await c.receive(timeout=20)
                    assert msg is not None, "nothing received after the restart"
                    after.add(msg.seq)
                    await msg.ack()
        return after

    assert asyncio.run(main()) - {1} == {2, 3}
