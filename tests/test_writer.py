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
        h.hub.writer.inline_when_idle = False  # every fsync on the writer thread
        disk = SlowDisk(h.hub.store)
        return disk

    yield h, hold
    if disk is not None:
        disk.release()
    h.stop()


def confirms_sent(hub) -> int:
    """CONFIRMs the hub has sent (its publish-latency count), read after two more full loop
    turns: a confirm released by a turn up to now is counted."""
    hub.snapshot_stats(timeout=10)
    return hub.snapshot_stats(timeout=10)["publish_latency"]["buckets"][-1][1]


def test_a_confirm_is_not_sent_until_an_fsync_covers_its_commit(slow_disk_hub):
    h, hold = slow_disk_hub
    with Producer(h.endpoint) as p:
        p.publish("jobs", b"before")  # confirmed: the disk is still quick
        sent = confirms_sent(h.hub)
        # When the disk stalls in the fsync that would make the next publish durable
        disk = hold()
        future = p.publish_async("jobs", b"a")
        assert disk.entered.wait(10), "the hub never asked for an fsync off its loop"
        # Then the loop goes on turning, but sends no confirm
        assert confirms_sent(h.hub) == sent
        assert not future.done()
        # When the fsync returns, Then the publish is confirmed with its sequence number
        disk.release()
        assert future.result(timeout=10) == 2
        assert disk.covered and disk.covered[-1] >= 1


def test_while_an_fsync_stalls_the_loop_delivers_takes_acks_and_a_later_commit_confirms(
    slow_disk_hub,
):
    h, hold = slow_disk_hub
    # Given a consumer holding the one message its credit allows, and a connected producer
    with Consumer(h.endpoint) as c, Producer(h.endpoint) as p:
        c.subscribe("jobs", "g", credit=1)
        p.publish("jobs", b"before")
        held = c.receive(timeout=10)
        assert held.payload == b"before"
        # When the writer's fsync stalls and a message is published
        disk = hold()
        future = p.publish_async("jobs", b"a")
        assert disk.entered.wait(10), "the hub never asked for an fsync off its loop"
        # Then the loop goes on: it takes the ack, frees the credit and delivers the
        # committed record
        held.ack()
        m = c.receive(timeout=10)
        assert m.payload == b"a"
        m.ack()
        # ... and the commit of those acks flushed the publish's commit with its own data
        # pages, so the publish is confirmed although the writer's fsync never returned
        assert future.result(timeout=10) == 2
        assert disk.covered == []
        disk.release()  # the consumer's DETACHED waits for the fsync of its own commit


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
        sent = confirms_sent(h.hub)
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
            assert confirms_sent(h.hub) == sent
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
