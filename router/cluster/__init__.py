"""Cluster mode's coordination: partitions spread over several hubs, coordinated by ZooKeeper.

The pure parts import nothing beyond the standard library: ``address`` (the ``zk://`` address),
``layout`` (ZooKeeper paths and node codecs), ``placement`` (assignment and elections),
``errors``. ``coordinator`` (``ClusterClient``, ``ClusterMember``) needs kazoo, the optional
``cluster`` extra; import it explicitly. docs/CLUSTER.md describes the whole design.
"""

from .address import ClusterAddress, parse_cluster_address
from .errors import (
    ClusterError,
    ClusterTimeout,
    FencedError,
    LayoutError,
    NoSuchPartitionError,
    NotEnoughHubsError,
    StaleEpochError,
    TopicExistsError,
)
from .layout import ClusterPaths, HubInfo, PartitionState, TopicSpec
from .placement import assign, change_isr, default_min_insync, elect, initial_state, make_topic

__all__ = [
    "ClusterAddress", "ClusterError", "ClusterPaths", "ClusterTimeout", "FencedError", "HubInfo",
    "LayoutError", "NoSuchPartitionError", "NotEnoughHubsError", "PartitionState",
    "StaleEpochError", "TopicExistsError", "TopicSpec", "assign", "change_isr",
    "default_min_insync", "elect", "initial_state", "make_topic", "parse_cluster_address",
]
