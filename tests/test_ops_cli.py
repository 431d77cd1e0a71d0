"""The operator commands as a user types them: stats, dlq list/show/redrive/purge, listen."""

from __future__ import annotations

import json
import subprocess
import threading

from conftest import run_cli, wait_for, zmq_mq_command
from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.cli.messages import reachable_pub
from zmq_mq.cli.ops import stats_tables


def _reject_all(endpoint: str, n: int, group: str = "billing") -> None:
    with Producer(endpoint) as p:
        for i in range(n):
            p.publish("orders", f"order {i}".encode(), key=f"k{i}")
    with Consumer(endpoint) as c:
        c.subscribe("orders", group, credit=100)
        for i in range(n):
            c.receive(10).reject("smtp down")
        c.flush()
    with Admin(endpoint) as admin:
        wait_for(lambda: len(admin.fetch(f"dlq.{group}")) == n, message="dead letters")


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_stats_json_and_tables_show_the_hub_numbers(hub):
    _reject_all(hub.endpoint, 3)
    data = json.loads(_ok(run_cli("stats", "--json", "--hub", hub.endpoint)))
    (sub,) = data["subscriptions"]
    assert (sub["topic"], sub["group"], sub["dead_lettered"], sub["delivered"]) == ("orders", "billing", 3, 3)
    assert {t["topic"]: t["messages"] for t in data["topics"]} == {"orders": 3, "dlq.billing": 3}
    table = _ok(run_cli("stats", "--hub", hub.endpoint))
    assert "subscriptions" in table and "dlq.billing" in table and "billing" in table


def test_stats_tables_render_every_column_from_a_document():
    from rich.console import Console

    doc = {"hub": "abc", "uptime_ms": 5000,
           "topics": [{"topic": "t", "messages": 2, "bytes": 2048, "first_seq": 1, "last_seq": 2,
                       "published": 2, "publish_rate": 0.4}],
           "subscriptions": [{"topic": "t", "group": "g", "ack_floor": 1, "lag": 1, "in_flight": 1,
                              "actors": 1, "delivered": 7, "acked": 1, "redelivered": 5,
                              "dead_lettered": 0}]}
    console = Console(width=200, record=True)
    console.print(stats_tables(doc))
    text = console.export_text()
    assert "2.0 KiB" in text and "0.4" in text and "redelivered" in text and "7" in text


def test_stats_watch_refreshes_until_terminated(hub, processes):
    proc = processes(subprocess.Popen([*zmq_mq_command(), "stats", "--watch", "--interval", "0.2",
                                       "--hub", hub.endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    with Producer(hub.endpoint) as p:
        p.publish("watched", b"x")
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_for(lambda: any(b"watched" in line for line in lines), message="a refresh showing the new topic")
    proc.terminate()
    assert proc.wait(10) == 0


def test_dlq_list_show_redrive_purge_as_a_user(hub):
    # Given 4 orders dead-lettered by group billing
    _reject_all(hub.endpoint, 4)
    # list: every letter with reason and origin
    letters = json.loads(_ok(run_cli("dlq", "list", "--json", "--hub", hub.endpoint)))
    assert [(d["group"], d["seq"], d["origin_topic"], d["origin_seq"]) for d in letters] == [
        ("billing", s, "orders", s) for s in (1, 2, 3, 4)]
    assert letters[0]["reason"] == "rejected: smtp down" and letters[0]["payload"] == "order 0"
    table = _ok(run_cli("dlq", "list", "--group", "billing", "--hub", hub.endpoint))
    assert "smtp down" in table and "orders:3" in table
    # show: one in full
    shown = _ok(run_cli("dlq", "show", "2", "--group", "billing", "--hub", hub.endpoint))
    assert "order 1" in shown and "rejected: smtp down" in shown and "k1" in shown
    missing = run_cli("dlq", "show", "99", "--group", "billing", "--hub", hub.endpoint)
    assert missing.returncode == 1 and b"no dead letter 99" in missing.stderr
    # redrive two chosen ones: back on orders, gone from the DLQ
    moved = run_cli("dlq", "redrive", "--group", "billing", "--seq", "1", "--seq", "3", "--hub", hub.endpoint)
    assert moved.returncode == 0 and b"redriven 2 of 2" in moved.stderr, moved.stderr
    with Admin(hub.endpoint) as admin:
        assert [m.seq for m in admin.fetch("dlq.billing")] == [2, 4]
        assert admin.fetch("orders", 5, 10)[0].seq == 5 and len(admin.fetch("orders", 5, 10)) == 2
    # purge one, then redrive --all takes the rest
    assert b"purged 1 " in run_cli("dlq", "purge", "--group", "billing", "--seq", "2", "--hub", hub.endpoint).stderr
    moved = run_cli("dlq", "redrive", "--group", "billing", "--all", "--json", "--hub", hub.endpoint)
    assert [r["new_seq"] for r in json.loads(_ok(moved))] == [7]
    assert json.loads(_ok(run_cli("dlq", "list", "--json", "--hub", hub.endpoint))) == []
    # neither --seq nor --all: a usage error
    assert run_cli("dlq", "purge", "--group", "billing", "--hub", hub.endpoint).returncode == 2


def test_dlq_purge_all_and_a_hub_that_is_not_there(hub):
    _reject_all(hub.endpoint, 2, group="emails")
    assert b"purged 2 " in run_cli("dlq", "purge", "--group", "emails", "--all", "--hub", hub.endpoint).stderr
    gone = run_cli("dlq", "list", "--hub", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert gone.returncode == 1 and b"no answer from the hub" in gone.stderr


def test_listen_prints_the_live_feed_and_says_it_is_at_most_once(hub, processes):
    help_text = _ok(run_cli("listen", "--help"))
    assert "AT-MOST-ONCE" in help_text
    proc = processes(subprocess.Popen([*zmq_mq_command(), "listen", "ord", "--json", "--count", "3",
                                       "--timeout", "30", "--hub", hub.endpoint],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    # the listener joins the PUB socket some time after it starts: publish until it hears
    stop = threading.Event()

    def keep_publishing():
        with Producer(hub.endpoint) as p:
            i = 0
            while not stop.is_set() and i < 2000:
                p.publish("orders", f"o{i}".encode())
                p.publish("other", b"never shown")
                i += 1
                stop.wait(0.02)

    t = threading.Thread(target=keep_publishing)
    t.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 0, err
    got = [json.loads(line) for line in out.decode().splitlines()]
    assert len(got) == 3 and all(m["topic"] == "orders" for m in got)
    assert [m["seq"] for m in got] == list(range(got[0]["seq"], got[0]["seq"] + 3))
    assert b"at-most-once" in err


def test_a_pub_endpoint_bound_on_every_interface_is_reached_on_the_hub_host():
    assert reachable_pub("tcp://0.0.0.0:5556", "tcp://mq.internal:5555") == "tcp://mq.internal:5556"
    assert reachable_pub("tcp://*:7000", "tcp://10.0.0.5:5555") == "tcp://10.0.0.5:7000"
    assert reachable_pub("tcp://127.0.0.1:5556", "tcp://mq:5555") == "tcp://127.0.0.1:5556"
    assert reachable_pub("ipc:///tmp/pub", "tcp://mq:5555") == "ipc:///tmp/pub"
