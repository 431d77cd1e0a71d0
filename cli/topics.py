"""Topics: ``zmq-mq topics`` lists them with their subscriptions; ``zmq-mq topic
create|config|delete`` sets a topic's limits and partitions (Admin.create_topic /
configure_topic / delete_topic).

Registered on the main typer app by cli/main.py.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from ..actors.admin import Admin
from ..actors.connection import request
from ..actors.errors import HubError, HubUnavailable, ZmqMqError
from ..router.endpoint import is_cluster_address
from ..router.protocol import Command
from .common import (
    CurveKeyOption,
    HubOption,
    ServerKeyOption,
    TimeoutOption,
    console,
    curve_keys,
    fail,
)

# --- topics (the list) -------------------------------------------------------------------------


def topics(
    hub: Optional[str] = HubOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    timeout: float = typer.Option(5.0, "--timeout"),
    curve_key: Optional[str] = CurveKeyOption,
    server_key: Optional[str] = ServerKeyOption,
) -> None:
    """Topics with their message counts and subscriptions (with an ACL: those you may use)."""
    keys = curve_keys(curve_key, server_key)
    try:
        if is_cluster_address(hub):  # every hub's topics, each row naming its hub ("node")
            with Admin(hub, timeout=timeout, curve=keys) as admin:
                data = admin.topics()
        else:
            data = request(hub, Command.TOPICS, timeout=timeout, curve=keys)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(title="zmq-mq topics")
    for col in ("topic", "messages", "first", "last", "bytes", "subscription", "ack floor", "lag", "in flight", "actors"):
        table.add_column(col, justify="left" if col in ("topic", "subscription") else "right")
    for t in data:
        subs = t["subscriptions"] or [None]
        name = f"{t['topic']}@{t['node']}" if "node" in t else t["topic"]
        for i, s in enumerate(subs):
            head = [name, str(t["messages"]), str(t["first_seq"]), str(t["last_seq"]), str(t["bytes"])] if i == 0 else [""] * 5
            tail = [s["group"], str(s["ack_floor"]), str(s["lag"]), str(s["in_flight"]), str(s["actors"])] if s else ["-", "", "", "", ""]
            table.add_row(*head, *tail)
    console().print(table)


# --- topic create | config | delete ------------------------------------------------------------


topic_app = typer.Typer(no_args_is_help=True, help="Topics: create one with limits or partitions, show or change its limits, delete it.")

_MaxMessages = typer.Option(None, "--max-messages", min=0, help="Messages kept at most (0: unlimited).")
_MaxBytes = typer.Option(None, "--max-bytes", min=0, help="Stored record bytes at most (0: unlimited).")
_MaxAge = typer.Option(None, "--max-age", min=0, help="Seconds a message is kept at most (0: unlimited).")
_Retention = typer.Option(None, "--retention", help="'limits' (default): keep messages up to the "
                          "limits; 'workqueue': delete a message once every subscription acked it.")
_Discard = typer.Option(None, "--discard", help="At the limit: 'old' deletes the oldest (default), "
                        "'new' refuses publishes with topic_full.")


def _check_discard(discard: str | None, retention: str | None) -> None:
    if discard is not None and discard not in ("old", "new"):
        fail("--discard must be old or new", 2)
    if retention is not None and retention not in ("limits", "workqueue"):
        fail("--retention must be limits or workqueue", 2)


def _show(result: dict) -> None:
    typer.echo(json.dumps(result["config"] if "config" in result else result, sort_keys=True))


@topic_app.command("create")
def create(
    name: str = typer.Argument(..., help="Topic name."),
    max_messages: int | None = _MaxMessages,
    max_bytes: int | None = _MaxBytes,
    max_age: float | None = _MaxAge,
    discard: str | None = _Discard,
    retention: str | None = _Retention,
    partitions: int | None = typer.Option(None, "--partitions", min=1, max=1024, help="Store the topic as N "
                                          "partitions (only for a new topic): a keyed message goes to "
                                          "partition hash(key) mod N, subscribers read all of them."),
    replicas: int | None = typer.Option(None, "--replicas", min=1, max=16, help="Cluster only (--hub "
                                        "zk://...): hubs holding each partition (default 1)."),
    min_insync: int | None = typer.Option(None, "--min-insync", min=1, help="Cluster only: "
                                          "in-sync replicas a publish needs before it is "
                                          "confirmed (default min(2, replicas))."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Set a topic's limits (fields not given take their defaults); prints the config as JSON.
    With --hub zk://...: place a cluster topic of --partitions over the hubs, --replicas each."""
    _check_discard(discard, retention)
    cluster = is_cluster_address(hub)
    if (replicas is not None or min_insync is not None) and not cluster:
        fail("--replicas and --min-insync place a topic in a cluster: give --hub "
             "zk://HOST:PORT/CHROOT", 2)
    try:
        with Admin(hub, timeout=timeout) as admin:
            if cluster:
                result = admin.create_topic(name, partitions=partitions, replicas=replicas or 1,
                                            min_insync=min_insync, max_messages=max_messages, discard=discard,
                                            max_age=max_age, retention=retention,
                                            max_bytes=max_bytes)
            else:
                result = admin.create_topic(name, max_messages=max_messages, discard=discard or "old",
                                            max_age=max_age, retention=retention or "limits",
                                            max_bytes=max_bytes, partitions=partitions)
    except ValueError as exc:
        fail(str(exc), 2)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    _show(result)


@topic_app.command("config")
def config(
    name: str = typer.Argument(..., help="Topic name."),
    max_messages: int | None = _MaxMessages,
    max_bytes: int | None = _MaxBytes,
    max_age: float | None = _MaxAge,
    discard: str | None = _Discard,
    retention: str | None = _Retention,
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Show a topic's limits as JSON, or change only the ones given."""
    _check_discard(discard, retention)
    given = (("max_messages", max_messages), ("max_bytes", max_bytes), ("max_age", max_age),
             ("discard", discard), ("retention", retention))
    changes = {k: v for k, v in given if v is not None}
    try:
        with Admin(hub, timeout=timeout) as admin:
            if changes:
                result = admin.configure_topic(name, **changes)["config"]
            else:
                result = admin.topic_config(name)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(result, sort_keys=True))


@topic_app.command("delete")
def delete(
    name: str = typer.Argument(..., help="Topic name."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Delete a topic for good: its messages, limits, partitions and subscriptions."""
    try:
        with Admin(hub, timeout=timeout) as admin:
            result = admin.delete_topic(name)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    groups = ", ".join(result["subscriptions"]) or "none"
    typer.echo(f"deleted topic {result['topic']}: {result['messages']} messages, "
               f"subscriptions: {groups}")
