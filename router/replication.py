"""Cluster replication, the parts that are not the hub loop: the follower's fetcher thread,
the leader's per-partition bookkeeping, and the confirm gate.

- :class:`Fetcher`: a thread of the follower hub owning one DEALER per leader endpoint. The
  loop hands it REPLICATE requests (an inproc PAIR socket); it hands the REPLICA answers back
  through the hub's inbox and ``wake()``. It never touches the store: the loop commits.
- :class:`Leadership`: what a leader knows of a partition it leads at an epoch: the in-sync
  set, each follower's durable position (its fetch position: a REPLICATE from ``from_seq``
  says "I hold everything below"), when it was last caught up, and the fetches parked until a
  commit brings something new (long poll).
- :class:`ConfirmGate`: CONFIRMs of a leader held until every in-sync follower holds what they
  confirm (and the in-sync set is at least ``min_insync``); turned into ``not_leader`` errors
  if the hub is fenced or deposed first. Kept apart from the loop so that a change in how the
  hub releases replies after a commit has one place to reconcile with.

docs/CLUSTER.md describes the protocol (REPLICATE / REPLICA) and the rules.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import protocol
from .protocol import Command

__all__ = ["ConfirmGate", "Fetcher", "Following", "IsrWriter", "Leadership", "Verdict",
           "end_of_epoch"]

log = logging.getLogger("zmq_mq.replication")


class Fetcher:
    """The follower's REPLICATE sender and REPLICA receiver (its own thread and sockets)."""

    def __init__(self, ctx: zmq.Context, inbox: queue.SimpleQueue, wake: Callable[[], None],
                 name: str) -> None:
        self._ctx = ctx
        self._inbox = inbox
        self._wake = wake
        self._addr = f"inproc://zmq-mq-fetcher-{name}-{id(self)}"
        self._thread: threading.Thread | None = None
        self._ctrl: zmq.Socket | None = None  # the loop's end (used by the loop thread only)
        self._ready = threading.Event()

    def start(self) -> "Fetcher":
        self._thread = threading.Thread(target=self._run, daemon=True, name="zmq-mq-fetcher")
        self._thread.start()
        self._ready.wait(5)
        ctrl = self._ctrl = self._ctx.socket(zmq.PAIR)
        ctrl.setsockopt(zmq.LINGER, 0)
        ctrl.connect(self._addr)
        return self

    def fetch(self, endpoint: str, body: dict) -> None:
        """Send a REPLICATE to the hub at ``endpoint`` (loop thread)."""
        if self._ctrl is not None:
            self._ctrl.send_multipart([endpoint.encode(), protocol.pack(body)])

    def stop(self) -> None:
        if self._ctrl is not None:
            try:
                self._ctrl.send_multipart([b""])
            except zmq.ZMQError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        if self._ctrl is not None:
            self._ctrl.close(linger=0)
            self._ctrl = None

    def _run(self) -> None:
        ctx = self._ctx
        ctrl = ctx.socket(zmq.PAIR)
        ctrl.setsockopt(zmq.LINGER, 0)
        ctrl.bind(self._addr)
        self._ready.set()
        dealers: dict[str, zmq.Socket] = {}
        by_socket: dict[zmq.Socket, str] = {}
        poller = zmq.Poller()
        poller.register(ctrl, zmq.POLLIN)
        try:
            while True:
                for sock, _ in poller.poll(1000):
                    if sock is ctrl:
                        frames = ctrl.recv_multipart()
                        if frames == [b""]:
                            return
                        endpoint = frames[0].decode()
                        dealer = dealers.get(endpoint)
                        if dealer is None:
                            dealer = dealers[endpoint] = ctx.socket(zmq.DEALER)
                            dealer.setsockopt(zmq.LINGER, 0)
                            dealer.connect(endpoint)
                            by_socket[dealer] = endpoint
                            poller.register(dealer, zmq.POLLIN)
                        try:
                            dealer.send_multipart(
                                [protocol.SIGNATURE, Command.REPLICATE, frames[1]], zmq.NOBLOCK)
                        except zmq.Again:  # leader unreachable: the loop asks again later
                            pass
                    else:
                        frames = sock.recv_multipart()
                        try:
                            command, body = protocol.decode(frames, protocol.HUB_COMMANDS)
                        except protocol.DecodeError as exc:
                            log.warning("bad answer from %s: %s", by_socket[sock], exc.message)
                            continue
                        self._inbox.put(("replica", command, body))
                        self._wake()
        finally:
            for dealer in dealers.values():
                dealer.close(linger=0)
            ctrl.close(linger=0)


class IsrWriter:
    """The leader's in-sync set writes (``member.update_isr``: ZooKeeper round trips, retried
    while ZooKeeper is away) on a thread of their own, so the loop never waits for them; each
    result goes back through the hub's inbox as ``("isr", partition, epoch, state or
    exception)``."""

    def __init__(self, member: Any, inbox: queue.SimpleQueue, wake: Callable[[], None]) -> None:
        self._member = member
        self._inbox = inbox
        self._wake = wake
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="zmq-mq-isr")
        self._thread.start()

    def submit(self, partition: str, epoch: int, isr: tuple[str, ...]) -> None:
        self._jobs.put((partition, epoch, isr))

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            partition, epoch, isr = job
            try:
                result: Any = self._member.update_isr(partition, epoch, isr)
            except Exception as exc:  # handed to the loop, which decides
                result = exc
            self._inbox.put(("isr", partition, epoch, result))
            self._wake()


