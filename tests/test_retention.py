"""Per-topic retention limits: the pure decisions, and a real hub refusing (discard=new) or
dropping the oldest (discard=old) through sockets; limits survive a restart."""

from __future__ import annotations

import json

import pytest
from conftest import settled_stats, wait_for
from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.actors.errors import HubError
from zmq_mq.router.retention import (
    TRIM_BATCH,
    TopicLimits,
    acked_upto,
    aged_prefix,
    bytes_upto,
    start_after,
    excess_messages,
    parse_limits,
    refuse_new,
)
from zmq_mq.testing import HubThread


# --- pure decisions ---------------------------------------------------------------------------

def test_parse_limits_validates_and_merges_over_a_base():
    assert parse_limits({}) == TopicLimits()
    base = parse_limits({"max_messages": 10, "discard": "new"})
    assert parse_limits({"max_messages": 20}, base) == TopicLimits(20, "new")
    assert parse_limits({"max_messages": 0}, base).unlimited
    assert parse_limits({"max_age_ms": 500}).max_age_ms == 500
    assert not parse_limits({"max_age_ms": 500}).unlimited
    for bad in ({"max_age_ms": 1.5}, {"max_age_ms": -1}, {"max_messages": -1}, {"max_messages": "5"}, {"discard": "oldest"}, {"colour": 1}, []):
        with pytest.raises(ValueError):
            parse_limits(bad)


def test_refuse_new_counts_stored_and_staged_messages():
    full = TopicLimits(1000, "new")
    assert refuse_new(full, 999, 0, 1) is None
    assert refuse_new(full, 999, 1, 1) is not None  # one staged in this turn already
    assert refuse_new(full, 1000, 0, 1) is not None
    assert refuse_new(TopicLimits(1000, "old"), 1000, 0, 1) is None
    assert refuse_new(TopicLimits(), 10**9, 0, 1) is None


def test_aged_prefix_finds_the_leading_run_older_than_the_cutoff():
    assert aged_prefix([], 100) == (None, None)
    assert aged_prefix([(5, 10), (6, 20), (7, 150), (8, 30)], 100) == (6, 150)  # stops at 7
    assert aged_prefix([(5, 200)], 100) == (None, 200)
    assert aged_prefix([(5, 10), (6, 20)], 100) == (6, None)


def test_acked_upto_takes_the_slowest_subscription_and_is_bounded():
    assert acked_upto(1, []) == 1  # no subscription: nobody acked, nothing goes
    assert acked_upto(1, [10, 4]) == 5
    assert acked_upto(6, [3]) == 6
    assert acked_upto(1, [10**6]) == 1 + TRIM_BATCH
    assert parse_limits({"retention": "workqueue"}).retention == "workqueue"
    assert not parse_limits({"retention": "workqueue"}).unlimited
    with pytest.raises(ValueError):
        parse_limits({"retention": "forever"})


def test_max_bytes_decisions():
    assert bytes_upto([(1, 10), (2, 10), (3, 10)], 0) is None
    assert bytes_upto([(1, 10), (2, 10), (3, 10)], 15) == 2
    assert bytes_upto([(1, 10), (2, 10)], 100) == 2  # not enough in this batch: all of it
    full = TopicLimits(max_bytes=100, discard="new")
    assert refuse_new(full, 5, 0, 1, 80, 0, 20) is None
    assert refuse_new(full, 5, 1, 1, 80, 10, 20) is not None
    assert refuse_new(TopicLimits(max_bytes=100), 5, 0, 1, 80, 0, 50) is None  # discard=old


