"""Fuzzing the hub's command handling without sockets.

Invariant: whatever frames arrive, ``Hub._handle`` returns normally (never raises) and the hub
either answers the sender or, for commands without an answer, stays consistent; an ``internal``
error code (a bug) is never the answer.
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


def _answers(hub: Hub) -> list:
    out, hub._outbox = hub._outbox, []
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(CLIENT_COMMANDS)), body=msgpack_values)
def test_any_msgpack_body_for_any_command_is_answered_without_a_crash(hub, command, body):
    hub._handle([b"fuzzer", SIGNATURE, command, msgpack.packb(body)])
    hub._commit()
    for _, reply, reply_body in _answers(hub):
        if reply == Command.ERROR:
            assert reply_body["code"] != "internal", reply_body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=40), min_size=0, max_size=6))
def test_any_frames_get_an_error_or_a_reply(hub, frames):
    hub._handle([b"fuzzer", *frames])
    replies = _answers(hub)
    hub._commit()
    replies += _answers(hub)
    assert replies, "every malformed or valid-with-answer command gets something back"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sid=st.integers(0, 3),
    seqs=st.lists(st.integers(-5, 50), max_size=10),
    kind=st.sampled_from([Command.ACK, Command.NACK, Command.RELEASE, Command.REJECT, Command.PROGRESS]),
    credit=st.integers(-3, 200_000),
)
def test_semantically_wrong_settlements_never_crash_the_hub(hub, sid, seqs, kind, credit):
    hub._handle([b"fz2", *protocol.encode(Command.SUBSCRIBE, {"sid": 1, "topic": "fz", "group": "g", "credit": 5})])
    hub._handle([b"fz2", *protocol.encode(Command.CREDIT, [sid, credit])])
    body = {Command.NACK: [sid, {"fz": seqs}, 10], Command.REJECT: [sid, {"fz": seqs}, "why"]}.get(
        kind, [sid, {"fz": seqs}]
    )
    hub._handle([b"fz2", *protocol.encode(kind, body)])
    hub._commit()
    hub._dispatch(0)
    for _, reply, reply_body in _answers(hub):
        if reply == Command.ERROR:
            assert reply_body["code"] != "internal", reply_body
