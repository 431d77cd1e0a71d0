"""Prometheus metrics for the hub (``zmq-mq hub --metrics-port N``).

A custom collector reads the hub's own counters (router/stats.py) at scrape time, so the hot
path pays nothing for metrics. The scrape runs on the HTTP server's thread and never touches
the hub's state directly: it asks the loop for a snapshot (:meth:`Hub.snapshot_stats`), which
the loop takes at the end of its next turn (within 100 ms).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .hub import Hub

__all__ = ["HubCollector", "MetricsServer"]

SCRAPE_TIMEOUT_S = 2.0  # a hub that cannot take a snapshot in 2 s reports zmq_mq_up 0

_SUB_LABELS = ["topic", "group"]
# (STATS field, metric name without _total, help)
_SUB_COUNTERS = (
    ("delivered", "zmq_mq_subscription_delivered", "Messages handed to actors (redeliveries included)."),
    ("acked", "zmq_mq_subscription_acked", "Messages an ACK made done (a duplicate ack counts once)."),
    ("redelivered", "zmq_mq_subscription_redelivered", "Hand-outs after the first of a message."),
    ("dead_lettered", "zmq_mq_subscription_dead_lettered", "Messages moved to the dead-letter topic."),
)
_SUB_GAUGES = (
    ("lag", "zmq_mq_subscription_lag", "Messages published and not yet done (pending + in flight)."),
    ("in_flight", "zmq_mq_subscription_in_flight", "Messages handed out and not settled."),
    ("actors", "zmq_mq_subscription_actors", "Actors attached now."),
    ("ack_floor", "zmq_mq_subscription_ack_floor", "Highest sequence with everything up to it done."),
)
_TOTALS = (
    ("published", "zmq_mq_published", "Records appended (dead letters and redrives included)."),
    ("delivered", "zmq_mq_delivered", "Messages handed to actors (redeliveries included)."),
    ("acked", "zmq_mq_acked", "Messages an ACK made done."),
    ("redelivered", "zmq_mq_redelivered", "Hand-outs after the first of a message."),
    ("dead_lettered", "zmq_mq_dead_lettered", "Messages moved to dead-letter topics."),
    ("errors", "zmq_mq_errors", "ERROR answers sent to clients."),
)


class HubCollector(Collector):
    """Turns one STATS snapshot into Prometheus metric families at each scrape."""

    def __init__(self, hub: Hub, timeout: float = SCRAPE_TIMEOUT_S) -> None:
        self.hub = hub
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        stats = self.hub.snapshot_stats(self.timeout)
        up = GaugeMetricFamily("zmq_mq_up", "1 if the hub loop answered this scrape.")
        up.add_metric([], 0 if stats is None else 1)
        yield up
        if stats is None:
            return
        yield from metric_families(stats)


def metric_families(stats: dict) -> Iterator[Metric]:
    """The metric families of one STATS document (pure: tested without a hub)."""
    for field, name, doc in _TOTALS:
        c = CounterMetricFamily(name, doc)
        c.add_metric([], stats["totals"].get(field, 0))
        yield c
    published = CounterMetricFamily("zmq_mq_topic_published", "Records appended to the topic.", labels=["topic"])
    messages = GaugeMetricFamily("zmq_mq_topic_messages", "Records stored in the topic.", labels=["topic"])
    nbytes = GaugeMetricFamily("zmq_mq_topic_bytes", "Record bytes stored in the topic.", labels=["topic"])
    last = GaugeMetricFamily("zmq_mq_topic_last_seq", "Highest sequence assigned in the topic.", labels=["topic"])
    for t in stats["topics"]:
        label = [t["topic"]]
        published.add_metric(label, t["published"])
        messages.add_metric(label, t["messages"])
        nbytes.add_metric(label, t["bytes"])
        last.add_metric(label, t["last_seq"])
    yield from (published, messages, nbytes, last)
    for field, name, doc in _SUB_COUNTERS:
        c = CounterMetricFamily(name, doc, labels=_SUB_LABELS)
        for s in stats["subscriptions"]:
            c.add_metric([s["topic"], s["group"]], s[field])
        yield c
    for field, name, doc in _SUB_GAUGES:
        g = GaugeMetricFamily(name, doc, labels=_SUB_LABELS)
        for s in stats["subscriptions"]:
            g.add_metric([s["topic"], s["group"]], s[field])
        yield g
    lat = stats["publish_latency"]
    yield HistogramMetricFamily(
        "zmq_mq_publish_latency_seconds",
        "PUBLISH received to CONFIRM sent, the group commit included.",
        buckets=[(str(bound) if bound != "+Inf" else "+Inf", n) for bound, n in lat["buckets"]],
        sum_value=lat["sum"],
    )


class MetricsServer:
    """An HTTP server on its own thread answering ``GET /metrics`` for one hub."""

    def __init__(self, hub: Hub, port: int = 0, addr: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.addr = addr
        self.port = port

    def start(self) -> MetricsServer:
        self._server, self._thread = start_http_server(self.port, self.addr, self.registry)
        self.port = self._server.server_port
        return self

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None
