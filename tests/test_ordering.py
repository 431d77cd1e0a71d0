"""Ordering (none / key / strict) and priorities in the pure subscription core (fake int clock)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zmq_mq.router import subscription as subscription_module
from zmq_mq.router.subscription import (
    ORDER_WINDOW,
    DeadLetter,
    Delivery,
    Subscription,
    SubscriptionError,
)

from test_subscription import MACHINE_PHASES, MACHINE_TIMEOUT_S, SubscriptionMachine

A = ("actor", "A")
B = ("actor", "B")


def handed(deliveries: list[Delivery]) -> list[int]:
    return [s for d in deliveries for s in d.seqs]


class Log:
    """A fake topic log: key and priority per seq, and how often the core looked seqs up."""

    def __init__(self) -> None:
        self.meta: dict[int, tuple[str | None, int]] = {}
        self.looked_up = 0

    def add(self, *entries: tuple[str | None, int]) -> int:
        for e in entries:
            self.meta[len(self.meta) + 1] = e
        return len(self.meta)

    def lookup(self, seqs: list[int]) -> list[tuple[str | None, int]]:
        self.looked_up += len(seqs)
        return [self.meta.get(s, (None, 0)) for s in seqs]


def make(log: Log, ordering: str = "none", **kw) -> Subscription:
    sub = Subscription("orders", "billing", ordering=ordering, lookup=log.lookup, **kw)
    sub.published(len(log.meta), priority=any(p for _, p in log.meta.values()))
    return sub


# --------------------------------------------------------------------------- strict


def test_strict_hands_out_one_at_a_time_in_order_whatever_the_credit():
    log = Log()
    log.add(*[(None, 0)] * 4)
    sub = make(log, "strict")
    sub.attach(A, 10)
    sub.attach(B, 10)
    got = []
    for _ in range(4):
        [d] = sub.dispatch(now=0)
        assert len(d.seqs) == 1 and sub.in_flight == 1
        assert sub.dispatch(now=0) == []
        got += d.seqs
        sub.ack(d.actor, d.seqs)
    assert got == [1, 2, 3, 4]


def test_strict_a_nacked_message_keeps_its_place():
    log = Log()
    log.add(*[(None, 0)] * 3)
    sub = make(log, "strict")
    sub.attach(A, 10)
    assert sub.dispatch(now=0) == [Delivery(A, [1], [1])]
    sub.nack(A, [1], now=0)
    assert sub.dispatch(now=0) == [Delivery(A, [1], [2])]


def test_strict_a_delayed_nack_blocks_everything_after_it_until_due():
    log = Log()
    log.add(*[(None, 0)] * 3)
    sub = make(log, "strict")
    sub.attach(A, 10)
    sub.dispatch(now=0)
    sub.nack(A, [1], now=0, delay_ms=100)
    sub.tick(99)
    assert sub.dispatch(now=99) == []
    sub.tick(100)
    assert sub.dispatch(now=100) == [Delivery(A, [1], [2])]


def test_strict_moves_on_after_a_dead_letter_and_ignores_priorities():
    log = Log()
    log.add((None, 0), (None, 9), (None, 0))
    sub = make(log, "strict", max_deliver=1)
    sub.attach(A, 10)
    sub.dispatch(now=0)
    assert sub.nack(A, [1], now=0) == [
        DeadLetter(1, 1, "max_deliver reached (1 deliveries, last: nacked)")
    ]
    assert handed(sub.dispatch(now=0)) == [2]


# --------------------------------------------------------------------------- key


def test_key_ordering_one_in_flight_per_key_keys_in_parallel_keyless_unordered():
    log = Log()
    log.add(("a", 0), ("a", 0), ("b", 0), (None, 0), ("b", 0), (None, 0), ("c", 0))
    sub = make(log, "key")
    sub.attach(A, 10)
    assert handed(sub.dispatch(now=0)) == [1, 3, 4, 6, 7]
    sub.ack(A, [3])
    assert handed(sub.dispatch(now=0)) == [5]
    sub.ack(A, [1])
    assert handed(sub.dispatch(now=0)) == [2]


def test_key_ordering_a_redelivery_keeps_its_keys_order():
    log = Log()
    log.add(("a", 0), ("a", 0), ("b", 0))
    sub = make(log, "key", ack_wait_ms=100)
    sub.attach(A, 10)
    sub.attach(B, 10)
    assert handed(sub.dispatch(now=0)) == [1, 3]
    sub.tick(100)  # both expire
    out = sub.dispatch(now=100)
    assert sorted(handed(out)) == [1, 3] and all(d.deliveries == [2] for d in out)
    holder = next(d.actor for d in out if d.seqs == [1])
    sub.detach(holder, now=100, failed=True)  # 1 fails again: still before 2
    assert 1 in handed(sub.dispatch(now=100)) and sub.in_flight_of(holder) == 0


def test_key_ordering_a_delayed_nack_blocks_only_its_key():
    log = Log()
    log.add(("a", 0), ("a", 0), ("b", 0), ("b", 0))
    sub = make(log, "key")
    sub.attach(A, 10)
    sub.dispatch(now=0)  # 1, 3
    sub.nack(A, [1], now=0, delay_ms=50)
    sub.ack(A, [3])
    assert handed(sub.dispatch(now=0)) == [4]
    sub.tick(50)
    assert handed(sub.dispatch(now=50)) == [1]


def test_key_ordering_priorities_pick_among_key_heads_only():
    log = Log()
    log.add(("a", 0), ("a", 9), ("b", 5))
    sub = make(log, "key")
    sub.attach(A, 1)
    assert handed(sub.dispatch(now=0)) == [3]  # b's head outranks a's head (1); 2 waits for 1
    sub.ack(A, [3])
    assert handed(sub.dispatch(now=0)) == [1]
    sub.ack(A, [1])
    assert handed(sub.dispatch(now=0)) == [2]


# --------------------------------------------------------------------------- priorities


def test_higher_priority_first_fifo_within_a_priority():
    log = Log()
    log.add((None, 0), (None, 5), (None, 9), (None, 5), (None, 0), (None, 9))
    sub = make(log)
    sub.attach(A, 1)
    got = []
    for _ in range(6):
        [d] = sub.dispatch(now=0)
        got += d.seqs
        sub.ack(A, d.seqs)
    assert got == [3, 6, 2, 4, 1, 5]


def test_a_redelivery_competes_by_its_priority():
    log = Log()
    log.add((None, 1), (None, 0), (None, 5))
    sub = make(log)
    sub.attach(A, 1)
    assert handed(sub.dispatch(now=0)) == [3]
    sub.nack(A, [3], now=0)
    assert sub.dispatch(now=0) == [Delivery(A, [3], [2])]
    sub.ack(A, [3])
    assert handed(sub.dispatch(now=0)) == [1]


def test_priority_only_looks_ahead_a_bounded_window(monkeypatch):
    monkeypatch.setattr(subscription_module, "ORDER_WINDOW", 3)
    log = Log()
    log.add((None, 0), (None, 0), (None, 0), (None, 9))
    sub = make(log)
    sub.attach(A, 1)
    assert handed(sub.dispatch(now=0)) == [1]  # 4 is beyond the window of 3
    assert log.looked_up == 3
    assert handed(sub.dispatch(now=0)) == []  # credit 1
    sub.ack(A, [1])
    assert handed(sub.dispatch(now=0)) == [4]  # now in the window: it overtakes 2 and 3


def test_a_priority_published_behind_a_plain_backlog_still_goes_first():
    log = Log()
    log.add((None, 0), (None, 0), (None, 0))
    sub = make(log)
    sub.published(3, priority=True)  # e.g. after a restart: the backlog might hold priorities
    sub.attach(A, 1)
    assert handed(sub.dispatch(now=0)) == [1]
    sub.published(log.add((None, 9)), priority=True)
    sub.ack(A, [1])
    assert handed(sub.dispatch(now=0)) == [4]
    sub.ack(A, [4])
    assert handed(sub.dispatch(now=0)) == [2]


def test_without_priorities_or_key_ordering_nothing_is_looked_up():
    log = Log()
    log.add(*[("k", 0)] * 5)
    sub = Subscription("orders", "billing", lookup=log.lookup)
    sub.published(5)
    sub.attach(A, 10)
    assert handed(sub.dispatch(now=0)) == [1, 2, 3, 4, 5]
    assert log.looked_up == 0


def test_low_priorities_starve_while_higher_ones_keep_coming():
    log = Log()
    log.add((None, 0))
    sub = make(log)
    sub.attach(A, 1)
    for _ in range(50):
        last = log.add((None, 3))
        sub.published(last, priority=True)
        [d] = sub.dispatch(now=0)
        assert d.seqs != [1]
        sub.ack(A, d.seqs)
    # the producer stops sending 3s: now 1 goes
    assert handed(sub.dispatch(now=0)) == [1]


def test_a_million_message_key_backlog_keeps_memory_to_the_window():
    log = Log()
    keys = 1_000_000

    def lookup(seqs):
        log.looked_up += len(seqs)
        return [(f"k{s % 7}", s % 10) for s in seqs]

    sub = Subscription("orders", "billing", ordering="key", lookup=lookup, ack_wait_ms=100)
    sub.published(keys, priority=True)
    sub.attach(A, 10)
    now = 0
    for _ in range(500):
        out = sub.dispatch(now)
        if out:
            sub.ack(A, handed(out)[1:])
        now += 30
        sub.tick(now)
    assert len(sub._win) <= ORDER_WINDOW and len(sub._meta) <= 20
    assert log.looked_up < 5_000


# --------------------------------------------------------------------------- config, persistence


def test_ordering_is_persisted_and_old_snapshots_restore_as_none():
    sub = Subscription("t", "g", ordering="key")
    state = msgpack.unpackb(msgpack.packb(sub.snapshot()))
    assert state["ordering"] == "key"
    assert Subscription.restore("t", "g", state, last_seq=0).ordering == "key"
    old = {k: v for k, v in state.items() if k != "ordering"}
    assert Subscription.restore("t", "g", old, last_seq=0).ordering == "none"
    assert "ordering" not in Subscription("t", "g").snapshot()


@pytest.mark.parametrize("bad", ["fifo", "", 3])
def test_an_unknown_ordering_is_a_contract_violation(bad):
    with pytest.raises(SubscriptionError):
        Subscription("t", "g", ordering=bad)
    with pytest.raises(SubscriptionError):
        Subscription("t", "g").configure(ordering=bad)
    with pytest.raises(SubscriptionError):
        Subscription.restore("t", "g", {"floor": 0, "ordering": bad}, last_seq=0)


def test_switching_from_key_to_strict_hands_out_the_window_in_order():
    log = Log()
    log.add(("a", 0), ("a", 0), ("b", 0))
    sub = make(log, "key")
    sub.attach(A, 10)
    assert handed(sub.dispatch(now=0)) == [1, 3]  # 2 waits in the window
    sub.configure(ordering="strict")
    sub.ack(A, [1, 3])
    assert handed(sub.dispatch(now=0)) == [2]
    assert sub.dispatch(now=0) == []


# --------------------------------------------------------------------------- property tests

KEYS = st.sampled_from(["a", "b", "c", None])


class OrderingMachine(RuleBasedStateMachine):
    """Invariants, for ordering "strict" and "key" with random keys and priorities under random
    acks, nacks (with delays), ack_wait expiry, actor deaths (detach failed=True) and restarts:

    * strict: never two in flight, and every hand-out is the lowest seq not yet done;
    * key: never two of one key in flight, and a keyed seq is handed out only once every lower
      seq of its key is done (acked or dead-lettered): per-key order of completion;
    * nothing is lost: after draining, every published seq is done exactly once;
    * delayed delivery (``defer``): a held-back seq is never handed out before its due time, and
      nothing waits for it (it is left out of the order checks above: it joins when due).
    """

    ACTORS = ("a", "b")

    @initialize(
        ordering=st.sampled_from(["strict", "key"]),
        ack_wait=st.sampled_from([5, 30]),
        max_deliver=st.integers(0, 3),
    )
    def setup(self, ordering, ack_wait, max_deliver):
        self.ordering = ordering
        self.ack_wait = ack_wait
        self.meta: dict[int, tuple[str | None, int]] = {}
        self.sub = self.new_sub(
            Subscription("t", "g", ordering=ordering, ack_wait_ms=ack_wait,
                         max_deliver=max_deliver, lookup=self.lookup)
        )
        self.now = 0
        self.done: dict[int, str] = {}
        self.flight: dict[int, tuple] = {}  # seq -> (actor, deadline)
        self.attached: set = set()
        self.due: dict[int, int] = {}  # seqs published with a delay -> due time

    def new_sub(self, sub):
        return sub

    def lookup(self, seqs):
        return [self.meta[s] for s in seqs]

    @property
    def last(self) -> int:
        return len(self.meta)

    def finish(self, seq, how):
        assert seq not in self.done, f"{seq} finished twice"
        self.done[seq] = how
        self.flight.pop(seq, None)

    def record_dead(self, dead):
        for d in dead:
            self.finish(d.seq, "dead")

    def check(self, out):
        for d in out:
            for s in d.seqs:
                assert 1 <= s <= self.last and s not in self.done, s
                assert s not in self.flight, f"{s} in flight twice"
                assert self.due.get(s, 0) <= self.now, f"{s} handed out before its due time"
                if self.ordering == "strict":
                    assert not self.flight, f"{s} handed out while {self.flight} in flight"
                    assert s == min(x for x in range(1, self.last + 1)
                                    if x not in self.done and self.due.get(x, 0) <= self.now)
                else:
                    k = self.meta[s][0]
                    if k is not None:
                        assert all(self.meta[f][0] != k for f in self.flight), f"key {k} twice"
                        lower = [x for x in range(1, s)
                                 if self.meta[x][0] == k and x not in self.due and s not in self.due]
                        assert all(x in self.done for x in lower), f"{s} before {lower}"
                self.flight[s] = (d.actor, self.now + self.ack_wait)

    # -- rules

    @rule(entries=st.lists(st.tuples(KEYS, st.integers(0, 9)), min_size=1, max_size=6))
    def publish(self, entries):
        for e in entries:
            self.meta[self.last + 1] = e
        self.sub.published(self.last, priority=True)

    @rule(entries=st.lists(st.tuples(KEYS, st.integers(0, 9)), min_size=1, max_size=3),
          delay=st.integers(1, 30))
    def publish_delayed(self, entries, delay):
        first = self.last + 1
        for e in entries:
            self.meta[self.last + 1] = e
        self.sub.published(self.last, priority=True)
        held = [(s, self.now + delay) for s in range(first, self.last + 1)]
        self.due.update(held)
        self.sub.defer(held)

    @rule(actor=st.sampled_from(ACTORS), credit=st.integers(1, 5))
    def attach(self, actor, credit):
        self.sub.attach(actor, credit)
        self.attached.add(actor)

    @rule(actor=st.sampled_from(ACTORS), failed=st.booleans())
    def detach(self, actor, failed):
        self.record_dead(self.sub.detach(actor, self.now, failed=failed))
        self.attached.discard(actor)
        for s in [s for s, (a, _) in self.flight.items() if a == actor]:
            del self.flight[s]

    @rule()
    def dispatch(self):
        self.check(self.sub.dispatch(self.now))

    @precondition(lambda self: self.flight)
    @rule(data=st.data())
    def ack(self, data):
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.flight)), max_size=3))
        self.sub.ack("anyone", seqs)
        for s in set(seqs):
            self.finish(s, "acked")

    @precondition(lambda self: self.flight)
    @rule(data=st.data(), delay=st.sampled_from([0, 0, 10]))
    def nack(self, data, delay):
        s = data.draw(st.sampled_from(sorted(self.flight)))
        actor = self.flight[s][0]
        self.record_dead(self.sub.nack(actor, [s], self.now, delay))
        self.flight.pop(s, None)

    @rule(dt=st.integers(0, 15))
    def tick(self, dt):
        self.now += dt
        self.record_dead(self.sub.tick(self.now))
        for s in [s for s, (_, dl) in self.flight.items() if dl <= self.now]:
            del self.flight[s]

    @rule()
    def restart(self):
        state = msgpack.unpackb(msgpack.packb(self.sub.snapshot()))
        self.sub = self.new_sub(
            Subscription.restore("t", "g", state, last_seq=self.last, lookup=self.lookup)
        )
        self.sub.published(self.last, priority=True)
        # the hub gives the held-back seqs again (from its sched index)
        self.sub.defer([(s, due) for s, due in self.due.items() if due > self.now])
        self.flight.clear()
        self.attached.clear()

    @invariant()
    def counts_agree(self):
        if not hasattr(self, "sub"):
            return
        assert self.sub.in_flight == len(self.flight)
        assert self.sub._win_prio == sum(1 for _, p in self.sub._win.values() if p)
        if self.ordering == "strict":
            assert self.sub.in_flight <= 1

    def teardown(self):
        if not hasattr(self, "sub"):
            return
        for a in list(self.attached):
            self.detach(a, failed=False)
        self.sub.attach("drain", 50)
        self.attached.add("drain")
        for _ in range(3_000):
            if self.sub.ack_floor == self.last:
                break
            self.tick(15)
            out = self.sub.dispatch(self.now)
            self.check(out)
            for s in handed(out):
                self.sub.ack("drain", [s])
                self.finish(s, "acked")
        assert self.sub.ack_floor == self.last
        assert sorted(self.done) == list(range(1, self.last + 1))
        assert self.sub.in_flight == 0 and self.sub.pending == 0


OrderingMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, phases=MACHINE_PHASES
)
TestOrderingMachine = OrderingMachine.TestCase
# A failure found late is shrunk, which can take minutes: report it, not a timeout.
TestOrderingMachine.pytestmark = [pytest.mark.timeout(MACHINE_TIMEOUT_S)]


class PriorityMachine(SubscriptionMachine):
    """The general machine of test_subscription (credit, failures, counts, dead letters, restarts,
    nothing lost) with ordering "none" and random priorities on every message; plus: every
    dispatch hands out the highest-priority waiting seqs, lowest seq first within a priority (the
    tests publish far fewer than ORDER_WINDOW seqs, so every waiting seq is in the window)."""

    @initialize(
        ack_wait=st.sampled_from([1, 25, 100]),
        max_deliver=st.integers(0, 4),
        prios=st.lists(st.integers(0, 9), min_size=400, max_size=400),
        every=st.sampled_from([1, 1, 8, 40]),  # sparse priorities: windows with none at all too
    )
    def setup(self, ack_wait, max_deliver, prios, every):
        super().setup(ack_wait, max_deliver, 0)
        self.prios = [p if i % every == 0 else 0 for i, p in enumerate(prios)]
        self.sub.lookup = self.lookup

    # every batch may hold prioritised messages, delayed ones too (the hub says so per batch;
    # a delayed batch published without it let the subscription walk past a due priority)
    PRIORITIES = True

    def lookup(self, seqs):
        return [(None, self.prios[s % 400]) for s in seqs]

    def prio(self, s):
        return self.prios[s % 400]

    def check_dispatch(self, out, limit):
        waiting_before = {
            s
            for s in range(1, self.last + 1)
            if s not in self.done and s not in self.flight and s not in self.delayed
            and s not in self.deferred
        }
        super().check_dispatch(out, limit)
        got = [s for d in out for s in d.seqs]
        if got:
            worst = max((-self.prio(s), s) for s in got)
            left = [s for s in waiting_before - set(got) if (-self.prio(s), s) < worst]
            assert left == [], f"handed {got} but left better {left}"

    @invariant()
    def window_priority_count_is_right(self):
        if hasattr(self, "sub"):
            assert self.sub._win_prio == sum(1 for _, p in self.sub._win.values() if p)

    @rule()
    def restart(self):
        state = msgpack.unpackb(msgpack.packb(self.sub.snapshot()))
        self.sub = Subscription.restore("t", "g", state, last_seq=self.last, lookup=self.lookup)
        self.sub.published(self.last, priority=True)
        self.sub.defer(self.deferred.items())  # the hub holds them back again after a restart
        self.credit.clear()
        self.flight.clear()
        self.delayed.clear()
        self.may_redeliver = set(self.counts)


PriorityMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, phases=MACHINE_PHASES
)
TestPriorityMachine = PriorityMachine.TestCase
# A failure found late is shrunk, which can take minutes: report it, not a timeout.
TestPriorityMachine.pytestmark = [pytest.mark.timeout(MACHINE_TIMEOUT_S)]