@dataclass
class Following:
    """A partition this hub follows: whom, at which epoch, and the fetch in flight."""

    leader: str
    epoch: int
    last_epoch: int = -1  # the latest leader epoch of this hub's copy (divergence check)
    inflight_at: int | None = None  # monotonic ms the REPLICATE in flight was sent
    retry_at: int = 0  # after an error: not before this
    # the next entry of this leader's state stream to apply; 0: none applied in this leadership
    # (the follower asks for a snapshot of the partition's dead letters first)
    events_next: int = 0
    # ask for every subscription state, not only those changed since the leader's last answer:
    # until an answer is applied (a new following, or one lost, refused or not applied)
    full_subs: bool = True


@dataclass
class Leadership:
    """A partition this hub leads at ``epoch``."""

    epoch: int
    isr: tuple[str, ...]
    replicas: tuple[str, ...]
    min_insync: int
    since: int  # monotonic ms leadership began (followers get lag_ms from it to catch up)
    pos: dict[str, int] = field(default_factory=dict)  # follower -> seq it holds durably
    seen: dict[str, int] = field(default_factory=dict)  # follower -> its last fetch (ms)
    caught_up: dict[str, int] = field(default_factory=dict)  # follower -> last at the end
    parked: list[tuple[bytes, str, int, int, int]] = field(default_factory=list)
    # (identity, node, from_seq, max, deadline ms) of fetches waiting for new records
    next_isr_try: int = 0
    isr_pending: bool = False  # an in-sync set write is on its way (IsrWriter)
    history: list[list[int]] = field(default_factory=list)  # [[epoch, first seq], ...]
    sent_subs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # follower -> the subscription snapshots last sent to it (only changes are sent again,
    # and all of them every FULL_SUBS_MS, in case an answer was lost)
    full_subs_at: dict[str, int] = field(default_factory=dict)
    # The state stream (docs/CLUSTER.md): changes of the partition's state that are not
    # records of its log nor its subscription snapshots, numbered from 1 in this leadership
    # and shipped in order in REPLICA "events" (dead letters written, dead letters removed)
    events: list[tuple[int, list]] = field(default_factory=list)
    next_event: int = 1
    events_acked: dict[str, int] = field(default_factory=dict)  # follower -> next it wants
    holes_sent_at: dict[str, int] = field(default_factory=dict)  # follower -> ms (rate limit)
    # follower -> (first_seq, count, events_from) of its copy, as its last REPLICATE said
    reported: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def add_event(self, event: list) -> None:
        self.events.append((self.next_event, event))
        self.next_event += 1
        if len(self.events) > MAX_EVENTS:  # a replica away this long misses the oldest
            del self.events[: len(self.events) - MAX_EVENTS]

    def events_from(self, node: str, first: int, me: str, limit: int = 1000) -> list[list]:
        """The entries from ``first`` on for ``node`` (which holds those before: dropped here
        once every other replica holds them)."""
        self.events_acked[node] = first
        if self.events:
            floor = min((self.events_acked.get(f, 1) for f in self.replicas if f != me),
                        default=self.next_event)
            if self.events[0][0] < floor:  # numbers are consecutive: index by difference
                del self.events[: floor - self.events[0][0]]
        if not self.events:
            return []
        start = max(0, first - self.events[0][0])
        return [[n, ev] for n, ev in self.events[start : start + limit]]

    def needs_snapshot(self, events_from: int) -> bool:
        """Whether a follower asking for entries from ``events_from`` lacks some this
        leadership no longer keeps (or any: 0, a follower new to this leadership): it gets a
        snapshot of the state the entries would have built instead."""
        first_kept = self.events[0][0] if self.events else self.next_event
        return events_from < first_kept

    def committed(self, me: str) -> int | None:
        """The highest seq every in-sync follower holds (None: no in-sync follower)."""
        held = [self.pos.get(f, 0) for f in self.isr if f != me]
        return min(held) if held else None


# State-stream entries a leader keeps for replicas that have not fetched them.
MAX_EVENTS = 100_000


def end_of_epoch(history: list[list[int]], epoch: int, last_seq: int) -> int:
    """The last seq of the leader's log written at ``epoch`` or before (Kafka's
    OffsetsForLeaderEpoch): a follower whose last epoch is ``epoch`` agrees with the leader up
    to there and must drop what it holds beyond."""
    for e, start in history:
        if e > epoch:
            return start - 1
    return last_seq


class Verdict:
    OK = "ok"
    WAIT = "wait"
    FAIL = "fail"


class ConfirmGate:
    """CONFIRMs held until replicated. ``hold(need, entries)``: ``need`` is ``{partition:
    (epoch, seq)}``, ``entries`` the outbox entries (identity, CONFIRM, body) it gates.
    ``release(check)`` calls ``check(need)`` -> Verdict for each held group and returns
    ``(to_send, failed)``: the entries now confirmed, and those whose leadership ended."""

    def __init__(self) -> None:
        self.held: list[tuple[dict[str, tuple[int, int]], list[tuple[bytes, bytes, Any]],
                              list[int]]] = []
        # receipt times (monotonic ns) of the batches whose CONFIRMs the last release let out:
        # the hub's publish latency is measured when the client gets its confirm, not at commit
        self.released: list[int] = []

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, need: dict[str, tuple[int, int]], entries: list,
             received: list[int] | tuple = ()) -> None:
        if entries:
            self.held.append((need, entries, list(received)))

    def release(self, check: Callable[[dict], str]) -> tuple[list, list]:
        self.released = []
        if not self.held:
            return [], []
        send, failed, keep = [], [], []
        for need, entries, received in self.held:
            verdict = check(need)
            if verdict == Verdict.OK:
                send.extend(entries)
                self.released.extend(received)
            elif verdict == Verdict.FAIL:
                failed.extend(entries)
            else:
                keep.append((need, entries, received))
        self.held = keep
        return send, failed
