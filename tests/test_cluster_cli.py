"""The cluster on the command line: ``zmq-mq hub --cluster`` flag checks, ``zmq-mq topic create
--hub zk://... --partitions N --replicas R``, ``zmq-mq cluster status [--json]`` (hubs,
partitions, leaders, in-sync replicas, replication lag), `zmq-mq dlq` through a cluster (each
dead letter on the hub holding it), against a real ZooKeeper."""

# ruff: noqa: F811  (the raw fixture comes from test_cluster_hub; cluster_hubs is conftest's)
from __future__ import annotations

import json

import pytest
from conftest import run_cli, wait_for
from test_cluster_hub import raw  # noqa: F401  (fixture)
from zmq_mq.router.cluster.coordinator import ClusterClient

WAIT = 30.0


@pytest.fixture
def three_hubs(cluster_hubs):
    return cluster_hubs("a", "b", "c")


def test_topic_create_on_a_cluster_address_places_partitions_and_replicas(three_hubs, zookeeper):
    done = run_cli("topic", "create", "orders", "--partitions", "6", "--replicas", "2",
                   "--hub", zookeeper)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["partitions"] == 6 and out["replicas"] == 2 and out["min_insync"] == 2
    assert all(len(set(r)) == 2 for r in out["assignment"])
    with ClusterClient(zookeeper) as client:
        assert set(client.partitions("orders")) == {f"orders.{i}" for i in range(6)}
    again = run_cli("topic", "create", "orders", "--partitions", "6", "--replicas", "2",
                    "--hub", zookeeper)
    assert again.returncode == 1
    assert "already exists" in again.stderr.decode() and "Traceback" not in again.stderr.decode()


def test_cluster_status_shows_hubs_leaders_in_sync_replicas_and_replication_lag(
        three_hubs, zookeeper):
    with ClusterClient(zookeeper) as client:
        client.create_topic("t", 3, 2, wait=WAIT)

    def status():
        done = run_cli("cluster", "status", "--json", "--hub", zookeeper)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def complete():
        doc = status()
        parts = doc["partitions"]
        return len(parts) == 3 and all(p["leader"] and len(p["isr"]) == 2 and p["lag"]
                                       and all(v == 0 for v in p["lag"].values())
                                       for p in parts.values())

    wait_for(complete, WAIT, 0.2, "a status with every follower's lag")
    doc = status()
    assert set(doc["hubs"]) == {"a", "b", "c"} and doc["controller"] in doc["hubs"]
    assert doc["topics"]["t"]["replicas"] == 2
    table = run_cli("cluster", "status", "--hub", zookeeper)
    assert table.returncode == 0, table.stderr.decode()
    assert "t.0" in table.stdout.decode() and "controller" in table.stdout.decode()


@pytest.mark.parametrize("args, message", [
    (["--cluster", "zk://127.0.0.1:1/c"], "--node"),
    (["--cluster", "tcp://x:1/c", "--node", "a"], "--cluster"),
    (["--node", "a"], "need --cluster"),
    (["--cluster", "zk://127.0.0.1:1/c", "--node", "bad name!"], "--node"),
    (["--cluster", "zk://127.0.0.1:1/c", "--node", "a", "--curve"], "--curve"),
])
def test_a_wrong_cluster_flag_of_the_hub_is_one_line_and_exit_2(tmp_path, args, message):
    done = run_cli("hub", "--data", str(tmp_path / "d"), *args)
    assert done.returncode == 2, done.stderr.decode()
    assert message in done.stderr.decode() and "Traceback" not in done.stderr.decode()


def test_replicas_without_a_cluster_address_is_a_usage_error():
    done = run_cli("topic", "create", "x", "--replicas", "2", "--hub", "tcp://127.0.0.1:1")
    assert done.returncode == 2 and "zk://" in done.stderr.decode()


def test_a_hub_joins_a_cluster_from_its_config_file_and_a_flag_overrides_the_files_node(
        tmp_path, zookeeper, hub_process):
    # Given a config file with every cluster setting, and --node on the command line
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'[hub]\ncluster = "{zookeeper}"\nnode = "from-file"\n'
                   f'advertise = "tcp://127.0.0.1:1"\nzk-session-timeout = 3\n')
    hub_process(extra=["--config", str(cfg), "--node", "from-flag"])
    # Then the hub joined the file's cluster under the flag's name, advertising the file's
    # endpoint (the file's session timeout is read too: a bad one is refused, below)
    with ClusterClient(zookeeper) as client:
        wait_for(lambda: "from-flag" in client.hubs(), WAIT, message="the hub in the cluster")
        assert list(client.hubs()) == ["from-flag"]
        assert client.hubs()["from-flag"].endpoint == "tcp://127.0.0.1:1"
        session = client.zk.get(client.paths.hub("from-flag"))[1].ephemeralOwner
        assert session  # an ephemeral node: the hub's session


