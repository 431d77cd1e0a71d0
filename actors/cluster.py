"""Cluster mode, the client side: where each partition is led, and how a client learns it.

A client given a cluster address (``zk://HOST:PORT[,...]/CHROOT``, or a comma-separated list
of hub endpoints to bootstrap from with METADATA) is built from the cluster modules instead of
the single-hub ones; the existing classes dispatch once, at construction:

- ``Producer(address)`` is a :class:`~.cluster_producer.ClusterProducer`: one plain Producer
  per leader hub; every message gets a ``msg_id`` (so a resend is stored once); a
  ``not_leader`` / ``unavailable`` / ``not_enough_replicas`` refusal, a leader change or a lost
  hub sends the message again to the partition's (new) leader, until the publish timeout.
- ``Consumer(address)`` is a :class:`~.cluster_session.ClusterConsumer` and an ``Actor`` runs on
  a :class:`~.cluster_session.ClusterSession`: one plain Session per leader hub, one attachment
  per partition, re-attached to the new leader when the leader changes or refuses.
- ``Admin(address)`` is a :class:`~.cluster_admin.ClusterAdmin`.

A plain ``tcp://`` endpoint never comes here. A cluster topic NAME with N partitions is stored
as the topics ``NAME.0`` .. ``NAME.{N-1}``, each led by one hub (docs/CLUSTER.md). This module
holds what they share: :class:`Metadata` (pure: hubs, topics, partition leaders, from a
METADATA reply or from ZooKeeper's ``ClusterClient.status()``, the same shape),
:func:`choose_partition`, the sources (:class:`ZooKeeperSource`, :class:`BootstrapSource`) and
the :class:`MetadataCache`. kazoo (the ``cluster`` extra) is imported only when a ``zk://``
address is first read.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..router import protocol
from ..router.endpoint import ZK_SCHEME, check_hub_address, is_cluster_address, split_hub_list
from ..router.protocol import Command, DecodeError
from ..router.wire import recv_frames, send_frames
from .connection import ENV_HUB, Connection, monotonic_ms, resolve_endpoint
from .errors import HubError, HubUnavailable, InvalidMessage, ZmqMqError

log = logging.getLogger("zmq_mq.cluster")

CLUSTER_EXTRA_HINT = "pip install 'zmq-mq[cluster]'"
METADATA = b"METADATA"  # the cluster's metadata request and reply (docs/PROTOCOL.md)
# Refusals after which a message (or an attachment) goes to the partition's leader again.
RETRY_CODES = frozenset({"not_leader", "unavailable", "not_enough_replicas"})
# Metadata is read again at most this often (a storm of refusals costs one read).
MIN_REFRESH_MS = 100
# A source that watches (ZooKeeper) is still read this often when nothing happened: a safety
# net only, a change arrives through the watch.
WATCHED_POLL_MS = 30_000


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
        topics = {str(t): int(spec.get("partitions", 0))
                  for t, spec in (data.get("topics") or {}).items() if isinstance(spec, dict)}
        leaders, epochs = {}, {}
        for name, state in (data.get("partitions") or {}).items():
            if isinstance(state, dict):
                leaders[str(name)] = state.get("leader")
                epochs[str(name)] = int(state.get("epoch") or 0)
        return cls(hubs, topics, leaders, epochs, bool(data.get("cluster", True)))

    def partitions_of(self, topic: str) -> list[str]:
        """The partitions a topic is stored as: ``NAME.0..`` for a cluster topic, the name
        itself for one partition named directly; [] if the cluster has neither. (Remembered
        per topic: a producer asks for every message; the list is shared, not to be changed.)"""
        known = self._partitions.get(topic)
        if known is None:
            n = self.topics.get(topic)
            if n:
                known = protocol.partition_topics(topic, n)
            elif topic in self.leaders:
                known = [topic]
            else:
                return []
            self._partitions[topic] = known
        return known

    def leader_endpoint(self, partition: str) -> str | None:
        """The endpoint of the live hub leading ``partition``, or None (no leader, or it left)."""
        return self._endpoints.get(partition)

    def leader_map(self) -> dict[str, str | None]:
        """Every partition's leader endpoint (None: unavailable now)."""
        return {p: self.leader_endpoint(p) for p in self.leaders}

    @functools.cached_property
    def _endpoints(self) -> dict[str, str | None]:
        return {p: (self.hubs.get(node) if node is not None else None)
                for p, node in self.leaders.items()}

    @functools.cached_property
    def _partitions(self) -> dict[str, list[str]]:
        return {}


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
    """Reads the cluster's state from ZooKeeper (``ClusterClient``), connecting on first use,
    and watches it: every read leaves a ZooKeeper watch on what it read (the hubs, topics and
    partitions lists and each hub's and partition's node), so the first change after a read
    calls the ``on_change`` callbacks given to :meth:`watch` at once, instead of a client
    finding it at its next poll. A watch fires once: the client reads again (which watches
    again). kazoo sets the watches again when it reconnects within the session; after a
    session ended (or ZooKeeper came back without it) the callbacks are called on the
    reconnection, so the client reads, and watches, anew."""

    watches = True

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._client = None
        self._lock = threading.Lock()
        self._listeners: list = []
        self.changes = 0  # watch notifications so far (tests, diagnostics)

    def watch(self, on_change) -> None:
        """Call ``on_change()`` (from kazoo's thread: it must not block) when what the last
        read saw may have changed."""
        self._listeners.append(on_change)

    def _changed(self, *_: Any) -> None:
        self.changes += 1
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not stop kazoo's event thread
                log.exception("cluster metadata listener")

    def _on_state(self, state: str) -> bool:
        if state == "CONNECTED":  # back (maybe with a new session, watches lost): read again
            self._changed()
        return False  # keep listening

    def client(self):
        with self._lock:
            if self._client is None:
                from ..router.cluster.errors import ClusterTimeout

                client = _cluster_client_class()(self.address)
                try:
                    self._client = client.start(self.timeout)
                except ClusterTimeout as exc:
                    raise ClusterUnavailable(str(exc)) from None
                self._client.zk.add_listener(self._on_state)
            return self._client

    def fetch(self) -> Metadata:
        client = self.client()  # ClusterUnavailable, or ZmqMqError without kazoo
        try:  # what routing needs (not the controller's nodes): a read per hub and partition
            return Metadata.parse(_watched_read(client, self._changed))
        except Exception as exc:  # kazoo's errors: connection loss, session expiry
            raise ClusterUnavailable(f"cannot read the cluster from ZooKeeper at "
                                     f"{self.address}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._listeners.clear()
            if self._client is not None:
                self._client.zk.remove_listener(self._on_state)
                self._client.close()
                self._client = None


def _watched_read(client, watch) -> dict:
    """The hubs' endpoints, topics' partition counts and partitions' leaders, each node read
    with ``watch`` left on it (a topic's spec never changes: its list is watched, not it)."""
    from kazoo.exceptions import NoNodeError

    from ..router.cluster.layout import decode_hub, decode_partition, decode_topic

    zk, paths = client.zk, client.paths

    def children(path: str) -> list[str]:
        return sorted(zk.retry(zk.get_children, path, watch=watch))

    def read(path: str, watched: bool = True) -> bytes | None:
        try:
            return zk.retry(zk.get, path, watch=watch if watched else None)[0]
        except NoNodeError:
            return None  # it went while we listed; the list's watch says so

    hubs, topics, partitions = {}, {}, {}
    for node in children(paths.hubs):
        data = read(paths.hub(node))
        if data is not None:
            hubs[node] = {"endpoint": decode_hub(data).endpoint}
    for name in children(paths.topics):
        data = read(paths.topic(name), watched=False)
        if data is not None:
            topics[name] = {"partitions": decode_topic(data).partitions}
    for name in children(paths.partitions):
        data = read(paths.partition(name))
        if data is not None:
            state = decode_partition(data)
            partitions[name] = {"leader": state.leader, "epoch": state.epoch}
    return {"hubs": hubs, "topics": topics, "partitions": partitions}


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
    """The latest metadata and when to read it again: at once when the source's watch says it
    changed (``changed``), soon (at most every MIN_REFRESH_MS) when something was refused or
    lost (``wanted``), else at the caller's poll period; a source that watches (ZooKeeper) is
    polled only every WATCHED_POLL_MS, as a safety net. ``on_change`` callbacks (e.g. waking
    a maintenance thread) run when the source reports a change."""

    def __init__(self, source) -> None:
        self.source = source
        self.meta: Metadata | None = None
        self.read_at = 0
        self.wanted = False  # something was refused or lost: read again soon
        self.changed = False  # the source's watch fired: read again now
        self.lock = threading.Lock()
        self._listeners: list = []
        self.watched = bool(getattr(source, "watches", False))
        if self.watched:
            source.watch(self._on_source_change)

    def on_change(self, listener) -> None:
        self._listeners.append(listener)

    def _on_source_change(self) -> None:
        self.changed = True
        for listener in list(self._listeners):
            listener()

    def get(self) -> Metadata:
        if self.meta is None:
            self.refresh(force=True)
        return self.meta  # type: ignore[return-value]

    def fetch(self) -> Metadata:
        """Read the source (not installed: see :meth:`install`); a change noticed while it
        reads makes the next one due."""
        self.changed = False
        return self.source.fetch()

    def refresh(self, force: bool = False) -> Metadata:
        with self.lock:
            now = monotonic_ms()
            if (self.meta is None or force or self.changed
                    or now - self.read_at >= MIN_REFRESH_MS):
                self.meta = self.fetch()
                self.read_at = monotonic_ms()
                self.wanted = False
            return self.meta

    def install(self, meta: Metadata) -> None:
        """Take metadata read elsewhere (outside a lock that must not wait for ZooKeeper)."""
        with self.lock:
            self.meta, self.read_at, self.wanted = meta, monotonic_ms(), False

    def due(self, every_ms: int) -> bool:
        if self.changed:
            return True
        age = monotonic_ms() - self.read_at
        if self.wanted:
            return age >= MIN_REFRESH_MS
        return age >= (max(every_ms, WATCHED_POLL_MS) if self.watched else every_ms)


def resolve_hub_address(endpoint: str | None) -> str:
    """The address a client uses: a checked cluster address, else the endpoint as a plain
    client resolves it (ValueError, one line, if malformed)."""
    return cluster_address(endpoint) or resolve_endpoint(endpoint)
