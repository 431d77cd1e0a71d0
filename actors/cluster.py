"""Cluster mode, the client side: route each partition to its leader hub.

A client given a cluster address (``zk://HOST:PORT[,...]/CHROOT``, or a comma-separated list
of hub endpoints to bootstrap from with METADATA) gets the classes of this module instead of
the single-hub ones: ``Producer(address)`` is a :class:`ClusterProducer`, ``Consumer(address)``
a :class:`ClusterConsumer`, ``Admin(address)`` a :class:`ClusterAdmin`, and an ``Actor`` runs
on a :class:`ClusterSession`. A plain ``tcp://`` endpoint never comes here.

A cluster topic NAME with N partitions is stored as the topics ``NAME.0`` .. ``NAME.{N-1}``,
each led by one hub (docs/CLUSTER.md). The pieces:

- :class:`Metadata` (pure): hubs, topics and partition leaders, from a METADATA reply or from
  ZooKeeper (``ClusterClient.status()``, the same shape); :func:`choose_partition`.
- :class:`ZooKeeperSource` / :class:`BootstrapSource`: where metadata is read from.
- :class:`ClusterProducer`: one plain :class:`Producer` per leader hub; every message gets a
  ``msg_id`` (so a resend is stored once); a ``not_leader`` / ``unavailable`` /
  ``not_enough_replicas`` refusal, a leader change or a lost hub sends the message again to
  the partition's (new) leader, until the publish timeout.
- :class:`ClusterSession`: one plain :class:`Session` per leader hub, one attachment per
  partition; re-attached to the new leader when the leader changes or refuses.

kazoo (the ``cluster`` extra) is imported only when a ``zk://`` address is used.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..router import protocol
from ..router.endpoint import ZK_SCHEME, check_hub_address, is_cluster_address, split_hub_list
from ..router.protocol import Command, DecodeError
from ..router.wire import recv_frames, send_frames
from .admin import Admin
from .connection import ENV_HUB, Connection, monotonic_ms
from .consumer import Consumer
from .errors import ClosedError, HubError, HubUnavailable, InvalidMessage, ZmqMqError
from .message import Message
from .producer import DEFAULT_MAX_BATCH, DEFAULT_MAX_PENDING, Producer, PublishFuture, _hold_option
from .session import DEFAULT_CREDIT, MIN_RECONNECT_MS, Session, SubscriptionSpec

log = logging.getLogger("zmq_mq.cluster")

CLUSTER_EXTRA_HINT = "pip install 'zmq-mq[cluster]'"
METADATA = b"METADATA"  # the cluster's metadata request and reply (docs/PROTOCOL.md)
# Refusals after which a message (or an attachment) goes to the partition's leader again.
RETRY_CODES = frozenset({"not_leader", "unavailable", "not_enough_replicas"})
# Metadata is read again at most this often (a storm of refusals costs one read) ...
MIN_REFRESH_MS = 100
# ... and at least this often while something waits (a leader that died silently is replaced
# in ZooKeeper after its session timeout: this is how soon the client notices).
REFRESH_MS = 500
# The longest a producer waits to connect to a leader it has not used yet (ZooKeeper may
# still list a hub that just died): then it reads the placement again.
INNER_CONNECT_S = 3.0
# A refused message is sent again no sooner than this.
RETRY_BACKOFF_MS = 100
# A message is given up this long before its publish() stops waiting, so the error says why.
DEADLINE_MARGIN_MS = 50
# Consumers and actors look at the placement this often even when all is well.
IDLE_REFRESH_MS = 2000
# The longest a cluster session's poll waits (its sockets change as leaders move).
POLL_CAP_MS = 100


class ClusterUnavailable(HubUnavailable):
    """The cluster's metadata could not be read (ZooKeeper or every bootstrap hub silent)."""


def cluster_address(endpoint: str | None) -> str | None:
    """The cluster address a client was given (the argument, else $ZMQ_MQ_HUB), or None when
    it was given a plain endpoint (the single-hub path)."""
    address = endpoint if endpoint else os.environ.get(ENV_HUB)
    if is_cluster_address(address):
        return check_hub_address(address, "hub address" if endpoint else f"${ENV_HUB}")
    return None


