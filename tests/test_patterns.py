"""Pattern subscriptions (``orders.*``, ``orders.>``), partitioned topics and topic deletion,
through a real hub: the client API, the CLI, and a hub restart."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import run_cli, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from zmq_mq.actors import Actor, Admin, Consumer, Producer
from zmq_mq.actors.errors import HubError
from zmq_mq.router import acl, protocol, subscription


def _drain(consumer, n, timeout=20.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.receive(0.2)
        if msg is not None:
            got.append(msg)
            msg.ack()
    return got


# --- matching (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,topic,hit", [
    ("orders.*", "orders.eu", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.eu.paris", False),
    ("orders.>", "orders.eu", True),
    ("orders.>", "orders.eu.paris", True),
    ("orders.>", "orders", False),
    ("*.created", "user.created", True),
    ("*.created", "user.deleted", False),
    (">", "anything.at.all", True),
    (">", "dlq.billing", False),  # dead letters only for patterns that name them
    ("dlq.>", "dlq.billing", True),
])
def test_pattern_matching(pattern, topic, hit):
    assert protocol.check_pattern(pattern) is None
    assert protocol.pattern_matches(pattern, topic) is hit


@pytest.mark.parametrize("bad", ["orders.>.x", "orders..*", "orders.*x", "", "or ders.*"])
def test_bad_patterns_are_named(bad):
    assert protocol.check_pattern(bad)


# --- patterns end to end --------------------------------------------------------------------


def test_a_pattern_subscription_reads_every_matching_topic_including_ones_created_later(hub):
    with Producer(hub.endpoint) as p:
        p.publish("orders.eu", b"eu-1")
        p.publish("orders.us", b"us-1")
        p.publish("orders.eu.paris", b"deep")
        p.publish("payments", b"no")
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders.*", "audit", credit=10)
        got = _drain(c, 2)
        assert sorted((m.topic, m.payload) for m in got) == [("orders.eu", b"eu-1"), ("orders.us", b"us-1")]
        # a topic that appears after the subscription is read too, from its first message
        with Producer(hub.endpoint) as p:
            p.publish("orders.asia", b"asia-1")
            p.publish("orders.asia", b"asia-2")
        got = _drain(c, 2)
        assert [(m.topic, m.payload) for m in got] == [("orders.asia", b"asia-1"), ("orders.asia", b"asia-2")]
        assert c.receive(0.3) is None  # orders.eu.paris and payments do not match
    # one cursor per matched topic, each a subscription of the group
    subs = {t for t, g in hub.hub.subs if g == "audit"}
    assert subs == {"orders.eu", "orders.us", "orders.asia"}
    assert all(hub.hub.subs[(t, "audit")].pending == 0 for t in subs)


def test_a_multi_token_pattern_and_acks_per_topic_survive_reattach(hub):
    with Producer(hub.endpoint) as p:
        for t in ("logs.a", "logs.b.c"):
            for i in range(3):
                p.publish(t, b"%d" % i)
    with Consumer(hub.endpoint) as c:
        c.subscribe("logs.>", "all", credit=100)
        got = _drain(c, 6)
    assert sorted((m.topic, m.payload) for m in got) == sorted(
        (t, b"%d" % i) for t in ("logs.a", "logs.b.c") for i in range(3))
    # acks reached the hub per topic: a new consumer of the group gets nothing again
    wait_for(lambda: all(hub.hub.subs[(t, "all")].ack_floor == 3 for t in ("logs.a", "logs.b.c")))
    with Consumer(hub.endpoint) as c:
        c.subscribe("logs.>", "all", credit=100)
        assert c.receive(0.5) is None


def test_an_actor_with_a_pattern_handles_a_topic_created_while_it_runs(hub):
    seen = []
    done = threading.Event()

    def handle(msg):
        seen.append((msg.topic, msg.payload))
        if len(seen) == 2:
            done.set()

    actor = Actor(hub.endpoint, name="pattern-actor")
    actor.add_handler("events.*", handle, group="g")
    actor.start()  # returns once attached: the hub holds the pattern subscription
    try:
        with Producer(hub.endpoint) as p:
            p.publish("events.signup", b"a")
            p.publish("events.login", b"b")
        assert done.wait(20), seen
    finally:
        actor.stop()
    assert sorted(seen) == [("events.login", b"b"), ("events.signup", b"a")]


def test_an_actor_runs_a_message_of_one_topic_while_the_same_seq_of_another_topic_of_its_pattern_runs(hub):
    # One sid reads every topic of the pattern, and each topic numbers its messages from 1:
    # events.login seq 1 arriving while events.signup seq 1 runs is another message, not a
    # redelivery to fold into the running one (which acked it unrun when that one finished).
    seen = []
    login_ran = threading.Event()
    done = threading.Event()

    def handle(msg):
        if msg.topic == "events.signup":
            login_ran.wait(10)  # still running when events.login seq 1 is delivered
        else:
            login_ran.set()
        seen.append((msg.topic, msg.seq, msg.payload))
        if len(seen) == 2:
            done.set()

    actor = Actor(hub.endpoint, name="pattern-actor", concurrency=2)
    actor.add_handler("events.*", handle, group="g")
    actor.start()
    try:
        with Producer(hub.endpoint) as p:
            p.publish("events.signup", b"a")
            p.publish("events.login", b"b")
        assert done.wait(20), seen
    finally:
        actor.stop()
    assert sorted(seen) == [("events.login", 1, b"b"), ("events.signup", 1, b"a")]


@pytest.mark.slow
def test_a_pattern_subscription_survives_a_hub_restart_and_picks_up_topics_created_meanwhile(hub_process):
    hub = hub_process(bind="tcp://127.0.0.1:0")
    endpoint = hub.endpoint
    with Consumer(endpoint) as c:
        c.subscribe("jobs.*", "w", credit=10)
        with Producer(endpoint) as p:
            p.publish("jobs.a", b"1")
        assert [m.payload for m in _drain(c, 1)] == [b"1"]
    hub.stop()
    hub = hub_process(bind=endpoint)
    with Producer(endpoint) as p:  # a topic created while nobody is attached
        p.publish("jobs.b", b"2")
        p.publish("jobs.a", b"3")
    with Consumer(endpoint) as c:
        c.subscribe("jobs.*", "w", credit=10)
        got = _drain(c, 2)
    assert sorted((m.topic, m.payload) for m in got) == [("jobs.a", b"3"), ("jobs.b", b"2")]


def test_pattern_errors_are_clear(hub):
    with Consumer(hub.endpoint) as c:
        with pytest.raises(ValueError, match="'>' may only be the last token"):
            c.subscribe("orders.>.eu", "g")


# --- partitions -----------------------------------------------------------------------------


def test_a_partitioned_topic_routes_keys_stably_and_a_subscription_reads_every_partition(hub):
    with Admin(hub.endpoint) as admin:
        result = admin.create_topic("clicks", partitions=4)
        assert result["config"]["partitions"] == 4
    keys = [f"user-{i}" for i in range(20)]
    with Producer(hub.endpoint) as p:
        for round_ in range(3):
            for k in keys:
                p.publish("clicks", f"{k}:{round_}".encode(), key=k)
        for i in range(8):
            p.publish("clicks", b"keyless %d" % i)
    stored = {t: info.count for t, info in hub.hub.store.topics.items()}
    assert set(stored) <= {f"clicks.{i}" for i in range(4)} and sum(stored.values()) == 68
    assert "clicks" not in stored
    with Consumer(hub.endpoint) as c:
        c.subscribe("clicks", "stats", credit=100)
        got = _drain(c, 68)
    assert len(got) == 68
    by_key: dict[str, list] = {}
    for m in got:
        if m.key is not None:
            assert m.topic == f"clicks.{protocol.partition_of(m.key, 4)}"  # hash(key) mod N
            by_key.setdefault(m.key, []).append(m)
    for k, msgs in by_key.items():
        assert len({m.topic for m in msgs}) == 1  # one partition per key
        assert [m.payload for m in msgs] == [f"{k}:{r}".encode() for r in range(3)]  # in order
    keyless = sorted(m.topic for m in got if m.key is None)
    assert keyless == sorted(f"clicks.{i % 4}" for i in range(8))  # round-robin


def test_partitions_are_set_at_creation_only(hub):
    with Producer(hub.endpoint) as p:
        p.publish("plain", b"x")
    with Admin(hub.endpoint) as admin:
        with pytest.raises(HubError) as e:
            admin.create_topic("plain", partitions=2)
        assert e.value.code == "invalid" and "already holds messages" in str(e.value)
        admin.create_topic("parted", partitions=2)
        with pytest.raises(HubError, match="set at creation"):
            admin.configure_topic("parted", partitions=3)
        with pytest.raises(HubError, match="partitions must be"):
            admin.create_topic("other", partitions=0)


def test_the_cli_creates_a_partitioned_topic_and_subscribes_to_a_pattern(hub):
    r = run_cli("topic", "create", "metrics", "--partitions", "3", "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["partitions"] == 3
    for i in range(6):
        assert run_cli("publish", "metrics", f"m{i}", "--key", f"k{i}", "--hub", hub.endpoint).returncode == 0
    r = run_cli("subscribe", "metrics.*", "--group", "cli", "--count", "6", "--json", "--timeout", "10",
                "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert sorted(row["payload"] for row in rows) == [f"m{i}" for i in range(6)]
    assert {row["topic"] for row in rows} <= {"metrics.0", "metrics.1", "metrics.2"}


# --- delete ---------------------------------------------------------------------------------


def test_topic_delete_removes_messages_config_and_subscriptions_and_the_name_starts_afresh(hub):
    with Admin(hub.endpoint) as admin:
        admin.create_topic("tmp", max_messages=100)
    with Producer(hub.endpoint) as p:
        for i in range(5):
            p.publish("tmp", b"%d" % i)
        p.publish("keep", b"k")
    with Consumer(hub.endpoint) as c:
        c.subscribe("tmp", "g", credit=10)
        assert len(_drain(c, 2)) == 2
    r = run_cli("topic", "delete", "tmp", "--hub", hub.endpoint)
    assert r.returncode == 0, r.stderr
    assert b"5 messages" in r.stdout and b"g" in r.stdout
    assert "tmp" not in hub.hub.store.topics and ("tmp", "g") not in hub.hub.subs
    assert "keep" in hub.hub.store.topics
    with Admin(hub.endpoint) as admin:
        assert admin.topic_config("tmp")["max_messages"] is None  # limits gone with it
        assert [t["topic"] for t in admin.topics()] == ["keep"]
        with pytest.raises(HubError, match="no topic"):
            admin.delete_topic("tmp")
    # publishing to the name again starts a new topic at seq 1, and a new group reads only it
    with Producer(hub.endpoint) as p:
        assert p.publish("tmp", b"new") == 1
    with Consumer(hub.endpoint) as c:
        c.subscribe("tmp", "g", credit=10)
        assert [m.payload for m in _drain(c, 1)] == [b"new"]
    again = run_cli("topic", "delete", "missing", "--hub", hub.endpoint)
    assert again.returncode != 0 and b"no topic" in again.stderr


def test_a_topic_delete_in_the_turn_that_publishes_to_it_is_answered_after_the_confirm(tmp_path):
    # Given a hub driven without sockets (Hub.step): one turn holds a PUBLISH to "tmp" and a
    # TOPIC delete of "tmp", so the delete first commits the staged publish (commit_now)
    from zmq_mq.router.config import HubConfig
    from zmq_mq.router.hub import Hub

    def publish(batch_id: int) -> list[bytes]:
        return [b"p", *protocol.encode(protocol.Command.PUBLISH, [batch_id, [["tmp", b"a", None, None]]])]

    hub = Hub(HubConfig(data_dir=str(tmp_path)))
    try:
        assert hub.step([publish(1)]) == [(b"p", protocol.Command.CONFIRM, [1, [1]])]
        sent = hub.step([
            publish(2),
            [b"a", *protocol.encode(protocol.Command.TOPIC, ["r", "delete", "tmp", None])],
        ])
        # Then the publisher hears its confirm and the admin its reply, in that order
        assert sent == [
            (b"p", protocol.Command.CONFIRM, [2, [2]]),
            (b"a", protocol.Command.REPLY, ["r", {"topic": "tmp", "deleted": True, "messages": 2,
                                                  "subscriptions": [], "partitions": 0}]),
        ]
        assert "tmp" not in hub.store.topics
    finally:
        hub.close()


def test_deleting_a_topic_under_an_attached_consumer_lets_it_go_on_with_the_new_topic(hub):
    with Producer(hub.endpoint) as p:
        p.publish("live", b"old")
    with Consumer(hub.endpoint) as c:
        c.subscribe("live", "g", credit=10)
        assert [m.payload for m in _drain(c, 1)] == [b"old"]
        with Admin(hub.endpoint) as admin:
            assert admin.delete_topic("live")["messages"] == 1
        with Producer(hub.endpoint) as p:
            p.publish("live", b"new")
        # the consumer finds out (heartbeat lists its sid missing) and subscribes again
        got = _drain(c, 1, timeout=30)
        assert [m.payload for m in got] == [b"new"]


def test_deleting_a_partitioned_topic_deletes_every_partition(hub):
    with Admin(hub.endpoint) as admin:
        admin.create_topic("parts", partitions=3)
        with Producer(hub.endpoint) as p:
            for i in range(9):
                p.publish("parts", b"x", key=f"k{i}")
        result = admin.delete_topic("parts")
        assert result["messages"] == 9 and result["partitions"] == 3
        assert not [t for t in hub.hub.store.topics if t.startswith("parts")]
        assert "partitions" not in admin.topic_config("parts")


def test_a_consumer_of_a_deleted_partitioned_topic_goes_on_with_the_topic_created_again(hub):
    with Admin(hub.endpoint) as admin:
        admin.create_topic("shards", partitions=2)
        with Consumer(hub.endpoint) as c:
            c.subscribe("shards", "g", credit=10)
            admin.delete_topic("shards")
            admin.create_topic("shards", partitions=2, max_messages=100)
            assert admin.create_topic("shards", max_messages=50)["config"]["partitions"] == 2  # kept
            with Producer(hub.endpoint) as p:
                p.publish("shards", b"again", key="k")
            got = _drain(c, 1, timeout=30)
    assert [m.payload for m in got] == [b"again"]


def test_priorities_hold_in_a_partitioned_topic_for_an_attached_consumer(hub, raw_client):
    # Given a partitioned topic and a consumer attached before anything is published
    with Admin(hub.endpoint) as admin:
        admin.create_topic("bids", partitions=2)
    with Consumer(hub.endpoint) as c:
        c.subscribe("bids", "g", credit=1)
        # When one batch stores five ordinary messages and then one of priority 9, one key
        sock = raw_client()
        batch = [["bids", b"low", "k", None]] * 5 + [["bids", b"high", "k", None, {"priority": 9}]]
        sock.send_multipart(protocol.encode(protocol.Command.PUBLISH, [1, batch]))
        assert sock.poll(10_000)
        command, body = protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
        assert command == protocol.Command.CONFIRM, body
        # Then the priority message is handed out first (its partition knows it has priorities)
        got = []
        while len(got) < 6:
            msg = c.receive(10)
            assert msg is not None, got
            got.append(msg.payload)
            msg.ack()
    assert got == [b"high"] + [b"low"] * 5


_tokens = st.sampled_from(["a", "b", "dlq"])
_topics = st.lists(_tokens, min_size=1, max_size=4).map(".".join)
_patterns = st.lists(st.one_of(_tokens, st.just("*")), min_size=1, max_size=4).flatmap(
    lambda head: st.sampled_from([head + [">"], head])
).map(".".join)


@settings(max_examples=300, deadline=None)
@given(_patterns, _topics)
def test_the_acl_and_pattern_subscriptions_share_one_matcher_that_differs_only_on_dead_letters(
    pattern, topic
):
    # The ACL's matcher is the protocol's one matcher ...
    assert acl.matches is protocol.tokens_match
    assert acl.parse_pattern(pattern) == tuple(pattern.split("."))
    # ... and a pattern subscription reads what it matches, except the dead-letter topics of
    # a pattern that does not name them
    dead_letter = topic.split(".")[0] == "dlq" and pattern.split(".")[0] != "dlq"
    expected = protocol.tokens_match(pattern.split("."), topic) and not dead_letter
    assert protocol.pattern_matches(pattern, topic) is expected


def test_orderings_and_priority_bounds_have_one_home_in_the_protocol():
    assert subscription.ORDERINGS is protocol.ORDERINGS
    assert (subscription.DEFAULT_PRIORITY, subscription.MAX_PRIORITY) == (
        protocol.DEFAULT_PRIORITY, protocol.MAX_PRIORITY)
    assert protocol.check_priority(protocol.MAX_PRIORITY) is None
    assert protocol.check_priority(protocol.MAX_PRIORITY + 1)
