"""Failover with real processes: a real ZooKeeper and three ``zmq-mq hub --cluster`` processes
on loopback. A leader killed -9 under a steady publish and consume load: the controller
promotes its follower (a higher epoch), publishing and consuming resume there, every message
confirmed before the kill is readable on the new leader, and every confirmed message is
consumed. A leader paused (SIGSTOP) past its session timeout and
resumed after its partition moved: its late publishes are refused, never confirmed.

The publisher here is a small raw-protocol router (METADATA, then each batch to the leader,
resent with the same msg_ids to the new leader on not_leader / unavailable / silence): the
client library's routing Producer is built by the client side of issue 13.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from conftest import wait_for
from zmq_mq.actors.admin import Admin
from zmq_mq.router import protocol
from zmq_mq.router.protocol import Command

SESSION = 2.0  # s: ZooKeeper session timeout of the hubs (the failure detector)
WAIT = 40.0


def ask(ctx: zmq.Context, endpoint: str, command: bytes, body, timeout: float = 2.0):
    """One request on a fresh DEALER: (command, body), or None without an answer in time."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode(command, body))
        if not sock.poll(int(timeout * 1000)):
            return None
        return protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
    finally:
        sock.close(linger=0)


def metadata(ctx, endpoints) -> dict | None:
    for endpoint in endpoints:
        reply = ask(ctx, endpoint, Command.METADATA, {}, 1.0)
        if reply is not None and reply[0] == Command.METADATA:
            return reply[1]
    return None


def leader_of(ctx, endpoints, partition: str) -> tuple[str | None, int, str | None]:
    """(leader, epoch, its endpoint) of ``partition`` as a live hub sees it."""
    meta = metadata(ctx, endpoints)
    if meta is None or partition not in meta["partitions"]:
        return None, -1, None
    state = meta["partitions"][partition]
    hub = meta["hubs"].get(state["leader"]) if state["leader"] else None
    return state["leader"], state["epoch"], hub["endpoint"] if hub else None


class Publisher(threading.Thread):
    """Publishes batches of 5 messages (each with a msg_id) to the leader of one partition,
    one batch at a time, following leader changes; records what was confirmed."""

    def __init__(self, ctx, endpoints: list[str], partition: str) -> None:
        super().__init__(daemon=True)
        self.ctx = ctx
        self.endpoints = endpoints  # live hubs to ask METADATA (the test updates it)
        self.partition = partition
        self.confirmed: dict[str, int] = {}  # msg_id -> seq
        self.refusals: list[str] = []
        self.stop_event = threading.Event()
        self.batches = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        endpoint = None
        i = 0
        while not self.stop_event.is_set():
            ids = [f"m{i}-{j}" for j in range(5)]
            msgs = [[self.partition, mid.encode(), None, None, {"msg_id": mid}] for mid in ids]
            while not self.stop_event.is_set():
                if endpoint is None:
                    _, _, endpoint = leader_of(self.ctx, list(self.endpoints), self.partition)
                    if endpoint is None:
                        time.sleep(0.05)
                        continue
                reply = ask(self.ctx, endpoint, Command.PUBLISH, [f"b{i}", msgs], 2.0)
                if reply is not None and reply[0] == Command.CONFIRM:
                    assert reply[1][0] == f"b{i}"
                    for mid, seq in zip(ids, reply[1][1]):
                        self.confirmed[mid] = seq
                    self.batches += 1
                    break
                if reply is not None:
                    self.refusals.append(reply[1].get("code"))
                endpoint = None  # not_leader, unavailable, silence: ask who leads now
                time.sleep(0.05)
            i += 1


class Consumer(threading.Thread):
    """Reads one partition as group ``g`` on its leader, acking every delivery; when the
    leader goes silent or answers not_leader, asks who leads now and subscribes there (the
    subscription resumes from the replicated cursor)."""

    def __init__(self, ctx, endpoints: list[str], partition: str) -> None:
        super().__init__(daemon=True)
        self.ctx = ctx
        self.endpoints = endpoints
        self.partition = partition
        self.processed: set[str] = set()
        self.deliveries = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        sock = None
        try:
            while not self.stop_event.is_set():
                _, _, endpoint = leader_of(self.ctx, list(self.endpoints), self.partition)
                if endpoint is None:
                    time.sleep(0.05)
                    continue
                if sock is not None:
                    sock.close(linger=0)
                sock = self.ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
                sock.send_multipart(protocol.encode(Command.SUBSCRIBE, {
                    "sid": 1, "topic": self.partition, "group": "g", "credit": 200}))
                self._consume(sock)
        finally:
            if sock is not None:
                sock.close(linger=0)

    def _consume(self, sock) -> None:
        silent_since = time.monotonic()
        while not self.stop_event.is_set():
            if not sock.poll(200):
                if time.monotonic() - silent_since > 1.5:
                    return  # a silent hub: who leads now?
                sock.send_multipart(protocol.encode(Command.HEARTBEAT, []))
                continue
            command, body = protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
            silent_since = time.monotonic()
            if command == Command.ERROR:
                time.sleep(0.1)
                return  # not_leader, unavailable: subscribe on the leader
            if command == Command.DELIVER:
                sid, topic, entries = body
                for seq, _, record in entries:
                    self.processed.add(protocol.unpack_record(record)[3].decode())
                self.deliveries += len(entries)
                sock.send_multipart(protocol.encode(
                    Command.ACK, [sid, {topic: [e[0] for e in entries]}]))


