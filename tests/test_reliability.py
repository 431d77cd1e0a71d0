"""Failures handled: dead actors, poison messages, slow actors, garbage on the wire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import msgpack
import pytest
import zmq

from conftest import step_hub_clock_while_idle, subscription_stats, wait_for, zmq_mq_command
from zmq_mq.actors import Actor, Consumer, HubUnavailable, InvalidMessage, Producer
from zmq_mq.router import protocol
from zmq_mq.router.protocol import SIGNATURE

HOLDER = textwrap.dedent(
    """
    import sys, threading
    from zmq_mq.actors import Consumer
    c = Consumer(sys.argv[1])
    c.connect()
    c.subscribe("jobs", "workers", credit=10)
    got = [c.receive(timeout=30).seq for _ in range(10)]
    print(" ".join(map(str, got)), flush=True)
    threading.Event().wait()   # hold them, never ack, until killed
    """
)


@pytest.mark.slow
def test_messages_held_by_a_killed_actor_go_to_another_actor(hub, processes):
    # Given 30 messages and an actor process holding 10 of them unacked
    with Producer(hub.endpoint) as p:
        for i in range(30):
            p.publish("jobs", b"job %d" % i)
    holder = processes(subprocess.Popen([sys.executable, "-c", HOLDER, hub.endpoint],
                                        stdout=subprocess.PIPE, text=True))
    held = {int(s) for s in holder.stdout.readline().split()}
    assert len(held) == 10

    # When it is killed with SIGKILL while another actor of the group is consuming
    seen: dict[int, int] = {}
    all_seen = threading.Event()

    def handle(msg):
        seen[msg.seq] = msg.deliveries
        if len(seen) == 30:
            all_seen.set()

    other = Actor(hub.endpoint, name="survivor")
    other.add_handler("jobs", handle, group="workers", credit=10)
    other.start()
    try:
        holder.kill()
        holder.wait(10)
        # Then the held messages reach the survivor (within a few heartbeat intervals), none lost
        assert all_seen.wait(30), f"missing {set(range(1, 31)) - set(seen)} {hub.hub.topics()}"
    finally:
        other.stop()
    assert set(seen) == set(range(1, 31))
    assert all(seen[s] == 2 for s in held)  # their second delivery


def test_a_poison_message_is_dead_lettered_after_max_deliver_and_others_flow(fake_clock_hub):
    # Given a handler that always fails on one message (default backoff), on a hub whose clock
    # the test moves through the retries (heartbeats every 10 s: no one is taken for dead)
    hub, clock = fake_clock_hub(heartbeat_ms=10_000)
    processed = []
    done = threading.Event()

    def handle(msg):
        if msg.payload == b"poison":
            raise ValueError("cannot process poison")
        processed.append(msg.seq)
        if len(processed) == 9:
            done.set()

    actor = Actor(hub.endpoint, name="billing-1")
    actor.add_handler("orders", handle, group="billing", credit=5, max_deliver=3)
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            for i in range(10):
                p.publish("orders", b"poison" if i == 4 else b"ok %d" % i, key="k", headers={"n": str(i)})
        assert done.wait(20)
        step_hub_clock_while_idle(hub.endpoint, clock, ("billing",),
                                  lambda rows: rows[0]["dead_lettered"] == 1)
        # Then the poison message lands in dlq.billing with its origin
        with Consumer(hub.endpoint) as c:
            c.subscribe("dlq.billing", "inspect")
            dead = c.receive(timeout=20)
            assert dead is not None
            dead.ack()
    finally:
        actor.stop()
    assert sorted(processed) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert dead.payload == b"poison" and dead.key == "k"
    assert dead.headers["n"] == "4"
    assert dead.headers["x-origin-topic"] == "orders"
    assert dead.headers["x-origin-seq"] == 5
    assert dead.headers["x-subscription"] == "billing"
    assert dead.headers["x-deliveries"] == 3
    assert "nack" in dead.headers["x-reason"]


def test_reject_dead_letters_at_once(hub):
    with Producer(hub.endpoint) as p:
        p.publish("orders", b"bad")
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders", "strict")
        c.receive(timeout=10).reject("schema invalid")
        c.subscribe("dlq.strict", "inspect")
        dead = c.receive(timeout=10)
    assert dead.headers["x-reason"].endswith("schema invalid")
    assert dead.headers["x-deliveries"] == 1


def test_an_unacked_message_is_redelivered_after_ack_wait(fake_clock_hub):
    # Given a hub whose clock stands still, and a message delivered with ack_wait 0.3 s
    hub, clock = fake_clock_hub()
    with Producer(hub.endpoint) as p:
        p.publish("orders", b"slow")
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders", "g", ack_wait=0.3)
        first = c.receive(timeout=10)
        assert first is not None and first.deliveries == 1
        # When it is not acked: 1 ms before ack_wait is over it is still the one delivery
        clock.advance(299)
        assert subscription_stats(hub.endpoint, "orders", "g")["delivered"] == 1
        assert c.receive(timeout=0.05) is None
        # Then once ack_wait is over it comes back
        clock.advance(1)
        again = c.receive(timeout=10)
        assert again is not None and again.seq == first.seq and again.deliveries == 2
        again.ack()


def _rss_anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_credit_bounds_in_flight_and_hub_memory_stays_flat_with_a_backlog(hub_process):
    # Given a hub process and a consumer with credit 10 that never acks
    hub = hub_process()
    with Producer(hub.endpoint) as p:
        for i in range(1000):
            p.publish_async("flood", b"x" * 128)
        p.flush()
        c = Consumer(hub.endpoint)
        c.connect()
        c.subscribe("flood", "lazy", credit=10, ack_wait=3600)
        held = [c.receive(timeout=10) for _ in range(10)]
        assert all(m is not None for m in held)
        baseline = _rss_anon_kb(hub.pid)

        # When 100,000 more messages are published
        for _ in range(100):
            for i in range(1000):
                p.publish_async("flood", b"y" * 128)
            p.flush()
            assert c.receive(timeout=0) is None  # never an 11th message in flight
        grown = _rss_anon_kb(hub.pid) - baseline

    # Then nothing beyond credit was delivered, and the hub's heap did not grow with the backlog
    assert c.receive(timeout=0.5) is None
    c.close()
    assert grown < 30_000, f"hub anonymous memory grew by {grown} kB"


# --- garbage on the wire -------------------------------------------------------------------


def _ask(sock: zmq.Socket, frames: list[bytes]) -> tuple[bytes, dict]:
    sock.send_multipart(frames)
    assert sock.poll(10_000), "no reply from the hub"
    reply = sock.recv_multipart()
    assert reply[0] == SIGNATURE
    return reply[1], msgpack.unpackb(reply[2], raw=False)


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"\x00\xffrandom garbage"], "bad_frame"),
        ([os.urandom(64), os.urandom(3), os.urandom(9)], "bad_frame"),
        ([b"ZMQMQ/9", b"HELLO", b"\x80"], "bad_version"),
        ([SIGNATURE, b"FROBNICATE", b"\x80"], "unknown_command"),
        ([SIGNATURE, b"PUBLISH", b"\xc1\xc1"], "bad_body"),
        ([SIGNATURE, b"PUBLISH", msgpack.packb({"a": 1})], "bad_body"),
        ([SIGNATURE, b"PUBLISH", msgpack.packb([1, [["bad topic!", b"x", None, None]]])], "bad_topic"),
        ([SIGNATURE, b"PUBLISH", msgpack.packb([1, [["t", "not bytes", None, None]]])], "bad_body"),
        ([SIGNATURE, b"PUBLISH", msgpack.packb([1, [["t", b"x" * (2 << 20), None, None]]])], "too_large"),
        ([SIGNATURE, b"PUBLISH", b"\x00" * (70 << 20)], "too_large"),
        ([SIGNATURE, b"ACK", msgpack.packb([7, {"t": [1]}])], "unknown_subscription"),
        ([SIGNATURE, b"SUBSCRIBE", msgpack.packb({"sid": 1, "topic": "t", "group": "g", "credit": -5})], "invalid"),
        ([SIGNATURE, b"SUBSCRIBE", msgpack.packb({"sid": 1, "topic": "t", "group": "x" * 10_000})], "bad_group"),
        ([SIGNATURE, b"SUBSCRIBE", msgpack.packb({"sid": 1, "topic": "t", "group": "billing."})], "bad_group"),
        ([SIGNATURE, b"PUBLISH", msgpack.packb([1, [[["a", "list"], b"x", None, None]]])], "bad_topic"),
        ([SIGNATURE, b"PUBLISH", msgpack.packb([1, [["t", b"x", None, {1: "int key"}]]])], "bad_body"),
    ],
    ids=["one-frame", "random", "version", "command", "msgpack", "schema", "topic", "payload-type",
         "payload-size", "huge-frame", "unknown-sid", "negative-credit", "long-group",
         "dlq-unsafe-group", "unhashable-topic", "int-header-name"],
)
def test_bad_input_gets_a_clear_error_and_the_hub_keeps_serving(hub, raw_client, frames, code):
    # Given a producer already using the hub
    with Producer(hub.endpoint) as p:
        p.publish("t", b"before")
        # When garbage arrives on another connection
        command, body = _ask(raw_client(), frames)
        # Then the sender gets an ERROR with a stable code and a message
        assert command == b"ERROR"
        assert body["code"] == code and body["message"]
        # And everyone else is still served, with nothing lost
        assert p.publish("t", b"after") == 2


def test_a_bad_message_refuses_its_whole_batch_and_stores_nothing(hub, raw_client):
    sock = raw_client()
    batch = [7, [["t", b"good", None, None], ["t", b"bad", 5, None]]]
    command, body = _ask(sock, [SIGNATURE, b"PUBLISH", msgpack.packb(batch)])
    assert command == b"ERROR" and body["ref"] == 7 and body["index"] == 1
    with Producer(hub.endpoint) as p:
        assert p.publish("t", b"first stored") == 1


def test_an_oversized_publish_frame_names_its_batch_so_the_producer_can_fail_it(hub, raw_client):
    body = msgpack.packb([42, [["t", b"x" * (1 << 20), None, None]] * 70])  # ~70 MiB
    command, err = _ask(raw_client(), [SIGNATURE, b"PUBLISH", body])
    assert command == b"ERROR" and err["code"] == "too_large"
    assert err["command"] == "PUBLISH" and err["ref"] == 42


def test_an_empty_publish_batch_is_confirmed(hub, raw_client):
    command, body = _ask(raw_client(), protocol.encode(b"PUBLISH", [9, []]))
    assert (command, body) == (b"CONFIRM", [9, []])


def test_the_producer_sizes_frames_by_the_hub_limits_including_headers(tmp_path):
    # Given a hub that takes frames of at most 1 MiB
    from zmq_mq.testing import running_hub

    with running_hub(tmp_path, max_frame_bytes=1 << 20) as hub, Producer(hub.endpoint) as p:
        # When 200 messages with 20 KiB of headers each (4 MiB in all) are published at once
        futures = [
            p.publish_async("t", b"m%d" % i, headers={"blob": "h" * 20_000}) for i in range(200)
        ]
        p.flush(30)
        # Then every one is stored: the producer split them into frames the hub accepts
        assert sorted(f.result() for f in futures) == list(range(1, 201))


def test_headers_msgpack_cannot_encode_fail_the_call_not_the_producer(hub):
    with Producer(hub.endpoint) as p:
        with pytest.raises(InvalidMessage, match="cannot be encoded"):
            p.publish_async("t", b"x", headers={"when": object()})
        with pytest.raises(InvalidMessage, match="header names must be strings"):
            p.publish_async("t", b"x", headers={1: "x"})
        assert p.publish("t", b"still fine", headers={"n": 1}) == 1


def test_a_dead_letter_keeps_headers_of_any_type(hub):
    with Producer(hub.endpoint) as p:
        p.publish("t", b"poison", headers={"n": 1, "tags": ["a", "b"], "raw": b"\x00"})
    with Consumer(hub.endpoint) as c:
        c.subscribe("t", "g", credit=1)
        c.receive(timeout=10).reject("bad")
        c.subscribe("dlq.g", "inspect", credit=1)
        dead = c.receive(timeout=10)
        assert dead.topic == "dlq.g" and dead.payload == b"poison"
        assert dead.headers["tags"] == ["a", "b"] and dead.headers["raw"] == b"\x00"
        assert dead.headers["x-reason"] == "rejected: bad" and dead.headers["x-origin-seq"] == 1


@pytest.mark.slow
def test_a_subscriber_paused_past_its_deadline_attaches_again_when_it_resumes(fake_clock_hub,
                                                                              processes):
    # Given a hub with fast heartbeats, whose clock moves only when the test says, and an idle
    # subscriber
    hub, clock = fake_clock_hub(heartbeat_ms=100)
    sub = processes(subprocess.Popen(
        [*zmq_mq_command(), "subscribe", "late", "--group", "g", "--count", "1", "--timeout", "60",
         "--hub", hub.endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ))
    actors = lambda: [s["actors"] for t in _topics(hub.endpoint) if t["topic"] == "late"  # noqa: E731
                      for s in t["subscriptions"]]
    wait_for(lambda: actors() == [1], message="subscriber attached")
    # When it is paused past the hub's liveness limit (300 ms of the hub's clock, moved in
    # 100 ms steps: a heartbeat sent just before the pause may still arrive), so that the hub
    # detaches it
    os.kill(sub.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: clock.advance(100) or actors() == [0],
                 message="hub detached the paused subscriber")
    finally:
        os.kill(sub.pid, signal.SIGCONT)
    # Then once resumed it attaches again by itself, and gets a message published afterwards
    wait_for(lambda: actors() == [1], message="subscriber attached again")
    with Producer(hub.endpoint) as p:
        p.publish("late", b"after the pause")
    out, err = sub.communicate(timeout=60)
    assert sub.returncode == 0, err
    assert b"after the pause" in out


def test_a_consumer_attaches_again_when_the_hub_says_it_dropped_the_attachment(hub):
    # Given a consumer attached to a subscription
    with Consumer(hub.endpoint) as c:
        c.subscribe("t", "g", credit=5)
        session = c._session
        with session.lock:
            # When a heartbeat answer lists none of its sids (the hub took it for dead)
            session._handle(protocol.Command.HEARTBEAT, [session.conn.hub_instance, []])
            assert session.reattached == 1
            # while one that lists them changes nothing
            session._handle(protocol.Command.HEARTBEAT, [session.conn.hub_instance, [1]])
        assert session.reattached == 1
        # Then it is attached and served as before
        with Producer(hub.endpoint) as p:
            p.publish("t", b"still served")
        assert c.receive(timeout=10).payload == b"still served"


def _topics(endpoint: str) -> list[dict]:
    from zmq_mq.actors.connection import request

    return request(endpoint, protocol.Command.TOPICS, timeout=10)


def test_acking_a_sequence_never_published_is_an_error(hub, raw_client):
    sock = raw_client()
    _ask(sock, protocol.encode(b"SUBSCRIBE", {"sid": 1, "topic": "t", "group": "g", "credit": 0}))
    command, body = _ask(sock, protocol.encode(b"ACK", [1, {"t": [99]}]))
    assert command == b"ERROR" and body["code"] == "unknown_sequence"


@pytest.mark.slow
def test_an_actor_resumes_by_itself_after_the_hub_is_killed_and_restarted(hub_process):
    # Given an actor consuming from a hub process
    hub = hub_process(bind="tcp://127.0.0.1:0")
    endpoint = hub.endpoint  # the restarted hub binds the same port
    seen: set[int] = set()
    lock = threading.Lock()
    enough = threading.Event()
    target = {"n": 50}

    def handle(msg):
        with lock:
            seen.add(msg.seq)
            if len(seen) >= target["n"]:
                enough.set()

    actor = Actor(endpoint, name="resilient")
    actor.add_handler("events", handle, group="g", credit=20)
    actor.start()
    try:
        with Producer(endpoint) as p:
            for i in range(50):
                p.publish_async("events", b"before %d" % i)
            p.flush()
        assert enough.wait(20)

        # When the hub is killed with SIGKILL and restarted on the same data and port
        hub.kill9()
        hub = hub_process(bind=endpoint)
        enough.clear()
        target["n"] = 100
        with Producer(endpoint) as p:
            for i in range(50):
                p.publish_async("events", b"after %d" % i)
            p.flush()

        # Then the actor re-attaches by itself and gets the new messages too
        assert enough.wait(30), f"actor saw {len(seen)} of 100"
    finally:
        actor.stop()
    assert seen == set(range(1, 101))
    assert actor.session.reattached >= 1


@pytest.mark.slow
def test_nothing_confirmed_is_lost_when_the_hub_is_killed_under_load(hub_process):
    # Given a producer publishing continuously
    hub = hub_process(bind="tcp://127.0.0.1:0")
    endpoint = hub.endpoint
    confirmed: dict[int, bytes] = {}
    futures = []
    with Producer(endpoint, timeout=30) as p:
        for i in range(3000):
            futures.append((b"m%d" % i, p.publish_async("load", b"m%d" % i)))
        # When the hub is killed with SIGKILL mid-stream and restarted
        hub.kill9()
        for i in range(3000, 4000):
            futures.append((b"m%d" % i, p.publish_async("load", b"m%d" % i)))
        hub = hub_process(bind=endpoint)
        p.flush(60)
        for payload, f in futures:
            confirmed[f.result(0)] = payload

    # Then every confirmed sequence holds its message (resent batches may be stored twice)
    with Consumer(endpoint) as c:
        c.subscribe("load", "check", credit=1000)
        stored = {}
        while (m := c.receive(timeout=3)) is not None:
            stored[m.seq] = m.payload
            m.ack()
    assert len(confirmed) == 4000
    for seq, payload in confirmed.items():
        assert stored.get(seq) == payload
    assert set(stored.values()) == {payload for payload, _ in futures}


def test_a_full_store_refuses_publishes_clearly_and_keeps_serving_acks(tmp_path):
    from zmq_mq.actors import HubError
    from zmq_mq.testing import running_hub

    # Given a hub whose LMDB map may not grow past 2 MiB
    with running_hub(tmp_path / "data", map_size=1 << 20, max_map_size=2 << 20) as hub:
        with Producer(hub.endpoint) as p:
            stored = 0
            # When producers keep publishing 64 KiB messages
            with pytest.raises(HubError) as err:
                for _ in range(100):
                    p.publish("big", b"x" * 65536)
                    stored += 1
            # Then the one that does not fit gets storage_full, and nothing of it is stored
            assert err.value.code == "storage_full"
            assert 0 < stored < 100
            # And consumers can still read and ack everything that was confirmed
            with Consumer(hub.endpoint) as c:
                c.subscribe("big", "reader", credit=stored + 5)
                for seq in range(1, stored + 1):
                    msg = c.receive(timeout=10)
                    assert msg.seq == seq
                    msg.ack()
                assert c.receive(timeout=0.3) is None
            # And small publishes to other topics are refused or stored, never crash the hub
            try:
                p.publish("small", b"tiny")
            except HubError as exc:
                assert exc.code == "storage_full"
            assert hub.hub.topics()[0]["messages"] == stored
            # And once an operator frees space (purging the read messages), publishes are
            # accepted again: LMDB reuses the freed pages
            from zmq_mq.actors import Admin

            with Admin(hub.endpoint) as admin:
                assert admin.purge("big", "all")["purged"] == stored
            assert p.publish("big", b"x" * 65536) == stored + 1


def test_a_publish_that_times_out_waiting_for_room_leaves_flush_working(tmp_path, socket):
    # Given a fake hub that welcomes the producer but holds back its confirms until told
    router = socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    release = threading.Event()
    stop = threading.Event()

    def fake_hub():
        held = []
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(20):
                ident, *frames = router.recv_multipart()
                command, body = protocol.decode(frames)
                if command == b"HELLO":
                    router.send_multipart([ident, *protocol.encode(b"WELCOME", {"hub": "fake", "limits": {}})])
                elif command == b"PUBLISH":
                    held.append((ident, body))
            if release.is_set():
                for n, (ident, (batch_id, msgs)) in enumerate(held):
                    router.send_multipart([ident, *protocol.encode(b"CONFIRM", [batch_id, [n + 1] * len(msgs)])])
                held.clear()

    thread = threading.Thread(target=fake_hub, daemon=True)
    thread.start()
    try:
        with Producer(f"tcp://127.0.0.1:{port}", timeout=0.5, max_pending=2) as p:
            first = [p.publish_async("t", b"a"), p.publish_async("t", b"b")]
            # When a third publish gives up waiting for room
            with pytest.raises(HubUnavailable):
                p.publish_async("t", b"c")
            # Then once the hub confirms, flush() sees everything accepted as done
            release.set()
            p.flush(5)
            assert all(f.done() for f in first)
    finally:
        stop.set()
        thread.join(5)
        router.close(linger=0)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (a disk that fills up for real); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the small-map test covers a full store")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_refuses_publishes_with_storage_full_and_accepts_them_once_space_is_freed(small_disk):
    from zmq_mq.actors import HubError
    from zmq_mq.testing import HubThread

    # Given a hub on an 8 MiB file system, half of it taken by another file
    filler = small_disk / "filler"
    filler.write_bytes(b"f" * (4 << 20))
    hub = HubThread(small_disk / "data")
    hub.start()
    try:
        with Producer(hub.endpoint, timeout=10) as p:
            stored = 0
            # When producers publish until the disk is full
            with pytest.raises(HubError) as err:
                for _ in range(200):
                    p.publish("big", b"x" * 65536)
                    stored += 1
            # Then the one that does not fit gets storage_full saying the disk is full
            assert err.value.code == "storage_full", err.value
            assert "disk full" in str(err.value)
            assert 0 < stored < 200
            # And, the disk still full, consumers read and ack everything confirmed
            with Consumer(hub.endpoint) as c:
                c.subscribe("big", "reader", credit=stored + 5)
                got = []
                for _ in range(stored):
                    msg = c.receive(timeout=10)
                    got.append(msg.seq)
                    msg.ack()
                assert got == list(range(1, stored + 1))
                assert c.receive(timeout=0.3) is None
            assert hub.error is None and hub.hub.running.is_set()
            # And once space is freed, publishing works again without a restart
            filler.unlink()
            assert p.publish("big", b"y" * 65536) == stored + 1
            wait_for(lambda: [s["lag"] for t in hub.hub.topics() for s in t["subscriptions"]] == [1],
                     message="acks committed once the disk had room")
    finally:
        hub.stop()


class _FakeHub:
    """A ROUTER that speaks just enough zmq-mq for producer tests, driven step by step."""

    def __init__(self, socket) -> None:
        self.router = socket(zmq.ROUTER)  # the test's ``socket`` fixture
        self.endpoint = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.peer: bytes | None = None

    def next(self, wanted: bytes, timeout_ms: int = 10_000):
        """The body of the next command ``wanted`` (answering HELLO on the way)."""
        while self.router.poll(timeout_ms):
            ident, *frames = self.router.recv_multipart()
            command, body = protocol.decode(frames)
            self.peer = ident
            if command == b"HELLO" and wanted != b"HELLO":
                self.send(b"WELCOME", {"hub": "one", "limits": {}, "heartbeat_ms": 100})
            elif command == wanted:
                return body
        raise AssertionError(f"no {wanted!r} within {timeout_ms} ms")

    def send(self, command: bytes, body) -> None:
        self.router.send_multipart([self.peer, *protocol.encode(command, body)])

    def close(self) -> None:
        self.router.close(linger=0)


@pytest.mark.parametrize("new_hub_got_it", [True, False], ids=["queued-to-new-hub", "lost-with-old-hub"])
def test_after_a_hub_restart_a_batch_is_resent_only_if_the_new_hub_never_got_it(new_hub_got_it, socket):
    fake = _FakeHub(socket)

    def welcome() -> None:
        fake.next(b"HELLO")
        fake.send(b"WELCOME", {"hub": "one", "limits": {}, "heartbeat_ms": 100})

    greeter = threading.Thread(target=welcome)  # the producer's connect() waits for WELCOME
    greeter.start()
    try:
        with Producer(fake.endpoint, timeout=10) as p:
            greeter.join()
            future = p.publish_async("t", b"one")
            first = fake.next(b"PUBLISH")
            # When the hub restarts (its heartbeat answer names a new instance) ...
            fake.next(b"HEARTBEAT")
            fake.send(b"HEARTBEAT", ["two", []])
            marker = fake.next(b"PUBLISH")
            assert marker[1] == []  # the producer first sends an empty marker batch
            if new_hub_got_it:  # ... and the batch had reached the new hub: confirmed first
                fake.send(b"CONFIRM", [first[0], [7]])
                fake.send(b"CONFIRM", [marker[0], []])
                assert future.result(10) == 7
                with pytest.raises(AssertionError):  # and it is never sent again
                    fake.next(b"PUBLISH", timeout_ms=300)
            else:  # ... or it was lost with the old hub: resent after the marker's confirm
                fake.send(b"CONFIRM", [marker[0], []])
                again = fake.next(b"PUBLISH")
                assert again == first
                fake.send(b"CONFIRM", [first[0], [1]])
                assert future.result(10) == 1
    finally:
        greeter.join()
        fake.close()
