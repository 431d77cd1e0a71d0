"""The errors of cluster coordination, one tree, one line each."""

from __future__ import annotations


class ClusterError(Exception):
    """Base of every cluster-coordination error."""


class LayoutError(ClusterError, ValueError):
    """What ZooKeeper holds at a cluster path is not what this version writes there."""


class NotEnoughHubsError(ClusterError, ValueError):
    """A topic asks for more replicas than there are live hubs to hold them."""


class TopicExistsError(ClusterError):
    """A topic of that name is already placed in the cluster."""


class NoSuchPartitionError(ClusterError, KeyError):
    """No partition of that name is placed in the cluster."""


class StaleEpochError(ClusterError):
    """A write by a leader whose epoch is no longer the partition's (it was fenced)."""


class FencedError(ClusterError):
    """This member lost its ZooKeeper connection or session: it may not act as a leader."""


class ClusterTimeout(ClusterError, TimeoutError):
    """The cluster did not reach the awaited state in time (no controller, no ZooKeeper...)."""