def settled(ctx, endpoints, topic: str, partitions: int) -> bool:
    meta = metadata(ctx, endpoints)
    return meta is not None and all(
        meta["partitions"].get(f"{topic}.{i}", {}).get("leader") for i in range(partitions))


def one_partition_on_two_hubs(cluster, context):
    """Topic ``t`` (1 partition, 2 replicas, min_insync 1) on a cluster of two hubs, both in
    sync: (leader node, follower node, leader endpoint, ``isr()`` as the leader answers it)."""
    cluster.create_topic("t", 1, 2, min_insync=1, timeout=WAIT)
    endpoints = cluster.endpoints()
    wait_for(lambda: settled(context, endpoints, "t", 1), WAIT)
    leader, _, endpoint = leader_of(context, endpoints, "t.0")
    follower = next(n for n in cluster.hubs if n != leader)

    def isr() -> list[str]:
        meta = metadata(context, [endpoint])
        return meta["partitions"]["t.0"]["isr"] if meta else []

    wait_for(lambda: len(isr()) == 2, WAIT)
    return leader, follower, endpoint, isr


@pytest.mark.slow
def test_a_killed_leaders_partition_moves_to_its_follower_and_no_confirmed_message_is_lost(
        hub_cluster, context):
    cluster = hub_cluster("a", "b", "c", session=SESSION)
    hubs = cluster.hubs
    cluster.create_topic("orders", 6, 2, min_insync=1, timeout=WAIT)
    endpoints = [h.endpoint for h in hubs.values()]
    wait_for(lambda: settled(context, endpoints, "orders", 6), WAIT)
    partition = "orders.0"
    old_leader, old_epoch, _ = leader_of(context, endpoints, partition)
    publisher = Publisher(context, endpoints, partition)
    consumer = Consumer(context, endpoints, partition)
    publisher.start()
    consumer.start()
    try:
        wait_for(lambda: publisher.batches >= 20, WAIT, message="20 batches confirmed")
        wait_for(lambda: consumer.deliveries > 0, WAIT, message="consuming")
        hubs[old_leader].kill9()
        confirmed_at_kill = dict(publisher.confirmed)
        live = [h.endpoint for n, h in hubs.items() if n != old_leader]
        publisher.endpoints = consumer.endpoints = live

        def moved():
            leader, epoch, _ = leader_of(context, live, partition)
            return leader not in (None, old_leader) and epoch > old_epoch

        wait_for(moved, WAIT, message="the follower promoted")
        after = publisher.batches
        wait_for(lambda: publisher.batches >= after + 10, WAIT,
                 message="publishing resumed on the new leader")
        publisher.stop_event.set()
        publisher.join(10)
        # consuming resumed on the new leader too: every confirmed message is processed
        wait_for(lambda: set(publisher.confirmed) <= consumer.processed, WAIT,
                 message="every confirmed message consumed")
    finally:
        publisher.stop_event.set()
        consumer.stop_event.set()
        publisher.join(10)
        consumer.join(10)
    assert publisher.error is None, publisher.error
    assert consumer.error is None, consumer.error
    new_leader, _, endpoint = leader_of(context, live, partition)
    with Admin(endpoint, timeout=10) as admin:
        stored = {m.payload.decode(): m.seq for m in admin.scan(partition)}
    lost = [mid for mid in confirmed_at_kill if mid not in stored]
    assert lost == [], f"{len(lost)} confirmed messages lost: {lost[:10]}"
    # same sequences on the new leader as the old leader confirmed
    assert all(stored[mid] == seq for mid, seq in confirmed_at_kill.items())
    # and every message confirmed after the kill too, each stored once (msg_id dedup)
    assert all(mid in stored for mid in publisher.confirmed)
    assert len(set(stored.values())) == len(stored)


