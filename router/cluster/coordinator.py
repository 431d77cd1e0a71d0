"""Cluster coordination through ZooKeeper (kazoo): membership, controller, placement, fencing.

Two classes:

- :class:`ClusterClient`: a connection to the cluster's ZooKeeper to read it (hubs, topics,
  partition states, controller) and to create topics. What ``Admin``, the CLI and clients
  routing to leaders need.
- :class:`ClusterMember`: a hub's membership. It registers the hub (an ephemeral node), runs
  for controller (kazoo's Election recipe) and, while controller, keeps every partition's
  leader and in-sync set right as hubs come and go; it tells the hub, through ``on_change``,
  every partition's state and, at once, when its view can no longer be trusted (``FENCED``).
  The partition's leader changes the in-sync set with :meth:`ClusterMember.update_isr`.

The decisions are pure functions in placement.py; here are only reads, watches and versioned
writes. ZooKeeper is written on membership changes, topic creation and in-sync set changes,
never per message. docs/CLUSTER.md describes the layout, the threads and the guarantees.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

try:
    from kazoo.client import KazooClient, KazooState
    from kazoo.exceptions import (
        BadVersionError,
        ConnectionClosedError,
        KazooException,
        NodeExistsError,
        NoNodeError,
        RolledBackError,
    )
    from kazoo.handlers.threading import KazooTimeoutError
    from kazoo.recipe.watchers import ChildrenWatch, DataWatch
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("cluster mode needs kazoo: pip install 'zmq-mq[cluster]'") from exc

from ..protocol import check_topic
from .address import ClusterAddress, parse_cluster_address
from .errors import (
    ClusterError,
    ClusterTimeout,
    FencedError,
    LayoutError,
    NoSuchPartitionError,
    TopicExistsError,
)
from .layout import (
    ClusterPaths,
    HubInfo,
    PartitionState,
    TopicSpec,
    check_node_name,
    decode_controller_epoch,
    decode_hub,
    decode_partition,
    decode_topic,
    encode_controller_epoch,
    encode_hub,
    encode_partition,
    encode_topic,
    partition_name,
)
from .placement import change_isr, elect, initial_state, make_topic, with_controller_epoch

log = logging.getLogger("zmq_mq.cluster")

# ZooKeeper ends a hub's session (and so its membership and leadership) this long after it
# last heard from it. Shorter fails over faster; too short ends sessions of hubs that are only
# slow (a GC-free Python process pauses little, but a loaded machine does). Kafka's default
# is 18 s; 6 s keeps failover within seconds. Seconds, as kazoo takes it.
DEFAULT_SESSION_TIMEOUT = 6.0
CONNECT_TIMEOUT = 10.0
CREATE_TOPIC_WAIT = 10.0

# Reconnect fast after ZooKeeper restarts (every 50 ms, backing off to 0.5 s), forever: a hub
# never gives up on its cluster. Commands are retried briefly on a connection loss.
_CONNECTION_RETRY = {"max_tries": -1, "delay": 0.05, "backoff": 2, "max_delay": 0.5}
_COMMAND_RETRY = {"max_tries": 5, "delay": 0.05, "backoff": 2, "max_delay": 1.0}


class Fenced:
    """The type of :data:`FENCED`."""

    _instance: "Fenced | None" = None

    def __new__(cls) -> "Fenced":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "FENCED"


# What ``on_change`` receives instead of a state when the member lost its ZooKeeper connection
# or session: the view it had may be stale, so the hub must stop leading (and confirming) that
# partition until a state comes again.
FENCED = Fenced()

OnChange = Callable[[str, "PartitionState | Fenced | None"], None]


class ClusterClient:
    """A connection to a cluster's ZooKeeper, for reading its state and creating topics.

    ``address``: ``zk://HOST:PORT[,HOST:PORT...]/CHROOT`` (or a parsed ClusterAddress).
    Use as a context manager, or ``start()`` / ``close()``.
    """

    def __init__(self, address: str | ClusterAddress, *,
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> None:
        self.address = (address if isinstance(address, ClusterAddress)
                        else parse_cluster_address(address))
        self.paths = ClusterPaths(self.address.chroot)
        self.session_timeout = session_timeout
        self.zk = KazooClient(hosts=self.address.hosts, timeout=session_timeout,
                              connection_retry=dict(_CONNECTION_RETRY),
                              command_retry=dict(_COMMAND_RETRY))

    # --- lifecycle ---

    def start(self, timeout: float = CONNECT_TIMEOUT) -> "ClusterClient":
        """Connect (``ClusterTimeout`` if ZooKeeper cannot be reached within ``timeout``) and
        make sure the cluster's persistent paths exist."""
        try:
            self.zk.start(timeout)
        except KazooTimeoutError:
            self.zk.stop()
            self.zk.close()
            raise ClusterTimeout(f"could not reach ZooKeeper at {self.address.hosts} within "
                                 f"{timeout:g} s; is it running?") from None
        for path in (*self.paths.roots(), self.paths.controller_epoch):
            self.zk.retry(self.zk.ensure_path, path)
        return self

    def close(self) -> None:
        """End the session (ZooKeeper drops this client's ephemeral nodes at once)."""
        try:
            self.zk.stop()
        finally:
            self.zk.close()

    def __enter__(self) -> "ClusterClient":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ---

    def hubs(self) -> dict[str, HubInfo]:
        """The live hubs by node name."""
        out = {}
        for node in sorted(self.zk.retry(self.zk.get_children, self.paths.hubs)):
            try:
                data, _ = self.zk.retry(self.zk.get, self.paths.hub(node))
            except NoNodeError:
                continue  # it left while we listed
            out[node] = decode_hub(data)
        return out

    def topics(self) -> dict[str, TopicSpec]:
        out = {}
        for name in sorted(self.zk.retry(self.zk.get_children, self.paths.topics)):
            spec = self.topic(name)
            if spec is not None:
                out[name] = spec
        return out

    def topic(self, name: str) -> TopicSpec | None:
        try:
            data, _ = self.zk.retry(self.zk.get, self.paths.topic(name))
        except NoNodeError:
            return None
        return decode_topic(data)

    def partition(self, name: str) -> PartitionState:
        """The state of partition ``name`` (``<topic>.<i>``); NoSuchPartitionError if none."""
        return self._partition_with_stat(name)[0]

    def partitions(self, topic: str | None = None) -> dict[str, PartitionState]:
        """Every partition's state by name (only ``topic``'s when given), in name order."""
        out = {}
        for name in sorted(self.zk.retry(self.zk.get_children, self.paths.partitions)):
            if topic is not None and name.rpartition(".")[0] != topic:
                continue
            try:
                out[name] = self.partition(name)
            except NoSuchPartitionError:
                continue
        return out

    def controller(self) -> str | None:
        """The node name of the current controller (the election's first contender), or None
        while there is none."""
        contenders = self.zk.Election(self.paths.controller).contenders()
        return contenders[0] if contenders else None

    def controller_epoch(self) -> int:
        """How many controllers have been elected in this cluster (0: never one)."""
        data, _ = self.zk.retry(self.zk.get, self.paths.controller_epoch)
        return decode_controller_epoch(data)[0]

    def status(self) -> dict[str, Any]:
        """Everything ZooKeeper holds about the cluster, as plain JSON-ready data (what
        ``zmq-mq cluster status --json`` will print, before the hubs' replication lag)."""
        return {
            "controller": self.controller(),
            "controller_epoch": self.controller_epoch(),
            "hubs": {n: {"endpoint": h.endpoint, "pub": h.pub} for n, h in self.hubs().items()},
            "topics": {n: {"partitions": t.partitions, "replicas": t.replicas,
                           "min_insync": t.min_insync} for n, t in self.topics().items()},
            "partitions": {n: {"leader": s.leader, "epoch": s.epoch,
                               "replicas": list(s.replicas), "isr": list(s.isr)}
                           for n, s in self.partitions().items()},
        }

    def _partition_with_stat(self, name: str) -> tuple[PartitionState, Any]:
        try:
            data, stat = self.zk.retry(self.zk.get, self.paths.partition(name))
        except NoNodeError:
            raise NoSuchPartitionError(name) from None
        return decode_partition(data), stat

    # --- admin ---

    def create_topic(self, name: str, partitions: int, replicas: int,
                     min_insync: int | None = None, *,
                     wait: float | None = CREATE_TOPIC_WAIT) -> TopicSpec:
        """Place a new topic over the live hubs: its assignment is computed here from the hubs
        live now (``NotEnoughHubsError`` if fewer than ``replicas``) and written once to
        ``/topics/<name>`` (``TopicExistsError`` if it is there); the controller then writes each
        partition's state. ``wait``: seconds to wait for those states (``ClusterTimeout`` if no
        controller wrote them: is a hub running?); None returns at once."""
        bad = check_topic(name)
        if bad:
            raise ValueError(bad)
        spec = make_topic(name, partitions, replicas, self.hubs(), min_insync)
        try:
            self.zk.create(self.paths.topic(name), encode_topic(spec))
        except NodeExistsError:
            raise TopicExistsError(f"topic {name!r} already exists in the cluster") from None
        if wait is not None:
            self.wait_partitions(spec, wait)
        return spec

    def wait_partitions(self, spec: TopicSpec, timeout: float) -> dict[str, PartitionState]:
        """Wait (on a ZooKeeper watch) until every partition of ``spec`` has a state."""
        wanted = set(spec.partition_names())
        done = threading.Event()
        stop = threading.Event()

        def seen(children: list[str]) -> bool | None:
            if stop.is_set():
                return False
            if wanted <= set(children):
                done.set()
                return False
            return None

        ChildrenWatch(self.zk, self.paths.partitions, seen)
        try:
            if not done.wait(timeout):
                raise ClusterTimeout(f"no controller placed topic {spec.name!r} within "
                                     f"{timeout:g} s: is a hub of the cluster running?")
        finally:
            stop.set()
        return self.partitions(spec.name)


