"""A subscription's state machine: which seq goes to which actor, when, and when to give up.

Pure code: no socket, no LMDB, no clock. Time comes in as integer milliseconds ``now``; the hub
feeds events in and carries out the decisions that come back (:class:`Delivery` batches to send,
:class:`DeadLetter` records to write, and ``dirty``: "persist :meth:`Subscription.snapshot`").
Everything that decides delivery for one subscription on one topic lives here.

Theory of operation
-------------------
The topic is a log with seqs 1, 2, 3, ... up to ``last_seq`` (the hub reports it via
:meth:`Subscription.published`). Every seq in ``(ack_floor, last_seq]`` is in exactly one state:

* **done**: acked or dead-lettered. Done seqs above the floor sit in ``acked``; whenever
  ``ack_floor + 1`` is done the floor moves up over it. Done is final: a done seq is never handed
  out again, and its delivery count is forgotten.
* **in flight**: handed to one attached actor, with a deadline ``now + ack_wait_ms``.
* **ready**: handed out before, then failed or given back; redelivered before anything new,
  lowest seq first.
* **delayed**: nacked with a delay; becomes ready at the first ``tick(now)`` with ``now >= due``.
* **new**: never handed out since the (re)start: ``next_seq..last_seq`` minus the done ones. It is
  a range, not a collection, so a backlog of a million seqs costs no memory.

Transitions:

* ``dispatch`` moves ready, then new seqs to in flight, round-robin over the attached actors that
  have free credit (credit = how many unacked seqs an actor is willing to hold). It never lets an
  actor hold more than its credit, and counts one delivery per hand-out.
* ``ack`` (from any actor, for any seq in ``(floor, last_seq]`` in any state) makes it done.
* A *failed attempt* (``nack``, deadline expired in ``tick``, actor lost in ``detach(failed=True)``)
  makes an in-flight seq ready (or delayed), or dead-letters it once its delivery count has
  reached ``max_deliver`` (0 = never).
* A *give-back* (``release``, graceful ``detach``) makes it ready and un-counts that hand-out.
* ``reject`` dead-letters at once. ``progress`` moves a deadline to ``now + ack_wait_ms``.
* Nothing expires before its deadline: only ``tick(now)`` with ``now >= deadline`` does it.

Persistence: :meth:`Subscription.snapshot` holds the floor, ``acked`` as ranges, the delivery
counts and the config. :meth:`Subscription.restore` makes every undone seq new again
(at-least-once: what was in flight at a crash is delivered again), and keeps the counts so that
``max_deliver`` still stops a poison message.

Ordering and priorities
-----------------------
``ordering`` (persisted with the subscription) is one of:

* ``"none"`` (default): any number in flight, shared out over the actors.
* ``"strict"``: at most one seq in flight for the whole subscription, always the lowest undone
  seq: a FIFO queue. A failed or delayed seq keeps its place: nothing after it is handed out
  before it is done. Priorities are ignored (publish order is the order).
* ``"key"``: at most one seq in flight per message key, and a key's seqs go out in seq order (a
  redelivery keeps its place in its key). Different keys go out in parallel; seqs without a key
  are unordered.

A message may carry a priority 0-9 (default 0, higher first). The core does not hold the keys or
priorities of the backlog: it asks the injected ``lookup(seqs) -> [(key, priority), ...]`` for
a bounded *window* of the ``ORDER_WINDOW`` oldest never-handed-out seqs, and keeps the
``(key, priority)`` of handed-out, undone seqs only when it is not ``(None, 0)``. Among the
waiting seqs it may hand out (ready ones and the window), it takes the highest priority first
and, within a priority, the lowest seq. Key ordering wins over priority (a key's head goes
first even if a later seq of that key has a higher priority).

The window is only used when it can matter: with ``ordering="key"``, or while seqs the hub marked
as possibly prioritised (``published(last, priority=True)``) are waiting. Otherwise dispatch is
the plain range walk above, at no extra cost.

Events that name a seq which is not in flight to that actor (late, duplicated, or about a detached
actor) are ignored, because they are normal in a distributed system. Breaking the local contract
(negative credit, credit for an unknown actor, a malformed snapshot) raises
:class:`SubscriptionError`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from itertools import count as _counter
from itertools import islice
from typing import Any

# The orderings and the priority bounds are part of the protocol (SUBSCRIBE "ordering", PUBLISH
# "priority"); their one home is router/protocol.py.
from .protocol import DEFAULT_ACK_WAIT_MS, DEFAULT_PRIORITY, MAX_PRIORITY, ORDERINGS

# DEFAULT_ACK_WAIT_MS (protocol): long enough for ordinary work; progress() extends it
DEFAULT_MAX_DELIVER = 5  # attempts before a message is a poison message; 0 = unlimited
SNAPSHOT_VERSION = 1
# How many never-handed-out seqs the key/priority dispatch looks at (and looks up) at once. It
# bounds memory and the work of one dispatch; a higher priority or a free key further back in the
# log than this is not seen until the window moves up to it.
ORDER_WINDOW = 1_000
_PLAIN = (None, DEFAULT_PRIORITY)


def _no_lookup(seqs: list[int]) -> list[tuple[str | None, int]]:
    return [_PLAIN] * len(seqs)

# Heaps delete lazily (an ack does not search the timer heap). Stale entries are swept when they
# outnumber live ones by this much, so memory stays O(in flight) even when acks arrive long
# before the deadlines, while the sweep cost stays amortised O(1) per ack.
_COMPACT_SLACK = 1024

__all__ = [
    "DEFAULT_ACK_WAIT_MS",
    "DEFAULT_MAX_DELIVER",
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "ORDERINGS",
    "ORDER_WINDOW",
    "DeadLetter",
    "Delivery",
    "Subscription",
    "SubscriptionError",
]


class SubscriptionError(Exception):
    """The caller broke the Subscription contract (bad credit, unknown actor, bad snapshot)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Send ``seqs`` to ``actor`` in this order; ``deliveries[i]`` is the attempt of ``seqs[i]``."""

    actor: Hashable
    seqs: list[int]
    deliveries: list[int]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """``seq`` is given up after ``deliveries`` hand-outs; write it to the dead-letter topic."""

    seq: int
    deliveries: int
    reason: str


class _Actor:
    """An attached actor: its window (``credit``) and how many seqs it holds now (``held``)."""

    __slots__ = ("id", "credit", "held")

    def __init__(self, actor_id: Hashable, credit: int) -> None:
        self.id = actor_id
        self.credit = credit
        self.held = 0


def _check_credit(credit: int) -> None:
    if not isinstance(credit, int) or credit < 0:
        raise SubscriptionError(f"credit must be an int >= 0, got {credit!r}")


def _to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """``{1, 2, 3, 7}`` -> ``[[1, 3], [7, 7]]``."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