# --- metadata (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """What the client routes by: live hubs' endpoints, topics' partition counts, partition
    leaders. ``Metadata.parse`` reads a METADATA reply or ``ClusterClient.status()``."""

    hubs: dict[str, str] = field(default_factory=dict)  # node -> ROUTER endpoint
    topics: dict[str, int] = field(default_factory=dict)  # cluster topic -> partitions
    leaders: dict[str, str | None] = field(default_factory=dict)  # "NAME.i" -> node or None
    epochs: dict[str, int] = field(default_factory=dict)  # "NAME.i" -> leader epoch
    cluster: bool = True

    @classmethod
    def parse(cls, data: Any) -> "Metadata":
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a map, got {type(data).__name__}")
        hubs = {str(n): h.get("endpoint") for n, h in (data.get("hubs") or {}).items()
                if isinstance(h, dict) and isinstance(h.get("endpoint"), str)}
        topics = {str(t): int(spec.get("partitions", 0)) for t, spec in (data.get("topics") or {}).items()
                  if isinstance(spec, dict)}
        leaders, epochs = {}, {}
        for name, state in (data.get("partitions") or {}).items():
            if isinstance(state, dict):
                leaders[str(name)] = state.get("leader")
                epochs[str(name)] = int(state.get("epoch") or 0)
        return cls(hubs, topics, leaders, epochs, bool(data.get("cluster", True)))

    def partitions_of(self, topic: str) -> list[str]:
        """The partitions a topic is stored as: ``NAME.0..`` for a cluster topic, the name
        itself for one partition named directly; [] if the cluster has neither."""
        n = self.topics.get(topic)
        if n:
            return protocol.partition_topics(topic, n)
        if topic in self.leaders:
            return [topic]
        return []

    def leader_endpoint(self, partition: str) -> str | None:
        """The endpoint of the live hub leading ``partition``, or None (no leader, or it left)."""
        node = self.leaders.get(partition)
        return self.hubs.get(node) if node is not None else None

    def leader_map(self) -> dict[str, str | None]:
        """Every partition's leader endpoint (None: unavailable now)."""
        return {p: self.leader_endpoint(p) for p in self.leaders}


def choose_partition(partitions: list[str], key: str | None, turn: int) -> str:
    """The partition of a message: by key as the single hub does (crc32 mod N), else in turn."""
    if key is not None:
        return partitions[protocol.partition_of(key, len(partitions))]
    return partitions[turn % len(partitions)]


def unknown_topic(topic: str) -> InvalidMessage:
    return InvalidMessage(
        f"topic {topic!r} does not exist in the cluster: create it with "
        f"`zmq-mq topic create {topic} --partitions N --replicas R --hub zk://...`"
    )


# --- where metadata comes from -----------------------------------------------------------------


def _cluster_client_class():
    try:
        from ..router.cluster.coordinator import ClusterClient
    except ImportError:
        raise ZmqMqError(f"a zk:// address needs kazoo: {CLUSTER_EXTRA_HINT}") from None
    return ClusterClient


class ZooKeeperSource:
    """Reads the cluster's state from ZooKeeper (``ClusterClient``), connecting on first use."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                from ..router.cluster.errors import ClusterTimeout

                client = _cluster_client_class()(self.address)
                try:
                    self._client = client.start(self.timeout)
                except ClusterTimeout as exc:
                    raise ClusterUnavailable(str(exc)) from None
            return self._client

    def fetch(self) -> Metadata:
        client = self.client()  # ClusterUnavailable, or ZmqMqError without kazoo
        try:
            return Metadata.parse(client.status())
        except Exception as exc:  # kazoo's errors: connection loss, session expiry
            raise ClusterUnavailable(f"cannot read the cluster from ZooKeeper at "
                                     f"{self.address}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class BootstrapSource:
    """Asks the hubs of a list (then every live hub it learnt of) for METADATA, in turn."""

    def __init__(self, endpoints: list[str], timeout: float, *, context: zmq.Context | None = None,
                 curve: Any = None) -> None:
        self.seeds = list(endpoints)
        self.known: list[str] = list(endpoints)
        self.timeout = timeout
        self._ctx = context
        self._curve = curve

    def fetch(self) -> Metadata:
        problems = []
        per_hub = max(0.2, self.timeout / max(1, len(self.known)))
        for endpoint in list(self.known):
            try:
                data = metadata_request(endpoint, per_hub, context=self._ctx, curve=self._curve)
            except (HubUnavailable, HubError) as exc:
                problems.append(f"{endpoint}: {exc}")
                continue
            meta = Metadata.parse(data)
            if not meta.cluster:
                raise ZmqMqError(f"the hub at {endpoint} is not in a cluster (started without "
                                 f"--cluster): give its endpoint alone")
            self.known = list(dict.fromkeys([endpoint, *meta.hubs.values(), *self.seeds]))
            return meta
        raise ClusterUnavailable("no hub of the cluster answered METADATA: " + "; ".join(problems))

    def close(self) -> None:
        pass


def metadata_request(endpoint: str, timeout: float, *, context: zmq.Context | None = None,
                     curve: Any = None) -> dict:
    """One METADATA round trip to the hub at ``endpoint``: the reply's map."""
    conn = Connection(endpoint, name="metadata", context=context, curve=curve)
    try:
        conn.open(timeout)
        send_frames(conn.socket, protocol.encode(METADATA, {}))
        deadline = monotonic_ms() + int(timeout * 1000)
        while True:
            left = deadline - monotonic_ms()
            if left <= 0 or not conn.socket.poll(left, zmq.POLLIN):
                raise HubUnavailable(f"no answer to METADATA within {timeout:g} s")
            try:
                command, body = protocol.decode(recv_frames(conn.socket),
                                                protocol.HUB_COMMANDS | {METADATA})
            except DecodeError:
                continue
            if command == METADATA:
                return body
            if command == Command.ERROR:
                err = protocol.parse_error(body)
                if err["code"] == "unknown_command":
                    return {"cluster": False}
                raise HubError.from_body(err)
    finally:
        conn.close()


