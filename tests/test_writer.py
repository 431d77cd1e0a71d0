"""The writer stage (router/writer.py): fsyncs leave the loop, replies wait for theirs."""

from __future__ import annotations

import threading

import pytest

from zmq_mq.actors import Consumer, Producer
from zmq_mq.storage import StorageError, Store
from zmq_mq.testing import HubThread


class SlowDisk:
    """The store's ``sync`` (the fsync that makes commits durable) held until ``release``."""

    def __init__(self, store) -> None:
        self.store = store
        self.real_sync = store.sync
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.covered: list[int] = []
        store.sync = self.sync

    def sync(self) -> int:
        self.entered.set()
        self.gate.wait(60)
        covered = self.real_sync()
        self.covered.append(covered)
        return covered

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def slow_disk_hub(tmp_path):
    h = HubThread(tmp_path / "data").start()
    disk = None

    def hold() -> SlowDisk:
        nonlocal disk
        disk = SlowDisk(h.hub.store)
        return disk

    yield h, hold
    if disk is not None:
        disk.release()
    h.stop()


def test_a_confirm_waits_for_the_fsync_that_covers_it_while_the_loop_keeps_delivering_and_taking_acks(
    slow_disk_hub,
):
    h, hold = slow_disk_hub
    # Given a consumer holding the one message its credit allows, and a connected producer
    with Consumer(h.endpoint) as c, Producer(h.endpoint) as p:
        c.subscribe("jobs", "g", credit=1)
        p.publish("jobs", b"before")  # confirmed: the disk is still quick
        held = c.receive(timeout=10)
        assert held.payload == b"before"
        # When the disk stalls in the fsync that would make the next publishes durable
        disk = hold()
        first = p.publish_async("jobs", b"a")
        second = p.publish_async("jobs", b"b")
        assert disk.entered.wait(10), "the hub never asked for an fsync off its loop"
        # Then the loop goes on without that fsync: it takes each ack, frees the credit and
        # delivers the next committed record (a only once "before" is acked, b once a is)
        held.ack()
        got = []
        for _ in range(2):
            m = c.receive(timeout=10)
            got.append(m.payload)
            m.ack()
        assert got == [b"a", b"b"]
        # ... but neither publish is confirmed while the fsync that covers it has not returned
        assert not first.done() and not second.done()
        # When the fsync returns
        disk.release()
        # Then both are confirmed, with their sequence numbers
        assert first.result(timeout=10) == 2
        assert second.result(timeout=10) == 3


def test_with_sync_none_a_confirm_waits_for_no_fsync(tmp_path):
    # Given a hub with --sync none whose disk would stall in an fsync
    h = HubThread(tmp_path / "data", sync=False).start()
    disk = SlowDisk(h.hub.store)
    try:
        with Producer(h.endpoint) as p:
            # When a message is published, Then it is confirmed without any fsync
            assert p.publish("jobs", b"x", timeout=10) == 1
            assert not disk.entered.is_set()
    finally:
        disk.release()
        h.stop()


def test_a_failed_fsync_holds_the_confirm_until_an_fsync_succeeds(slow_disk_hub):
    h, hold = slow_disk_hub
    with Producer(h.endpoint) as p:
        p.publish("jobs", b"before")
        # Given a disk whose next fsync fails, and whose retry is held until we let it go
        disk = hold()
        failed, retried, retry_gate = threading.Event(), threading.Event(), threading.Event()
        real = disk.real_sync

        def failing_once() -> int:
            if not failed.is_set():
                failed.set()
                raise StorageError("sync failed: [Errno 5] Input/output error")
            retried.set()
            retry_gate.wait(60)
            return real()

        disk.real_sync = failing_once
        disk.release()
        try:
            # When a message is published and the fsync that would cover it fails
            future = p.publish_async("jobs", b"a")
            assert failed.wait(10), "the writer never tried the fsync"
            # Then the writer tries again, and the publish is not confirmed meanwhile
            assert retried.wait(10), "the writer never retried the failed fsync"
            assert not future.done()
            # ... it is confirmed once the retried fsync succeeded
            retry_gate.set()
            assert future.result(timeout=10) == 2
        finally:
            retry_gate.set()


def test_the_store_numbers_its_commits_and_sync_says_which_it_covered(tmp_path):
    with Store(tmp_path / "s", group_sync=True) as store:
        before = store.last_commit()
        store.commit({"t": [b"a"]})
        store.set_topic_config("t", {"max_messages": 5})
        assert store.last_commit() == before + 2
        assert store.sync() == before + 2