def test_start_after_each_start_position():
    stamps = {3: 100, 4: 100, 6: 200, 7: 300, 9: 300, 10: 400}  # a log with holes

    def probe(seq):
        later = [s for s in stamps if s >= seq]
        return (min(later), stamps[min(later)]) if later else None

    assert start_after("first", 3, 10, probe) == 2
    assert start_after("new", 3, 10, probe) == 10
    assert start_after({"seq": 7}, 3, 10, probe) == 6
    assert start_after({"seq": 1}, 3, 10, probe) == 2  # before the oldest: from the oldest
    assert start_after({"seq": 99}, 3, 10, probe) == 10  # past the end: only new ones
    for t, first in ((0, 3), (100, 3), (101, 6), (200, 6), (250, 7), (300, 7), (301, 10), (401, 11)):
        after = start_after({"time_ms": t}, 3, 10, probe)
        assert (probe(after + 1) or (11,))[0] == first, t  # the first stored one it delivers
    assert start_after({"time_ms": 5}, 1, 0, lambda s: None) == 0  # empty topic
    for bad in ("last", {"seq": -1}, {"seq": "3"}, {"time": 3}, {"seq": 1, "time_ms": 2}, 5):
        with pytest.raises(ValueError):
            start_after(bad, 1, 10, probe)


def test_excess_messages_is_bounded_per_turn():
    old = TopicLimits(100, "old")
    assert excess_messages(old, 100, 0) == 0
    assert excess_messages(old, 100, 5) == 5
    assert excess_messages(old, 10**6, 0) == TRIM_BATCH
    assert excess_messages(TopicLimits(100, "new"), 500, 5) == 0


# --- through a real hub -------------------------------------------------------------------------

def _settled_messages(endpoint: str, topic: str) -> int:
    """How many messages ``topic`` holds, after a full hub turn that saw the clock as it is."""
    return next(t for t in settled_stats(endpoint)["topics"] if t["topic"] == topic)["messages"]


def _stat(admin: Admin, kind: str, **match) -> dict:
    for row in admin.stats()[kind]:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return {}


def test_discard_new_refuses_the_publish_over_max_messages_and_keeps_what_is_stored(hub):
    with Admin(hub.endpoint) as admin:
        assert admin.create_topic("jobs", max_messages=1000, discard="new")["config"] == {
            "max_messages": 1000, "discard": "new", "max_age": None, "retention": "limits", "max_bytes": None}
        with Producer(hub.endpoint) as p:
            for i in range(1000):
                p.publish_async("jobs", b"%d" % i)
            p.flush()
            with pytest.raises(HubError) as err:
                p.publish("jobs", b"one too many")
        assert err.value.code == "topic_full"
        topic = _stat(admin, "topics", topic="jobs")
        assert (topic["messages"], topic["first_seq"], topic["last_seq"]) == (1000, 1, 1000)
        assert [m.seq for m in admin.fetch("jobs", 1, 1)] == [1]
        # a topic without limits next to it is not affected
        with Producer(hub.endpoint) as p:
            assert p.publish("other", b"x") == 1


def test_discard_old_drops_the_oldest_and_the_subscription_counts_them_expired(hub):
    with Admin(hub.endpoint) as admin:
        admin.create_topic("events", max_messages=100)
        with Consumer(hub.endpoint) as c:  # the subscription exists before the messages
            c.subscribe("events", "audit", credit=0)
        with Producer(hub.endpoint) as p:
            for i in range(250):
                p.publish_async("events", b"%d" % i)
            p.flush()
        topic = wait_for(lambda: (t := _stat(admin, "topics", topic="events"))["messages"] == 100 and t,
                         message="trimmed to 100")
        assert (topic["first_seq"], topic["last_seq"]) == (151, 250)
        got = []
        with Consumer(hub.endpoint) as c:
            c.subscribe("events", "audit", credit=50)
            while len(got) < 100:
                msg = c.receive(10)
                assert msg is not None, f"only {len(got)} of 100 came"
                got.append(msg.seq)
                msg.ack()
            c.flush()
        assert got == list(range(151, 251))
        sub = wait_for(lambda: (s := _stat(admin, "subscriptions", group="audit"))["lag"] == 0 and s,
                       message="all settled")
        assert sub["expired"] == 150 and sub["acked"] == 100


