"""Issue 13's acceptance scenario with the real clients end to end: one ZooKeeper and three
``zmq-mq hub --cluster`` processes on loopback, a topic of 6 partitions with 2 replicas, a steady
load through ``Producer("zk://...")`` (publishes with timeouts) and ``Consumer("zk://...")``
acking everything; the leader of a partition is killed -9. Publishing and consuming resume on
the new leader by themselves (no help from the test), and the checker finds 0 confirmed
messages lost: every msg_id the producer saw confirmed was received at least once.

Two variants: ``min_insync 1`` (the survivor takes publishes alone at once) and the default
``min_insync 2`` (the survivor refuses publishes, ``not_enough_replicas``, until the killed hub
is restarted and back in sync: what a fault harness does).

Duplicates (a msg_id received more than once) are counted: they are deliveries that were in
flight (delivered, ack not yet replicated) when the leader died, which the new leader
delivers again from the replicated cursor. They are allowed; loss is not.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest
from conftest import wait_for
from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.router import protocol

SESSION = 2.0  # s: ZooKeeper session timeout of the hubs
WAIT = 60.0
PARTITIONS = 6


def key_of(partition: int) -> str:
    return next(k for k in (f"k{i}" for i in range(10_000))
                if protocol.partition_of(k, PARTITIONS) == partition)


class Load(threading.Thread):
    """A steady publish load over every partition, a window of publishes in flight, each with
    a msg_id and a timeout; records what was confirmed, when, and on which partition."""

    def __init__(self, url: str, topic: str, window: int = 50) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.topic = topic
        self.window = window
        self.keys = [key_of(p) for p in range(PARTITIONS)]
        self.confirmed: dict[str, float] = {}  # msg_id -> monotonic time of its confirm
        self.by_partition: dict[int, list[float]] = collections.defaultdict(list)
        self.failed = collections.Counter()  # error type -> count (unconfirmed: may be stored)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Producer(self.url, timeout=15.0) as producer:
                inflight: collections.deque = collections.deque()
                i = 0
                while not self.stop_event.is_set():
                    p = i % PARTITIONS
                    mid = f"m{i}"
                    inflight.append((mid, p, producer.publish_async(
                        self.topic, mid.encode(), key=self.keys[p], msg_id=mid)))
                    i += 1
                    while len(inflight) >= self.window or (inflight and inflight[0][2].done()):
                        self._settle(*inflight.popleft())
                    time.sleep(0.002)
                while inflight:
                    self._settle(*inflight.popleft())
        except BaseException as exc:
            self.error = exc

    def _settle(self, mid, p, future) -> None:
        try:
            future.result(30.0)
        except Exception as exc:  # a publish timeout: unconfirmed, not lost
            self.failed[type(exc).__name__] += 1
            return
        now = time.monotonic()
        self.confirmed[mid] = now
        self.by_partition[p].append(now)


class Reader(threading.Thread):
    def __init__(self, url: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.topic = topic
        self.received: collections.Counter = collections.Counter()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Consumer(self.url, timeout=15.0) as consumer:
                consumer.subscribe(self.topic, group="checker")
                while not self.stop_event.is_set():
                    msg = consumer.receive(timeout=0.2)
                    if msg is None:
                        continue
                    self.received[msg.payload.decode()] += 1
                    msg.ack()
        except BaseException as exc:
            self.error = exc


@pytest.mark.slow
@pytest.mark.parametrize("min_insync", [1, 2])
def test_real_clients_resume_on_the_new_leader_after_a_leader_kill_and_lose_no_confirmed_message(
        hub_cluster, min_insync):
    cluster = hub_cluster("a", "b", "c", session=SESSION)
    url = cluster.url
    with Admin(url, timeout=WAIT) as admin:  # the client's Admin, not the harness's
        admin.create_topic("orders", partitions=PARTITIONS, replicas=2, min_insync=min_insync)
    cluster.wait_settled("orders", WAIT)
    load = Load(url, "orders")
    reader = Reader(url, "orders")
    load.start()
    reader.start()
    try:
        wait_for(lambda: all(len(load.by_partition[p]) >= 100 for p in range(PARTITIONS)), WAIT,
                 message="every partition confirming")
        wait_for(lambda: len(reader.received) >= 100, WAIT, message="consuming")
        victim, epoch = cluster.leader("orders.0")
        led = {p for p in range(PARTITIONS) if cluster.leader(f"orders.{p}")[0] == victim}
        cluster.kill(victim)
        killed_at = time.monotonic()
        cluster.wait_moved("orders.0", victim, epoch, WAIT)  # promoted on its follower
        if min_insync == 2:
            cluster.restart(victim)  # the survivor alone refuses publishes until this one is back

        def resumed():
            return sum(t > killed_at for t in load.by_partition[0]) >= 100

        wait_for(resumed, WAIT, message="publishing to orders.0 resumed on the new leader")
        after = len(reader.received)
        wait_for(lambda: len(reader.received) >= after + 50, WAIT, message="consuming resumed")
        load.stop_event.set()
        load.join(WAIT)
        assert not load.is_alive()
        wait_for(lambda: set(load.confirmed) <= set(reader.received), WAIT,
                 message="every confirmed message consumed")
    finally:
        load.stop_event.set()
        reader.stop_event.set()
        load.join(WAIT)
        reader.join(WAIT)
    assert load.error is None, load.error
    assert reader.error is None, reader.error
    lost = [mid for mid in load.confirmed if mid not in reader.received]
    assert lost == [], f"{len(lost)} confirmed messages lost"
    duplicates = sum(n - 1 for n in reader.received.values() if n > 1)
    # explained: only partitions whose leader was killed deliver again (from the replicated
    # cursor: what was delivered but whose ack had not reached the follower)
    again = {int(mid[1:]) % PARTITIONS for mid, n in reader.received.items() if n > 1}
    assert again <= led, f"duplicates on partitions the killed hub did not lead: {again - led}"
    print(f"min_insync {min_insync}: {len(load.confirmed)} confirmed, "
          f"{sum(load.failed.values())} unconfirmed {dict(load.failed)}, "
          f"{duplicates} duplicate deliveries")