@pytest.mark.parametrize("text, message", [
    ('node = "a"\n', "need --cluster"),
    ('cluster = "zk://127.0.0.1:1/c"\nnode = 5\n', "node must be str"),
    ('cluster = "zk://127.0.0.1:1/c"\nnode = "a"\nzk-session-timeout = 0\n',
     "--zk-session-timeout must be > 0"),
])
def test_a_wrong_cluster_setting_in_the_config_file_is_one_line_and_exit_2(tmp_path, text,
                                                                             message):
    cfg = tmp_path / "hub.toml"
    cfg.write_text(text)
    done = run_cli("hub", "--config", str(cfg), "--data", str(tmp_path / "d"))
    assert done.returncode == 2, done.stderr.decode()
    err = done.stderr.decode()
    assert message in err and err.count("\n") == 1, err


def test_dlq_list_shows_each_letters_node_and_redrive_and_purge_act_on_that_hub(
        cluster_hubs, raw, zookeeper):
    from test_cluster_hub import metadata_when, settled
    from zmq_mq.router.protocol import Command

    hubs = cluster_hubs("a", "b", "c")
    with ClusterClient(zookeeper) as client:
        client.create_topic("t", 3, 1, wait=WAIT)  # each hub leads one partition
    meta = metadata_when(raw(hubs["a"].endpoint), lambda m: settled(m, "t", 3, 1))
    for i, (name, state) in enumerate(sorted(meta["partitions"].items())):
        leader = hubs[state["leader"]]
        wait_for(lambda leader=leader, name=name: name in leader.hub.leading, WAIT)
        endpoint = leader.endpoint
        command, body = raw(endpoint).ask(Command.PUBLISH, [f"b{i}", [[name, b"x", None, None]]])
        assert command == Command.CONFIRM, body
        consumer = raw(endpoint)
        assert consumer.ask(Command.SUBSCRIBE, {"sid": 1, "topic": name, "group": "g",
                                                "credit": 1})[0] == Command.SUBSCRIBED
        assert consumer.recv()[0] == Command.DELIVER
        consumer.send(Command.REJECT, [1, {name: [1]}, "bad"])

    def listed() -> list[tuple[str, int, str]]:
        done = run_cli("dlq", "list", "--group", "g", "--json", "--hub", zookeeper)
        assert done.returncode == 0, done.stderr.decode()
        return sorted((d["node"], d["seq"], d["origin_topic"]) for d in json.loads(done.stdout))

    wait_for(lambda: len(listed()) == 3, WAIT, 0.2, "a dead letter on each hub")
    letters = listed()
    assert [(n, s) for n, s, _ in letters] == [("a", 1), ("b", 1), ("c", 1)]  # seq 1 each
    every = run_cli("dlq", "list", "--json", "--hub", zookeeper)  # all groups: g once
    assert every.returncode == 0 and len(json.loads(every.stdout)) == 3, every.stderr.decode()
    table = run_cli("dlq", "list", "--group", "g", "--hub", zookeeper)
    assert "node" in table.stdout.decode()
    shown = run_cli("dlq", "show", "1", "--group", "g", "--node", "c", "--json", "--hub",
                    zookeeper)
    assert shown.returncode == 0, shown.stderr.decode()
    assert json.loads(shown.stdout)["origin_topic"] == next(o for n, _, o in letters if n == "c")
    ambiguous = run_cli("dlq", "redrive", "--group", "g", "--seq", "1", "--hub", zookeeper)
    assert ambiguous.returncode == 2 and "--node" in ambiguous.stderr.decode()
    done = run_cli("dlq", "redrive", "--group", "g", "--seq", "1", "--node", "b", "--hub",
                   zookeeper)
    assert done.returncode == 0, done.stderr.decode()
    assert [(n, s) for n, s, _ in listed()] == [("a", 1), ("c", 1)]
    origin_b = next(o for n, _, o in letters if n == "b")
    assert hubs["b"].hub.store.topics[origin_b].last_seq == 2  # redriven on its leader
    done = run_cli("dlq", "purge", "--group", "g", "--seq", "1", "--node", "c", "--hub",
                   zookeeper)
    assert done.returncode == 0 and "purged 1" in done.stderr.decode(), done.stderr.decode()
    done = run_cli("dlq", "redrive", "--group", "g", "--all", "--hub", zookeeper)
    assert done.returncode == 0 and "redriven 1 of 1" in done.stderr.decode(), \
        done.stderr.decode()
    assert listed() == []
