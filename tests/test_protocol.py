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


# --- the codec: one pair of functions per body, shared by hub and clients -------------------


def _wire(body):
    """What the other side gets: the body through msgpack, as decode() hands it over."""
    return msgpack.unpackb(protocol.pack(body), raw=False, strict_map_key=False)


def test_a_publish_body_round_trips_with_and_without_options():
    plain = protocol.publish_message("orders", b"\x00p", "k", {"h": 1})
    with_opts = protocol.publish_message("orders", b"q", None, None, {"msg_id": "m-1", "priority": 3})
    assert plain == ["orders", b"\x00p", "k", {"h": 1}]  # the 4-element layout, no empty opts
    batch_id, messages = protocol.decode_publish(_wire(protocol.publish_body(7, [plain, with_opts])))
    assert batch_id == 7
    assert [protocol.decode_publish_message(m) for m in messages] == [
        ("orders", b"\x00p", "k", {"h": 1}, None),
        ("orders", b"q", None, None, {"msg_id": "m-1", "priority": 3}),
    ]
    assert protocol.decode_publish(_wire(protocol.publish_body(8, []))) == (8, [])


def test_a_deliver_body_round_trips_its_entries_and_their_records():
    record = protocol.pack_record(1234, "k", {protocol.PRIORITY_HEADER: 2}, b"payload")
    body = protocol.deliver_body(3, "orders", [[10, 1, record], [11, 2, record]])
    sid, topic, entries = protocol.decode_deliver(_wire(body))
    assert (sid, topic) == (3, "orders")
    assert [(seq, n, protocol.unpack_record(rec)) for seq, n, rec in entries] == [
        (10, 1, (1234, "k", {"x-priority": 2}, b"payload")),
        (11, 2, (1234, "k", {"x-priority": 2}, b"payload")),
    ]


def test_live_feed_frames_round_trip():
    records = [protocol.pack_record(1, None, None, b"a"), protocol.pack_record(2, "k", {}, b"b")]
    frames = protocol.pub_frames("orders.eu", 41, records)
    assert frames[0] == b"orders.eu"  # ZeroMQ's prefix match works on the topic frame
    assert protocol.decode_pub(frames) == ("orders.eu", 41, records)


def test_the_ref_of_an_oversized_publish_is_read_from_the_first_bytes_of_its_body():
    frames = protocol.encode(Command.PUBLISH, protocol.publish_body(99, [["t", b"x" * 1000, None, None]]))
    assert protocol.oversized_ref(frames) == (Command.PUBLISH, 99)
    assert protocol.oversized_ref([SIGNATURE, Command.ACK, b"\xc1"]) == (Command.ACK, None)
    assert protocol.oversized_ref([b"junk", Command.PUBLISH, b""]) == (None, None)


def test_hub_header_names_and_client_defaults_have_their_home_in_the_protocol():
    from zmq_mq.router import config, deadletters

    assert config.HEARTBEAT_INTERVAL_MS is protocol.HEARTBEAT_INTERVAL_MS
    assert (config.LIVENESS, config.DEFAULT_BIND) == (protocol.LIVENESS, protocol.DEFAULT_BIND)
    assert deadletters.DEAD_LETTER_HEADERS is protocol.DEAD_LETTER_HEADERS
    assert deadletters.REDRIVEN_FROM == protocol.REDRIVEN_FROM_HEADER == "x-redriven-from"
    names = [*protocol.DEAD_LETTER_HEADERS, protocol.ORIGINAL_HEADERS_HEADER, protocol.MSG_ID_HEADER,
             protocol.PRIORITY_HEADER, protocol.DELIVER_AT_HEADER, protocol.REDRIVEN_FROM_HEADER]
    assert len(set(names)) == len(names) and all(n.startswith("x-") for n in names)


def test_a_dead_letter_record_keeps_key_payload_and_headers_and_says_where_it_came_from():
    from zmq_mq.router.deadletters import dead_letter_record, redrive_record

    original = protocol.pack_record(100, "k", {"trace": "t1"}, b"body")
    dead = dead_letter_record(original, "orders", 5, "billing", 3, "boom", 200)
    ts, key, headers, payload = protocol.unpack_record(dead)
    assert (ts, key, payload) == (200, "k", b"body")
    assert headers == {"trace": "t1", "x-origin-topic": "orders", "x-origin-seq": 5,
                       "x-subscription": "billing", "x-deliveries": 3, "x-reason": "boom",
                       "x-origin-timestamp": 100}
    # and a redrive gives back the original headers
    topic, again = redrive_record("dlq.billing", 1, dead, 300)
    assert topic == "orders"
    assert protocol.unpack_record(again) == (300, "k", {"trace": "t1", "x-redriven-from": "dlq.billing:1"}, b"body")


_garbage = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=1000, deadline=None)
@given(_garbage, st.binary(max_size=40), st.lists(st.binary(max_size=24), max_size=3))
def test_every_body_decoder_returns_or_raises_decode_error_and_nothing_else(body, raw, frames):
    # the invariant: any input is decoded or refused with DecodeError (bad_body), never a crash
    attempts = [
        lambda: protocol.decode_publish(body),
        lambda: protocol.decode_publish_message(body),
        lambda: protocol.decode_deliver(body),
        lambda: protocol.decode_pub(frames),
        lambda: protocol.decode_pub([b"t", raw]),
        lambda: protocol.unpack_record(raw),
        lambda: protocol.unpack_record(protocol.pack(body)),
        lambda: protocol.oversized_ref([SIGNATURE, Command.PUBLISH, raw]),
        lambda: protocol.record_meta(raw),
    ]
    for attempt in attempts:
        try:
            attempt()
        except DecodeError as exc:
            assert exc.code == ErrorCode.BAD_BODY


def test_a_delivered_message_reads_key_headers_payload_and_timestamp_from_its_record():
    from zmq_mq.actors.aio import AsyncMessage
    from zmq_mq.actors.message import Message

    record = protocol.pack_record(1234, "k1", {"x-msg-id": "m-1"}, b"body")
    for cls in (Message, AsyncMessage):
        msg = cls._delivered("orders", 7, record, 2, "billing", 3, None)
        assert (msg.topic, msg.seq, msg.deliveries, msg.group, msg.sid) == (
            "orders", 7, 2, "billing", 3)
        assert (msg.key, msg.headers, msg.payload, msg.timestamp) == (
            "k1", {"x-msg-id": "m-1"}, b"body", 1234)
        assert msg.msg_id == "m-1" and msg.settled is None and isinstance(msg, cls)
    record = protocol.pack_record(5, None, None, b"")
    bare = Message._delivered("orders", 8, record, 1, "g", 1, None)
    assert (bare.key, bare.headers, bare.payload, bare.msg_id) == (None, {}, b"", "orders:8")