class ClusterMember(ClusterClient):
    """A hub's membership in a cluster (see the module docstring and docs/CLUSTER.md).

    ``node``: the hub's name in the cluster (stable across restarts: partitions are assigned
    to names). ``advertise``: the ROUTER endpoint peers and clients reach it on; ``pub``: its
    PUB endpoint, if any. ``on_change(partition, state)`` is called, from one thread of the
    member in ZooKeeper's order, with every partition's state when the member starts and
    whenever it changes, ``None`` when a partition is gone, and :data:`FENCED` for every known
    partition as soon as the member loses its ZooKeeper connection (then the current state once
    it is back). ``on_controller(is_controller)`` is called when it gains or loses the
    controller role. Callbacks must not block: hand the news to the hub's own loop.
    """

    def __init__(self, address: str | ClusterAddress, node: str, advertise: str,
                 pub: str | None = None, on_change: OnChange | None = None, *,
                 on_controller: Callable[[bool], None] | None = None,
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> None:
        bad = check_node_name(node)
        if bad:
            raise ValueError(bad)
        super().__init__(address, session_timeout=session_timeout)
        self.node = node
        self.info = HubInfo(node, advertise, pub)
        self._on_change = on_change
        self._on_controller = on_controller
        self._closing = threading.Event()
        self._cond = threading.Condition()  # guards the fields below; notified on every change
        self._fenced = True  # until registered and in sync with ZooKeeper
        self._fence_gen = 0  # grows at every connection loss
        self._lost = 0  # grows at every session loss (a controller term ends with it)
        self._registered_session: int | None = None
        self._is_controller = False
        self._view: dict[str, PartitionState | Fenced | None] = {}
        self._delivered_zxid: dict[str, int] = {}
        self._data_watches: dict[str, DataWatch] = {}
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._dirty = threading.Event()  # the controller has something to look at
        self._controller_epoch = 0
        self._controller_epoch_version = -1
        self._incarnations: dict[str, int] = {}  # the controller's last view: node -> czxid
        self._election = None
        self._dispatcher: threading.Thread | None = None
        self._elector: threading.Thread | None = None

    # --- what the hub asks ---

    @property
    def fenced(self) -> bool:
        """True from the moment the ZooKeeper connection is lost until the member is back in
        sync: a leader must not confirm anything meanwhile."""
        return self._fenced

    @property
    def is_controller(self) -> bool:
        """Whether this member holds the controller role now (not while its connection is
        lost: it could not write, and another member may be taking over)."""
        return self._is_controller and not self._fenced

    def view(self) -> dict[str, PartitionState | Fenced | None]:
        """The last state delivered to ``on_change`` for each partition."""
        with self._cond:
            return dict(self._view)

    def leading(self) -> dict[str, PartitionState]:
        """The partitions this hub leads, as far as its current (unfenced) view says."""
        with self._cond:
            if self._fenced:
                return {}
            return {n: s for n, s in self._view.items()
                    if isinstance(s, PartitionState) and s.leader == self.node}

    def wait_for(self, predicate: Callable[["ClusterMember"], bool], timeout: float) -> bool:
        """Wait until ``predicate(member)`` holds (re-checked after every change the member
        sees); whether it did within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def update_isr(self, partition: str, epoch: int, isr: Iterable[str]) -> PartitionState:
        """As ``partition``'s leader at ``epoch``, set its in-sync replicas to ``isr`` (grow it
        when a follower caught up, shrink it when one fell behind); the new state.

        A compare-and-set on the partition's znode: ``StaleEpochError`` if this hub no longer
        leads it at ``epoch`` (the controller moved it: the caller is fenced); a follower
        joining must be live at the moment of the write (ValueError if it is not);
        ``FencedError`` while this member's own connection is lost."""
        wanted = list(isr)
        path = self.paths.partition(partition)
        while True:
            if self._fenced:
                raise FencedError(f"{self.node!r} lost its ZooKeeper connection: it may not "
                                  f"change {partition}")
            state, stat = self._partition_with_stat(partition)
            new = change_isr(state, self.node, epoch, wanted)
            if new is state:
                return state
            txn = self.zk.transaction()
            for member in sorted(set(new.isr) - set(state.isr)):
                hub_stat = self.zk.exists(self.paths.hub(member))
                if hub_stat is None:
                    raise ValueError(f"{member!r} is not live: it cannot join the in-sync "
                                     f"replicas of {partition}")
                txn.check(self.paths.hub(member), hub_stat.version)
            txn.set_data(path, encode_partition(new), version=stat.version)
            failure = _txn_failure(txn.commit())
            if failure is None:
                return new
            if isinstance(failure, NoNodeError):
                raise ValueError(f"a follower joining the in-sync replicas of {partition} left")
            # BadVersionError: the controller (or this leader, racing itself) wrote first:
            # read again; the epoch check above decides whether this leader may still write.

    # --- lifecycle ---

    def start(self, timeout: float = CONNECT_TIMEOUT) -> "ClusterMember":
        """Connect, register the hub (waiting, up to twice the session timeout, for a previous
        run's node of the same name to expire), deliver the partition states, and run for
        controller. ``ClusterTimeout`` if any of it cannot be done in time."""
        super().start(timeout)
        try:
            self.zk.add_listener(self._on_zk_state)
            self._register(max(timeout, 2 * self.session_timeout + 2))
            ChildrenWatch(self.zk, self.paths.partitions, self._on_partition_children)
            self._dispatcher = threading.Thread(target=self._dispatch_loop, daemon=True,
                                                name=f"zmq-mq-cluster-{self.node}")
            self._dispatcher.start()
            self._events.put(("resync",))
            self._elector = threading.Thread(target=self._election_loop, daemon=True,
                                             name=f"zmq-mq-controller-{self.node}")
            self._elector.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Leave the cluster: stop running for controller, end the session (the hub's node goes
        at once, so the controller fails its partitions over without waiting for a timeout),
        and stop the member's threads."""
        self._closing.set()
        if self._election is not None:
            self._election.cancel()
        self._dirty.set()
        self._events.put(("stop",))
        try:
            super().close()
        finally:
            for thread in (self._elector, self._dispatcher):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(10)
            with self._cond:
                self._cond.notify_all()

    # --- membership ---

    def _register(self, timeout: float) -> None:
        """Create this hub's ephemeral node. A node of that name held by another session is a
        previous run of this hub whose session has not expired yet (or another hub given the
        same ``--node``): wait for ZooKeeper to drop it."""
        path = self.paths.hub(self.node)
        data = encode_hub(self.info)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.zk.create(path, data, ephemeral=True)
                break
            except NodeExistsError:
                pass
            gone = threading.Event()
            stat = self.zk.exists(path, watch=lambda event: gone.set())
            if stat is None:
                continue
            if stat.ephemeralOwner == self.zk.client_id[0]:
                self.zk.set(path, data)  # ours already (a create retried after a lost reply)
                break
            left = deadline - time.monotonic()
            if left <= 0 or not gone.wait(left):
                raise ClusterTimeout(
                    f"hub node {self.node!r} is held by another ZooKeeper session (another hub "
                    f"started with --node {self.node}, or this hub's previous run whose session "
                    f"has not expired yet)")
        self._registered_session = self.zk.client_id[0]

    def _on_zk_state(self, state: str) -> None:
        """kazoo's connection listener (its connection thread: no blocking here)."""
        with self._cond:
            if state in (KazooState.SUSPENDED, KazooState.LOST):
                self._fenced = True  # at once: the hub reads this before confirming
                self._fence_gen += 1
                if state == KazooState.LOST:
                    self._lost += 1
                self._events.put(("fence",))
            else:
                self._events.put(("resync",))
            self._cond.notify_all()
        self._dirty.set()

    # --- partition states, delivered by one thread in order ---

    def _on_partition_children(self, children: list[str]) -> bool | None:
        if self._closing.is_set():
            return False
        self._events.put(("children", children))
        return None

    def _watch_partition(self, name: str) -> None:
        if name in self._data_watches:
            return

        def changed(data: bytes | None, stat: Any) -> bool | None:
            if self._closing.is_set():
                return False
            self._events.put(("state", name, data, stat))
            if stat is None:
                self._data_watches.pop(name, None)
                return False
            return None

        self._data_watches[name] = DataWatch(self.zk, self.paths.partition(name), changed)

    def _dispatch_loop(self) -> None:
        while True:
            item = self._events.get()
            kind = item[0]
            if kind == "stop" or self._closing.is_set():
                return
            try:
                if kind == "fence":
                    self._fence_all()
                elif kind == "resync":
                    self._resync()
                elif kind == "children":
                    for name in item[1]:
                        self._watch_partition(name)
                elif kind == "state":
                    if not self._fenced:  # while fenced, the resync reads everything again
                        self._apply(item[1], item[2], item[3])
            except (KazooException, ConnectionClosedError) as exc:
                # the connection went; its listener queued a fence, and a resync follows
                log.info("cluster member %s: %s while handling %s", self.node, exc, kind)
            except Exception:
                log.exception("cluster member %s failed handling %s", self.node, kind)

    def _fence_all(self) -> None:
        for name, state in list(self._view.items()):
            if state is not FENCED and state is not None:
                self._deliver(name, FENCED, None)

    def _resync(self) -> None:
        """After (re)connecting: re-register if the session is new, read every partition and
        deliver its state (all of them after a fence), then lift the fence."""
        with self._cond:
            gen = self._fence_gen
        if self.zk.state != KazooState.CONNECTED:
            return  # another resync comes with the next CONNECTED
        if self._registered_session != self.zk.client_id[0]:
            self._register(2 * self.session_timeout + 2)
        children = self.zk.retry(self.zk.get_children, self.paths.partitions)
        for name in children:
            self._watch_partition(name)
            try:
                data, stat = self.zk.retry(self.zk.get, self.paths.partition(name))
            except NoNodeError:
                data, stat = None, None
            self._apply(name, data, stat, force=True)
        with self._cond:
            if gen == self._fence_gen and self.zk.state == KazooState.CONNECTED:
                self._fenced = False
                self._cond.notify_all()

    def _apply(self, name: str, data: bytes | None, stat: Any, force: bool = False) -> None:
        if stat is None:
            if self._view.get(name, FENCED) is not None:
                self._delivered_zxid.pop(name, None)
                self._deliver(name, None, None)
            return
        if not force and stat.mzxid <= self._delivered_zxid.get(name, -1):
            return  # already delivered (a watch and a resync both read it)
        if force and stat.mzxid == self._delivered_zxid.get(name) and \
                self._view.get(name) is not FENCED:
            return
        try:
            state = decode_partition(data)
        except LayoutError as exc:
            log.error("cluster member %s: partition %s: %s", self.node, name, exc)
            return
        self._deliver(name, state, stat.mzxid)

    def _deliver(self, name: str, state: PartitionState | Fenced | None,
                 zxid: int | None) -> None:
        with self._cond:
            self._view[name] = state
            if zxid is not None:
                self._delivered_zxid[name] = zxid
            self._cond.notify_all()
        if self._on_change is not None:
            try:
                self._on_change(name, state)
            except Exception:
                log.exception("on_change(%s) failed", name)

    # --- the controller ---

    def _election_loop(self) -> None:
        while not self._closing.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._closing.is_set() or not self._fenced)
            if self._closing.is_set():
                return
            try:
                self._election = self.zk.Election(self.paths.controller, self.node)
                self._election.run(self._lead)
            except Exception as exc:
                if self._closing.is_set():
                    return
                log.info("cluster member %s: controller election interrupted: %s", self.node,
                         exc)
                with self._cond:  # wait for the connection to change before running again
                    gen = self._fence_gen
                    self._cond.wait_for(lambda: self._closing.is_set()
                                        or gen != self._fence_gen, 1.0)

    def _lead(self) -> None:
        """Run as controller until the session is lost, another controller is elected, or the
        member closes."""
        term = self._lost
        try:
            self._controller_epoch, self._controller_epoch_version = self._bump_epoch()
        except Exception as exc:
            log.info("cluster member %s could not take the controller role: %s", self.node, exc)
            return
        log.info("cluster member %s is controller (epoch %d)", self.node, self._controller_epoch)
        ended = threading.Event()

        def changed(children: list[str]) -> bool | None:
            if ended.is_set():
                return False
            self._dirty.set()
            return None

        self._incarnations = {}
        self._set_controller(True)
        try:
            for path in (self.paths.hubs, self.paths.topics, self.paths.partitions):
                ChildrenWatch(self.zk, path, changed)
            self._dirty.set()
            while not self._closing.is_set() and self._lost == term:
                self._dirty.wait()
                self._dirty.clear()
                if self._closing.is_set() or self._lost != term:
                    break
                if self.zk.state != KazooState.CONNECTED:
                    continue  # the listener sets dirty again when it is back
                try:
                    if not self._reconcile():
                        log.info("cluster member %s: another controller took over", self.node)
                        break
                except (KazooException, ConnectionClosedError) as exc:
                    log.info("controller %s: %s; again when connected", self.node, exc)
                    if self.zk.state == KazooState.CONNECTED:
                        self._dirty.set()
                        self._closing.wait(0.1)  # a transient error: do not spin
        finally:
            ended.set()
            self._set_controller(False)

    def _set_controller(self, value: bool) -> None:
        with self._cond:
            self._is_controller = value
            self._cond.notify_all()
        if self._on_controller is not None:
            try:
                self._on_controller(value)
            except Exception:
                log.exception("on_controller(%s) failed", value)

    def _bump_epoch(self) -> tuple[int, int]:
        """Take the next controller epoch (CAS); every later write of this term checks that
        its version is still ours, so a deposed controller cannot write."""
        while True:
            data, stat = self.zk.get(self.paths.controller_epoch)
            epoch = decode_controller_epoch(data)[0] + 1
            try:
                new = self.zk.set(self.paths.controller_epoch,
                                  encode_controller_epoch(epoch, self.node), version=stat.version)
            except BadVersionError:
                continue
            return epoch, new.version

    def _controller_txn(self, add: Callable[[Any], None]) -> BaseException | None:
        """Commit ``add``'s operations guarded by this term's controller epoch. Raises
        _Deposed if another controller has been elected since."""
        txn = self.zk.transaction()
        txn.check(self.paths.controller_epoch, self._controller_epoch_version)
        add(txn)
        results = txn.commit()
        if isinstance(results[0], BaseException) and not isinstance(results[0], RolledBackError):
            raise _Deposed()
        return _txn_failure(results)

    def _reconcile(self) -> bool:
        """One pass of the controller: place new topics' partitions and elect where the live
        hubs changed. Writes only what changed; False if this controller was deposed."""
        hubs: dict[str, int] = {}
        for node in self.zk.get_children(self.paths.hubs):
            stat = self.zk.exists(self.paths.hub(node))
            if stat is not None:
                hubs[node] = stat.czxid
        live = set(hubs)
        # A hub whose node was created again (a new session: it restarted, or its session
        # expired and it rejoined) lost what it held in memory: treat it as gone, then back.
        restarted = {n for n, czxid in hubs.items() if self._incarnations.get(n, czxid) != czxid}
        again = False
        try:
            existing = set(self.zk.get_children(self.paths.partitions))
            for topic in self.zk.get_children(self.paths.topics):
                again |= self._place(topic, existing, live)
            for name in sorted(existing):
                again |= self._elect(name, live, restarted)
        except _Deposed:
            return False
        if again:
            self._dirty.set()
        else:
            self._incarnations = hubs
        return True

    def _read(self, path: str, decode, what: str):
        """``(decoded node, stat)`` of ``path``, or ``(None, None)`` if it is gone or holds data
        this version cannot read (logged: the controller skips it)."""
        try:
            data, stat = self.zk.get(path)
            return decode(data), stat
        except NoNodeError:
            return None, None
        except LayoutError as exc:
            log.error("controller %s: %s: %s", self.node, what, exc)
            return None, None

    def _place(self, topic: str, existing: set[str], live: set[str]) -> bool:
        spec, _ = self._read(self.paths.topic(topic), decode_topic, f"topic {topic}")
        if spec is None:
            return False
        again = False
        for index, replicas in enumerate(spec.assignment):
            name = partition_name(topic, index)
            if name in existing:
                continue
            state = elect(initial_state(topic, index, replicas, self._controller_epoch), live)
            state = with_controller_epoch(state, self._controller_epoch)
            failure = self._controller_txn(
                lambda txn: txn.create(self.paths.partition(name), encode_partition(state)))
            if failure is not None and not isinstance(failure, NodeExistsError):
                again = True
        return again

    def _elect(self, name: str, live: set[str], restarted: set[str]) -> bool:
        state, stat = self._read(self.paths.partition(name), decode_partition,
                                 f"partition {name}")
        if state is None:
            return False
        new = state
        gone = restarted & set(state.replicas)
        if gone:
            new = elect(new, live - gone)
        new = elect(new, live)
        if new == state:
            return False
        new = with_controller_epoch(new, self._controller_epoch)
        log.info("controller %s: %s leader %s epoch %d isr %s", self.node, name, new.leader,
                 new.epoch, list(new.isr))
        failure = self._controller_txn(
            lambda txn: txn.set_data(self.paths.partition(name), encode_partition(new),
                                     version=stat.version))
        return failure is not None  # BadVersion: a leader changed its ISR first; again


class _Deposed(ClusterError):
    """Another controller has been elected since this one's term began."""


def _txn_failure(results: list[Any]) -> BaseException | None:
    """The operation error of a failed ZooKeeper transaction (not the rolled-back others)."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, RolledBackError):
            return result
    return None
