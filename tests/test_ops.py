"""Operator tooling against a real hub: STATS numbers, FETCH, PURGE and REDRIVE of dead letters."""

from __future__ import annotations

import pytest
from conftest import wait_for
from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.actors.errors import HubError
from zmq_mq.router import protocol


def _sub(stats: dict, group: str) -> dict:
    (s,) = [s for s in stats["subscriptions"] if s["group"] == group]
    return s


def _topic(stats: dict, name: str) -> dict:
    (t,) = [t for t in stats["topics"] if t["topic"] == name]
    return t


def _publish(endpoint: str, topic: str, n: int, **kw) -> list[int]:
    with Producer(endpoint) as p:
        return [p.publish(topic, b"m%d" % i, **kw) for i in range(n)]


def _consume(endpoint, group, n, settle, **kw) -> None:
    """Receive n messages of 'orders' in ``group`` and settle each with settle(msg, i)."""
    with Consumer(endpoint) as c:
        c.subscribe("orders", group, **kw)
        for i in range(n):
            msg = c.receive(10)
            assert msg is not None, f"message {i} of {n} never came"
            settle(msg, i)
        c.flush()


def test_stats_agree_with_what_was_published_acked_and_dead_lettered(hub):
    # Given 50 published messages, read by group "billing": 30 acked, 5 rejected, 15 left
    _publish(hub.endpoint, "orders", 50)

    def settle(msg, i):
        if i < 30:
            msg.ack()
        elif i < 35:
            msg.reject("bad order")
        # the last 15 are left unsettled: closing the consumer gives them back

    _consume(hub.endpoint, "billing", 50, settle, credit=100)
    with Admin(hub.endpoint) as admin:
        # When the operator asks for stats (once the consumer's settles are committed)
        stats = wait_for(lambda: (s := admin.stats()) and _sub(s, "billing")["actors"] == 0
                         and _sub(s, "billing")["lag"] == 15 and s, message="settled state")
    # Then every number matches what happened
    orders = _topic(stats, "orders")
    assert (orders["messages"], orders["first_seq"], orders["last_seq"], orders["published"]) == (50, 1, 50, 50)
    assert orders["bytes"] > 50 and orders["publish_rate"] > 0
    billing = _sub(stats, "billing")
    assert billing["acked"] == 30
    assert billing["dead_lettered"] == 5
    assert billing["delivered"] == 50 and billing["redelivered"] == 0
    assert billing["ack_floor"] == 35 and billing["lag"] == 15 and billing["in_flight"] == 0
    dlq = _topic(stats, "dlq.billing")
    assert dlq["messages"] == 5 and dlq["published"] == 5
    assert stats["totals"]["acked"] == 30 and stats["totals"]["dead_lettered"] == 5
    assert stats["publish_latency"]["count"] >= 1  # one producer batch or more


def test_a_duplicate_ack_counts_once_and_redeliveries_are_counted(hub):
    _publish(hub.endpoint, "orders", 3)
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders", "g", credit=10)
        first = [c.receive(10) for _ in range(3)]
        first[0].nack()  # redelivered once
        again = c.receive(10)
        assert again.seq == first[0].seq and again.deliveries == 2
        for m in (again, first[1], first[2]):
            m.ack()
        c.flush()
    with Admin(hub.endpoint) as admin:
        g = wait_for(lambda: (s := _sub(admin.stats(), "g"))["acked"] == 3 and s, message="acks")
    assert g["delivered"] == 4 and g["redelivered"] == 1 and g["ack_floor"] == 3 and g["lag"] == 0


def _dead_letter(hub, n: int, group: str = "billing") -> None:
    """n messages on 'orders', all rejected by ``group``: dlq.<group> holds n dead letters."""
    with Producer(hub.endpoint) as p:
        for i in range(n):
            p.publish("orders", b"order %d" % i, key=f"k{i}", headers={"trace": str(i)})
    _consume(hub.endpoint, group, n, lambda m, i: m.reject(f"boom {i}"), credit=100)
    with Admin(hub.endpoint) as admin:
        wait_for(lambda: len(admin.fetch(protocol.dlq_topic(group))) == n, message="dead letters")


def test_fetch_pages_through_a_topic_and_refuses_bad_arguments(hub):
    _publish(hub.endpoint, "orders", 25)
    with Admin(hub.endpoint) as admin:
        page = admin.fetch("orders", 10, 5)
        assert [m.seq for m in page] == [10, 11, 12, 13, 14]
        assert page[0].payload == b"m9"
        assert [m.seq for m in admin.scan("orders")] == list(range(1, 26))
        assert admin.fetch("never.used") == []
        with pytest.raises(HubError) as err:
            admin.fetch("orders", 1, 0)
        assert err.value.code == "invalid"
        with pytest.raises(HubError) as err:
            admin.fetch("bad topic!", 1, 5)
        assert err.value.code == "bad_topic"
        with pytest.raises(HubError) as err:
            admin.call(protocol.Command.PURGE, "orders")
        assert err.value.code == "bad_body"
        assert admin.stats()["topics"]  # the connection still serves