def make_source(address: str, timeout: float, *, context: zmq.Context | None = None,
                curve: Any = None):
    if address.startswith(ZK_SCHEME):
        return ZooKeeperSource(address, timeout)  # kazoo is looked for when first read
    return BootstrapSource(split_hub_list(address), timeout, context=context, curve=curve)


class MetadataCache:
    """The latest metadata and when to read it again (at most every MIN_REFRESH_MS)."""

    def __init__(self, source) -> None:
        self.source = source
        self.meta: Metadata | None = None
        self.read_at = 0
        self.wanted = False  # something was refused or lost: read again soon
        self.lock = threading.Lock()

    def get(self) -> Metadata:
        if self.meta is None:
            self.refresh(force=True)
        return self.meta  # type: ignore[return-value]

    def refresh(self, force: bool = False) -> Metadata:
        with self.lock:
            now = monotonic_ms()
            if self.meta is None or force or now - self.read_at >= MIN_REFRESH_MS:
                self.meta = self.source.fetch()
                self.read_at = monotonic_ms()
                self.wanted = False
            return self.meta

    def install(self, meta: Metadata) -> None:
        """Take metadata read elsewhere (outside a lock that must not wait for ZooKeeper)."""
        with self.lock:
            self.meta, self.read_at, self.wanted = meta, monotonic_ms(), False

    def due(self, every_ms: int) -> bool:
        age = monotonic_ms() - self.read_at
        return age >= (MIN_REFRESH_MS if self.wanted else every_ms)


# --- producing ---------------------------------------------------------------------------------


class _Pending:
    """One message of a ClusterProducer until its outer future is resolved."""

    __slots__ = ("number", "topic", "partition", "payload", "key", "headers", "msg_id",
                 "priority", "deliver_at", "future", "deadline", "inner", "endpoint", "error",
                 "hint", "resolved", "not_before")

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
        self._cond = threading.Condition()
        self._submitted = itertools.count(1)
        self._number_lock = threading.Lock()
        self._last_submitted = 0
        self._resolved = 0
        self._abandoned = 0
        self._first_error: BaseException | None = None
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
        self._turn = itertools.count()
        self._kick = threading.Event()
        self.resent = 0  # messages sent again to another (or the same) leader

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
            msg_id = uuid.uuid4().hex  # so that a resend is stored once (the hub's dedup window)
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
                    raise HubUnavailable(f"{timeout:g} s without room: the cluster is not confirming")
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
                    any(i.partition == partition for i in self._retry)
                    or self._routed.get(partition) != self._cache.get().leader_endpoint(partition))
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
        inner = producer.publish_async(item.partition, item.payload, key=item.key,
                                       headers=item.headers, msg_id=item.msg_id,
                                       priority=item.priority, deliver_at=item.deliver_at)
        item.inner = inner
        inner.add_done_callback(lambda f, item=item: self._inner_done(item, f))
        return True

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
        with self._lock:
            waiting = bool(self._pending)
        if not waiting:
            return
        fresh = None
        if self._cache.due(REFRESH_MS):
            try:
                fresh = self._cache.source.fetch()  # outside the route lock: it may be slow
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
                    self._finish(item, error=error if isinstance(error, HubError) else HubUnavailable(
                        f"no confirm for partition {item.partition} within the timeout"
                        + (f" ({error})" if error else "")))
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


