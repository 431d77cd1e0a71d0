"""What a cluster keeps in ZooKeeper: the paths, and the JSON codecs of the nodes' data.

Pure (no ZooKeeper client here). Everything lives under the cluster address's chroot::

    /hubs/<node>                ephemeral, one per live hub: HubInfo
                                {"node", "endpoint", "pub"}; written by the hub at (re)join
    /controller/<lock nodes>    kazoo's Election recipe (ephemeral sequential contenders)
    /controller_epoch           {"epoch", "node"}: bumped (CAS) by each newly elected
                                controller; every controller write checks its version
    /topics/<topic>             TopicSpec {"partitions", "replicas", "min_insync",
                                "assignment"}; written once by whoever creates the topic
    /partitions/<topic>.<i>     PartitionState {"topic", "partition", "leader", "epoch",
                                "replicas", "isr", "controller_epoch"}; written by the
                                controller (elections) and by the partition's leader (ISR)

Every write to a partition state is versioned (the znode version is the compare-and-set
token), so two concurrent updates can never lose one another. A partition's name is the hub
topic that holds it, ``<topic>.<i>``, as for the single hub's partitioned topics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import LayoutError

FORMAT = 1  # the "v" field of every node's JSON; a reader refuses a newer one

MAX_PARTITIONS = 1024  # as the single hub's partitioned topics
MAX_NODE_NAME = 64
_NODE_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
_PARTITION_RE = re.compile(r"^(?P<topic>.+)\.(?P<index>0|[1-9][0-9]*)$")


def check_node_name(node: Any) -> str | None:
    """An error text if ``node`` cannot name a hub (it is a ZooKeeper node name), else None."""
    if not isinstance(node, str) or not node:
        return "a hub's node name must be a non-empty string"
    if len(node) > MAX_NODE_NAME or not _NODE_RE.match(node):
        return (f"bad node name {node[:MAX_NODE_NAME]!r}: up to {MAX_NODE_NAME} letters, "
                "digits, '_', '-', '.' (not first)")
    return None


def partition_name(topic: str, index: int) -> str:
    return f"{topic}.{index}"


def split_partition_name(name: str) -> tuple[str, int]:
    """``"orders.3"`` -> ``("orders", 3)``; ValueError if ``name`` is not a partition name."""
    m = _PARTITION_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a partition name (<topic>.<index>)")
    return m.group("topic"), int(m.group("index"))


@dataclass(frozen=True, slots=True)
class ClusterPaths:
    """The absolute ZooKeeper paths of one cluster, under its ``chroot``."""

    chroot: str

    @property
    def hubs(self) -> str:
        return f"{self.chroot}/hubs"

    @property
    def controller(self) -> str:
        return f"{self.chroot}/controller"

    @property
    def controller_epoch(self) -> str:
        return f"{self.chroot}/controller_epoch"

    @property
    def topics(self) -> str:
        return f"{self.chroot}/topics"

    @property
    def partitions(self) -> str:
        return f"{self.chroot}/partitions"

    def hub(self, node: str) -> str:
        return f"{self.hubs}/{node}"

    def topic(self, topic: str) -> str:
        return f"{self.topics}/{topic}"

    def partition(self, name: str) -> str:
        return f"{self.partitions}/{name}"

    def roots(self) -> tuple[str, ...]:
        """The persistent parents every member makes sure exist."""
        return (self.hubs, self.controller, self.topics, self.partitions)


# --- the nodes' data ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubInfo:
    """A live hub: its node name and the endpoints clients and peers reach it on."""

    node: str
    endpoint: str  # the ROUTER endpoint it advertises (``--advertise``)
    pub: str | None = None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic placed in the cluster: ``assignment[i]`` is partition i's replicas, preferred
    leader first. ``min_insync``: how many in-sync replicas (leader included) a publish needs
    before it is confirmed."""

    name: str
    partitions: int
    replicas: int
    min_insync: int
    assignment: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, not {self.partitions}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {self.replicas}")
        if not 1 <= self.min_insync <= self.replicas:
            raise ValueError(f"min_insync must be 1..{self.replicas} (the replicas), "
                             f"not {self.min_insync}")
        if len(self.assignment) != self.partitions:
            raise ValueError("the assignment must list every partition")
        for replicas in self.assignment:
            if len(replicas) != self.replicas or len(set(replicas)) != len(replicas):
                raise ValueError(f"each partition needs {self.replicas} distinct replicas")

    def partition_names(self) -> list[str]:
        return [partition_name(self.name, i) for i in range(self.partitions)]


