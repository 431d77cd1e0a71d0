"""One hub per data directory: the store's lock on the directory, across processes and threads."""

from __future__ import annotations

import gc
import subprocess
import time

import pytest

from zmq_mq.actors import Admin, Producer
from zmq_mq.storage import DataDirInUse, Store
from zmq_mq.testing import HubThread

from conftest import zmq_mq_command


def _stored(endpoint: str, topic: str) -> list[int]:
    with Admin(endpoint) as admin:
        return [m.seq for m in admin.scan(topic)]


def test_a_second_hub_on_a_data_directory_in_use_exits_at_once_naming_the_running_hub(hub_process, tmp_path):
    # Given a hub serving a data directory, with two messages stored
    first = hub_process()
    with Producer(first.endpoint) as p:
        assert [p.publish("orders", b"a"), p.publish("orders", b"b")] == [1, 2]
    # When a second hub is started on the same directory (other ports)
    started = time.monotonic()
    second = subprocess.run(
        [*zmq_mq_command(), "hub", "--data", str(first.data_dir), "--bind", "tcp://127.0.0.1:*",
         "--pub", "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=60)
    # Then it exits non-zero at once, with one line naming the directory and the running hub
    assert second.returncode == 1, second.stderr
    assert time.monotonic() - started < 30
    error = second.stderr.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert str(first.data_dir) in error
    assert f"pid {first.pid}" in error and first.endpoint in error
    assert "ready" not in error
    # And the first hub keeps serving, nothing lost and sequences continuing
    with Producer(first.endpoint) as p:
        assert p.publish("orders", b"c") == 3
    assert _stored(first.endpoint, "orders") == [1, 2, 3]


def test_a_lock_left_by_a_killed_hub_does_not_stop_the_next_start(hub_process):
    # Given a hub killed with -9 (its lock file stays behind)
    first = hub_process()
    with Producer(first.endpoint) as p:
        p.publish("orders", b"a")
    first.kill9()
    assert (first.data_dir / "zmq-mq.lock").exists()
    # When a hub is started on its data directory, it serves it
    second = hub_process()
    with Producer(second.endpoint) as p:
        assert p.publish("orders", b"b") == 2
    assert _stored(second.endpoint, "orders") == [1, 2]


def test_a_second_hub_in_one_process_on_a_data_directory_in_use_is_refused(tmp_path):
    first = HubThread(tmp_path / "data").start()
    try:
        with pytest.raises(DataDirInUse) as refused:
            HubThread(tmp_path / "data").start()
        message = str(refused.value)
        assert str(tmp_path / "data") in message and first.endpoint in message
        with Producer(first.endpoint) as p:
            assert p.publish("t", b"x") == 1
    finally:
        first.stop()
    # Once the first hub has stopped, the directory is free again
    again = HubThread(tmp_path / "data").start()
    try:
        with Producer(again.endpoint) as p:
            assert p.publish("t", b"y") == 2
    finally:
        again.stop()


def test_a_store_holds_its_directory_until_closed(tmp_path):
    with Store(tmp_path / "db") as store:
        store.commit({"t": [b"r1"]})
        with pytest.raises(DataDirInUse, match="in use by another hub"):
            Store(tmp_path / "db")
        assert store.commit({"t": [b"r2"]}) == {"t": 2}  # the refused one touched nothing
    with Store(tmp_path / "db") as again:
        assert again.topics["t"].last_seq == 2


def test_zmq_mq_demo_on_a_data_directory_in_use_names_the_running_hub_not_the_port(hub, tmp_path):
    # Given a hub (the fixture's) holding its data directory
    data = hub.hub.config.data_dir
    # When the demo is started on that directory with free ports
    done = subprocess.run([*zmq_mq_command(), "demo", "--data", data, "--bind", "tcp://127.0.0.1:*",
                           "--pub", "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=60)
    # Then it says the directory is in use, by whom, and does not blame the port
    err = done.stderr.strip()
    assert done.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"data directory {data} is in use" in err and hub.endpoint in err and "--bind" not in err


def test_a_store_dropped_without_close_frees_its_directory(tmp_path):
    # Given a store nobody closes (a hub whose start failed after opening it)
    store = Store(tmp_path / "db")
    store.commit({"t": [b"r1"]})
    del store
    gc.collect()
    # Then the directory can be opened again
    with Store(tmp_path / "db") as again:
        assert again.topics["t"].last_seq == 1


def test_a_hub_that_fails_to_start_after_opening_its_data_directory_releases_it_at_once(tmp_path, monkeypatch):
    # Given a data directory whose state cannot be loaded (here: restoring subscriptions fails)
    from zmq_mq.router import hub as hub_module
    from zmq_mq.router.config import HubConfig

    def broken(self):
        raise RuntimeError("cannot restore subscriptions")

    monkeypatch.setattr(hub_module.Groups, "restore", broken)
    # When a hub is made on it and fails (the failure, and so the half-made hub, kept alive
    # by the traceback: no collector can release the directory for it)
    with pytest.raises(RuntimeError, match="cannot restore") as failed:
        hub_module.Hub(HubConfig(data_dir=str(tmp_path)))
    assert failed.traceback  # still referenced here
    # Then the directory is free at once: a store (or a hub) opens it
    gc.disable()
    try:
        Store(str(tmp_path)).close()
    finally:
        gc.enable()