class Subscription:
    """One durable reader (``group``) of one topic: events in, deliveries and dead letters out."""

    __slots__ = (
        "topic",
        "group",
        "dirty",
        "_ack_wait_ms",
        "_max_deliver",
        "_floor",
        "_last",
        "_next",
        "_acked",
        "_ready",
        "_ready_set",
        "_delayed",
        "_delayed_due",
        "_deferred",
        "_deferred_heap",
        "_inflight",
        "_timers",
        "_timer_refs",
        "_timer_ids",
        "_counts",
        "_counts_hi",
        "_actors",
        "_ordering",
        "lookup",
        "_win",
        "_meta",
        "_prio_upto",
        "_win_prio",
    )

    def __init__(
        self,
        topic: str,
        group: str,
        *,
        last_seq: int = 0,
        start_after: int = 0,
        ack_wait_ms: int = DEFAULT_ACK_WAIT_MS,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        ordering: str = "none",
        lookup: Callable[[list[int]], list[tuple[str | None, int]]] | None = None,
    ) -> None:
        if start_after < 0 or last_seq < 0:
            raise SubscriptionError("last_seq and start_after must be >= 0")
        self.topic = topic
        self.group = group
        self._ack_wait_ms = DEFAULT_ACK_WAIT_MS
        self._max_deliver = DEFAULT_MAX_DELIVER
        self._ordering = "none"
        # lookup(seqs) -> [(key, priority)] for those seqs (the hub reads its log); a seq no
        # longer stored may answer (None, 0)
        self.lookup = lookup or _no_lookup
        self._win: dict[int, tuple[str | None, int]] = {}  # looked-up seqs never handed out
        self._meta: dict[int, tuple[str | None, int]] = {}  # handed-out undone seqs, if not plain
        self._prio_upto = 0  # seqs <= this may carry a priority (the hub said so)
        self._win_prio = 0  # window entries with a priority above the default
        self.configure(ack_wait_ms=ack_wait_ms, max_deliver=max_deliver, ordering=ordering)
        self._floor = start_after
        self._last = max(last_seq, start_after)
        self._next = start_after + 1
        self._acked: set[int] = set()
        self._ready: list[int] = []  # heap; an entry is live iff its seq is in _ready_set
        self._ready_set: set[int] = set()
        self._delayed: list[tuple[int, int]] = []  # heap (due, seq); live iff _delayed_due agrees
        self._delayed_due: dict[int, int] = {}
        # never-handed-out seqs held back until a due time (delayed delivery): seq -> due, and
        # a heap of (due, seq), live iff _deferred agrees
        self._deferred: dict[int, int] = {}
        self._deferred_heap: list[tuple[int, int]] = []
        # seq -> (actor, deadline). One tuple object is shared by a whole batch.
        self._inflight: dict[int, tuple[_Actor, int]] = {}
        # heap of (deadline, id, seqs): one entry per hand-out batch or progress call; a seq in
        # it is live iff it is still in flight with that deadline.
        self._timers: list[tuple[int, int, tuple[int, ...]]] = []
        self._timer_refs = 0  # seqs referenced by _timers, live or stale
        self._timer_ids = _counter()
        self._counts: dict[int, int] = {}  # seq -> hand-outs, for delivered seqs not done
        self._counts_hi = 0  # no seq >= next_seq has a count above this (only restore sets it)
        self._actors: dict[Hashable, _Actor] = {}  # in round-robin order
        self.dirty = True  # a new subscription has a cursor to persist

    # ------------------------------------------------------------------ config and persistence

    @property
    def ack_wait_ms(self) -> int:
        return self._ack_wait_ms

    @property
    def max_deliver(self) -> int:
        return self._max_deliver

    @property
    def ordering(self) -> str:
        return self._ordering

    def configure(
        self,
        *,
        ack_wait_ms: int | None = None,
        max_deliver: int | None = None,
        ordering: str | None = None,
    ) -> None:
        """Change the config; it applies to hand-outs and failures from now on."""
        if ordering is not None:
            if ordering not in ORDERINGS:
                raise SubscriptionError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
            if ordering != self._ordering:
                self._ordering = ordering
                self.dirty = True
        if ack_wait_ms is not None:
            if not isinstance(ack_wait_ms, int) or ack_wait_ms < 0:
                raise SubscriptionError(f"ack_wait_ms must be an int >= 0, got {ack_wait_ms!r}")
            if ack_wait_ms != self._ack_wait_ms:
                self._ack_wait_ms = ack_wait_ms
                self.dirty = True
        if max_deliver is not None:
            if not isinstance(max_deliver, int) or max_deliver < 0:
                raise SubscriptionError(f"max_deliver must be an int >= 0, got {max_deliver!r}")
            if max_deliver != self._max_deliver:
                self._max_deliver = max_deliver
                self.dirty = True

    def snapshot(self) -> dict[str, Any]:
        """The durable part of the state, msgpack-able (no int map keys, so the default
        ``strict_map_key=True`` of msgpack can read it back). ``ordering`` is stored only when
        it is not ``"none"``, so older snapshots (without it) restore as ``"none"``."""
        state = {
            "v": SNAPSHOT_VERSION,
            "floor": self._floor,
            "acked": _to_ranges(self._acked),
            # [seqs, counts] (two arrays, in hand-out order): built and packed at C speed. It
            # is written every commit that changes the cursor, and a subscription with
            # thousands in flight (an Actor of 5,000 slow handlers) paid ~0.7 ms a commit
            # for the list of [seq, n] pairs it replaces (read back from older snapshots).
            "counts": [list(self._counts), list(self._counts.values())],
            "ack_wait_ms": self._ack_wait_ms,
            "max_deliver": self._max_deliver,
        }
        if self._ordering != "none":
            state["ordering"] = self._ordering
        return state

    @classmethod
    def restore(
        cls,
        topic: str,
        group: str,
        state: dict[str, Any],
        *,
        last_seq: int,
        lookup: Callable[[list[int]], list[tuple[str | None, int]]] | None = None,
    ) -> Subscription:
        """Rebuild after a hub restart: nothing in flight, every undone seq new again."""
        try:
            floor = int(state["floor"])
            ranges = [(int(lo), int(hi)) for lo, hi in state.get("acked", ())]
            if "counts" in state:
                seqs, ns = state["counts"]
                if len(seqs) != len(ns):
                    raise ValueError("counts: as many seqs as counts")
                counts = [(int(s), int(n)) for s, n in zip(seqs, ns)]
            else:  # a snapshot written before "counts": a list of [seq, n]
                counts = [(int(s), int(n)) for s, n in state.get("deliveries", ())]
            ack_wait_ms = int(state.get("ack_wait_ms", DEFAULT_ACK_WAIT_MS))
            max_deliver = int(state.get("max_deliver", DEFAULT_MAX_DELIVER))
            ordering = state.get("ordering", "none")
            if ordering not in ORDERINGS:
                raise ValueError(f"unknown ordering {ordering!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise SubscriptionError(f"malformed subscription snapshot: {exc!r}") from exc
        sub = cls(
            topic,
            group,
            last_seq=last_seq,
            start_after=floor,
            ack_wait_ms=ack_wait_ms,
            max_deliver=max_deliver,
            ordering=ordering,
            lookup=lookup,
        )
        acked = sub._acked
        for lo, hi in ranges:
            acked.update(range(max(lo, floor + 1), hi + 1))
        if acked:
            sub._last = max(sub._last, max(acked))
            while sub._floor + 1 in acked:  # a well-formed snapshot never needs this
                sub._floor += 1
                acked.remove(sub._floor)
            sub._next = sub._floor + 1
        sub._counts = {s: n for s, n in counts if s > sub._floor and n > 0 and s not in acked}
        sub._counts_hi = max(sub._counts, default=0)
        sub.dirty = False
        return sub

    # ------------------------------------------------------------------ queries

    @property
    def ack_floor(self) -> int:
        return self._floor

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def pending(self) -> int:
        """Seqs not done and not in flight: ready + delayed + never handed out."""
        return self._last - self._floor - len(self._acked) - len(self._inflight)

    @property
    def actors(self) -> int:
        return len(self._actors)

    def in_flight_of(self, actor: Hashable) -> int:
        a = self._actors.get(actor)
        return a.held if a is not None else 0

    def credit_of(self, actor: Hashable) -> int:
        a = self._actors.get(actor)
        return a.credit if a is not None else 0

    def next_deadline(self) -> int | None:
        """Earliest in-flight deadline or delay due, for the hub's poll timeout."""
        best: int | None = None
        timers = self._timers
        inflight = self._inflight
        while timers:
            deadline, tid, group = timers[0]
            for i, s in enumerate(group):
                e = inflight.get(s)
                if e is not None and e[1] == deadline:
                    if i:  # drop the stale prefix; (deadline, tid) is unchanged, so is the heap
                        timers[0] = (deadline, tid, group[i:])
                        self._timer_refs -= i
                    best = deadline
                    break
            else:
                heapq.heappop(timers)
                self._timer_refs -= len(group)
                continue
            break
        delayed = self._delayed
        due_of = self._delayed_due
        while delayed:
            due, s = delayed[0]
            if due_of.get(s) == due:
                if best is None or due < best:
                    best = due
                break
            heapq.heappop(delayed)
        heap = self._deferred_heap
        deferred = self._deferred
        while heap:
            due, s = heap[0]
            if deferred.get(s) == due:
                if best is None or due < best:
                    best = due
                break
            heapq.heappop(heap)
        return best

    # ------------------------------------------------------------------ events

    def published(self, last_seq: int, *, priority: bool = False) -> None:
        """The topic's log now ends at ``last_seq`` (never moves back). ``priority=True``: seqs up
        to ``last_seq`` may carry a priority, so dispatch looks them up (the hub says so for a
        batch with prioritised messages, and for the backlog it cannot know about)."""
        if last_seq > self._last:
            self._last = last_seq
        if priority and last_seq > self._prio_upto:
            self._prio_upto = last_seq

    def cap(self, last_seq: int) -> None:
        """Hand out nothing past ``last_seq`` for now, though the log holds more (a cluster
        leader: only what every in-sync replica holds may be delivered); ``published`` raises
        the end again. Seqs already handed out stay so. To hold, it must follow each raise
        before the next dispatch (the look-ahead window of key ordering and priorities is filled
        up to the end at dispatch, and a seq in it counts as passed)."""
        if last_seq < self._last:
            self._last = max(last_seq, self._next - 1)

    def defer(self, seqs_due: Iterable[tuple[int, int]]) -> None:
        """Delayed delivery: hold back never-handed-out seqs until their due time (same clock as
        ``now``); then they are ready like a redelivery, at their first delivery. A seq that is
        done or was already handed out is ignored. Held-back seqs count as pending; no ordering
        waits for them: a held-back seq takes its place among the ready seqs when it is due."""
        floor = self._floor
        acked = self._acked
        win = self._win
        nxt = self._next
        for s, due in seqs_due:
            if s <= floor or s in acked or s > self._last:
                continue
            if s < nxt and s not in win:
                continue  # handed out (or held back) already
            if win:
                m = win.pop(s, None)
                if m is not None and m[1]:
                    self._win_prio -= 1
            self._deferred[s] = due
            heapq.heappush(self._deferred_heap, (due, s))

    @property
    def deferred(self) -> int:
        """Seqs held back by delayed delivery (part of ``pending``)."""
        return len(self._deferred)

    def attach(self, actor: Hashable, credit: int) -> None:
        """Add an actor with a window of ``credit``; for an attached actor, same as set_credit."""
        _check_credit(credit)
        a = self._actors.get(actor)
        if a is None:
            self._actors[actor] = _Actor(actor, credit)
        else:
            a.credit = credit

    def set_credit(self, actor: Hashable, credit: int) -> None:
        """Set the window; lowering it below what the actor holds revokes nothing."""
        _check_credit(credit)
        a = self._actors.get(actor)
        if a is None:
            raise SubscriptionError(f"set_credit for unknown actor {actor!r}")
        a.credit = credit

    def detach(self, actor: Hashable, now: int, *, failed: bool) -> list[DeadLetter]:
        """Remove an actor. Its seqs are given back (``failed=False``) or count as failed attempts
        (``failed=True``, e.g. heartbeats stopped)."""
        a = self._actors.pop(actor, None)
        if a is None or not a.held:
            return []
        inflight = self._inflight
        mine = sorted(s for s, e in inflight.items() if e[0] is a)
        dead: list[DeadLetter] = []
        for s in mine:
            del inflight[s]
            if failed:
                self._fail(s, "actor lost", 0, 0, dead)
            else:
                self._uncount(s)
                self._make_ready(s)
        return dead

    def ack(self, actor: Hashable, seqs: Iterable[int]) -> list[int]:
        """Mark seqs done, from whichever actor and in whichever state. Idempotent. Returns the
        seqs that were never published (``< 1`` or ``> last_seq``), for the hub to answer an error.
        """
        bad: list[int] = []
        floor = self._floor
        last = self._last
        acked = self._acked
        inflight = self._inflight
        counts = self._counts
        changed = False
        for s in seqs:
            if s <= floor:
                if s < 1:
                    bad.append(s)
                continue
            if s > last:
                bad.append(s)
                continue
            e = inflight.pop(s, None)
            if e is not None:
                e[0].held -= 1
            elif s in acked:
                continue
            else:  # ready, delayed or never handed out: done without a (re)delivery
                self._ready_set.discard(s)
                self._delayed_due.pop(s, None)
                if self._deferred:
                    self._deferred.pop(s, None)
                if self._win:
                    m = self._win.pop(s, None)
                    if m is not None and m[1]:
                        self._win_prio -= 1
            if self._meta:
                self._meta.pop(s, None)
            counts.pop(s, None)
            changed = True
            if s == floor + 1:
                floor = s
                while acked and floor + 1 in acked:
                    floor += 1
                    acked.remove(floor)
            else:
                acked.add(s)
        if changed:
            self._floor = floor
            self.dirty = True
            self._maybe_compact()
        return bad

    def nack(
        self, actor: Hashable, seqs: Iterable[int], now: int, delay_ms: int = 0
    ) -> list[DeadLetter]:
        """A failed attempt for seqs in flight to ``actor``: retry (after ``delay_ms``) or
        dead-letter at ``max_deliver``. A negative delay counts as 0."""
        a = self._actors.get(actor)
        if a is None:
            return []
        dead: list[DeadLetter] = []
        for s in self._take_back(a, seqs):
            self._fail(s, "nacked", now, delay_ms, dead)
        return dead

    def release(self, actor: Hashable, seqs: Iterable[int]) -> None:
        """Give seqs back unprocessed: ready again, and this hand-out does not count."""
        a = self._actors.get(actor)
        if a is None:
            return
        for s in self._take_back(a, seqs):
            self._uncount(s)
            self._make_ready(s)

    def reject(self, actor: Hashable, seqs: Iterable[int], reason: str) -> list[DeadLetter]:
        """Dead-letter seqs in flight to ``actor`` at once."""
        a = self._actors.get(actor)
        if a is None:
            return []
        dead: list[DeadLetter] = []
        for s in self._take_back(a, seqs):
            dead.append(DeadLetter(s, self._counts.get(s, 0), f"rejected: {reason}"))
            self._done(s)
        return dead

    def progress(self, actor: Hashable, seqs: Iterable[int], now: int) -> None:
        """The actor is still working: the deadline of these seqs becomes ``now + ack_wait_ms``."""
        a = self._actors.get(actor)
        if a is None:
            return
        deadline = now + self._ack_wait_ms
        entry = (a, deadline)
        inflight = self._inflight
        moved = []
        for s in seqs:
            e = inflight.get(s)
            if e is not None and e[0] is a:
                inflight[s] = entry
                moved.append(s)
        if moved:
            heapq.heappush(self._timers, (deadline, next(self._timer_ids), tuple(moved)))
            self._timer_refs += len(moved)

    def tick(self, now: int) -> list[DeadLetter]:
        """Expire in-flight seqs whose deadline is ``<= now`` (a failed attempt) and make delayed
        seqs whose due time is ``<= now`` ready."""
        dead: list[DeadLetter] = []
        timers = self._timers
        inflight = self._inflight
        while timers and timers[0][0] <= now:
            deadline, _, group = heapq.heappop(timers)
            self._timer_refs -= len(group)
            for s in group:
                e = inflight.get(s)
                if e is not None and e[1] == deadline:
                    del inflight[s]
                    e[0].held -= 1
                    self._fail(s, "ack_wait expired", now, 0, dead)
        delayed = self._delayed
        due_of = self._delayed_due
        while delayed and delayed[0][0] <= now:
            due, s = heapq.heappop(delayed)
            if due_of.get(s) == due:
                del due_of[s]
                self._make_ready(s)
        deferred = self._deferred
        heap = self._deferred_heap
        if heap and heap[0][0] <= now:
            due_now = []
            nxt = self._next
            while heap and heap[0][0] <= now:
                due, s = heapq.heappop(heap)
                if deferred.get(s) == due:
                    del deferred[s]
                    if s < nxt:  # the walk went past it while it was held back: ready now
                        due_now.append(s)
                    # else the walk (plain, strict or the window's fill) reaches it in its turn
            if due_now:
                # their keys and priorities, which the window never looked up
                for s, m in zip(due_now, self.lookup(due_now)):
                    if m != _PLAIN:
                        self._meta[s] = m
                    self._make_ready(s)
        return dead

    def dispatch(self, now: int, limit: int | None = None) -> list[Delivery]:
        """Hand out work within credit: ready seqs (lowest first), then new ones; round-robin
        over the actors with free credit; at most ``limit`` seqs in all if given."""
        actors = self._actors
        if not actors:
            return []
        eligible = [a for a in actors.values() if a.held < a.credit]
        if not eligible:
            return []
        budget = 0
        for a in eligible:
            budget += a.credit - a.held
        if limit is not None and limit < budget:
            if limit <= 0:
                return []
            budget = limit

        if self._ordering == "strict":
            seqs, dl = self._pick_strict()
        elif (
            self._ordering == "key"
            or self._win
            or max(self._next, self._floor + 1) <= self._prio_upto
            or (self._meta and self._ready_set)
        ):
            seqs, dl = self._pick_window(budget)
        else:
            seqs, dl = self._pick_plain(budget)
        counts = self._counts
        if not seqs:
            return []
        counts.update(zip(seqs, dl))
        self.dirty = True

        # 3. share out: one seq per actor per round, actors with no credit left drop out
        if len(eligible) == 1:
            groups = [(eligible[0], seqs, dl)]
            last_served = eligible[0]
        else:
            free = [a.credit - a.held for a in eligible]
            g_seqs: list[list[int]] = [[] for _ in eligible]
            g_dl: list[list[int]] = [[] for _ in eligible]
            active = list(range(len(eligible)))
            k = 0
            n = len(seqs)
            served = 0
            while k < n:
                still = []
                for i in active:
                    if k == n:
                        break
                    g_seqs[i].append(seqs[k])
                    g_dl[i].append(dl[k])
                    k += 1
                    served = i
                    free[i] -= 1
                    if free[i]:
                        still.append(i)
                active = still
            last_served = eligible[served]
            groups = [(a, g_seqs[j], g_dl[j]) for j, a in enumerate(eligible) if g_seqs[j]]

        deadline = now + self._ack_wait_ms
        inflight = self._inflight
        timers = self._timers
        out = []
        for a, g, d in groups:
            inflight.update(dict.fromkeys(g, (a, deadline)))
            a.held += len(g)
            heapq.heappush(timers, (deadline, next(self._timer_ids), tuple(g)))
            self._timer_refs += len(g)
            out.append(Delivery(a.id, g, d))

        # rotate so that the actor after the last one served goes first next time
        if len(actors) > 1:
            for key in list(actors):
                obj = actors.pop(key)
                actors[key] = obj
                if obj is last_served:
                    break
        return out

    # ------------------------------------------------------------------ internals

    def _pick_plain(self, budget: int) -> tuple[list[int], list[int]]:
        """Ready seqs (lowest first), then new ones: no keys, no priorities, no look-ups."""
        counts = self._counts
        seqs: list[int] = []
        dl: list[int] = []
        # 1. redeliveries, lowest seq first
        ready_set = self._ready_set
        if ready_set:
            heap = self._ready
            while heap and len(seqs) < budget:
                s = heapq.heappop(heap)
                if s in ready_set:
                    ready_set.remove(s)
                    seqs.append(s)
                    dl.append(counts.get(s, 0) + 1)
        # 2. new seqs, skipping the ones acked before they were ever handed out
        need = budget - len(seqs)
        if need > 0:
            nxt = self._next
            if nxt <= self._floor:
                nxt = self._floor + 1
            last = self._last
            acked = self._acked
            deferred = self._deferred
            while need > 0 and nxt <= last:
                hi = min(last, nxt + need - 1)
                if deferred:
                    chunk = [s for s in range(nxt, hi + 1) if s not in acked and s not in deferred]
                elif acked:
                    chunk = [s for s in range(nxt, hi + 1) if s not in acked]
                else:
                    chunk = list(range(nxt, hi + 1))
                nxt = hi + 1
                if chunk:
                    seqs += chunk
                    need -= len(chunk)
                    if chunk[0] > self._counts_hi:  # the usual case: first delivery
                        dl += [1] * len(chunk)
                    else:  # after a restore, counts survive for seqs that are new again
                        dl += [counts.get(s, 0) + 1 for s in chunk]
            self._next = nxt
        return seqs, dl

    def _pick_strict(self) -> tuple[list[int], list[int]]:
        """The lowest undone seq, if nothing is in flight or delayed (it would be lower)."""
        if self._inflight or self._delayed_due:
            return [], []
        ready = self._ready
        ready_set = self._ready_set
        while ready and ready[0] not in ready_set:
            heapq.heappop(ready)
        best = ready[0] if ready else None
        win = self._win
        if win:
            w = next(iter(win))  # insertion order is seq order
            if best is None or w < best:
                best = w
        nxt = max(self._next, self._floor + 1)
        acked = self._acked
        deferred = self._deferred
        while nxt <= self._last and (nxt in acked or nxt in deferred):
            nxt += 1
        self._next = nxt
        if nxt <= self._last and (best is None or nxt < best):
            best = nxt
        if best is None:
            return [], []
        if best == nxt:
            self._next = nxt + 1
        elif win and best in win:
            m = win.pop(best)
            if m != _PLAIN:
                self._meta[best] = m
                if m[1]:
                    self._win_prio -= 1
        else:
            heapq.heappop(ready)
            ready_set.remove(best)
        return [best], [self._counts.get(best, 0) + 1]

    def _fill_window(self) -> None:
        """Look up the next never-handed-out seqs until the window holds ORDER_WINDOW."""
        win = self._win
        room = ORDER_WINDOW - len(win)
        nxt = max(self._next, self._floor + 1)
        last = self._last
        if room <= 0 or nxt > last:
            return
        hi = min(last, nxt + room - 1)
        acked = self._acked
        deferred = self._deferred
        if deferred:
            chunk = [s for s in range(nxt, hi + 1) if s not in acked and s not in deferred]
        else:
            chunk = [s for s in range(nxt, hi + 1) if s not in acked] if acked else None
        if chunk is None:
            chunk = list(range(nxt, hi + 1))
        self._next = hi + 1
        if chunk:
            metas = self.lookup(chunk)
            win.update(zip(chunk, metas))
            self._win_prio += sum(1 for m in metas if m[1])

    def _pick_window(self, budget: int) -> tuple[list[int], list[int]]:
        """Up to ``budget`` of the ready and window seqs, highest priority first, then lowest
        seq; with key ordering only the head of each key that has nothing in flight."""
        self._fill_window()
        win = self._win
        meta = self._meta
        ready_set = self._ready_set
        cands: list[tuple[int, int]] = []
        if self._ordering == "key":
            blocked: set[str] = set()
            if meta:
                for s in self._inflight:
                    k = meta.get(s, _PLAIN)[0]
                    if k is not None:
                        blocked.add(k)
            delayed = self._delayed_due
            # handed out before (ready or delayed): all below the window seqs of their key
            for s in sorted(ready_set.union(delayed)) if ready_set or delayed else ():
                k, p = meta.get(s, _PLAIN)
                if k is not None:
                    if k in blocked:
                        continue
                    blocked.add(k)  # s is its key's head
                if s not in delayed:
                    cands.append((-p, s))
            for s, (k, p) in win.items():
                if k is not None:
                    if k in blocked:
                        continue
                    blocked.add(k)
                cands.append((-p, s))
        elif not self._win_prio and not any(meta.get(s, _PLAIN)[1] for s in ready_set):
            # no priorities waiting (the usual case after a restart): lowest seqs first, no sort
            cands = [(0, s) for s in islice(heapq.merge(sorted(ready_set), win), budget)]
        else:
            cands = [(-meta.get(s, _PLAIN)[1], s) for s in ready_set]
            cands += [(-p, s) for s, (_, p) in win.items()]
        chosen = heapq.nsmallest(budget, cands) if len(cands) > budget else sorted(cands)
        counts = self._counts
        seqs = []
        dl = []
        for _, s in chosen:
            m = win.pop(s, None)
            if m is None:
                ready_set.remove(s)  # its heap entry goes stale
            elif m != _PLAIN:
                meta[s] = m
                if m[1]:
                    self._win_prio -= 1
            seqs.append(s)
            dl.append(counts.get(s, 0) + 1)
        return seqs, dl


    def _take_back(self, a: _Actor, seqs: Iterable[int]) -> list[int]:
        """Remove from flight the seqs that are in flight to ``a``; ignore the others."""
        inflight = self._inflight
        taken = []
        for s in seqs:
            e = inflight.get(s)
            if e is not None and e[0] is a:
                del inflight[s]
                taken.append(s)
        a.held -= len(taken)
        return taken

    def _fail(self, s: int, why: str, now: int, delay_ms: int, dead: list[DeadLetter]) -> None:
        """A failed attempt of seq ``s`` (already out of flight): retry or give up."""
        n = self._counts.get(s, 0)
        if self._max_deliver and n >= self._max_deliver:
            dead.append(DeadLetter(s, n, f"max_deliver reached ({n} deliveries, last: {why})"))
            self._done(s)
        elif delay_ms > 0:
            due = now + delay_ms
            self._delayed_due[s] = due
            heapq.heappush(self._delayed, (due, s))
        else:
            self._make_ready(s)

    def _make_ready(self, s: int) -> None:
        if s not in self._ready_set:
            self._ready_set.add(s)
            heapq.heappush(self._ready, s)

    def _uncount(self, s: int) -> None:
        """The last hand-out of ``s`` did not happen as far as max_deliver is concerned."""
        n = self._counts.get(s, 0)
        if n > 1:
            self._counts[s] = n - 1
        else:
            self._counts.pop(s, None)
        self.dirty = True

    def _done(self, s: int) -> None:
        """``s`` (out of flight, not done) is finished: move the floor or remember it."""
        self._counts.pop(s, None)
        if self._meta:
            self._meta.pop(s, None)
        self.dirty = True
        if s == self._floor + 1:
            floor = s
            acked = self._acked
            while acked and floor + 1 in acked:
                floor += 1
                acked.remove(floor)
            self._floor = floor
        else:
            self._acked.add(s)

    def _maybe_compact(self) -> None:
        """Sweep stale heap entries once they clearly outnumber the live ones."""
        inflight = self._inflight
        if self._timer_refs > 2 * len(inflight) + _COMPACT_SLACK:
            by_deadline: dict[int, list[int]] = {}
            for s, (_, deadline) in inflight.items():
                by_deadline.setdefault(deadline, []).append(s)
            self._timers = [(d, next(self._timer_ids), tuple(g)) for d, g in by_deadline.items()]
            heapq.heapify(self._timers)
            self._timer_refs = len(inflight)
        if len(self._ready) > 2 * len(self._ready_set) + _COMPACT_SLACK:
            self._ready = list(self._ready_set)
            heapq.heapify(self._ready)
        if len(self._deferred_heap) > 2 * len(self._deferred) + _COMPACT_SLACK:
            self._deferred_heap = [(due, s) for s, due in self._deferred.items()]
            heapq.heapify(self._deferred_heap)
        if len(self._delayed) > 2 * len(self._delayed_due) + _COMPACT_SLACK:
            self._delayed = [(due, s) for s, due in self._delayed_due.items()]
            heapq.heapify(self._delayed)
