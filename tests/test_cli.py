"""The command line, used as a new user would: a hub process, publish from stdin, subscribe."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import run_cli, zmq_mq_command

N = 10_000


def _lines(n: int) -> bytes:
    return b"".join(b"message %d\n" % i for i in range(n))


def _subscribe_json(endpoint: str, group: str, *args: str) -> list[dict]:
    result = run_cli("subscribe", "orders", "--group", group, "--json", "--hub", endpoint, *args)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


@pytest.mark.slow
def test_piped_messages_are_confirmed_fanned_out_and_shared_by_a_work_queue(hub_process, processes):
    # Given a hub process and 10,000 lines piped into `zmq-mq publish orders -`
    hub = hub_process()
    published = run_cli("publish", "orders", "-", "--hub", hub.endpoint, input=_lines(N))
    assert published.returncode == 0, published.stderr.decode()
    assert b"confirmed 10000 messages" in published.stderr

    # When two groups read: each gets every message (fan-out)
    for group in ("audit", "billing"):
        got = _subscribe_json(hub.endpoint, group, "--count", str(N), "--timeout", "20")
        assert [m["seq"] for m in got] == list(range(1, N + 1)), hub.log()
        assert got[0]["payload"] == "message 0" and got[-1]["payload"] == f"message {N - 1}"
        assert all(m["topic"] == "orders" and m["deliveries"] == 1 for m in got)

    # And two concurrent subscribers in one group split the messages (work queue)
    cmd = [*zmq_mq_command(), "subscribe", "orders", "--group", "workers", "--count", str(N // 2),
           "--timeout", "30", "--json", "--hub", hub.endpoint]
    a = processes(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    b = processes(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    seqs_a = {json.loads(line)["seq"] for line in out_a.decode().splitlines()}
    seqs_b = {json.loads(line)["seq"] for line in out_b.decode().splitlines()}
    assert len(seqs_a) == N // 2 and len(seqs_b) == N // 2
    assert not seqs_a & seqs_b
    assert seqs_a | seqs_b == set(range(1, N + 1))


@pytest.mark.slow
def test_confirmed_messages_survive_kill_9_and_acked_groups_get_nothing_again(hub_process):
    # Given 10,000 confirmed messages, all of them acked by group "done"
    hub = hub_process()
    assert run_cli("publish", "orders", "-", "--hub", hub.endpoint, input=_lines(N)).returncode == 0
    assert len(_subscribe_json(hub.endpoint, "done", "--count", str(N), "--timeout", "20")) == N

    # When the hub is killed with SIGKILL and restarted on the same data
    hub.kill9()
    hub = hub_process()

    # Then a new group still receives all 10,000, and "done" receives nothing again
    got = _subscribe_json(hub.endpoint, "fresh", "--count", str(N), "--timeout", "20")
    assert sorted(m["seq"] for m in got) == list(range(1, N + 1))
    assert _subscribe_json(hub.endpoint, "done", "--timeout", "1") == []


def test_publish_prints_the_sequence_and_subscribe_prints_the_payload(hub_process):
    hub = hub_process()
    first = run_cli("publish", "greetings", "hello world", "--key", "k1", "--header", "source=cli",
                    env_hub=hub.endpoint)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode().strip() == "1"
    plain = run_cli("subscribe", "greetings", "--group", "g", "--count", "1", env_hub=hub.endpoint)
    assert plain.stdout.decode() == "hello world\n"
    (msg,) = _subscribe_json_topic(hub.endpoint, "greetings", "g2")
    assert msg["key"] == "k1" and msg["headers"] == {"source": "cli"} and msg["payload"] == "hello world"


def _subscribe_json_topic(endpoint: str, topic: str, group: str) -> list[dict]:
    result = run_cli("subscribe", topic, "--group", group, "--json", "--count", "1", "--hub", endpoint)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_binary_payloads_are_printed_as_base64_in_json(hub):
    from zmq_mq.actors import Producer

    with Producer(hub.endpoint) as p:
        p.publish("blobs", b"\xff\xfe\x00")
    (msg,) = _subscribe_json_topic(hub.endpoint, "blobs", "g")
    assert msg["payload_b64"] == "//4A" and "payload" not in msg


def test_publish_fails_clearly_when_no_hub_answers():
    # tcp port 9 (discard) on loopback: nothing of ours listens there
    result = run_cli("publish", "orders", "x", "--hub", "tcp://127.0.0.1:9", "--timeout", "1")
    assert result.returncode != 0
    assert b"no answer from the hub" in result.stderr


def test_publish_refuses_a_bad_topic_name(hub):
    result = run_cli("publish", "bad topic!", "x", "--hub", hub.endpoint)
    assert result.returncode != 0
    assert b"bad topic name" in result.stderr


def test_topics_lists_counts_and_subscriptions(hub):
    from zmq_mq.actors import Consumer, Producer

    with Producer(hub.endpoint) as p:
        for i in range(5):
            p.publish("orders", b"%d" % i)
    with Consumer(hub.endpoint) as c:
        c.subscribe("orders", "billing")
        for _ in range(2):
            c.receive(timeout=10).ack()
    result = run_cli("topics", "--json", "--hub", hub.endpoint)
    assert result.returncode == 0, result.stderr.decode()
    (orders,) = [t for t in json.loads(result.stdout) if t["topic"] == "orders"]
    assert orders["messages"] == 5 and orders["last_seq"] == 5
    (billing,) = orders["subscriptions"]
    assert billing["group"] == "billing" and billing["ack_floor"] == 2 and billing["lag"] == 3
    table = run_cli("topics", "--hub", hub.endpoint)
    assert table.returncode == 0 and b"orders" in table.stdout and b"billing" in table.stdout


def test_the_demo_shows_messages_flowing(tmp_path):
    result = run_cli("demo", "--messages", "6", "--data", str(tmp_path / "data"),
                     "--bind", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", timeout=60)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "order #6 durable as seq 6" in out
    assert out.count("emails-1") >= 6  # its own copy of every order
    assert "billing workers shared the orders (3 + 3)" in out.replace("\n", " ")
