"""The wire format: round trips, and the fuzz invariant: decode(garbage) returns a command or
raises DecodeError, never anything else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmq_mq.router import protocol
from zmq_mq.router.protocol import CLIENT_COMMANDS, SIGNATURE, Command, DecodeError, ErrorCode


def test_encode_then_decode_round_trips_every_client_command():
    for command in CLIENT_COMMANDS:
        body = [1, {"orders": [1, 2, 3]}]
        assert protocol.decode(protocol.encode(command, body)) == (command, body)


def test_records_round_trip_with_binary_payloads():
    record = protocol.pack_record(1234, "k", {"h": "v"}, b"\x00\xff")
    assert protocol.unpack_record(record) == (1234, "k", {"h": "v"}, b"\x00\xff")
    assert protocol.unpack_record(protocol.pack_record(1, None, None, b""))[2] == {}


@pytest.mark.parametrize(
    "frames, code",
    [
        ([], ErrorCode.BAD_FRAME),
        ([SIGNATURE, Command.HELLO], ErrorCode.BAD_FRAME),
        ([b"HTTP/1.1", Command.HELLO, b"\x80"], ErrorCode.BAD_FRAME),
        ([b"ZMQMQ/2", Command.HELLO, b"\x80"], ErrorCode.BAD_VERSION),
        ([SIGNATURE, b"WELCOME", b"\x80"], ErrorCode.UNKNOWN_COMMAND),  # a hub command, sent to the hub
        ([SIGNATURE, Command.ACK, b"\xc1"], ErrorCode.BAD_BODY),
        ([SIGNATURE, Command.ACK, b"\x92\x01"], ErrorCode.BAD_BODY),  # truncated array
    ],
)
def test_decode_names_what_is_wrong(frames, code):
    with pytest.raises(DecodeError) as err:
        protocol.decode(frames)
    assert err.value.code == code and err.value.message


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5), st.sampled_from(sorted(CLIENT_COMMANDS)))
def test_decoding_any_garbage_returns_a_command_or_raises_decode_error(frames, command):
    for candidate in (frames, [SIGNATURE, command, *frames[:1]], [SIGNATURE, *frames[:2]]):
        try:
            got, _ = protocol.decode(candidate)
        except DecodeError:
            continue
        assert got in CLIENT_COMMANDS


@pytest.mark.parametrize(
    "topic, ok",
    [("orders", True), ("orders.eu-1", True), ("dlq.billing", True), ("a_b", True),
     ("", False), ("orders.", False), (".orders", False), ("a..b", False), ("orders.*", False),
     ("orders.>", False), ("has space", False), ("x" * 256, False), (5, False)],
)
def test_topic_name_rules(topic, ok):
    assert (protocol.check_topic(topic) is None) is ok


@pytest.mark.parametrize(
    "group, ok",
    [("billing", True), ("billing.eu", True), ("b-1_x", True), ("x" * 251, True),
     ("billing.", False), ("a..b", False), (".a", False), ("x" * 252, False), ("", False), (None, False)],
)
def test_group_names_always_give_a_valid_dead_letter_topic(group, ok):
    assert (protocol.check_group(group) is None) is ok
    if ok:
        assert protocol.check_topic(protocol.dlq_topic(group)) is None


@pytest.mark.parametrize(
    "headers, ok",
    [(None, True), ({}, True), ({"a": 1, "b": [1, "x"], "c": b"\x00"}, True),
     ({1: "x"}, False), ({b"bytes": 1}, False), (["a"], False)],
)
def test_header_names_must_be_strings(headers, ok):
    assert (protocol.check_headers(headers) is None) is ok


def test_error_bodies_parse_back_with_extra_fields():
    body = protocol.error_body(ErrorCode.TOO_LARGE, "too big", Command.PUBLISH, 7)
    body["index"] = 3
    parsed = protocol.parse_error(msgpack.unpackb(msgpack.packb(body), raw=False))
    assert parsed == {"code": "too_large", "message": "too big", "command": "PUBLISH", "ref": 7, "index": 3}