def test_limits_survive_a_restart_and_can_be_lifted(tmp_path):
    h = HubThread(tmp_path / "data").start()
    try:
        with Admin(h.endpoint) as admin:
            admin.create_topic("jobs", max_messages=2, discard="new")
    finally:
        h.stop()
    h = HubThread(tmp_path / "data").start()
    try:
        with Admin(h.endpoint) as admin, Producer(h.endpoint) as p:
            assert admin.topic_config("jobs") == {"max_messages": 2, "discard": "new", "max_age": None, "retention": "limits", "max_bytes": None}
            p.publish("jobs", b"1")
            p.publish("jobs", b"2")
            with pytest.raises(HubError) as err:
                p.publish("jobs", b"3")
            assert err.value.code == "topic_full"
            assert admin.configure_topic("jobs", max_messages=0)["config"]["max_messages"] is None
            assert p.publish("jobs", b"3") == 3
            with pytest.raises(HubError) as bad:
                admin.configure_topic("jobs", discard="sometimes")
            assert bad.value.code == "invalid"
    finally:
        h.stop()


def test_topic_create_and_config_on_the_command_line(hub):
    from conftest import run_cli

    def ok(*args: str) -> dict:
        proc = run_cli("topic", *args, "--hub", hub.endpoint)
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout)

    assert ok("create", "jobs", "--max-messages", "3", "--discard", "new") == {
        "max_messages": 3, "discard": "new", "max_age": None, "retention": "limits", "max_bytes": None}
    assert ok("config", "jobs") == {"max_messages": 3, "discard": "new", "max_age": None, "retention": "limits", "max_bytes": None}
    assert ok("config", "jobs", "--max-messages", "5", "--max-age", "3600") == {
        "max_messages": 5, "discard": "new", "max_age": 3600.0, "retention": "limits", "max_bytes": None}
    with Producer(hub.endpoint) as p:
        for i in range(5):
            p.publish("jobs", b"%d" % i)
        with pytest.raises(HubError) as err:
            p.publish("jobs", b"6")
        assert err.value.code == "topic_full"
    bad = run_cli("topic", "config", "jobs", "--discard", "sideways", "--hub", hub.endpoint)
    assert bad.returncode == 2 and b"--discard must be old or new" in bad.stderr
    assert ok("config", "fresh") == {"max_messages": None, "discard": "old", "max_age": None, "retention": "limits", "max_bytes": None}  # defaults


def test_max_age_removes_messages_older_than_the_age_and_keeps_younger_ones(fake_clock_hub):
    # Given a topic with max_age 1 s on a hub whose clock stands still, and 20 messages
    hub, clock = fake_clock_hub()
    with Admin(hub.endpoint) as admin:
        assert admin.create_topic("ticks", max_age=1.0)["config"]["max_age"] == 1.0
        with Producer(hub.endpoint) as p:
            old = [p.publish("ticks", b"old %d" % i) for i in range(20)]
            assert _stat(admin, "topics", topic="ticks")["messages"] == 20  # not aged yet
            # When they are exactly 1 s old they are kept; 1 ms later they are removed
            clock.advance(1000)
            assert _settled_messages(hub.endpoint, "ticks") == 20
            clock.advance(1)
            wait_for(lambda: _stat(admin, "topics", topic="ticks")["messages"] == 0,
                     message="the old ones aged out")
            young = p.publish("ticks", b"young")
        topic = _stat(admin, "topics", topic="ticks")
        assert (topic["messages"], topic["first_seq"]) == (1, young) and young == old[-1] + 1
        # lifting the age keeps the young one for good
        admin.configure_topic("ticks", max_age=0)
        assert admin.topic_config("ticks")["max_age"] is None
        assert [m.seq for m in admin.fetch("ticks", 0)] == [young]


