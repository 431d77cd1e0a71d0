"""Request parsing without sockets: a command body in, a typed request or a Refusal out.

Invariant (the fuzz tests state it first): whatever body arrives, a parser returns its request
or raises ``Refusal`` carrying an error code, never any other exception.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zmq_mq.router import protocol, requests
from zmq_mq.router.protocol import ErrorCode
from zmq_mq.router.requests import (
    Publish,
    PublishLimits,
    Refusal,
    Subscribe,
    parse_admin,
    parse_by_topic,
    parse_credit,
    parse_detach,
    parse_fetch,
    parse_nack_delay,
    parse_publish,
    parse_seqs,
    parse_settle,
    parse_subscribe,
)

LIMITS = PublishLimits(max_batch_messages=10, max_message_bytes=64, max_headers_bytes=256)
WALL_NS = 1_700_000_000_123_456_789  # a receipt time that is not a whole millisecond

bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(0, 5), children, max_size=5)
    ),
    max_leaves=20,
)


def _refused(parse, *args) -> Refusal:
    with pytest.raises(Refusal) as info:
        parse(*args)
    return info.value


# --- PUBLISH ----------------------------------------------------------------------------------


def test_a_publish_body_becomes_a_batch_of_stored_records_stamped_at_receipt():
    # Given a batch of a plain message and one with a key, headers and a msg_id
    body = [7, [["orders", b"a", None, None], ["orders", b"b", "k", {"h": "v"}, {"msg_id": "m-1"}]]]
    # When it is parsed
    req = parse_publish(body, LIMITS, set(), WALL_NS, {})
    # Then each message is a record of its topic, stamped with the receipt's wall ms
    assert isinstance(req, Publish) and req.batch_id == 7
    assert [t for t, _ in req.staged] == ["orders", "orders"]
    ts, key, headers, payload = protocol.unpack_record(req.staged[1][1])
    assert (ts, key, payload) == (WALL_NS // 1_000_000, "k", b"b")
    assert headers == {"h": "v", protocol.MSG_ID_HEADER: "m-1"}
    assert (
        req.ids == {1: "m-1"}
        and req.delays is None
        and req.routes is None
        and req.prioritised is None
    )


def test_a_delay_counts_from_the_receipt_rounded_up_so_a_message_is_never_due_early():
    req = parse_publish(
        [1, [["t", b"x", None, None, {"delay_ms": 1500}]]], LIMITS, set(), WALL_NS, {}
    )
    # the receipt was at ...123.456789 ms: due no earlier than 1500 ms after it
    assert req.delays == {0: WALL_NS // 1_000_000 + 1 + 1500}
    assert req.delays[0] * 1_000_000 >= WALL_NS + 1500 * 1_000_000


def test_messages_to_a_partitioned_topic_carry_their_route_and_priorities_are_noted():
    body = [1, [["p", b"x", "k", None], ["q", b"y", None, None, {"priority": 9, "msg_id": "i"}]]]
    req = parse_publish(body, LIMITS, set(), WALL_NS, {"p": 4})
    assert req.routes == {0: ("k", None)}
    assert req.prioritised == [1]


@pytest.mark.parametrize(
    "body, code, index",
    [
        ("nope", ErrorCode.BAD_BODY, None),
        ([1, [["t", b"x", None, None]] * 11], ErrorCode.TOO_LARGE, None),
        ([1, [["bad topic", b"x", None, None]]], ErrorCode.BAD_TOPIC, 0),
        ([1, [["t", b"x", None, None], ["t", "str", None, None]]], ErrorCode.BAD_BODY, 1),
        ([1, [["t", b"x" * 65, None, None]]], ErrorCode.TOO_LARGE, 0),
        ([1, [["t", b"x", 5, None]]], ErrorCode.BAD_BODY, 0),
        ([1, [["t", b"x", None, {"x-deliver-at": 1}]]], ErrorCode.INVALID, 0),
        ([1, [["t", b"x", None, None, {"delay_ms": 1, "deliver_at_ms": 1}]]], ErrorCode.INVALID, 0),
        ([1, [["t", b"x", None, None, "opts"]]], ErrorCode.BAD_BODY, 0),
        ([1, [["t", b"x", None, None, {"priority": 99}]]], ErrorCode.INVALID, 0),
        ([1, [["t", b"x", "k" * 300, None]]], ErrorCode.TOO_LARGE, 0),
    ],
    ids=[
        "not-a-list",
        "batch",
        "topic",
        "payload-type",
        "payload-size",
        "key",
        "reserved-header",
        "both-delays",
        "options",
        "priority",
        "headers-size",
    ],
)
def test_a_bad_publish_is_refused_with_the_code_and_index_of_the_message_at_fault(
    body, code, index
):
    refusal = _refused(parse_publish, body, LIMITS, set(), WALL_NS, {})
    assert (refusal.code, refusal.index) == (code, index)
    if isinstance(body, list):
        assert refusal.ref == body[0]


@settings(max_examples=500, deadline=None)
@given(body=bodies)
def test_any_publish_body_is_a_batch_or_a_refusal_never_another_exception(body):
    try:
        parse_publish(body, LIMITS, set(), WALL_NS, {"t": 2})
    except Refusal as refusal:
        assert isinstance(refusal.code, ErrorCode)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.lists(bodies, max_size=6), max_size=4))
def test_any_list_of_messages_is_a_batch_or_a_refusal_never_another_exception(messages):
    try:
        parse_publish([1, messages], LIMITS, {"t"}, WALL_NS, {"t": 2})
    except Refusal as refusal:
        assert isinstance(refusal.code, ErrorCode)


# --- SUBSCRIBE and settlements ------------------------------------------------------------


def test_a_subscribe_map_becomes_a_frozen_request_with_the_defaults_filled_in():
    req = parse_subscribe({"sid": 3, "topic": "logs.*", "group": "g"})
    assert req == Subscribe(3, "logs.*", "g", True, 10, None, None, None, "first")
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.credit = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "body, code",
    [
        ([], ErrorCode.BAD_BODY),
        ({"topic": "t", "group": "g"}, ErrorCode.BAD_BODY),
        ({"sid": 1, "topic": "bad topic", "group": "g"}, ErrorCode.BAD_TOPIC),
        ({"sid": 1, "topic": "t", "group": "g."}, ErrorCode.BAD_GROUP),
        (
            {"sid": 1, "topic": "t", "group": "g", "credit": protocol.MAX_CREDIT + 1},
            ErrorCode.INVALID,
        ),
        ({"sid": 1, "topic": "t", "group": "g", "ack_wait_ms": 0}, ErrorCode.INVALID),
        ({"sid": 1, "topic": "t", "group": "g", "ordering": "random"}, ErrorCode.INVALID),
        ({"sid": 1, "topic": "t", "group": "g", "start": "middle"}, ErrorCode.INVALID),
        ({"sid": 1, "topic": "t", "group": "g", "start": {"seq": -1}}, ErrorCode.INVALID),
    ],
)
def test_a_bad_subscribe_is_refused_with_its_code(body, code):
    assert _refused(parse_subscribe, body).code == code


@settings(max_examples=500, deadline=None)
@given(body=bodies)
def test_any_subscribe_or_settlement_body_is_a_request_or_a_refusal(body):
    for parse, args in [
        (parse_subscribe, (body,)),
        (parse_settle, (body, "ACK", 2)),
        (parse_detach, (body,)),
        (parse_credit, (body, 1)),
        (parse_nack_delay, (body, 1)),
        (parse_by_topic, (body, {"t": object()}, "t", 1, "ACK")),
        (parse_admin, (body, "PURGE")),
        (parse_admin, (body, "TOPIC")),
        (parse_fetch, (body,)),
        (parse_seqs, (body, 1, "PURGE", 10)),
    ]:
        try:
            parse(*args)
        except Refusal as refusal:
            assert isinstance(refusal.code, ErrorCode)


def test_settlement_sequences_must_name_a_topic_the_attachment_reads():
    reads = {"a": object()}
    assert parse_by_topic({"a": [1, 2]}, reads, "a", 1, "ACK") == [("a", [1, 2])]
    assert _refused(parse_by_topic, {"b": [1]}, reads, "a", 1, "ACK").code == ErrorCode.INVALID
    assert _refused(parse_by_topic, {"a": [1.5]}, reads, "a", 1, "ACK").code == ErrorCode.BAD_BODY
    assert _refused(parse_by_topic, [1], reads, "a", 1, "ACK").code == ErrorCode.BAD_BODY


# --- admin --------------------------------------------------------------------------------


def test_admin_bodies_are_parsed_and_their_ref_is_kept_on_a_refusal():
    assert parse_admin(["r", "t", [1, 2]], "PURGE") == requests.Admin("r", "t", [1, 2])
    assert parse_admin(["r", "create", "t", {"max_messages": 5}], "TOPIC").arg == "create"
    assert parse_fetch(["r", "t", 0, 10]) == ("r", "t", 0, 10)
    assert parse_seqs([3, 1, 3], "r", "PURGE", 10) == [3, 1]
    refusal = _refused(parse_admin, ["r", "drop", "t", None], "TOPIC")
    assert (refusal.code, refusal.ref) == (ErrorCode.INVALID, "r")
    assert _refused(parse_fetch, ["r", "t", 0, requests.MAX_FETCH + 1]).code == ErrorCode.INVALID
    assert _refused(parse_admin, ["r", "bad topic", []], "PURGE").code == ErrorCode.BAD_TOPIC


def _forbid(topic, ref):
    raise Refusal(ErrorCode.FORBIDDEN, f"may not read {topic}", ref)


def test_a_client_without_the_right_hears_forbidden_before_any_complaint_about_its_options():
    # Given a subscribe and a fetch whose options are wrong, on a topic the ACL forbids
    bad_subscribe = {"sid": 1, "topic": "secret", "group": "g", "credit": -1}
    bad_fetch = ["r", "secret", -5, 0]
    # Then the refusal is the ACL's, as the hub always answered (rights first, then options)
    assert _refused(parse_subscribe, bad_subscribe, _forbid).code == ErrorCode.FORBIDDEN
    assert _refused(parse_fetch, bad_fetch, _forbid).code == ErrorCode.FORBIDDEN
    # And a malformed topic or group is still refused as such first; a pattern's topics are
    # checked one by one by the hub, not here
    bad_group = {"sid": 1, "topic": "secret", "group": "g.", "credit": -1}
    assert _refused(parse_subscribe, bad_group, _forbid).code == ErrorCode.BAD_GROUP
    assert parse_subscribe({"sid": 1, "topic": "sec.*", "group": "g"}, _forbid).pattern