# --- consuming ---------------------------------------------------------------------------------


class _Forward:
    """The settler of inner sessions' messages: whoever settles for the cluster session now
    (the ClusterSession itself, or the Actor that took its place)."""

    __slots__ = ("session",)

    def __init__(self, session: "ClusterSession") -> None:
        self.session = session

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        self.session.settler.settle(msg, kind, arg)


class _HubSession(Session):
    """A plain Session to one hub that reports partition refusals to the cluster session."""

    def __init__(self, owner: "ClusterSession", endpoint: str, **kw: Any) -> None:
        super().__init__(endpoint, **kw)
        self.owner = owner

    def _handle(self, command: bytes, body: Any) -> None:
        if command == Command.ERROR:
            err = protocol.parse_error(body)
            if err["code"] in RETRY_CODES:
                self.owner._refused(self, err)
                if err.get("command") == "SUBSCRIBE" and isinstance(err.get("ref"), int):
                    self._waiting[err["ref"]] = HubError.from_body(err)
                return
        super()._handle(command, body)


class _Attachment:
    """One partition of a cluster subscription: where it is attached now."""

    __slots__ = ("partition", "endpoint", "inner_sid")

    def __init__(self, partition: str) -> None:
        self.partition = partition
        self.endpoint: str | None = None
        self.inner_sid: int | None = None


class _AnyReadable:
    """What an Actor's loop polls for a cluster session: one epoll descriptor readable when any
    hub socket may be (their ``zmq.FD``). The loop then pumps every socket, which is also done
    at least every POLL_CAP_MS, so a notification ZeroMQ consumed during a send is not missed
    for long."""

    def __init__(self) -> None:
        self._ep = select.epoll() if hasattr(select, "epoll") else None
        self._fds: set[int] = set()

    def fileno(self) -> int:
        if self._ep is None:
            raise OSError("no epoll on this platform")
        return self._ep.fileno()

    def watch(self, sockets: list[zmq.Socket]) -> None:
        if self._ep is None:
            return
        fds = {s.getsockopt(zmq.FD) for s in sockets}
        for fd in self._fds - fds:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass
        for fd in fds - self._fds:
            self._ep.register(fd, select.EPOLLIN)
        self._fds = fds

    def poll(self, timeout: int = 0, flags: int = zmq.POLLIN) -> int:
        if self._ep is None:
            return 0
        return zmq.POLLIN if self._ep.poll(timeout / 1000) else 0

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()


class _ConnView:
    """The part of a Connection that Consumer and Actor read from a session's ``conn``."""

    def __init__(self, session: "ClusterSession") -> None:
        self._session = session
        self.endpoint = session.address
        self.socket: Any = None  # an _AnyReadable once connected

    @property
    def heartbeat_ms(self) -> int:
        return min([POLL_CAP_MS, *(s.conn.heartbeat_ms for s in self._session.hubs.values())])

    def now_ms(self) -> int:
        return monotonic_ms()