@pytest.mark.slow
def test_a_paused_leader_deposed_meanwhile_never_confirms_its_late_publishes(hub_cluster,
                                                                             context):
    cluster = hub_cluster("a", "b", "c", session=SESSION)
    hubs = cluster.hubs
    cluster.create_topic("t", 3, 2, min_insync=1, timeout=WAIT)
    endpoints = [h.endpoint for h in hubs.values()]
    wait_for(lambda: settled(context, endpoints, "t", 3), WAIT)
    partition = "t.0"
    leader, epoch, endpoint = leader_of(context, endpoints, partition)
    assert ask(context, endpoint, Command.PUBLISH, ["before", [[partition, b"x", None, None]]],
               10)[0] == Command.CONFIRM
    others = [h.endpoint for n, h in hubs.items() if n != leader]
    # a client already connected to the leader, ready to send while it is paused
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    cluster.pause(leader)
    try:
        def moved():
            new, new_epoch, _ = leader_of(context, others, partition)
            return new not in (None, leader) and new_epoch > epoch

        wait_for(moved, WAIT, message="the partition moved off the paused leader")
        # sent while it is paused: read by the stale leader the moment it runs again
        sock.send_multipart(protocol.encode(
            Command.PUBLISH, ["late", [[partition, b"late", None, None, {"msg_id": "late"}]]]))
    finally:
        cluster.resume(leader)
    assert sock.poll(int(WAIT * 1000)), "the resumed leader never answered the late publish"
    command, body = protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
    sock.close(linger=0)
    assert command == Command.ERROR, f"a deposed leader confirmed: {body}"
    assert body["code"] in ("not_leader", "unavailable")
    # and the partition's new leader never got it
    new, _, new_endpoint = leader_of(context, others, partition)
    with Admin(new_endpoint, timeout=10) as admin:
        payloads = [m.payload for m in admin.scan(partition)]
    assert b"late" not in payloads and b"x" in payloads
    # the resumed hub follows the new leader: any unconfirmed tail it stored is dropped, it
    # catches up and rejoins the in-sync replicas, holding the new leader's records at the
    # same sequences
    reply = ask(context, new_endpoint, Command.PUBLISH,
                ["after", [[partition, b"after", None, None]]], 10)
    assert reply[0] == Command.CONFIRM, reply

    def rejoined():
        meta = metadata(context, others)
        return meta is not None and leader in meta["partitions"][partition]["isr"]

    wait_for(rejoined, WAIT, message="the former leader back in the in-sync replicas")
    with Admin(new_endpoint, timeout=10) as admin:
        on_leader = [(m.seq, m.payload) for m in admin.scan(partition)]
    with Admin(hubs[leader].endpoint, timeout=10) as admin:
        on_former = [(m.seq, m.payload) for m in admin.scan(partition)]
    assert on_former == on_leader


@pytest.mark.slow
def test_a_paused_follower_leaves_the_in_sync_set_and_rejoins_once_caught_up(hub_cluster,
                                                                              context):
    # sessions longer than the replica lag (3 s): the leader, not the controller, drops it
    cluster = hub_cluster("a", "b", session=15)
    hubs = cluster.hubs
    leader, follower, endpoint, isr = one_partition_on_two_hubs(cluster, context)
    cluster.pause(follower)
    try:
        # held until the leader drops the silent follower from the in-sync set (after the
        # 3 s replica lag: well before the follower's 15 s session would end)
        reply = ask(context, endpoint, Command.PUBLISH,
                    ["b1", [["t.0", b"1", None, None]]], 10)
        assert reply is not None and reply[0] == Command.CONFIRM, reply
        wait_for(lambda: isr() == [leader], WAIT, message="the shrunk set in ZooKeeper")
    finally:
        cluster.resume(follower)
    wait_for(lambda: follower in isr(), WAIT,
             message="the follower back in the in-sync set once caught up")
    with Admin(hubs[follower].endpoint, timeout=10) as admin:
        assert [m.payload for m in admin.scan("t.0")] == [b"1"]


@pytest.mark.slow
def test_a_killed_follower_restarts_catches_up_from_its_last_seq_and_rejoins(hub_cluster,
                                                                             context):
    cluster = hub_cluster("a", "b", session=SESSION)
    hubs = cluster.hubs
    leader, follower, endpoint, isr = one_partition_on_two_hubs(cluster, context)
    for i in range(5):
        assert ask(context, endpoint, Command.PUBLISH,
                   [f"a{i}", [["t.0", f"a{i}".encode(), None, None]]], 10)[0] == Command.CONFIRM
    hubs[follower].kill9()
    # the leader goes on alone (min_insync 1) once the dead follower left the in-sync set
    for i in range(5):
        reply = ask(context, endpoint, Command.PUBLISH,
                    [f"b{i}", [["t.0", f"b{i}".encode(), None, None]]], WAIT)
        assert reply is not None and reply[0] == Command.CONFIRM, reply
    hubs[follower].restart()
    wait_for(lambda: follower in isr(), WAIT, message="the restarted follower back in sync")
    with Admin(hubs[follower].endpoint, timeout=10) as admin:
        copy = [(m.seq, m.payload) for m in admin.scan("t.0")]
    with Admin(endpoint, timeout=10) as admin:
        original = [(m.seq, m.payload) for m in admin.scan("t.0")]
    assert copy == original and len(original) == 10