def test_redrive_moves_dead_letters_back_atomically_and_they_are_delivered_again(hub):
    # Given 4 dead letters of group billing
    _dead_letter(hub, 4)
    with Admin(hub.endpoint) as admin:
        letters = admin.dead_letters("billing")
        assert [d["origin_seq"] for d in letters] == [1, 2, 3, 4]
        assert letters[0]["reason"] == "rejected: boom 0" and letters[0]["origin_topic"] == "orders"
        assert letters[0]["subscription"] == "billing" and letters[0]["deliveries"] == 1
        assert letters[0]["headers"] == {"trace": "0"} and letters[0]["key"] == "k0"
        # When two of them (and one unknown seq) are redriven
        result = admin.redrive("dlq.billing", [2, 3, 99])
        # Then they are new messages on orders, gone from the DLQ, the unknown one reported
        assert result["redriven"] == 2
        by_seq = {r["seq"]: r for r in result["results"]}
        assert by_seq[99]["error"] == "not found"
        assert {by_seq[2]["new_seq"], by_seq[3]["new_seq"]} == {5, 6}
        assert [m.seq for m in admin.fetch("dlq.billing")] == [1, 4]
        assert admin.redrive("dlq.billing", [2])["redriven"] == 0  # never twice
        stats = admin.stats()
        assert _topic(stats, "dlq.billing")["messages"] == 2
        assert _topic(stats, "orders")["last_seq"] == 6
        (redriven,) = admin.fetch("orders", by_seq[2]["new_seq"], 1)
    assert (redriven.seq, redriven.key, redriven.payload) == (by_seq[2]["new_seq"], "k1", b"order 1")
    assert redriven.headers == {"trace": "1", "x-redriven-from": "dlq.billing:2"}
    # And the subscription that dead-lettered them gets them again
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders", "billing", credit=10)
        got = [c.receive(10) for _ in range(2)]
        assert sorted(m.payload for m in got) == [b"order 1", b"order 2"]
        for m in got:
            m.ack()


def test_purge_removes_chosen_or_all_dead_letters(hub):
    _dead_letter(hub, 5)
    with Admin(hub.endpoint) as admin:
        assert admin.purge("dlq.billing", [1, 1, 2, 42]) == {"topic": "dlq.billing", "purged": 2, "seqs": [1, 2]}
        assert [m.seq for m in admin.fetch("dlq.billing")] == [3, 4, 5]
        assert admin.purge("dlq.billing", "all")["purged"] == 3
        assert admin.fetch("dlq.billing") == []
        t = _topic(admin.stats(), "dlq.billing")
        assert (t["messages"], t["bytes"], t["first_seq"], t["last_seq"]) == (0, 0, 6, 5)
        assert admin.purge("dlq.nobody", "all")["purged"] == 0


def test_redrive_of_a_record_without_origin_is_refused_per_record(hub):
    _publish(hub.endpoint, "plain", 1)
    with Admin(hub.endpoint) as admin:
        result = admin.redrive("plain", [1])
        assert result["redriven"] == 0 and "x-origin-topic" in result["results"][0]["error"]
        assert len(admin.fetch("plain")) == 1


def test_racing_redrives_and_purges_take_each_dead_letter_exactly_once(hub, raw_client):
    # Given 3 dead letters
    _dead_letter(hub, 3)
    # When one connection fires, back to back (mostly read in one hub turn): two redrives of
    # seqs 1-2, a purge of 2, a purge of all, and a redrive of 3
    sock = raw_client()
    requests = [(protocol.Command.REDRIVE, [1, "dlq.billing", [1, 2]]),
                (protocol.Command.REDRIVE, [2, "dlq.billing", [2, 1]]),
                (protocol.Command.PURGE, [3, "dlq.billing", [2]]),
                (protocol.Command.PURGE, [4, "dlq.billing", "all"]),
                (protocol.Command.REDRIVE, [5, "dlq.billing", [3]])]
    for command, body in requests:
        sock.send_multipart(protocol.encode(command, body))
    replies = {}
    while len(replies) < len(requests):
        assert sock.poll(10_000), f"answers so far: {replies}"
        command, body = protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
        assert command == protocol.Command.REPLY, body
        replies[body[0]] = body[1]
    # Then every dead letter was taken by exactly one request, in arrival order
    moved = [r["seq"] for ref in (1, 2, 5) for r in replies[ref]["results"] if "new_seq" in r]
    purged = replies[3]["purged"] + replies[4]["purged"]
    assert sorted(moved) == [1, 2] and replies[2]["redriven"] == 0
    assert replies[3]["purged"] == 0 and replies[4]["purged"] == 1 and purged == 1
    assert replies[5]["results"] == [{"seq": 3, "error": "not found"}]
    with Admin(hub.endpoint) as admin:
        assert admin.fetch("dlq.billing") == []
        stats = admin.stats()
    assert _topic(stats, "dlq.billing")["messages"] == 0
    assert _topic(stats, "orders")["last_seq"] == 5  # 3 originals + 2 redriven, never more