class ClusterSession:
    """Session's interface over a cluster: a subscription to NAME attaches to every partition
    ``NAME.i`` on its leader (one plain Session per leader hub) and follows the leader.

    Messages carry the cluster subscription's sid; settling one sends it to the partition's
    current leader. Not thread-safe beyond ``lock``, like Session.
    """

    def __init__(self, endpoint: str | None, *, name: str = "", timeout: float = 10.0,
                 context: zmq.Context | None = None, curve: Any = None, clock: Any = None,
                 source: Any = None) -> None:
        self.address = cluster_address(endpoint) or endpoint
        self.name = name
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._curve = curve
        self._clock = clock
        self.cache = MetadataCache(source or make_source(self.address, timeout, context=self._ctx,
                                                         curve=curve))
        self.conn = _ConnView(self)
        self.hubs: dict[str, _HubSession] = {}  # endpoint -> session
        self.specs: dict[int, SubscriptionSpec] = {}  # cluster sid -> what was asked
        self.attachments: dict[int, dict[str, _Attachment]] = {}  # sid -> partition -> where
        self._by_inner: dict[tuple[str, int], tuple[int, str]] = {}  # (endpoint, inner sid) -> (sid, partition)
        self.inbox: collections.deque[Message] = collections.deque()
        self.settler: Any = self
        self._forward = _Forward(self)
        self.lock = threading.RLock()
        self.open = False
        self._next_sid = 1
        self.reattached = 0

    # --- connection ---

    def connect(self) -> None:
        self.cache.refresh(force=True)
        if self.conn.socket is None:
            self.conn.socket = _AnyReadable()
        self.open = True

    def close(self) -> None:
        with self.lock:
            for hub in self.hubs.values():
                hub.close()
            self.hubs.clear()
            if isinstance(self.conn.socket, _AnyReadable):
                self.conn.socket.close()
            self.cache.source.close()
            self.open = False

    def _hub(self, endpoint: str) -> _HubSession:
        hub = self.hubs.get(endpoint)
        if hub is None:
            hub = _HubSession(self, endpoint, name=self.name, timeout=self.timeout,
                              context=self._ctx, curve=self._curve, clock=self._clock)
            hub.settler = self._forward
            hub.connect()
            self.hubs[endpoint] = hub
            self._watch()
        return hub

    def _watch(self) -> None:
        if isinstance(self.conn.socket, _AnyReadable):
            self.conn.socket.watch([h.conn.socket for h in self.hubs.values() if h.conn.socket])

    def _refused(self, hub: _HubSession, err: dict) -> None:
        """A hub refused a partition (not_leader / unavailable): look at the placement again."""
        log.info("hub at %s: %s: %s", hub.conn.endpoint, err["code"], err["message"])
        self.cache.wanted = True

    # --- subscribing ---

    def subscribe(self, topic: str, group: str, *, credit: int = DEFAULT_CREDIT,
                  ack_wait_ms: int | None = None, max_deliver: int | None = None,
                  start: Any = "first", ordering: str | None = None) -> SubscriptionSpec:
        if protocol.is_pattern(topic):
            raise ValueError("a cluster subscription names a topic, not a pattern")
        problem = protocol.check_topic(topic) or protocol.check_group(group)
        if problem:
            raise ValueError(problem)
        if ordering is not None and ordering not in protocol.ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(protocol.ORDERINGS)}")
        with self.lock:
            if not self.open:
                self.connect()
            partitions = self.cache.get().partitions_of(topic) or self.cache.refresh().partitions_of(topic)
            if not partitions:
                raise unknown_topic(topic)
            spec = SubscriptionSpec(self._next_sid, topic, group, credit, ack_wait_ms,
                                    max_deliver, start, ordering=ordering)
            self._next_sid += 1
            self.specs[spec.sid] = spec
            self.attachments[spec.sid] = {p: _Attachment(p) for p in partitions}
            deadline = monotonic_ms() + int(self.timeout * 1000)
            try:
                for att in self.attachments[spec.sid].values():
                    self._attach_blocking(spec, att, deadline)
            except BaseException:
                self._drop(spec.sid)
                raise
            spec.attached = True
            return spec

    def _inner_spec(self, spec: SubscriptionSpec, partition: str) -> dict:
        return dict(credit=spec.credit, ack_wait_ms=spec.ack_wait_ms,
                    max_deliver=spec.max_deliver, start=spec.start, ordering=spec.ordering)

    def _attach_blocking(self, spec: SubscriptionSpec, att: _Attachment, deadline: int) -> None:
        """Attach one partition on its leader, following refusals until ``deadline``."""
        hint = None
        while True:
            meta = self.cache.get()
            endpoint = hint or meta.leader_endpoint(att.partition)
            hint = None
            error: BaseException | None = None
            if endpoint is not None:
                try:
                    inner = self._hub(endpoint).subscribe(att.partition, spec.group,
                                                          **self._inner_spec(spec, att.partition))
                    self._bind(spec.sid, att, endpoint, inner.sid)
                    if inner.granted_ack_wait_ms:
                        spec.granted_ack_wait_ms = inner.granted_ack_wait_ms
                    return
                except HubError as exc:
                    if exc.code not in RETRY_CODES:
                        raise
                    error, hint = exc, exc.extra.get("leader_endpoint")
                except HubUnavailable as exc:
                    error = exc
                    self._forget_hub(endpoint)
            if monotonic_ms() >= deadline:
                raise error or HubUnavailable(f"partition {att.partition} has no leader")
            time.sleep(MIN_REFRESH_MS / 1000)
            try:
                self.cache.refresh()
            except ZmqMqError:
                pass

    def _bind(self, sid: int, att: _Attachment, endpoint: str, inner_sid: int) -> None:
        att.endpoint, att.inner_sid = endpoint, inner_sid
        self._by_inner[(endpoint, inner_sid)] = (sid, att.partition)

    def _unbind(self, att: _Attachment) -> None:
        """Leave the partition's old leader (best effort: it may be gone)."""
        if att.endpoint is None:
            return
        hub = self.hubs.get(att.endpoint)
        self._by_inner.pop((att.endpoint, att.inner_sid), None)
        if hub is not None and att.inner_sid in hub.specs:
            hub.specs.pop(att.inner_sid, None)
            hub.inbox = collections.deque(m for m in hub.inbox if m.sid != att.inner_sid)
            if hub.conn.socket is not None:
                hub.conn.send(Command.DETACH, [att.inner_sid])
        att.endpoint = att.inner_sid = None

    def _forget_hub(self, endpoint: str) -> None:
        hub = self.hubs.pop(endpoint, None)
        if hub is not None:
            for key in [k for k in self._by_inner if k[0] == endpoint]:
                sid, partition = self._by_inner.pop(key)
                att = self.attachments.get(sid, {}).get(partition)
                if att is not None:
                    att.endpoint = att.inner_sid = None
            hub.close()
            self._watch()

    def _drop(self, sid: int) -> None:
        for att in self.attachments.pop(sid, {}).values():
            self._unbind(att)
        self.specs.pop(sid, None)

    def _follow_leaders(self) -> None:
        """Re-attach every partition whose leader is not where it is attached (moved, refused
        us, or unknown before); drop hubs that lead nothing of ours."""
        meta = self.cache.meta
        if meta is None:
            return
        for sid, parts in self.attachments.items():
            spec = self.specs[sid]
            for att in parts.values():
                leader = meta.leader_endpoint(att.partition)
                hub = self.hubs.get(att.endpoint) if att.endpoint else None
                lost = hub is not None and att.inner_sid not in hub.specs
                if leader is None or (leader == att.endpoint and not lost):
                    continue
                log.warning("partition %s: re-attaching to %s", att.partition, leader)
                self._unbind(att)
                try:
                    hub = self._hub(leader)
                except HubUnavailable:
                    self._forget_hub(leader)
                    continue
                inner = SubscriptionSpec(hub._next_sid, att.partition, spec.group,
                                         **self._inner_spec(spec, att.partition))
                hub._next_sid += 1
                hub.specs[inner.sid] = inner
                hub.conn.send(Command.SUBSCRIBE, inner.body())  # SUBSCRIBED comes in the pump
                self._bind(sid, att, leader, inner.sid)
                self.reattached += 1
        used = {att.endpoint for parts in self.attachments.values() for att in parts.values()}
        for endpoint in [e for e in self.hubs if e not in used]:
            self._forget_hub(endpoint)

    def _check_refusals(self) -> None:
        """Attachments a hub refused (SUBSCRIBE answered not_leader): attach them again."""
        for hub in list(self.hubs.values()):
            for inner_sid, answer in list(hub._waiting.items()):
                hub._waiting.pop(inner_sid)
                where = self._by_inner.get((hub.conn.endpoint, inner_sid))
                if isinstance(answer, HubError) and where is not None:
                    hub.specs.pop(inner_sid, None)
                    self.cache.wanted = True

    # --- the pump ---

    def set_credit(self, sid: int, credit: int) -> None:
        with self.lock:
            self.specs[sid].credit = credit
            for att in self.attachments.get(sid, {}).values():
                hub = self.hubs.get(att.endpoint) if att.endpoint else None
                if hub is not None and att.inner_sid in hub.specs:
                    hub.set_credit(att.inner_sid, credit)

    def _drain(self) -> int:
        got = 0
        for endpoint, hub in list(self.hubs.items()):
            conn = hub.conn
            if conn.socket is None:
                continue
            try:
                item = conn.try_recv()
                while item is not None:
                    hub._handle(*item)
                    item = conn.try_recv()
            except DecodeError as exc:
                log.warning("ignoring a bad frame from %s: %s", endpoint, exc.message)
            while hub.inbox:
                msg = hub.inbox.popleft()
                where = self._by_inner.get((endpoint, msg.sid))
                if where is None:
                    continue  # of an attachment left behind: the hub delivers it again
                msg.sid = where[0]
                self.inbox.append(msg)
                got += 1
        return got

    def pump(self, timeout_ms: int | None, reconnect_ms: int | None = None,
             cancel: Any = None) -> None:
        with self.lock:
            got = self._drain()
            wait = POLL_CAP_MS if timeout_ms is None else min(timeout_ms, POLL_CAP_MS)
            if not got and wait > 0:
                sockets = [h.conn.socket for h in self.hubs.values() if h.conn.socket is not None]
                if sockets:
                    poller = zmq.Poller()
                    for s in sockets:
                        poller.register(s, zmq.POLLIN)
                    if poller.poll(wait):
                        self._drain()
                else:
                    time.sleep(wait / 1000)
            self.keepalive(reconnect_ms, cancel)

    def keepalive(self, reconnect_ms: int | None = None, cancel: Any = None) -> None:
        with self.lock:
            bound = MIN_RECONNECT_MS if reconnect_ms is None else min(reconnect_ms, MIN_RECONNECT_MS)
            for hub in list(self.hubs.values()):
                if hub.conn.socket is None:
                    continue
                before = hub.conn.socket
                hub.keepalive(bound, cancel)
                if hub.conn.socket is not before:
                    self._watch()
            self._drain()
            self._check_refusals()
            if self.specs and self.cache.due(IDLE_REFRESH_MS):
                try:
                    self.cache.refresh()
                except ZmqMqError as exc:
                    log.warning("%s", exc)
                    return
                self._follow_leaders()

    # --- settling ---

    def settle(self, msg: Message, kind: str, arg: Any = None) -> None:
        with self.lock:
            att = self.attachments.get(msg.sid, {}).get(msg.topic)
            hub = self.hubs.get(att.endpoint) if att is not None and att.endpoint else None
            if hub is None or att.inner_sid not in hub.specs:
                return  # no leader attached now: the hub delivers it again
            sid, msg.sid = msg.sid, att.inner_sid
            try:
                hub._settle(msg, kind, arg)
            finally:
                msg.sid = sid

    def flush_acks(self) -> None:
        with self.lock:
            for hub in self.hubs.values():
                if hub.conn.socket is not None:
                    hub.flush_acks()

    def detach_all(self, timeout: float) -> bool:
        with self.lock:
            deadline = monotonic_ms() + int(timeout * 1000)
            ok = True
            for hub in list(self.hubs.values()):
                left = max(0, deadline - monotonic_ms()) / 1000
                ok = hub.detach_all(left) and ok
            self.inbox.clear()
            self.specs.clear()
            self.attachments.clear()
            self._by_inner.clear()
            return ok


