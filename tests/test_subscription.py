"""Tests of the pure subscription state machine, driven with a plain int clock (milliseconds)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zmq_mq.router.subscription import (
    DeadLetter,
    Delivery,
    Subscription,
    SubscriptionError,
)

A = ("actor", "A")
B = ("actor", "B")


def handed(deliveries: list[Delivery]) -> list[int]:
    """All seqs of a dispatch, in hand-out order across actors."""
    return [s for d in deliveries for s in d.seqs]


def by_actor(deliveries: list[Delivery]) -> dict:
    return {d.actor: d.seqs for d in deliveries}


def make(n: int = 0, **kw) -> Subscription:
    sub = Subscription("orders", "billing", **kw)
    sub.published(n)
    return sub


# --------------------------------------------------------------------------- ordering and credit


def test_one_actor_gets_the_queue_in_order():
    sub = make(5)
    sub.attach(A, 10)
    [d] = sub.dispatch(now=0)
    assert d == Delivery(A, [1, 2, 3, 4, 5], [1, 1, 1, 1, 1])
    assert sub.in_flight == 5 and sub.pending == 0
    assert sub.dispatch(now=0) == []


def test_work_queue_alternates_between_two_actors_of_equal_credit():
    sub = make(6)
    sub.attach(A, 10)
    sub.attach(B, 10)
    out = sub.dispatch(now=0)
    assert by_actor(out) == {A: [1, 3, 5], B: [2, 4, 6]}


def test_work_queue_alternates_across_dispatch_calls_with_limit_one():
    sub = make(4)
    sub.attach(A, 10)
    sub.attach(B, 10)
    got = [sub.dispatch(now=0, limit=1)[0].actor for _ in range(4)]
    assert got == [A, B, A, B]


def test_round_robin_respects_unequal_credit():
    sub = make(10)
    sub.attach(A, 1)
    sub.attach(B, 3)
    assert by_actor(sub.dispatch(now=0)) == {A: [1], B: [2, 3, 4]}


@pytest.mark.parametrize(
    "credit, published, expect_in_flight",
    [(0, 5, 0), (1, 5, 1), (3, 5, 3), (10, 5, 5), (3, 0, 0)],
)
def test_credit_is_never_exceeded(credit, published, expect_in_flight):
    sub = make(published)
    sub.attach(A, credit)
    sub.dispatch(now=0)
    sub.dispatch(now=1)
    assert sub.in_flight_of(A) == expect_in_flight
    assert sub.credit_of(A) == credit


def test_lowering_credit_revokes_nothing_and_stops_new_hand_outs():
    sub = make(10)
    sub.attach(A, 5)
    sub.dispatch(now=0)
    sub.set_credit(A, 2)
    assert sub.in_flight_of(A) == 5
    sub.ack(A, [1, 2])
    assert sub.dispatch(now=0) == []  # holds 3, window 2
    sub.ack(A, [3, 4])
    assert handed(sub.dispatch(now=0)) == [6]


def test_attach_of_an_attached_actor_sets_its_credit():
    sub = make(10)
    sub.attach(A, 1)
    sub.attach(A, 3)
    assert sub.actors == 1 and sub.credit_of(A) == 3


def test_limit_caps_the_whole_dispatch():
    sub = make(10)
    sub.attach(A, 10)
    sub.attach(B, 10)
    assert len(handed(sub.dispatch(now=0, limit=3))) == 3
    assert sub.dispatch(now=0, limit=0) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.attach(A, -1),
        lambda s: s.set_credit(A, -1),
        lambda s: s.set_credit(("nobody",), 1),
        lambda s: s.configure(max_deliver=-1),
        lambda s: s.configure(ack_wait_ms=-5),
    ],
)
def test_contract_violations_raise_subscription_error(call):
    sub = make(1)
    sub.attach(A, 1)
    with pytest.raises(SubscriptionError):
        call(sub)


def test_events_from_unknown_actors_are_ignored():
    sub = make(3)
    sub.attach(A, 3)
    sub.dispatch(now=0)
    ghost = ("ghost",)
    assert sub.nack(ghost, [1], now=0) == []
    assert sub.reject(ghost, [1], "no") == []
    assert sub.detach(ghost, now=0, failed=True) == []
    sub.release(ghost, [1])
    sub.progress(ghost, [1], now=0)
    assert sub.in_flight_of(A) == 3


# --------------------------------------------------------------------------- acks and the floor


def test_ack_advances_the_floor_and_returns_credit():
    sub = make(3)
    sub.attach(A, 3)
    sub.dispatch(now=0)
    assert sub.ack(A, [1, 2]) == []
    assert sub.ack_floor == 2 and sub.in_flight_of(A) == 1 and sub._acked == set()


def test_out_of_order_acks_are_kept_above_the_floor_then_collapse():
    sub = make(4)
    sub.attach(A, 4)
    sub.dispatch(now=0)
    sub.ack(A, [4, 2])
    assert sub.ack_floor == 0 and sub._acked == {2, 4}
    sub.ack(A, [1])
    assert sub.ack_floor == 2 and sub._acked == {4}
    sub.ack(A, [3])
    assert sub.ack_floor == 4 and sub._acked == set() and sub._counts == {}


def test_acks_are_idempotent_and_unpublished_seqs_are_returned():
    sub = make(3)
    sub.attach(A, 3)
    sub.dispatch(now=0)
    assert sub.ack(A, [1, 1, 0, -2, 4, 99]) == [0, -2, 4, 99]
    assert sub.ack(A, [1]) == []
    assert sub.ack_floor == 1 and sub.in_flight_of(A) == 2


def test_ack_from_another_actor_returns_the_holders_credit():
    sub = make(2)
    sub.attach(A, 1)
    sub.attach(B, 1)
    sub.dispatch(now=0)
    sub.ack(B, [1])  # 1 was A's
    assert sub.in_flight_of(A) == 0 and sub.in_flight_of(B) == 1


def test_ack_of_a_seq_never_handed_out_makes_it_done_and_skipped():
    sub = make(5)
    sub.ack(("after restart",), [2, 3])
    sub.attach(A, 10)
    assert handed(sub.dispatch(now=0)) == [1, 4, 5]
    assert sub.pending == 0


# --------------------------------------------------------------------------- failures


def test_nack_redelivers_with_deliveries_plus_one_lowest_seq_first():
    sub = make(4)
    sub.attach(A, 4)
    sub.dispatch(now=0)
    sub.nack(A, [3, 1], now=10)
    assert sub.in_flight_of(A) == 2 and sub.pending == 2
    [d] = sub.dispatch(now=10)
    assert d.seqs == [1, 3] and d.deliveries == [2, 2]


def test_redeliveries_go_before_new_seqs():
    sub = make(5)
    sub.attach(A, 2)
    sub.dispatch(now=0)
    sub.nack(A, [2], now=0)
    assert handed(sub.dispatch(now=0)) == [2]


def test_nack_with_delay_is_not_redelivered_before_due():
    sub = make(1)
    sub.attach(A, 1)
    sub.dispatch(now=0)
    sub.nack(A, [1], now=100, delay_ms=500)
    assert sub.next_deadline() == 600
    for now in (100, 300, 599):
        sub.tick(now)
        assert sub.dispatch(now) == []
    sub.tick(600)
    assert sub.dispatch(600) == [Delivery(A, [1], [2])]


@pytest.mark.parametrize("ack_wait, delay", [(1000, 500), (1000, 1000), (1000, 2500), (300, 4000)])
def test_a_nacked_seq_is_handed_out_max_deliver_times_whatever_ack_wait_and_the_delay(
        ack_wait, delay):
    # Given an actor that fails every delivery 100 ms after getting it, nacking with a delay
    sub = make(1, ack_wait_ms=ack_wait, max_deliver=3)
    sub.attach(A, 1)
    handed_out: list[int] = []
    dead: list[DeadLetter] = []
    now = 0
    # When the clock runs on in 10 ms steps for long enough to deliver it many times over
    while now < 30_000 and not dead:
        dead += sub.tick(now)
        for d in sub.dispatch(now):
            handed_out += d.deliveries
            now += 100
            dead += sub.tick(now)  # an expired deadline would show up here
            dead += sub.nack(A, d.seqs, now, delay_ms=delay)
        now += 10
    # Then neither the ack_wait deadline nor the delay handed it out twice: 3 tries, then dead
    assert handed_out == [1, 2, 3]
    assert dead == [DeadLetter(1, 3, "max_deliver reached (3 deliveries, last: nacked)")]


def test_nack_of_a_seq_not_in_flight_to_this_actor_is_ignored():
    sub = make(2)
    sub.attach(A, 1)
    sub.attach(B, 1)
    sub.dispatch(now=0)
    assert sub.nack(B, [1], now=0) == []  # 1 is A's
    assert sub.in_flight_of(A) == 1


def test_ack_wait_expiry_redelivers_only_at_the_deadline():
    sub = make(1, ack_wait_ms=1000)
    sub.attach(A, 1)
    sub.dispatch(now=0)
    assert sub.next_deadline() == 1000
    sub.tick(999)
    assert sub.in_flight == 1 and sub.dispatch(999) == []
    sub.tick(1000)
    assert sub.in_flight == 0
    assert sub.dispatch(1000) == [Delivery(A, [1], [2])]


def test_progress_extends_the_deadline():
    sub = make(2, ack_wait_ms=1000)
    sub.attach(A, 2)
    sub.dispatch(now=0)
    sub.progress(A, [1], now=800)
    sub.tick(1000)  # 2 expires, 1 does not
    assert sub.in_flight == 1 and sub.next_deadline() == 1800
    sub.tick(1799)
    assert sub.in_flight_of(A) == 1
    sub.tick(1800)
    assert sub.in_flight == 0 and sub.pending == 2


@pytest.mark.parametrize(
    "fail, last",
    [
        (lambda s, t: s.nack(A, [1], now=t), "nacked"),
        (lambda s, t: s.tick(t + 1000), "ack_wait expired"),
        (lambda s, t: s.detach(A, now=t, failed=True), "actor lost"),
    ],
)
def test_max_deliver_dead_letters_with_reason_and_deliveries(fail, last):
    sub = make(1, ack_wait_ms=1000, max_deliver=3)
    t = 0
    for attempt in (1, 2, 3):
        sub.attach(A, 1)
        [d] = sub.dispatch(now=t)
        assert d.deliveries == [attempt]
        dead = fail(sub, t)
        t += 1000
    assert dead == [DeadLetter(1, 3, f"max_deliver reached (3 deliveries, last: {last})")]
    assert sub.ack_floor == 1 and sub.pending == 0 and sub._counts == {}


def test_max_deliver_zero_means_unlimited():
    sub = make(1, max_deliver=0)
    sub.attach(A, 1)
    for attempt in range(1, 50):
        [d] = sub.dispatch(now=0)
        assert d.deliveries == [attempt]
        assert sub.nack(A, [1], now=0) == []


def test_reject_dead_letters_at_once():
    sub = make(2)
    sub.attach(A, 2)
    sub.dispatch(now=0)
    assert sub.reject(A, [2], "bad payload") == [DeadLetter(2, 1, "rejected: bad payload")]
    assert sub.ack_floor == 0 and sub._acked == {2}
    sub.ack(A, [1])
    assert sub.ack_floor == 2


def test_release_gives_back_without_counting():
    sub = make(1)
    sub.attach(A, 1)
    sub.dispatch(now=0)
    sub.release(A, [1])
    assert sub.dispatch(now=0) == [Delivery(A, [1], [1])]


def test_graceful_detach_hands_in_flight_to_the_other_actor_without_counting():
    sub = make(4)
    sub.attach(A, 2)
    sub.dispatch(now=0)
    sub.attach(B, 10)
    assert by_actor(sub.dispatch(now=0)) == {B: [3, 4]}
    assert sub.detach(A, now=5, failed=False) == []
    assert sub.actors == 1
    assert sub.dispatch(now=5) == [Delivery(B, [1, 2], [1, 1])]


def test_failed_detach_counts_an_attempt():
    sub = make(2)
    sub.attach(A, 2)
    sub.dispatch(now=0)
    sub.attach(B, 2)
    assert sub.detach(A, now=5, failed=True) == []
    assert sub.dispatch(now=5) == [Delivery(B, [1, 2], [2, 2])]


# --------------------------------------------------------------------------- start, persistence


def test_start_after_last_seq_delivers_only_new_messages():
    sub = Subscription("orders", "fresh", last_seq=100, start_after=100)
    sub.attach(A, 10)
    assert sub.dispatch(now=0) == [] and sub.pending == 0
    sub.published(102)
    assert handed(sub.dispatch(now=0)) == [101, 102]


def test_snapshot_restore_round_trip_keeps_counts_and_makes_in_flight_pending():
    sub = make(10, ack_wait_ms=2000, max_deliver=3)
    sub.attach(A, 6)
    sub.dispatch(now=0)  # 1..6
    sub.nack(A, [2], now=0)
    sub.dispatch(now=0)  # 2 again (deliveries 2)
    sub.ack(A, [1, 4, 5])
    state = msgpack.unpackb(msgpack.packb(sub.snapshot()))  # default strict_map_key
    assert state["floor"] == 1 and state["acked"] == [[4, 5]]
    assert sorted(zip(*state["counts"])) == [(2, 2), (3, 1), (6, 1)]

    back = Subscription.restore("orders", "billing", state, last_seq=10)
    assert back.dirty is False
    assert (back.ack_floor, back.in_flight, back.pending) == (1, 0, 7)
    assert (back.ack_wait_ms, back.max_deliver) == (2000, 3)
    back.attach(A, 10)
    [d] = back.dispatch(now=0)
    assert d.seqs == [2, 3, 6, 7, 8, 9, 10]
    assert d.deliveries == [3, 2, 2, 1, 1, 1, 1]
    # the poison message is still stopped at max_deliver
    assert back.nack(A, [2], now=0) == [
        DeadLetter(2, 3, "max_deliver reached (3 deliveries, last: nacked)")
    ]


def test_a_snapshot_written_before_counts_restores_its_delivery_counts():
    # older hubs wrote the counts as a list of [seq, n] pairs ("deliveries")
    state = {"v": 1, "floor": 1, "acked": [[4, 5]], "deliveries": [[2, 2], [3, 1], [6, 1]],
             "ack_wait_ms": 2000, "max_deliver": 3}
    back = Subscription.restore("orders", "billing", state, last_seq=10)
    back.attach(A, 10)
    [d] = back.dispatch(now=0)
    assert d.seqs == [2, 3, 6, 7, 8, 9, 10]
    assert d.deliveries == [3, 2, 2, 1, 1, 1, 1]


def test_restore_rejects_a_malformed_snapshot():
    with pytest.raises(SubscriptionError):
        Subscription.restore("t", "g", {"acked": []}, last_seq=0)
    with pytest.raises(SubscriptionError):
        Subscription.restore("t", "g", {"floor": 0, "counts": [[1, 2], [1]]}, last_seq=2)


def test_dirty_tracks_snapshot_changes():
    sub = make(3)
    assert sub.dirty  # new cursor
    sub.dirty = False
    sub.attach(A, 3)
    sub.published(5)
    sub.tick(0)
    assert not sub.dirty
    before = sub.snapshot()
    sub.dispatch(now=0)
    assert sub.dirty and sub.snapshot() != before
    sub.dirty = False
    sub.nack(A, [1], now=0)  # ready again, counts unchanged
    sub.progress(A, [2], now=0)
    assert not sub.dirty
    assert sub.snapshot() == {**before, "counts": [[1, 2, 3], [1, 1, 1]]}
    sub.ack(A, [2])
    assert sub.dirty


def test_snapshot_of_a_huge_acked_set_is_a_few_ranges():
    sub = make(200_001)
    sub.ack(A, range(2, 100_002))
    sub.ack(A, range(100_003, 200_002))
    assert sub.snapshot()["acked"] == [[2, 100_001], [100_003, 200_001]]


def test_a_million_message_backlog_keeps_internal_containers_small():
    sub = make(1_000_000, ack_wait_ms=100)
    sub.attach(A, 10)
    now = 0
    for _ in range(2_000):
        [d] = sub.dispatch(now)
        sub.ack(A, d.seqs[1:])  # one of every ten times out, then is redelivered
        now += 30
        sub.tick(now)
    assert sub.pending > 900_000
    sizes = {
        "inflight": len(sub._inflight),
        "counts": len(sub._counts),
        "acked": len(sub._acked),
        "ready": len(sub._ready) + len(sub._ready_set),
        "delayed": len(sub._delayed) + len(sub._delayed_due),
        "timers": len(sub._timers),
    }
    assert all(n <= 2_100 for n in sizes.values()), sizes
    assert sizes["inflight"] <= 10


def test_stale_timer_entries_are_swept_when_acks_outrun_deadlines():
    sub = make(100_000)  # ack_wait 30 s, never ticked: every timer entry goes stale
    sub.attach(A, 1)
    for now in range(100_000):
        sub.ack(A, sub.dispatch(now)[0].seqs)
    assert sub.ack_floor == 100_000
    assert sub._timer_refs <= 2_100 and len(sub._timers) <= 2_100
    assert sub.next_deadline() is None


# --------------------------------------------------------------------------- property test


DISPATCH_AFTER = st.booleans()


# The state machines here and in test_ordering: every phase but "explain" (its tracing makes
# shrinking a found failure several times slower), and time enough to shrink it.
MACHINE_PHASES = tuple(p for p in Phase if p is not Phase.explain)
MACHINE_TIMEOUT_S = 900


class SubscriptionMachine(RuleBasedStateMachine):
    """Invariants: dispatch never lets an actor hold more than its credit; every seq handed out is
    <= last_seq, not done and not in flight; a seq is handed out again only after a failure or a
    give-back (nack, expiry at/after its deadline, actor lost, release, graceful detach, restart);
    counts and floor match a simple model; and at teardown, after draining, every published seq
    ended exactly once as acked or dead-lettered, with the floor at last_seq.

    The model mirrors the subscription with plain dicts and sets, and owns the fake clock.
    """

    ACTORS = ("a", "b")
    # What publishing tells the subscription, as the hub does for a batch that holds a
    # prioritised message (delayed or not): the PriorityMachine of test_ordering sets it.
    PRIORITIES = False

    @initialize(
        ack_wait=st.sampled_from([1, 25, 100]),
        max_deliver=st.integers(0, 4),
        start=st.integers(0, 3),
    )
    def setup(self, ack_wait, max_deliver, start):
        self.sub = Subscription(
            "t", "g", last_seq=start, start_after=start, ack_wait_ms=ack_wait,
            max_deliver=max_deliver,
        )
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.start = start
        self.now = 0
        self.last = start
        self.done: dict[int, str] = {s: "before start" for s in range(1, start + 1)}
        self.credit: dict = {}  # attached actor -> window
        self.flight: dict[int, tuple] = {}  # seq -> (actor, deadline)
        self.counts: dict[int, int] = {}  # seq -> hand-outs, not done
        self.may_redeliver: set[int] = set()  # handed out before, then failed or given back
        self.delayed: dict[int, int] = {}  # seq -> due
        self.deferred: dict[int, int] = {}  # published with a delay (defer), never handed out -> due

    # -- model helpers

    def held(self, actor) -> int:
        return sum(1 for a, _ in self.flight.values() if a == actor)

    def finish(self, seq: int, how: str) -> None:
        assert seq not in self.done, f"{seq} finished twice ({self.done[seq]}, then {how})"
        self.done[seq] = how
        self.flight.pop(seq, None)
        self.counts.pop(seq, None)
        self.may_redeliver.discard(seq)
        self.delayed.pop(seq, None)
        self.deferred.pop(seq, None)

    def failed(self, seq: int, why: str, delay: int, expected: list) -> None:
        n = self.counts.get(seq, 0)
        if self.max_deliver and n >= self.max_deliver:
            reason = f"max_deliver reached ({n} deliveries, last: {why})"
            expected.append(DeadLetter(seq, n, reason))
            self.finish(seq, "dead")
        elif delay > 0:
            self.delayed[seq] = self.now + delay
        else:
            self.may_redeliver.add(seq)

    def given_back(self, seq: int) -> None:
        n = self.counts.get(seq, 0) - 1
        if n > 0:
            self.counts[seq] = n
        else:
            self.counts.pop(seq, None)
        self.may_redeliver.add(seq)

    def record_dead(self, dead: list[DeadLetter]) -> None:
        for d in dead:
            self.finish(d.seq, "dead")

    def check_dispatch(self, out: list[Delivery], limit) -> None:
        free_before = {a: max(0, c - self.held(a)) for a, c in self.credit.items()}
        total = 0
        for d in out:
            assert d.actor in self.credit
            assert d.seqs and len(d.seqs) == len(d.deliveries)
            assert len(d.seqs) <= free_before[d.actor], "credit exceeded"
            for s, n in zip(d.seqs, d.deliveries):
                assert 1 <= s <= self.last, s
                assert s not in self.done, s
                assert s not in self.flight, f"{s} in flight twice"
                assert s in self.may_redeliver or s not in self.counts, f"{s} redelivered early"
                assert s not in self.delayed, f"{s} delivered before its delay"
                assert s not in self.deferred, f"{s} delivered before its delayed delivery time"
                assert n == self.counts.get(s, 0) + 1
                self.counts[s] = n
                self.may_redeliver.discard(s)
                self.flight[s] = (d.actor, self.now + self.ack_wait)
                total += 1
        # work-conserving: it stops short only when the credit, the limit or the work runs out
        cap = sum(free_before.values()) if limit is None else min(limit, sum(free_before.values()))
        if total < cap:
            waiting = [
                s
                for s in range(1, self.last + 1)
                if s not in self.done and s not in self.flight and s not in self.delayed
                and s not in self.deferred
            ]
            assert waiting == [], f"dispatch left {waiting} with free credit"

    # -- rules

    @rule(n=st.integers(1, 6), then=DISPATCH_AFTER)
    def publish(self, n, then):
        self.last += n
        self.sub.published(self.last, priority=self.PRIORITIES)
        self.dispatch_if(then)

    @rule(n=st.integers(1, 4), delay=st.integers(1, 30), then=DISPATCH_AFTER)
    def publish_delayed(self, n, delay, then):
        first = self.last + 1
        self.last += n
        self.sub.published(self.last, priority=self.PRIORITIES)
        held = [(s, self.now + delay) for s in range(first, self.last + 1)]
        self.sub.defer(held)
        self.deferred.update(held)
        self.dispatch_if(then)

    @rule(actor=st.sampled_from(ACTORS), credit=st.integers(1, 6), then=DISPATCH_AFTER)
    def attach(self, actor, credit, then):
        self.sub.attach(actor, credit)
        self.credit[actor] = credit
        self.dispatch_if(then)

    @precondition(lambda self: self.credit)
    @rule(data=st.data(), credit=st.integers(0, 6))
    def set_credit(self, data, credit):
        actor = data.draw(st.sampled_from(sorted(self.credit)))
        self.sub.set_credit(actor, credit)
        self.credit[actor] = credit

    @rule(actor=st.sampled_from(ACTORS), failed=st.booleans())
    def detach(self, actor, failed):
        dead = self.sub.detach(actor, self.now, failed=failed)
        expected: list = []
        self.credit.pop(actor, None)
        for s in sorted(s for s, (a, _) in self.flight.items() if a == actor):
            del self.flight[s]
            if failed:
                self.failed(s, "actor lost", 0, expected)
            else:
                self.given_back(s)
        assert dead == expected

    @rule(limit=st.sampled_from([None, None, None, 0, 1, 3]))
    def dispatch(self, limit):
        self.check_dispatch(self.sub.dispatch(self.now, limit), limit)

    def dispatch_if(self, then: bool) -> None:
        """What the hub does after a batch of events; optional so that events also meet a
        subscription with undispatched work."""
        if then:
            self.dispatch(None)

    def pick(self, data, actor=None) -> list[int]:
        mine = sorted(s for s, (a, _) in self.flight.items() if actor is None or a == actor)
        if not mine:
            return []
        return data.draw(st.lists(st.sampled_from(mine), max_size=4))

    def pick_held(self, data) -> tuple:
        """An actor (usually one holding seqs) and seqs: mostly its own, some of others'."""
        holders = sorted({a for a, _ in self.flight.values()})
        actor = data.draw(st.sampled_from(holders or list(self.ACTORS)))
        return actor, self.pick(data, actor) + self.pick(data)

    @rule(data=st.data(), actor=st.sampled_from(ACTORS + ("ghost",)), then=DISPATCH_AFTER)
    def ack(self, data, actor, then):
        seqs = self.pick(data) + data.draw(st.lists(st.integers(-1, self.last + 2), max_size=3))
        bad = self.sub.ack(actor, seqs)
        assert bad == [s for s in seqs if s < 1 or s > self.last]
        for s in seqs:
            if 1 <= s <= self.last and s not in self.done:
                self.finish(s, "acked")
        self.dispatch_if(then)

    @rule(data=st.data(), delay=st.sampled_from([0, 0, 5, 40]), then=DISPATCH_AFTER)
    def nack(self, data, delay, then):
        actor, seqs = self.pick_held(data)  # seqs of other actors must be ignored
        dead = self.sub.nack(actor, seqs, self.now, delay)
        expected: list = []
        for s in seqs:
            if s in self.flight and self.flight[s][0] == actor:
                del self.flight[s]
                self.failed(s, "nacked", delay, expected)
        assert dead == expected
        self.dispatch_if(then)

    @rule(data=st.data())
    def release(self, data):
        actor, seqs = self.pick_held(data)
        self.sub.release(actor, seqs)
        for s in seqs:
            if s in self.flight and self.flight[s][0] == actor:
                del self.flight[s]
                self.given_back(s)

    @rule(data=st.data())
    def reject(self, data):
        actor, seqs = self.pick_held(data)
        dead = self.sub.reject(actor, seqs, "nope")
        expected = []
        for s in seqs:
            if s in self.flight and self.flight[s][0] == actor:
                expected.append(DeadLetter(s, self.counts[s], "rejected: nope"))
                self.finish(s, "dead")
        assert dead == expected

    @rule(data=st.data())
    def progress(self, data):
        actor, seqs = self.pick_held(data)
        self.sub.progress(actor, seqs, self.now)
        for s in seqs:
            if s in self.flight and self.flight[s][0] == actor:
                self.flight[s] = (actor, self.now + self.ack_wait)

    @rule(dt=st.integers(0, 20), then=DISPATCH_AFTER)
    def advance_clock_and_tick(self, dt, then=False):
        self.now += dt
        dead = self.sub.tick(self.now)
        expected: list = []
        for s in sorted(s for s, (_, deadline) in self.flight.items() if deadline <= self.now):
            del self.flight[s]
            self.failed(s, "ack_wait expired", 0, expected)
        for s in [s for s, due in self.delayed.items() if due <= self.now]:
            del self.delayed[s]
            self.may_redeliver.add(s)
        for s in [s for s, due in self.deferred.items() if due <= self.now]:
            del self.deferred[s]
        # same dead letters; their order follows the timer batches, so compare as sets
        assert sorted(dead, key=lambda d: d.seq) == sorted(expected, key=lambda d: d.seq)
        self.dispatch_if(then)

    @precondition(lambda self: self.flight or self.delayed or self.deferred)
    @rule(data=st.data(), offset=st.sampled_from([-1, 0]))
    def jump_to_a_deadline(self, data, offset):
        """Land exactly on (or 1 ms before) a deadline or due time: random steps rarely do."""
        times = sorted({d for _, d in self.flight.values()} | set(self.delayed.values())
                       | set(self.deferred.values()))
        target = data.draw(st.sampled_from(times))
        self.advance_clock_and_tick(max(0, target + offset - self.now))

    @rule()
    def restart(self):
        state = msgpack.unpackb(msgpack.packb(self.sub.snapshot()))
        self.sub = Subscription.restore("t", "g", state, last_seq=self.last)
        self.sub.defer(self.deferred.items())  # the hub holds them back again after a restart
        self.credit.clear()
        self.flight.clear()
        self.delayed.clear()
        self.may_redeliver = set(self.counts)

    # -- invariants

    @invariant()
    def matches_the_model(self):
        sub = self.sub
        floor = self.start
        while floor + 1 in self.done:
            floor += 1
        assert sub.ack_floor == floor
        assert sub.last_seq == self.last
        assert sub.in_flight == len(self.flight)
        assert sub.pending == self.last - len(self.done) - len(self.flight)
        assert sub.actors == len(self.credit)
        for a in self.ACTORS:
            assert sub.in_flight_of(a) == self.held(a)
        assert sub._counts == self.counts
        times = ([d for _, d in self.flight.values()] + list(self.delayed.values())
                 + list(self.deferred.values()))
        assert sub.next_deadline() == (min(times) if times else None)
        assert sub.deferred == len(self.deferred)

    def teardown(self):
        if not hasattr(self, "sub"):
            return
        for a in list(self.credit):
            self.detach(a, failed=False)
        self.sub.attach("drain", 1_000)
        self.credit["drain"] = 1_000
        for _ in range(1_000):
            if self.sub.ack_floor == self.last:
                break
            self.advance_clock_and_tick(50)
            out = self.sub.dispatch(self.now)
            self.check_dispatch(out, None)
            for d in out:
                assert self.sub.ack("drain", d.seqs) == []
                for s in d.seqs:
                    self.finish(s, "acked")
        assert self.sub.ack_floor == self.last
        assert sorted(self.done) == list(range(1, self.last + 1))
        assert set(self.done.values()) <= {"before start", "acked", "dead"}
        assert self.sub.in_flight == 0 and self.sub.pending == 0
        assert self.sub._acked == set() and self.sub._counts == {}


SubscriptionMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, phases=MACHINE_PHASES
)
TestSubscriptionMachine = SubscriptionMachine.TestCase
# A failure found late is shrunk, which can take minutes: report it, not a timeout.
TestSubscriptionMachine.pytestmark = [pytest.mark.timeout(MACHINE_TIMEOUT_S)]
