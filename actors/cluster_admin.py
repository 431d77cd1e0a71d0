"""ClusterAdmin: the operator's client over a cluster (``Admin("zk://...")`` makes one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from ..router import protocol
from .admin import Admin
from .cluster import (
    ClusterUnavailable,
    Metadata,
    MetadataCache,
    ZooKeeperSource,
    cluster_address,
    make_source,
)
from .errors import HubError, InvalidMessage, ZmqMqError


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
        """Per hub (its live feed, its limits): a cluster has no one WELCOME."""
        raise ZmqMqError("a cluster has no one WELCOME (live feed, limits): ask one hub, "
                         "by its endpoint (`zmq-mq topics --hub zk://...` names the hubs)")

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
            n = meta.topics[topic]
            raise InvalidMessage(f"{topic!r} is a cluster topic of {n} partitions: "
                                 f"name one of them ({topic}.0 .. {topic}.{n - 1})")
        endpoint = meta.leader_endpoint(topic)
        if endpoint is None:
            if topic in meta.leaders:
                raise HubError("unavailable", f"partition {topic} has no leader now")
            return self._any()  # not a cluster partition (e.g. dlq.<group>): any hub
        return self._admin(endpoint)

    def _on_leader(self, topic: str, call: Callable[[Admin], Any]) -> Any:
        """``call`` on the leader of partition ``topic``, following a ``not_leader`` answer
        (its leader hint, or the placement read again) until the timeout: a leader that moved
        since the placement was read, or a hub that is no longer its leader."""
        deadline = time.monotonic() + self.timeout
        admin: Admin | None = None
        while True:
            try:
                if admin is None:
                    admin = self._leader(topic)
                return call(admin)
            except HubError as exc:
                if exc.code not in ("not_leader", "unavailable") or time.monotonic() > deadline:
                    raise
                endpoint = exc.extra.get("leader_endpoint")
                if endpoint and (admin is None or endpoint != admin.endpoint):
                    admin = self._admin(endpoint)
                    continue
                time.sleep(0.1)  # the new leader is not known yet: read the placement again
                admin = None

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
                leads = meta.leaders.get(row.get("topic")) == node
                rows.append({**row, "node": node, "leader": leads})
        return rows

    def fetch(self, topic: str, from_seq: int = 0, max_count: int = 1000) -> list:
        return self._leader(topic).fetch(topic, from_seq, max_count)

    def purge(self, topic: str, seqs: Any, *, node: str | None = None) -> dict:
        """Purge a partition on its leader. A dead-letter topic is each hub's own: ``node``
        names the hub whose seqs ``seqs`` are (``dead_letters()`` gives each letter's); ``"all"``
        without ``node`` purges it on every hub (each removes the dead letters of the partitions
        it leads, from their followers too) and answers the total."""
        if node is not None:
            return self._on_node(node).purge(topic, seqs)
        if topic.startswith(protocol.dlq_topic("")):
            if seqs == "all":
                purged = sum(a.purge(topic, "all")["purged"] for a in self._each().values())
                return {"topic": topic, "purged": purged}
            return self._any().purge(topic, seqs)  # a foreign dead letter: not_leader, no hint
        return self._on_leader(topic, lambda a: a.purge(topic, seqs))

    def _on_node(self, node: str) -> Admin:
        endpoint = self.metadata().hubs.get(node)
        if endpoint is None:
            raise ClusterUnavailable(f"no live hub {node!r} in the cluster")
        return self._admin(endpoint)

    def redrive(self, topic: str, seqs: list[int], *, node: str | None = None) -> dict:
        """Redrive dead letters of ``topic``. A dead-letter topic is each hub's own (its seqs
        are that hub's): ``node`` names the hub (``dead_letters()`` gives each letter's)."""
        if node is not None:
            return self._on_node(node).redrive(topic, seqs)
        if topic in self.metadata().leaders:
            return self._on_leader(topic, lambda a: a.redrive(topic, seqs))
        return self._any().redrive(topic, seqs)

    def topic_config(self, name: str) -> dict:
        return self._on_leader(name, lambda a: a.topic_config(name))

    def configure_topic(self, name: str, **limits: object) -> dict:
        return self._on_leader(name, lambda a: a.configure_topic(name, **limits))

    def delete_topic(self, name: str) -> dict:
        return self._on_leader(name, lambda a: a.delete_topic(name))

    def dead_letters(self, group: str) -> list[dict]:
        """Every hub's dead letters of ``group``, each with the ``node`` holding it. A dead
        letter of a cluster partition is on each of its replicas (the state stream): it is
        listed once, from the partition's leader (the hub that redrives it)."""
        meta = self.metadata()
        out = []
        for node, admin in self._each().items():
            for letter in admin.dead_letters(group):
                leader = meta.leaders.get(letter.get("origin_topic"))
                if leader is None or leader == node:
                    out.append({**letter, "node": node})
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
