"""Admin: the operator's client for the hub (stats, topics, reading and moving dead letters).

One connection, one request at a time; what ``zmq-mq stats`` and ``zmq-mq dlq`` use::

    with Admin("tcp://127.0.0.1:5555") as admin:
        admin.stats()["subscriptions"]
        for msg in admin.scan("orders"):     # StoredMessage: topic, seq, key, headers, payload
            ...
        letters = admin.dead_letters("billing")
        admin.redrive("dlq.billing", [letter["seq"] for letter in letters])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import zmq

from ..router import protocol
from ..router.endpoint import is_cluster_address
from ..router.protocol import Command, DecodeError
from .connection import ENV_HUB, Connection, CurveKeys, monotonic_ms
from .errors import HubError, HubUnavailable
from .message import StoredMessage

__all__ = ["FETCH_PAGE", "Admin"]

FETCH_PAGE = 1000  # records per FETCH (the hub's maximum)


class Admin:
    """Operator requests to one hub. Not thread-safe; ``close()`` (or ``with``) when done.

    Given a cluster address it is a :class:`~zmq_mq.actors.cluster_admin.ClusterAdmin`."""

    def __new__(cls, endpoint: str | None = None, *args: Any, **kwargs: Any) -> "Admin":
        if cls is Admin and is_cluster_address(endpoint or os.environ.get(ENV_HUB)):
            from .cluster_admin import ClusterAdmin

            return super().__new__(ClusterAdmin)
        return super().__new__(cls)

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None) -> None:
        self.timeout = timeout
        self._conn = Connection(endpoint, name="admin", context=context, curve=curve)
        self._ref = 0
        self._open = False

    @property
    def endpoint(self) -> str:
        return self._conn.endpoint

    @property
    def welcome(self) -> dict:
        """The hub's WELCOME (``pub``: its live-feed endpoint, ``limits``, ...)."""
        self._ensure()
        return self._conn.welcome

    def _ensure(self, timeout: float | None = None) -> None:
        if not self._open:
            self._conn.open(self.timeout if timeout is None else timeout)
            self._open = True

    def call(self, command: bytes, *args: Any) -> Any:
        """Send ``[ref, *args]`` and return the ``result`` of the matching ``REPLY [ref, result]``.

        Raises HubError if the hub refuses, HubUnavailable if it does not answer in time:
        ``timeout`` bounds the whole request, connecting included.
        """
        deadline = monotonic_ms() + int(self.timeout * 1000)
        self._ensure(max(deadline - monotonic_ms(), 1) / 1000)
        self._ref += 1
        ref = self._ref
        conn = self._conn
        conn.send(command, [ref, *args])
        while True:
            left = deadline - monotonic_ms()
            if left <= 0 or not conn.socket.poll(left, zmq.POLLIN):
                self.close()  # a late answer must not be taken for the next request's
                raise HubUnavailable(f"no answer to {command.decode()} within {self.timeout:g} s")
            try:
                reply, body = conn.recv()
            except DecodeError:
                continue
            if reply == Command.REPLY and isinstance(body, list) and len(body) == 2 and body[0] == ref:
                return body[1]
            if reply == Command.ERROR:
                err = protocol.parse_error(body)
                if err.get("ref") in (ref, None):
                    raise HubError.from_body(err)

    # --- requests ------------------------------------------------------------------------

    def stats(self) -> dict:
        return self.call(Command.STATS)

    def topics(self) -> list[dict]:
        return self.call(Command.TOPICS)

    def fetch(self, topic: str, from_seq: int = 0, max_count: int = FETCH_PAGE) -> list[StoredMessage]:
        """Up to ``max_count`` stored messages of ``topic`` with ``seq >= from_seq``, in order."""
        return [StoredMessage.from_record(topic, seq, record)
                for seq, record in self.call(Command.FETCH, topic, from_seq, max_count)]

    def scan(self, topic: str, from_seq: int = 0) -> Iterator[StoredMessage]:
        """Every stored message of ``topic`` from ``from_seq`` on, page by page."""
        while True:
            page = self.fetch(topic, from_seq)
            yield from page
            if len(page) < 1:
                return
            from_seq = page[-1].seq + 1

    def purge(self, topic: str, seqs: list[int] | str) -> dict:
        """Delete records (a list of seqs, or ``"all"``): ``{"topic", "purged", ["seqs"]}``."""
        return self.call(Command.PURGE, topic, seqs)

    def redrive(self, topic: str, seqs: list[int]) -> dict:
        """Send dead letters back to their origin topics and remove them here, atomically:
        ``{"topic", "redriven", "results": [{"seq", "topic", "new_seq"} or {"seq", "error"}]}``."""
        return self.call(Command.REDRIVE, topic, seqs)

    def create_topic(self, name: str, *, max_messages: int | None = None, discard: str = "old",
                     max_age: float | None = None, retention: str = "limits",
                     max_bytes: int | None = None, partitions: int | None = None) -> dict:
        """Set a topic's limits from the defaults (``max_age`` in seconds):
        ``{"topic", "config"}`` with the config as :meth:`topic_config` gives it.

        ``partitions=N`` (only when the topic is new): the topic is stored as N topics
        ``<name>.0`` .. ``<name>.<N-1>``; a message with a key goes to partition
        ``crc32(key) mod N``, one without a key to the next partition in turn; subscribing to
        ``<name>`` reads every partition (one subscription of the group per partition). The
        limits apply to each partition."""
        config = {"max_messages": max_messages, "discard": discard, "max_age_ms": _ms(max_age),
                  "retention": retention, "max_bytes": max_bytes}
        if partitions is not None:
            config["partitions"] = partitions
        return _seconds(self.call(Command.TOPIC, "create", name, config))

    def configure_topic(self, name: str, **limits: object) -> dict:
        """Change only the given limits of a topic (``max_messages``, ``max_bytes``, ``discard``, ``max_age``
        in seconds, ``retention``; 0 lifts a limit)."""
        if "max_age" in limits:
            limits["max_age_ms"] = _ms(limits.pop("max_age"))  # type: ignore[arg-type]
        return _seconds(self.call(Command.TOPIC, "config", name, limits))

    def topic_config(self, name: str) -> dict:
        """A topic's limits (the defaults when it has none): ``max_messages``, ``max_bytes``, ``discard``,
        ``max_age`` (seconds), ``retention``; None means unlimited."""
        return _seconds(self.call(Command.TOPIC, "get", name, None))["config"]

    def delete_topic(self, name: str) -> dict:
        """Delete a topic for good: its messages, its limits, its partitions and every
        subscription on it (attached actors are detached; publishing to the name again starts a
        new topic at sequence 1). Returns ``{"topic", "deleted", "messages", "subscriptions",
        "partitions"}``; a topic that does not exist is a HubError ``invalid``."""
        return self.call(Command.TOPIC, "delete", name, None)

    def dead_letters(self, group: str) -> list[dict]:
        """The dead letters of subscription ``group`` (``dlq.<group>``), described."""
        return [protocol.describe_dead_letter(msg.seq, msg.record)
                for msg in self.scan(protocol.dlq_topic(group))]

    def close(self) -> None:
        self._conn.close()
        self._open = False

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _seconds(result: dict) -> dict:
    """A TOPIC answer with ``max_age_ms`` given as ``max_age`` in seconds."""
    config = dict(result["config"])
    ms = config.pop("max_age_ms", None)
    config["max_age"] = None if ms is None else ms / 1000
    return {**result, "config": config}
