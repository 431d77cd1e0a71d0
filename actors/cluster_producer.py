"""ClusterProducer: a Producer over a cluster, each message routed to its partition's leader.

``Producer("zk://...")`` (or a hub list) makes one (actors/cluster.py says how clusters are
addressed). Per partition, messages reach the leader in the order they were published: while
some of a partition wait to be sent again, newer ones queue behind them.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
from typing import Any

import zmq

from ..router import protocol
from .cluster import (
    RETRY_CODES,
    Metadata,
    MetadataCache,
    choose_partition,
    cluster_address,
    make_source,
    unknown_topic,
)
from .connection import monotonic_ms
from .errors import ClosedError, HubError, HubUnavailable, InvalidMessage, ZmqMqError
from .producer import DEFAULT_MAX_BATCH, DEFAULT_MAX_PENDING, Producer, PublishFuture, _hold_option

log = logging.getLogger("zmq_mq.cluster")

# Metadata is read again at least this often while something waits, from a list of hubs (a
# leader that died silently is replaced after its session timeout: this is how soon we
# notice). From ZooKeeper a watch brings the change at once (MetadataCache).
REFRESH_MS = 500
# The longest a producer waits to connect to a leader it has not used yet (ZooKeeper may
# still list a hub that just died): then it reads the placement again.
INNER_CONNECT_S = 3.0
# A refused message is sent again no sooner than this.
RETRY_BACKOFF_MS = 100
# A message is given up this long before its publish() stops waiting, so the error says why.
DEADLINE_MARGIN_MS = 50


class _Pending:
    """One message of a ClusterProducer until its outer future is resolved."""

    __slots__ = ("number", "topic", "partition", "payload", "key", "headers", "msg_id",
                 "priority", "deliver_at", "future", "deadline", "inner", "endpoint", "error",
                 "hint", "resolved", "not_before", "sent_at")

    def __init__(self, number, topic, partition, payload, key, headers, msg_id, priority,
                 deliver_at, future, deadline) -> None:
        self.number = number  # submission order: resends keep it, per partition
        self.topic = topic
        self.partition = partition
        self.payload = payload
        self.key = key
        self.headers = headers
        self.msg_id = msg_id
        self.priority = priority
        self.deliver_at = deliver_at
        self.future = future
        self.deadline = deadline
        self.inner: PublishFuture | None = None  # the attempt that counts (older ones ignored)
        self.endpoint: str | None = None
        self.error: BaseException | None = None  # the last refusal, reported at the deadline
        self.hint: str | None = None  # the leader a not_leader named
        self.resolved = False
        self.not_before = 0  # after a refusal: not sent again before this (monotonic ms)
        self.sent_at = 0  # when the attempt that counts was sent (monotonic ms)


def resend_order(items: list[_Pending]) -> list[_Pending]:
    """Messages to send again, in the order they were published (per partition, the order the
    leader stores them in)."""
    return sorted(items, key=lambda i: i.number)


def moved(items: list[_Pending], meta: Metadata) -> list[_Pending]:
    """Messages in flight to a hub that no longer leads their partition (a new leader is known)."""
    return [i for i in items if meta.leader_endpoint(i.partition) not in (None, i.endpoint)]


class ClusterProducer(Producer):
    """A Producer over a cluster (``Producer("zk://...")`` makes one): same API, each message
    routed to its partition's leader and sent again to the new leader when that one changes.

    Per partition, messages reach the leader in the order they were published: while some of a
    partition wait to be sent again, newer ones queue behind them."""

    def __init__(self, endpoint: str | None = None, *, name: str | None = None,
                 timeout: float = 10.0, max_batch: int = DEFAULT_MAX_BATCH,
                 max_pending: int = DEFAULT_MAX_PENDING, context: zmq.Context | None = None,
                 curve: Any = None, clock: Any = None, source: Any = None) -> None:
        address = cluster_address(endpoint)
        self.endpoint = address or endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._name = name or "cluster-producer"
        self._max_pending = max_pending
        self._opts = dict(max_batch=max_batch, max_pending=max_pending, context=self._ctx,
                          curve=curve, clock=clock)
        self._cache = MetadataCache(source or make_source(address, timeout, context=self._ctx,
                                                          curve=curve))
        # what Producer.flush / _resolve_batch / _abandon / publish use
        self._init_accounting()
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        # routing: _route_lock orders sends (publishers and the maintenance thread); _lock
        # guards the bookkeeping the inner producers' I/O threads touch too
        self._route_lock = threading.RLock()
        self._lock = threading.Lock()
        self._inner: dict[str, Producer] = {}
        self._pending: set[_Pending] = set()
        self._unresolved: collections.Counter = collections.Counter()  # partition -> messages
        self._routed: dict[str, str] = {}  # partition -> endpoint it was last sent to
        self._retry: list[_Pending] = []
        # each inner attempt's future -> its message, until the inner producer resolves it (a
        # batch at a time, through its _on_resolved hook: no callback per message)
        self._attempts: dict[PublishFuture, _Pending] = {}
        self._turn = itertools.count()
        self._kick = threading.Event()
        # a placement change ZooKeeper reports wakes the maintenance thread at once
        self._cache.on_change(self._kick.set)
        self.resent = 0  # messages sent again to another (or the same) leader
        # automatic msg_ids: one random prefix per producer and a counter (unique: 128 random
        # bits as uuid4 has, but one read of the kernel's random source per producer, not per
        # message: os.urandom cost about a third of publish_async's time)
        self._id_prefix = uuid.uuid4().hex + "-"
        self._ids = itertools.count()

    # --- lifecycle ---

    def connect(self) -> None:
        """Read the cluster's metadata; raises ClusterUnavailable if it cannot."""
        if self._closed:
            raise ClosedError("producer is closed")
        if self._thread is not None:
            return
        self._cache.refresh(force=True)
        self._thread = threading.Thread(target=self._maintain, name="zmq-mq-cluster-producer",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        try:
            if self._thread is not None:
                self.flush(self.timeout if timeout is None else timeout, raise_errors=False)
        except HubUnavailable:
            pass
        finally:
            self._closing = True
            self._kick.set()
            if self._thread is not None:
                self._thread.join()
            with self._lock:
                inner, self._inner = list(self._inner.values()), {}
                left = list(self._pending)
            for p in inner:
                try:
                    p.close(0)
                except HubUnavailable:
                    pass  # its messages were resolved (or reported) through this producer
            for item in left:
                self._finish(item, error=HubUnavailable("producer closed before confirm"))
            self._cache.source.close()
            self._closed = True

    @property
    def hub_instance(self) -> str | None:
        return None

    # --- publishing ---

    def _submit(self, topic, payload, key, headers, msg_id, priority, delay, deliver_at,
                timeout) -> PublishFuture:
        if self._thread is None:
            self.connect()
        if self._closing or self._closed:
            raise ClosedError("producer is closed")
        problem = protocol.check_topic(topic)
        if problem:
            raise InvalidMessage(problem)
        if msg_id is None:
            # so that a resend is stored once (the hub's dedup window)
            msg_id = f"{self._id_prefix}{next(self._ids):x}"
        else:
            problem = protocol.check_msg_id(msg_id)
            if problem:
                raise InvalidMessage(problem)
        hold = _hold_option(delay, deliver_at)
        # a delay becomes a fixed time now: a resend must not push the message further out
        at = None if hold is None else (hold[1] / 1000 if hold[0] == "deliver_at_ms"
                                        else time.time() + hold[1] / 1000)
        partitions = self._cache.get().partitions_of(topic)
        if not partitions:
            partitions = self._cache.refresh().partitions_of(topic)
            if not partitions:
                raise unknown_topic(topic)
        partition = choose_partition(partitions, key, next(self._turn))
        if self._last_submitted - self._resolved >= self._max_pending:
            with self._cond:  # room first, as Producer: bounded memory while a leader is away
                if not self._cond.wait_for(
                    lambda: self._last_submitted - self._resolved < self._max_pending, timeout
                ):
                    raise HubUnavailable(
                        f"{timeout:g} s without room: the cluster is not confirming")
        with self._route_lock:
            with self._number_lock:
                self._last_submitted = number = next(self._submitted)
            future = PublishFuture(self)
            # resolved a little before publish() stops waiting, so that it raises the reason
            deadline = monotonic_ms() + max(0, int(timeout * 1000) - DEADLINE_MARGIN_MS)
            item = _Pending(number, topic, partition, bytes(payload), key, headers, msg_id,
                            priority, at, future, deadline)
            with self._lock:
                self._pending.add(item)
                behind = self._unresolved[partition] and (
                    self._routed.get(partition) != self._cache.meta.leader_endpoint(partition)
                    or (self._retry and any(i.partition == partition for i in self._retry)))
                self._unresolved[partition] += 1
            try:
                if behind or not self._dispatch(item, first=True):
                    self._want_retry(item)
            except BaseException:
                self._finish(item, error=None, cancel=True)
                raise
        return future

    def _dispatch(self, item: _Pending, first: bool = False) -> bool:
        """Send ``item`` to its partition's leader (under _route_lock); False if none is known."""
        meta = self._cache.get()
        endpoint = meta.leader_endpoint(item.partition)
        if item.hint and endpoint == item.endpoint:  # ZooKeeper lags the refusing hub's word
            endpoint = item.hint
        item.hint = None
        if endpoint is None:
            return False
        with self._lock:
            if self._closing:
                return True
            producer = self._inner.get(endpoint)
        if producer is None:
            producer = Producer(endpoint, name=f"{self._name}@{endpoint}", timeout=self.timeout,
                                **self._opts)
            producer._on_resolved = self._inner_resolved
            try:  # a leader ZooKeeper still lists may be dead: do not wait the whole timeout
                producer._connect(min(self.timeout, INNER_CONNECT_S))
            except HubUnavailable as exc:
                item.error = exc
                self._cache.wanted = True
                return False
            with self._lock:
                self._inner[endpoint] = producer
        with self._lock:
            self._routed[item.partition] = endpoint
        if not first:
            self.resent += 1
        item.endpoint = endpoint
        item.sent_at = monotonic_ms()
        item.inner = inner = producer.publish_async(
            item.partition, item.payload, key=item.key, headers=item.headers,
            msg_id=item.msg_id, priority=item.priority, deliver_at=item.deliver_at)
        self._attempts[inner] = item
        # resolved before it was registered: the hook did not find it, so settle it here (the
        # pop decides who does, the hook or this thread)
        if inner._done and self._attempts.pop(inner, None) is not None:
            self._inner_done(item, inner)
        return True

    def _inner_resolved(self, futures: list[PublishFuture]) -> None:
        """An inner producer resolved a batch (its I/O thread): the confirmed messages are
        settled together (one lock, one outer resolution), the others one by one."""
        confirmed, seqs = [], []
        pop = self._attempts.pop
        for inner in futures:
            item = pop(inner, None)
            if item is None or item.resolved or inner is not item.inner:
                continue  # not registered yet (see _dispatch), or an earlier attempt
            if inner._error is None:
                confirmed.append(item)
                seqs.append(inner._result)
            else:
                self._inner_done(item, inner)
        if confirmed:
            self._finish_confirmed(confirmed, seqs)

    def _finish_confirmed(self, items: list[_Pending], seqs: list[int]) -> None:
        futures, results = [], []
        with self._lock:
            unresolved = self._unresolved
            for item, seq in zip(items, seqs):
                if item.resolved:
                    continue
                item.resolved = True
                self._pending.discard(item)
                unresolved[item.partition] -= 1
                if not unresolved[item.partition]:
                    del unresolved[item.partition]
                futures.append(item.future)
                results.append(seq)
        if futures:
            self._resolve_batch(futures, results)

    def _inner_done(self, item: _Pending, inner: PublishFuture) -> None:
        """An attempt ended (called from an inner producer's I/O thread)."""
        if item.resolved or inner is not item.inner:
            return  # an earlier attempt, or already resolved by another one
        error = inner._error
        if error is None:
            self._finish(item, seq=inner._result)
            return
        retry = isinstance(error, HubUnavailable) or (
            isinstance(error, HubError) and error.code in RETRY_CODES)
        if not retry:
            self._finish(item, error=error)
            return
        item.error = error
        if isinstance(error, HubError):
            item.hint = error.extra.get("leader_endpoint")
        self._want_retry(item)

    def _want_retry(self, item: _Pending) -> None:
        with self._lock:
            item.inner = None
            item.not_before = monotonic_ms() + RETRY_BACKOFF_MS  # no storm of refusals
            self._retry.append(item)
        self._cache.wanted = True
        self._kick.set()

    def _finish(self, item: _Pending, seq: int | None = None, error: BaseException | None = None,
                cancel: bool = False) -> None:
        with self._lock:
            if item.resolved:
                return
            item.resolved = True
            self._pending.discard(item)
            self._unresolved[item.partition] -= 1
            if not self._unresolved[item.partition]:
                del self._unresolved[item.partition]
        if cancel:  # publish_async raised: the caller knows, nobody waits for it
            with self._cond:
                self._resolved += 1
                self._cond.notify_all()
            return
        if error is None:
            self._resolve_batch([item.future], [seq])
        else:
            self._resolve_batch([item.future], error=error)

    # --- the maintenance thread ---

    def _maintain(self) -> None:
        wait_ms = REFRESH_MS
        while not self._closing:
            self._kick.wait(wait_ms / 1000)
            self._kick.clear()
            if self._closing:
                return
            try:
                self._maintain_once()
            except Exception:
                log.exception("cluster producer maintenance")
            with self._lock:  # wake for the next retry or deadline, or the next look
                times = [min(i.not_before, i.deadline) for i in self._retry]
            wait_ms = max(5, min([REFRESH_MS, *(t - monotonic_ms() for t in times)]))

    def _maintain_once(self) -> None:
        now = monotonic_ms()
        with self._lock:
            waiting = bool(self._pending)
            # unconfirmed for a while: its leader may be gone (a refusal sets `wanted` itself)
            slow = any(i.inner is not None and now - i.sent_at >= REFRESH_MS
                       for i in self._pending)
        changed = self._cache.changed  # ZooKeeper's watch: read now, even with nothing sent
        if not waiting and not changed:
            return
        fresh = None
        if (changed or slow or self._cache.wanted or self._retry) and self._cache.due(REFRESH_MS):
            try:
                fresh = self._cache.fetch()  # outside the route lock: it may be slow
            except ZmqMqError as exc:
                log.warning("%s", exc)
        with self._route_lock:
            if fresh is not None:
                self._cache.install(fresh)
            now = monotonic_ms()
            with self._lock:
                retry, self._retry = self._retry, []
                in_flight = [i for i in self._pending if i.inner is not None and not i.resolved]
            meta = self._cache.meta
            if meta is not None:  # the leader moved under messages in flight: send them again
                retry.extend(moved(in_flight, meta))
            again = []
            blocked: set[str] = set()  # partitions with an earlier message still waiting
            for item in resend_order(retry):
                if item.resolved:
                    continue
                if now < item.not_before and now < item.deadline:
                    again.append(item)
                    blocked.add(item.partition)
                    continue
                if now >= item.deadline:
                    error = item.error
                    if not isinstance(error, HubError):  # the hub's refusal says it best
                        error = HubUnavailable(
                            f"no confirm for partition {item.partition} within the timeout"
                            + (f" ({error})" if error else ""))
                    self._finish(item, error=error)
                    continue
                try:
                    sent = item.partition not in blocked and self._dispatch(item)
                except ZmqMqError as exc:
                    item.error, sent = exc, False
                if not sent:  # no leader now, or behind one that waits: look again shortly
                    item.not_before = max(item.not_before, now + RETRY_BACKOFF_MS)
                    again.append(item)
                    blocked.add(item.partition)
            if again:
                with self._lock:
                    self._retry = again + self._retry
                self._cache.wanted = True
        # in flight long past its deadline on a silent leader: give up on it
        for item in in_flight:
            if not item.resolved and now >= item.deadline + int(self.timeout * 1000):
                self._finish(item, error=HubUnavailable(
                    f"no confirm from {item.endpoint} for partition {item.partition}"))
        self._close_unused()

    def _close_unused(self) -> None:
        """Stop the producers of hubs that lead nothing now and hold nothing of ours in flight
        (a dead leader's would try to reconnect forever)."""
        meta = self._cache.meta
        if meta is None:
            return
        leading = set(meta.leader_map().values())
        with self._lock:
            busy = {i.endpoint for i in self._pending if i.inner is not None and not i.resolved}
            unused = [e for e in self._inner if e not in leading and e not in busy]
            producers = [self._inner.pop(e) for e in unused]
        for producer in producers:
            try:
                producer.close(0)
            except HubUnavailable:
                pass