def new_session(endpoint: str | None, **kw: Any):
    """A Session for a plain endpoint, a ClusterSession for a cluster address."""
    if cluster_address(endpoint) is not None:
        return ClusterSession(endpoint, **kw)
    return Session(endpoint, **kw)


def resolve_hub_address(endpoint: str | None) -> str:
    """The address a client uses: a checked cluster address, else the endpoint as a plain
    client resolves it (ValueError, one line, if malformed)."""
    from .connection import resolve_endpoint

    return cluster_address(endpoint) or resolve_endpoint(endpoint)


class ClusterConsumer(Consumer):
    """A Consumer over a cluster (``Consumer("zk://...")`` makes one): ``subscribe(NAME, ...)``
    attaches to every partition of NAME on its leader; the rest is Consumer's."""

    _session_class = ClusterSession


# --- administering -----------------------------------------------------------------------------


class ClusterAdmin(Admin):
    """Admin over a cluster (``Admin("zk://...")`` makes one).

    ``stats()`` and ``topics()`` gather every live hub's; ``create_topic(name, partitions=,
    replicas=)`` places a cluster topic (a ``zk://`` address: through ZooKeeper); requests
    about one topic (``fetch``, ``scan``, ``purge``, ``topic_config``, ...) go to the leader of
    the partition they name (``NAME.i``); ``dead_letters`` gathers every hub's.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 context: zmq.Context | None = None, curve: Any = None, source: Any = None) -> None:
        self.address = cluster_address(endpoint) or endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._curve = curve
        self._cache = MetadataCache(source or make_source(self.address, timeout, context=self._ctx,
                                                          curve=curve))
        self._admins: dict[str, Admin] = {}

    @property
    def endpoint(self) -> str:
        return self.address

    @property
    def welcome(self) -> dict:
        return self._any().welcome

    def metadata(self) -> Metadata:
        """The cluster's hubs, topics and partition leaders, read now."""
        return self._cache.refresh(force=True)

    def _admin(self, endpoint: str) -> Admin:
        admin = self._admins.get(endpoint)
        if admin is None:
            admin = self._admins[endpoint] = Admin(endpoint, timeout=self.timeout,
                                                   context=self._ctx, curve=self._curve)
        return admin

    def _any(self) -> Admin:
        hubs = self.metadata().hubs
        if not hubs:
            raise ClusterUnavailable(f"no live hub in the cluster at {self.address}")
        return self._admin(hubs[sorted(hubs)[0]])

    def _leader(self, topic: str) -> Admin:
        meta = self.metadata()
        if topic in meta.topics:
            raise InvalidMessage(f"{topic!r} is a cluster topic of {meta.topics[topic]} partitions: "
                                 f"name one of them ({topic}.0 .. {topic}.{meta.topics[topic] - 1})")
        endpoint = meta.leader_endpoint(topic)
        if endpoint is None:
            if topic in meta.leaders:
                raise HubError("unavailable", f"partition {topic} has no leader now")
            return self._any()  # not a cluster partition (e.g. dlq.<group>): any hub
        return self._admin(endpoint)

    def _each(self) -> dict[str, Admin]:
        meta = self.metadata()
        return {node: self._admin(endpoint) for node, endpoint in sorted(meta.hubs.items())}

    def call(self, command: bytes, *args: Any) -> Any:
        return self._any().call(command, *args)

    def stats(self) -> dict:
        """``{"cluster": True, "hubs": {node: that hub's stats}}``."""
        return {"cluster": True, "hubs": {node: a.stats() for node, a in self._each().items()}}

    def topics(self) -> list[dict]:
        """Every hub's topic rows, each with the ``node`` it came from and whether that hub
        leads it (``leader``)."""
        meta = self.metadata()
        rows = []
        for node, admin in self._each().items():
            for row in admin.topics():
                rows.append({**row, "node": node, "leader": meta.leaders.get(row.get("topic")) == node})
        return rows

    def fetch(self, topic: str, from_seq: int = 0, max_count: int = 1000) -> list:
        return self._leader(topic).fetch(topic, from_seq, max_count)

    def purge(self, topic: str, seqs: Any) -> dict:
        return self._leader(topic).purge(topic, seqs)

    def redrive(self, topic: str, seqs: list[int]) -> dict:
        return self._leader(topic).redrive(topic, seqs)

    def topic_config(self, name: str) -> dict:
        return self._leader(name).topic_config(name)

    def configure_topic(self, name: str, **limits: object) -> dict:
        return self._leader(name).configure_topic(name, **limits)

    def delete_topic(self, name: str) -> dict:
        return self._leader(name).delete_topic(name)

    def dead_letters(self, group: str) -> list[dict]:
        out = []
        for node, admin in self._each().items():
            out.extend({**letter, "node": node} for letter in admin.dead_letters(group))
        return out

    def create_topic(self, name: str, *, partitions: int | None = None,  # type: ignore[override]
                     replicas: int = 1, min_insync: int | None = None, **limits: Any) -> dict:
        """Place a cluster topic of ``partitions`` partitions, each on ``replicas`` hubs:
        ``{"topic", "partitions", "replicas", "min_insync", "assignment"}``. Needs a
        ``zk://`` address (the topic is written to ZooKeeper)."""
        given = {k: v for k, v in limits.items() if v is not None and (k, v) not in
                 (("discard", "old"), ("retention", "limits"))}
        if given:
            raise ValueError(f"topic limits ({', '.join(sorted(given))}) are not set through a "
                             f"cluster yet: create the topic, then configure its partitions")
        source = self._cache.source
        if not isinstance(source, ZooKeeperSource):
            raise ValueError("creating a cluster topic needs the cluster's zk:// address, "
                             "not a list of hubs")
        from ..router.cluster.errors import ClusterTimeout, NotEnoughHubsError, TopicExistsError

        try:
            spec = source.client().create_topic(name, partitions=partitions or 1,
                                                replicas=replicas, min_insync=min_insync,
                                                wait=self.timeout)
        except (TopicExistsError, NotEnoughHubsError) as exc:
            raise HubError("invalid", str(exc)) from None
        except ClusterTimeout as exc:
            raise ClusterUnavailable(str(exc)) from None
        return {"topic": spec.name, "partitions": spec.partitions, "replicas": spec.replicas,
                "min_insync": spec.min_insync, "assignment": [list(a) for a in spec.assignment]}

    def close(self) -> None:
        for admin in self._admins.values():
            admin.close()
        self._admins.clear()
        self._cache.source.close()

    def __enter__(self) -> "ClusterAdmin":
        return self
