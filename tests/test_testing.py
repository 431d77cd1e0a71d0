"""zmq_mq.testing: the one hub launcher (HubProcess, READY_RE) that the tests, `zmq-mq bench` and
the fault harness share, and the conftest fixtures that close every zmq socket a test opens."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from zmq_mq.actors import Producer

from zmq_mq.testing import HubProcess, parse_ready_line

TESTS = Path(__file__).resolve().parent
TCP = re.compile(r"tcp://127\.0\.0\.1:\d+$")


def test_a_hub_process_reads_its_endpoints_data_directory_and_sync_from_the_ready_line(tmp_path):
    data = tmp_path / "a data dir"  # a space: the data path is not one word
    h = HubProcess(data, ["--sync", "none"]).start()
    try:
        assert TCP.match(h.endpoint) and TCP.match(h.pub_endpoint) and h.endpoint != h.pub_endpoint
        assert (h.ready.data, h.sync) == (str(data), "none")
        assert parse_ready_line(h.log()) == h.ready and h.running()
    finally:
        assert h.stop() == 0  # SIGTERM: a clean exit


def test_a_hub_process_without_a_pub_socket_has_no_pub_endpoint(tmp_path):
    h = HubProcess(tmp_path / "data", pub="").start()
    try:
        assert TCP.match(h.endpoint) and h.pub_endpoint is None
    finally:
        h.stop()


@pytest.mark.slow
def test_a_hub_process_killed_with_9_restarts_on_its_data_and_endpoint(tmp_path):
    h = HubProcess(tmp_path / "data").start()
    try:
        endpoint = h.endpoint
        with Producer(endpoint, timeout=10) as p:
            assert p.publish("t", b"one") == 1
        h.kill9()
        assert not h.running()
        h.restart()
        # the same port (clients reconnect to it) and the same data: numbering goes on
        assert h.endpoint == endpoint and h.starts == 2
        with Producer(endpoint, timeout=10) as p:
            assert p.publish("t", b"two") == 2
    finally:
        h.stop()


def test_a_hub_process_that_exits_before_it_is_ready_raises_with_its_stderr(tmp_path):
    h = HubProcess(tmp_path / "data", ["--sync", "sometimes"])
    with pytest.raises(RuntimeError, match="exited with 2 before it was ready.*sync"):
        h.start(timeout=20)
    assert not h.running()


def test_sockets_from_the_socket_fixture_are_closed_and_a_socket_left_open_fails_the_test(tmp_path):
    # Given the suite's conftest and tests that open sockets through its fixtures
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import zmq

        kept = []

        def test_opens_a_socket(socket):
            kept.append(socket(zmq.DEALER))

        def test_the_socket_was_closed_at_teardown():
            assert kept[0].closed

        def test_leaves_a_socket_open_on_its_context(context):
            kept.append(context.socket(zmq.DEALER))  # not through ``socket``: never closed
    """))
    # When they run
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    # Then the fixture's socket is closed, and the leaky test errors at teardown, saying why
    assert "3 passed, 1 error" in done.stdout, done.stdout[-3000:]
    assert "ERROR test_inner.py::test_leaves_a_socket_open_on_its_context" in done.stdout
    assert "open sockets likely remain" in done.stdout


def test_the_cluster_harness_starts_zookeeper_and_hubs_and_stops_them_all_even_a_paused_one(
        tmp_path):
    from conftest import _require_zookeeper, wait_for

    from zmq_mq.testing import Cluster

    _require_zookeeper()
    cluster = Cluster(tmp_path, ("a", "b"), session=2.0)
    with cluster:
        cluster.create_topic("t", partitions=2, replicas=2, timeout=60)
        assert cluster.settled("t")
        leader, epoch = cluster.leader("t.0")
        assert cluster.leader_endpoint("t.0") == cluster.hubs[leader].endpoint
        cluster.pause(leader)  # left paused: stop() must still end it
        other = cluster.wait_moved("t.0", leader, epoch, timeout=60)
        assert other != leader
        cluster.restart_zookeeper()

        def still_led_by_other() -> bool:  # the placement survived the restart
            try:
                return cluster.leader("t.0")[0] == other
            except Exception:  # kazoo still reconnecting
                return False

        wait_for(still_led_by_other, 60, message="the placement read after the restart")
        procs = [h.proc for h in cluster.hubs.values()] + [cluster.zookeeper_server.proc]
    assert all(p.poll() is not None for p in procs)