def test_workqueue_retention_deletes_a_message_once_every_subscription_acked_it(hub):
    with Admin(hub.endpoint) as admin:
        assert admin.create_topic("work", retention="workqueue")["config"]["retention"] == "workqueue"
        with Consumer(hub.endpoint) as c:  # two subscriptions before the messages
            c.subscribe("work", "a", credit=0)
            c.subscribe("work", "b", credit=0)
        with Producer(hub.endpoint) as p:
            for i in range(10):
                p.publish_async("work", b"%d" % i)
            p.flush()

        def ack(group: str, n: int) -> None:
            with Consumer(hub.endpoint) as c:
                c.subscribe("work", group, credit=n)
                for _ in range(n):
                    msg = c.receive(10)
                    assert msg is not None
                    msg.ack()
                c.flush()

        ack("a", 10)  # a acked all, b none: everything stays
        wait_for(lambda: _stat(admin, "subscriptions", group="a")["lag"] == 0, message="a settled")
        assert _stat(admin, "topics", topic="work")["messages"] == 10
        ack("b", 4)  # b acked 1..4: those go, 5..10 stay
        topic = wait_for(lambda: (t := _stat(admin, "topics", topic="work"))["messages"] == 6 and t,
                         message="the first four deleted")
        assert topic["first_seq"] == 5
        assert [m.seq for m in admin.fetch("work", 0)] == list(range(5, 11))


def test_max_bytes_drops_the_oldest_or_refuses_new_ones(hub):
    with Admin(hub.endpoint) as admin, Producer(hub.endpoint) as p:
        admin.create_topic("blobs", max_bytes=10_000)
        admin.create_topic("capped", max_bytes=10_000, discard="new")
        for i in range(30):  # 1000-byte payloads: about ten fit
            p.publish("blobs", bytes(1000))
        topic = wait_for(lambda: (t := _stat(admin, "topics", topic="blobs"))["bytes"] <= 10_000 and t,
                         message="blobs trimmed to 10 kB")
        assert topic["last_seq"] == 30 and topic["messages"] >= 8
        assert topic["first_seq"] == 30 - topic["messages"] + 1  # the oldest went
        stored = []
        with pytest.raises(HubError) as err:
            for i in range(30):
                stored.append(p.publish("capped", bytes(1000)))
        assert err.value.code == "topic_full"
        capped = _stat(admin, "topics", topic="capped")
        assert capped["bytes"] <= 10_000 and capped["messages"] == len(stored) >= 8
        assert capped["first_seq"] == 1


def _received(endpoint: str, group: str, n: int, **kw) -> list[int]:
    got = []
    with Consumer(endpoint) as c:
        c.subscribe("log", group, **kw)
        while len(got) < n:
            msg = c.receive(10)
            assert msg is not None, f"only {len(got)} of {n} came"
            got.append(msg.seq)
            msg.ack()
        assert c.receive(0.2) is None  # and nothing before the start position
        c.flush()
    return got


def test_a_new_subscription_starts_at_a_seq_or_a_time(fake_clock_hub):
    import datetime as dt

    hub, clock = fake_clock_hub()
    with Producer(hub.endpoint) as p:
        for i in range(5):
            p.publish("log", b"early %d" % i)
        with Admin(hub.endpoint) as admin:
            (msg5,) = admin.fetch("log", 5, 1)
        ts5 = msg5.timestamp
        clock.advance(6)  # the late ones are stored 6 ms after the early ones
        for i in range(5):
            p.publish("log", b"late %d" % i)
    assert _received(hub.endpoint, "from-seq", 3, start=8) == [8, 9, 10]
    after = dt.datetime.fromtimestamp((ts5 + 1) / 1000, dt.timezone.utc)
    assert _received(hub.endpoint, "from-time", 5, start=after) == [6, 7, 8, 9, 10]
    # an existing subscription keeps its cursor whatever start says
    with Producer(hub.endpoint) as p:
        p.publish("log", b"11")
    assert _received(hub.endpoint, "from-seq", 1, start="first") == [11]
    # and on the command line
    from conftest import run_cli
    out = run_cli("subscribe", "log", "--group", "cli-seq", "--start", "seq:10", "--count", "2",
                  "--json", "--hub", hub.endpoint, "--timeout", "10")
    assert out.returncode == 0, out.stderr.decode()
    assert [json.loads(line)["seq"] for line in out.stdout.splitlines()] == [10, 11]
    bad = run_cli("subscribe", "log", "--group", "x", "--start", "seq:ten", "--hub", hub.endpoint)
    assert bad.returncode == 2 and b"--start must be" in bad.stderr
