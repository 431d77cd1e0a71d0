"""Pure parts of the operator tooling: rate window, latency histogram, redrive records, and a
redrive whose commit fails (nothing may be lost or duplicated)."""

from __future__ import annotations

import pytest
from conftest import wait_for
from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.actors.errors import HubError
from zmq_mq.router import protocol
from zmq_mq.router.deadletters import NotRedrivable, describe, redrive_record
from zmq_mq.router.metrics import metric_families
from zmq_mq.router.stats import LatencyHistogram, RateWindow
from zmq_mq.storage import StorageError


def test_rate_counts_only_the_last_window_and_a_young_counter_divides_by_its_age():
    young = RateWindow(now_ms=0, window_s=10)
    young.add(500, 20)
    assert young.rate(2_000) == 10.0  # 20 over 2 s of life
    w = RateWindow(now_ms=-100_000, window_s=10)
    w.add(500, 20)  # second 0
    w.add(5_000, 30)
    assert w.rate(9_999) == 5.0  # 50 over the full 10 s (seconds 0..9)
    assert w.rate(10_000) == 3.0  # second 0 left the window
    assert w.rate(15_999) == 0.0
    assert w.rate(60_000) == 0.0


def test_latency_histogram_buckets_are_cumulative_and_end_with_inf():
    h = LatencyHistogram((0.001, 0.01))
    for s in (0.0005, 0.001, 0.005, 3.0):
        h.observe(s)
    d = h.as_dict()
    assert d["buckets"] == [[0.001, 2], [0.01, 3], ["+Inf", 4]]
    assert d["count"] == 4 and d["sum"] == pytest.approx(3.0065)


def test_redrive_record_restores_the_original_message_and_marks_where_it_came_from():
    dead = protocol.pack_record(2000, "k", {
        "trace": "t1", "x-origin-topic": "orders", "x-origin-seq": 7, "x-origin-timestamp": 1000,
        "x-subscription": "billing", "x-deliveries": 5, "x-reason": "nacked",
        "x-custom": "user header kept"}, b"payload")
    origin, record = redrive_record("dlq.billing", 3, dead, now_ms=9000)
    assert origin == "orders"
    assert protocol.unpack_record(record) == (
        9000, "k", {"trace": "t1", "x-custom": "user header kept", "x-redriven-from": "dlq.billing:3"}, b"payload")
    d = describe(3, dead)
    assert (d["origin_topic"], d["origin_seq"], d["reason"], d["deliveries"]) == ("orders", 7, "nacked", 5)
    assert d["headers"] == {"trace": "t1", "x-custom": "user header kept"}
    with pytest.raises(NotRedrivable):
        redrive_record("dlq.x", 1, protocol.pack_record(1, None, {"a": "b"}, b""), 0)
    with pytest.raises(NotRedrivable):
        redrive_record("dlq.x", 1, b"\xc1garbage", 0)


def test_metric_families_of_an_empty_hub_are_well_formed():
    stats = {"totals": {}, "topics": [], "subscriptions": [],
             "publish_latency": LatencyHistogram().as_dict()}
    names = {f.name for f in metric_families(stats)}
    assert {"zmq_mq_published", "zmq_mq_subscription_lag", "zmq_mq_publish_latency_seconds"} <= names


def test_a_redrive_whose_commit_fails_changes_nothing_and_can_be_retried(hub):
    # Given one dead letter
    with Producer(hub.endpoint) as p:
        p.publish("orders", b"x")
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders", "g")
        c.receive(10).reject("no")
        c.flush()
    store = hub.hub.store
    with Admin(hub.endpoint) as admin:
        wait_for(lambda: admin.fetch("dlq.g"), message="the dead letter")
        # When the commit carrying the redrive fails (the disk, say)
        real = store.commit

        def failing(appends, subs=None, now_ms=0, deletes=None, **kw):
            if deletes:
                raise StorageError("disk on fire")
            return real(appends, subs, now_ms, deletes, **kw)

        store.commit = failing
        try:
            with pytest.raises(HubError) as err:
                admin.redrive("dlq.g", [1])
            assert err.value.code == "storage_error"
        finally:
            store.commit = real
        # Then neither the DLQ nor the origin changed, and a retry moves it exactly once
        assert [m.seq for m in admin.fetch("dlq.g")] == [1]
        assert store.topics["orders"].last_seq == 1
        assert admin.redrive("dlq.g", [1])["results"] == [{"seq": 1, "topic": "orders", "new_seq": 2}]
        assert admin.fetch("dlq.g") == [] and store.topics["orders"].last_seq == 2