@dataclass(frozen=True, slots=True)
class PartitionState:
    """Who leads a partition and who is in sync with it.

    ``leader`` is None while the partition is unavailable (no in-sync replica is live: no
    unclean election). ``epoch`` grows by one at every leader change (to None too), so a
    deposed leader's writes and replication requests carry a stale epoch. ``isr`` (in-sync
    replicas, leader included, in replica order) is never empty: an unavailable partition
    keeps its last in-sync replicas, so that one of them coming back can lead again.
    ``controller_epoch``: the controller term that last wrote it (for diagnostics).
    """

    topic: str
    partition: int
    leader: str | None
    epoch: int
    replicas: tuple[str, ...]
    isr: tuple[str, ...]
    controller_epoch: int = 0
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", partition_name(self.topic, self.partition))
        if self.partition < 0 or self.epoch < 0:
            raise ValueError("partition and epoch are never negative")
        if not self.replicas or len(set(self.replicas)) != len(self.replicas):
            raise ValueError("a partition needs distinct replicas")
        if not self.isr or not set(self.isr) <= set(self.replicas):
            raise ValueError("the in-sync replicas must be a non-empty subset of the replicas")
        if len(set(self.isr)) != len(self.isr):
            raise ValueError("the in-sync replicas are distinct")
        if self.leader is not None and self.leader not in self.isr:
            raise ValueError("the leader is always in sync")

    @property
    def available(self) -> bool:
        return self.leader is not None

    def followers(self) -> tuple[str, ...]:
        """The replicas other than the leader (in sync or not)."""
        return tuple(r for r in self.replicas if r != self.leader)


# --- codecs ------------------------------------------------------------------------------------


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps({"v": FORMAT, **obj}, separators=(",", ":"), sort_keys=True).encode()


def _load(data: bytes | None, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"{what}: not a JSON object")
    if obj.get("v") != FORMAT:
        raise LayoutError(f"{what}: format {obj.get('v')!r}, this version reads {FORMAT}")
    return obj


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise LayoutError(f"{what}: expected a list of node names")
    return tuple(value)


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise LayoutError(f"{what}: expected an integer")
    return value


def encode_hub(info: HubInfo) -> bytes:
    return _dump({"node": info.node, "endpoint": info.endpoint, "pub": info.pub})


def decode_hub(data: bytes | None) -> HubInfo:
    obj = _load(data, "hub")
    node, endpoint, pub = obj.get("node"), obj.get("endpoint"), obj.get("pub")
    if not isinstance(node, str) or not isinstance(endpoint, str):
        raise LayoutError("hub: node and endpoint must be strings")
    if pub is not None and not isinstance(pub, str):
        raise LayoutError("hub: pub must be a string or null")
    return HubInfo(node, endpoint, pub)


def encode_topic(spec: TopicSpec) -> bytes:
    return _dump({"name": spec.name, "partitions": spec.partitions, "replicas": spec.replicas,
                  "min_insync": spec.min_insync,
                  "assignment": [list(r) for r in spec.assignment]})


def decode_topic(data: bytes | None) -> TopicSpec:
    obj = _load(data, "topic")
    assignment = obj.get("assignment")
    if not isinstance(assignment, list):
        raise LayoutError("topic: assignment must be a list")
    name = obj.get("name")
    if not isinstance(name, str):
        raise LayoutError("topic: name must be a string")
    try:
        return TopicSpec(name, _int(obj.get("partitions"), "topic.partitions"),
                         _int(obj.get("replicas"), "topic.replicas"),
                         _int(obj.get("min_insync"), "topic.min_insync"),
                         tuple(_names(r, "topic.assignment") for r in assignment))
    except ValueError as exc:
        raise LayoutError(f"topic: {exc}") from None


def encode_partition(state: PartitionState) -> bytes:
    return _dump({"topic": state.topic, "partition": state.partition, "leader": state.leader,
                  "epoch": state.epoch, "replicas": list(state.replicas),
                  "isr": list(state.isr), "controller_epoch": state.controller_epoch})


def decode_partition(data: bytes | None) -> PartitionState:
    obj = _load(data, "partition")
    topic, leader = obj.get("topic"), obj.get("leader")
    if not isinstance(topic, str):
        raise LayoutError("partition: topic must be a string")
    if leader is not None and not isinstance(leader, str):
        raise LayoutError("partition: leader must be a node name or null")
    try:
        return PartitionState(topic, _int(obj.get("partition"), "partition.partition"), leader,
                              _int(obj.get("epoch"), "partition.epoch"),
                              _names(obj.get("replicas"), "partition.replicas"),
                              _names(obj.get("isr"), "partition.isr"),
                              _int(obj.get("controller_epoch", 0), "partition.controller_epoch"))
    except ValueError as exc:
        raise LayoutError(f"partition: {exc}") from None


def encode_controller_epoch(epoch: int, node: str) -> bytes:
    return _dump({"epoch": epoch, "node": node})


def decode_controller_epoch(data: bytes | None) -> tuple[int, str | None]:
    """``(epoch, node)``; an empty node (never written) is epoch 0."""
    if not data:
        return 0, None
    obj = _load(data, "controller_epoch")
    node = obj.get("node")
    return _int(obj.get("epoch"), "controller_epoch.epoch"), node if isinstance(node, str) else None


def in_replica_order(replicas: Iterable[str], members: Iterable[str]) -> tuple[str, ...]:
    """``members`` (a subset of ``replicas``) in the order of ``replicas``."""
    wanted = set(members)
    return tuple(r for r in replicas if r in wanted)
