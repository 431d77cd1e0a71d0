"""Fuzzing the hub: its command handling without sockets, then a running hub over the wire.

Invariant: whatever frames arrive, a hub turn (``Hub.step``: commands in, what it would send
out) returns normally (never raises) and the hub either answers the sender or, for commands
without an answer, stays consistent; an ``internal`` error code (a bug) is never the answer.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmq_mq.router import protocol
from zmq_mq.router.config import HubConfig
from zmq_mq.router.hub import Hub
from zmq_mq.router.protocol import CLIENT_COMMANDS, SIGNATURE, Command

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.integers(0, 100), children, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(HubConfig(data_dir=str(tmp_path_factory.mktemp("fuzz")), pub=None))
    yield h
    h.close()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(CLIENT_COMMANDS)), body=msgpack_values)
def test_any_msgpack_body_for_any_command_is_answered_without_a_crash(hub, command, body):
    for _, reply, reply_body in hub.step([[b"fuzzer", SIGNATURE, command, msgpack.packb(body)]]):
        if reply == Command.ERROR:
            assert reply_body["code"] != "internal", reply_body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=40), min_size=0, max_size=6))
def test_any_frames_get_an_error_or_a_reply(hub, frames):
    replies = hub.step([[b"fuzzer", *frames]])
    assert replies, "every malformed or valid-with-answer command gets something back"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sid=st.integers(0, 3),
    seqs=st.lists(st.integers(-5, 50), max_size=10),
    kind=st.sampled_from([Command.ACK, Command.NACK, Command.RELEASE, Command.REJECT, Command.PROGRESS]),
    credit=st.integers(-3, 200_000),
)
def test_semantically_wrong_settlements_never_crash_the_hub(hub, sid, seqs, kind, credit):
    body = {Command.NACK: [sid, {"fz": seqs}, 10], Command.REJECT: [sid, {"fz": seqs}, "why"]}.get(
        kind, [sid, {"fz": seqs}]
    )
    sent = hub.step([
        [b"fz2", *protocol.encode(Command.SUBSCRIBE, {"sid": 1, "topic": "fz", "group": "g", "credit": 5})],
        [b"fz2", *protocol.encode(Command.CREDIT, [sid, credit])],
        [b"fz2", *protocol.encode(kind, body)],
    ])
    for _, reply, reply_body in sent:
        if reply == Command.ERROR:
            assert reply_body["code"] != "internal", reply_body


# --- over the wire: one running hub, one fuzzing socket, a healthy pair of clients ---------------
#
# Invariant: whatever one connection sends, the hub thread never dies, never answers `internal`,
# and after every example a well-behaved producer and consumer on the same hub still round-trip.
# Everything runs over sockets opened once for the module: thousands of examples stay fast.

import zmq  # noqa: E402

from zmq_mq.actors import Consumer, Producer  # noqa: E402
from zmq_mq.testing import HubThread  # noqa: E402

LIVE_LIMITS = {"max_batch_messages": 100, "max_headers_bytes": 4096, "max_message_bytes": 65536}
FUZZ_TOPICS = ["fz", "fz.a", "dlq.g", "x" * 300, "bad topic", ""]
FUZZ_GROUPS = ["g", "h", "dlq-x", "x" * 300, "bad.", ""]


class LiveHub:
    """A HubThread, a raw DEALER for the fuzzer, and a producer + consumer that must keep working."""

    def __init__(self, data_dir) -> None:
        # sync off: fsync adds nothing to what is tested here, and keeps thousands of examples fast
        self.thread = HubThread(data_dir, pub=None, sync=False, **LIVE_LIMITS).start()
        self._socks: list[zmq.Socket] = []
        self.sock = self.new_socket()
        self.producer = Producer(self.thread.endpoint, timeout=10)
        self.producer.connect()
        self.consumer = Consumer(self.thread.endpoint, timeout=10)
        self.consumer.connect()
        self.consumer.subscribe("health", "hc", credit=10)
        self.round_trips = 0

    def new_socket(self) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.thread.endpoint)
        self._socks.append(sock)
        return sock

    def send(self, frames: list[bytes], sock: zmq.Socket | None = None) -> list[tuple[bytes, object]]:
        """Send, then fence with a HEARTBEAT (answered in order): every reply to ``frames``."""
        sock = sock or self.sock
        sock.send_multipart(frames)
        sock.send_multipart(protocol.encode(Command.HEARTBEAT, []))
        replies = []
        while True:
            assert sock.poll(10_000), "the hub stopped answering"
            reply = sock.recv_multipart()
            command, body = protocol.decode(reply, protocol.HUB_COMMANDS)
            if command == Command.HEARTBEAT and isinstance(body, list) and len(body) == 2:
                return replies
            replies.append((command, body))

    def check(self, replies) -> None:
        for command, body in replies:
            if command == Command.ERROR:
                assert body["code"] != "internal", body
        assert self.thread.error is None and self.thread.hub.running.is_set(), self.thread.error
        self.round_trips += 1
        seq = self.producer.publish("health", b"%d" % self.round_trips)
        msg = self.consumer.receive(timeout=10)
        assert msg is not None and msg.seq == seq, (msg, seq)
        msg.ack()

    def close(self) -> None:
        for sock in self._socks:
            sock.close(linger=0)
        self.consumer.close()
        self.producer.close()
        self.thread.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    h = LiveHub(tmp_path_factory.mktemp("live-fuzz"))
    yield h
    h.close()


# Flat values of every msgpack type: far cheaper to draw than the recursive msgpack_values.
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
            | st.text(max_size=8) | st.binary(max_size=8))
wrong = _scalars | st.lists(_scalars, max_size=3) | st.dictionaries(st.text(max_size=4), _scalars, max_size=2)


def _any(good):
    """A right value most of the time, a value of any type sometimes."""
    return st.one_of(good, good, good, wrong)


sids = _any(st.integers(0, 3)) | st.integers(-(2**63), 2**64 - 1)
seq_lists = st.lists(st.integers(-(2**63), 2**64 - 1) | st.integers(-2, 40), max_size=8)
hashables = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
             | st.binary(max_size=8))
by_topic = _any(st.dictionaries(st.sampled_from(FUZZ_TOPICS) | hashables, _any(seq_lists), max_size=3))
wide_ints = st.integers(-(2**63), 2**64 - 1) | st.integers(-3, 3) | st.just(protocol.MAX_CREDIT + 1)
messages = st.lists(
    _any(st.tuples(_any(st.sampled_from(FUZZ_TOPICS)), _any(st.binary(max_size=32)),
                   _any(st.none() | st.text(max_size=8)),
                   _any(st.none() | st.dictionaries(st.text(max_size=5), wrong, max_size=3)),
                   ).map(list)),
    max_size=4,
)
commands = st.one_of(
    st.tuples(st.just(Command.SUBSCRIBE), st.fixed_dictionaries(
        {"sid": sids, "topic": _any(st.sampled_from(FUZZ_TOPICS)),
         "group": _any(st.sampled_from(FUZZ_GROUPS))},
        optional={"credit": wide_ints, "ack_wait_ms": wide_ints, "max_deliver": wide_ints,
                  "start": _any(st.sampled_from(["first", "new", "last"]))})),
    st.tuples(st.just(Command.CREDIT), st.tuples(sids, wide_ints).map(list)),
    st.tuples(st.sampled_from([Command.ACK, Command.RELEASE, Command.PROGRESS]),
              st.tuples(sids, by_topic).map(list)),
    st.tuples(st.just(Command.NACK), st.tuples(sids, by_topic, wide_ints).map(list)),
    st.tuples(st.just(Command.REJECT), st.tuples(sids, by_topic, wrong).map(list)),
    st.tuples(st.just(Command.DETACH), st.tuples(sids).map(list)),
    st.tuples(st.just(Command.PUBLISH), st.tuples(_any(st.integers(0, 10)), messages).map(list)),
    st.tuples(st.sampled_from([Command.HELLO, Command.TOPICS, Command.HEARTBEAT]), wrong),
    st.tuples(st.sampled_from(sorted(CLIENT_COMMANDS)), wrong),
)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(commands, min_size=1, max_size=4))
def test_semantically_wrong_commands_over_the_wire_never_hurt_other_clients(live, steps):
    replies = []
    for command, body in steps:
        replies += live.send(protocol.encode(command, body))
    live.check(replies)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=48), min_size=0, max_size=6)
       | st.tuples(st.just(SIGNATURE), st.sampled_from(sorted(CLIENT_COMMANDS)),
                   st.binary(max_size=48)).map(list))
def test_arbitrary_multipart_frames_over_the_wire_never_hurt_other_clients(live, frames):
    if not frames:
        frames = [b""]  # ZeroMQ cannot send a message of zero frames
    live.check(live.send(frames))


@pytest.mark.parametrize(
    "command, body, code",
    [
        (Command.SUBSCRIBE, {"sid": 1, "topic": "fz", "group": "g" * (10 << 20)}, "bad_group"),
        (Command.SUBSCRIBE, {"sid": 1, "topic": "t" * (10 << 20), "group": "g"}, "bad_topic"),
        (Command.PUBLISH, [1, [["t" * 256, b"x", None, None]]], "bad_topic"),
        (Command.PUBLISH, [1, [["fz", b"x", None, None]] * 101], "too_large"),
        (Command.PUBLISH, [1, [["fz", b"x" * 65537, None, None]]], "too_large"),
        (Command.PUBLISH, [1, [["fz", b"x", None, {"h": "v" * 4096}]]], "too_large"),
        (Command.PUBLISH, [1, [["fz", b"x", "k" * 4096, None]]], "too_large"),
        (Command.SUBSCRIBE, {"sid": 1, "topic": "fz", "group": "g", "credit": protocol.MAX_CREDIT + 1},
         "invalid"),
        (Command.SUBSCRIBE, {"sid": 1, "topic": "fz", "group": "g", "ack_wait_ms": 0}, "invalid"),
        (Command.SUBSCRIBE, {"sid": 1, "topic": "fz", "group": "g", "start": "middle"}, "invalid"),
    ],
    ids=["group-10MB", "topic-10MB", "topic-256", "batch-101", "payload", "headers", "key",
         "credit-huge", "ack-wait-0", "start"],
)
def test_limits_and_ranges_are_enforced_with_a_clear_error(live, command, body, code):
    replies = live.send(protocol.encode(command, body), live.new_socket())
    assert [(c, b["code"]) for c, b in replies] == [(Command.ERROR, code)], replies
    live.check(replies)


@pytest.mark.parametrize(
    "body, code",
    [([1, -1], "invalid"), ([1, protocol.MAX_CREDIT + 1], "invalid"), ([1, 2**64 - 1], "invalid"),
     ([1, "10"], "invalid")],
    ids=["negative", "over-max", "u64", "string"],
)
def test_credit_out_of_range_is_refused_and_the_attachment_keeps_its_credit(live, body, code):
    sock = live.new_socket()
    subscribe = {"sid": 1, "topic": "fz.credit", "group": "g", "credit": 0}
    live.send(protocol.encode(Command.SUBSCRIBE, subscribe), sock)
    replies = live.send(protocol.encode(Command.CREDIT, body), sock)
    assert [(c, b["code"]) for c, b in replies] == [(Command.ERROR, code)]
    live.check(replies)


@pytest.mark.parametrize("delay", [-1, 365 * 24 * 3600 * 1000 + 1, 2**64 - 1, 1.5, "soon"])
def test_nack_delays_out_of_range_are_refused(live, delay):
    sock = live.new_socket()
    subscribe = {"sid": 2, "topic": "fz.nack", "group": "g", "credit": 0}
    live.send(protocol.encode(Command.SUBSCRIBE, subscribe), sock)
    replies = live.send(protocol.encode(Command.NACK, [2, {"fz.nack": [1]}, delay]), sock)
    assert [(c, b["code"]) for c, b in replies] == [(Command.ERROR, "invalid")], replies
    live.check(replies)
