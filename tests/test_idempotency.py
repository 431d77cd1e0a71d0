"""Effectively-once: the idempotency store and idempotent=True handlers."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from zmq_mq.actors import Actor, IdempotencyStore, Producer
from zmq_mq.actors import idempotency as idem
from zmq_mq.actors.idempotency import message_key
from zmq_mq.testing import running_hub

from conftest import sub_state, wait_for


class _Msg:  # what the store needs of a Message
    def __init__(self, group: str, msg_id: str, topic: str = "pay") -> None:
        self.topic = topic
        self.group = group
        self.msg_id = msg_id


def test_the_store_remembers_ids_for_their_ttl_only(tmp_path):
    store = IdempotencyStore(tmp_path, ttl=10.0)
    try:
        a, b = message_key(_Msg("g", "a")), message_key(_Msg("g", "b"))
        store.record([a], now_ms=1_000)
        assert store.seen([a, b], now_ms=2_000) == {a}
        assert store.seen([a], now_ms=11_001) == set()  # past its ttl
        assert message_key(_Msg("other", "a")) not in store.seen([message_key(_Msg("other", "a"))], now_ms=2_000)
    finally:
        store.close()


def test_the_store_expires_a_bounded_batch_per_write_and_keeps_re_recorded_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(idem, "EXPIRE_BATCH", 2)
    store = IdempotencyStore(tmp_path, ttl=1.0)
    try:
        keys = [message_key(_Msg("g", str(i))) for i in range(5)]
        store.record(keys, now_ms=0)
        store.record([keys[0]], now_ms=500)  # recorded again: lives until 1500
        store.record([], now_ms=1_200)  # expires 2 of the old entries
        with store.env.begin() as txn:
            done = txn.stat(store._done)["entries"]
        assert done == 4  # keys[0] kept (re-recorded), one of the others gone
        store.record([], now_ms=1_200)
        store.record([], now_ms=1_200)
        assert store.seen(keys, now_ms=1_200) == {keys[0]}
        with store.env.begin() as txn:
            assert txn.stat(store._done)["entries"] == 1
    finally:
        store.close()


def test_a_transaction_commits_the_side_effect_and_the_id_together(tmp_path):
    store = IdempotencyStore(tmp_path)
    msg = _Msg("ledger", "pay-1")
    try:
        balances = store.db("balances")
        try:
            with store.transaction(msg) as txn:
                txn.put(b"alice", b"10", db=balances)
                raise RuntimeError("crash inside the handler")
        except RuntimeError:
            pass
        assert store.seen([message_key(msg)]) == set()
        with store.env.begin(db=balances) as txn:
            assert txn.get(b"alice") is None  # neither happened
        with store.transaction(msg) as txn:
            txn.put(b"alice", b"10", db=balances)
        assert store.seen([message_key(msg)]) == {message_key(msg)}
        with store.env.begin(db=balances) as txn:
            assert txn.get(b"alice") == b"10"
    finally:
        store.close()


def test_an_idempotent_handler_runs_once_per_msg_id_even_if_the_message_is_stored_twice(tmp_path):
    # Given a hub that does not de-duplicate, and a producer that sends the same id twice
    ran: list[str] = []
    with running_hub(tmp_path / "hub", dedup_window_ms=0) as hub:
        actor = Actor(hub.endpoint, name="once", state_dir=tmp_path / "state")
        actor.add_handler("pay", lambda m: ran.append(m.msg_id), group="ledger", idempotent=True)
        actor.start()
        try:
            with Producer(hub.endpoint) as p:
                assert p.publish("pay", b"10", msg_id="pay-1") == 1
                assert p.publish("pay", b"10", msg_id="pay-1") == 2
                assert p.publish("pay", b"20", msg_id="pay-2") == 3
            # Then the handler ran once per id, and all three messages were acked
            wait_for(lambda: sub_state(hub.endpoint, "pay", "ledger").get("ack_floor") == 3,
                     message="all acked")
        finally:
            actor.stop()
    assert ran == ["pay-1", "pay-2"]
    # And the ids are durable in the actor's state dir
    store = IdempotencyStore(tmp_path / "state")
    try:
        keys = [message_key(_Msg("ledger", i)) for i in ("pay-1", "pay-2", "pay-3")]
        assert store.seen(keys) == set(keys[:2])
    finally:
        store.close()


def test_a_failed_idempotent_handler_records_nothing_and_runs_again(tmp_path):
    attempts = []
    done = threading.Event()

    def handle(msg):
        attempts.append(msg.deliveries)
        if msg.deliveries == 1:
            raise RuntimeError("first try fails")
        done.set()

    with running_hub(tmp_path / "hub") as hub:
        actor = Actor(hub.endpoint, name="retry-once", state_dir=tmp_path / "state")
        actor.add_handler("jobs", handle, group="g", idempotent=True, retry=None)
        actor.start()
        try:
            with Producer(hub.endpoint) as p:
                p.publish("jobs", b"x")
            assert done.wait(20)
        finally:
            actor.stop()
    assert attempts == [1, 2]


def test_the_default_state_dir_is_per_actor_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with running_hub(tmp_path / "hub") as hub:
        actor = Actor(hub.endpoint, name="mailer-7")
        actor.add_handler("t", lambda m: None, group="g", idempotent=True)
        actor.start()
        actor.stop()
    assert (tmp_path / "zmq-mq-actor-state" / "mailer-7" / "data.mdb").exists()


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_ledger_example() -> str:
    """The README's effectively-once ledger code block, exactly as it stands."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [ledger] = [b for b in blocks if "store.transaction(msg)" in b]
    return ledger


def test_the_readme_ledger_example_applies_each_payment_once_and_the_actor_stops(tmp_path):
    # Given the README's ledger handler, copied as it stands, on an actor, and a hub that does
    # not de-duplicate (so the repeated msg_id reaches the actor twice)
    with running_hub(tmp_path / "hub", dedup_window_ms=0) as hub:
        actor = Actor(hub.endpoint, name="ledger", state_dir=tmp_path / "state", grace=2.0)
        exec(compile(_readme_ledger_example(), str(README), "exec"), {"actor": actor})
        actor.start()
        try:
            # When three payments are published, and the first one again with its msg_id
            with Producer(hub.endpoint) as p:
                for i, amount in enumerate((b"10", b"20", b"5")):
                    p.publish("payments", amount, msg_id=f"pay-{i}")
                p.publish("payments", b"10", msg_id="pay-0")
            # Then every message is acked
            wait_for(lambda: sub_state(hub.endpoint, "payments", "ledger").get("ack_floor") == 4,
                     message="all four payments acked")
        finally:
            actor.stop(timeout=10)
        # And the actor stopped cleanly
        assert not actor.running and actor.error is None
    # And each payment was applied once
    store = IdempotencyStore(tmp_path / "state")
    try:
        with store.env.begin(db=store.db("balances")) as txn:
            assert txn.get(b"alice") == b"35"
    finally:
        store.close()


def test_a_database_first_opened_in_an_aborted_transaction_can_be_opened_again(tmp_path):
    store = IdempotencyStore(tmp_path)
    try:
        with pytest.raises(RuntimeError):
            with store.transaction(_Msg("g", "m-1")) as txn:
                txn.put(b"k", b"v", db=store.db("later"))
                raise RuntimeError("handler failed")
        with store.transaction(_Msg("g", "m-1")) as txn:
            txn.put(b"k", b"v", db=store.db("later"))
        with store.env.begin(db=store.db("later")) as txn:
            assert txn.get(b"k") == b"v"
    finally:
        store.close()
