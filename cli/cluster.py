"""Cluster mode on the command line: ``zmq-mq cluster status`` (hubs, partitions, leaders,
in-sync replicas, replication lag), read from ZooKeeper (router/cluster/coordinator's
ClusterClient; kazoo, the ``cluster`` extra) and each leader's METADATA. ``zmq-mq topic create
--hub zk://... --replicas R`` goes through the client library's cluster Admin (cli/topics.py).

Registered on the main typer app by cli/main.py.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from .common import HubOption, fail

cluster_app = typer.Typer(no_args_is_help=True,
                          help="Cluster mode (hubs coordinated by ZooKeeper).")

# Seconds to wait for each hub's METADATA (its replication positions) in `cluster status`.
HUB_ANSWER_TIMEOUT = 2.0


def _client(address: str, timeout: float):
    try:
        from ..router.cluster.coordinator import ClusterClient
    except ImportError as exc:
        fail(str(exc), 2)
    from ..router.cluster.errors import ClusterError

    try:
        return ClusterClient(address).start(timeout)
    except ClusterError as exc:
        fail(str(exc))


def _replication(hubs: dict[str, dict]) -> dict[str, dict]:
    """Each live hub's METADATA ``replication`` (what it leads: log end, followers' positions)."""
    import zmq

    from ..router import protocol
    from ..router.protocol import Command

    out: dict[str, dict] = {}
    ctx = zmq.Context.instance()
    for node, hub in hubs.items():
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(hub["endpoint"])
            sock.send_multipart(protocol.encode(Command.METADATA, {}))
            if sock.poll(int(HUB_ANSWER_TIMEOUT * 1000)):
                command, body = protocol.decode(sock.recv_multipart(), protocol.HUB_COMMANDS)
                if command == Command.METADATA and isinstance(body, dict):
                    out.update(body.get("replication") or {})
        except (zmq.ZMQError, protocol.DecodeError):
            continue
        finally:
            sock.close(linger=0)
    return out


def status_document(address: str, timeout: float) -> dict[str, Any]:
    """ClusterClient.status() plus, per partition, its leader's log end and each follower's
    lag (records it does not hold yet; None: not fetched since the leader took over)."""
    from ..router.cluster.errors import ClusterError

    client = _client(address, timeout)
    try:
        doc = client.status()
    except ClusterError as exc:
        fail(str(exc))
    finally:
        client.close()
    replication = _replication(doc["hubs"])
    for name, part in doc["partitions"].items():
        rep = replication.get(name)
        if rep is None or rep.get("epoch") != part["epoch"]:
            part["last_seq"] = None
            part["lag"] = {}
            continue
        last = rep["last_seq"]
        part["last_seq"] = last
        part["lag"] = {f: (None if pos is None else max(0, last - pos))
                       for f, pos in rep["followers"].items()}
    return doc


@cluster_app.command("status")
def status(
    hub: Optional[str] = HubOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for ZooKeeper."),
) -> None:
    """Hubs, controller, topics, and each partition's leader, epoch, in-sync replicas and
    replication lag (from the cluster's ZooKeeper: --hub zk://HOST:PORT/CHROOT)."""
    if not hub or not hub.startswith("zk://"):
        fail("cluster status needs the cluster's address: --hub zk://HOST:PORT[,...]/CHROOT", 2)
    doc = status_document(hub, timeout)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    from rich.table import Table

    from .common import console

    out = console()
    out.print(f"controller: {doc['controller']} (epoch {doc['controller_epoch']})")
    hubs = Table(title="hubs")
    for col in ("node", "endpoint", "pub"):
        hubs.add_column(col)
    for node, h in doc["hubs"].items():
        hubs.add_row(node, h["endpoint"], h["pub"] or "-")
    out.print(hubs)
    parts = Table(title="partitions")
    for col in ("partition", "leader", "epoch", "replicas", "in sync", "last seq", "lag"):
        parts.add_column(col)
    for name, p in doc["partitions"].items():
        lag = ", ".join(f"{f}: {'?' if n is None else n}" for f, n in p["lag"].items()) or "-"
        parts.add_row(name, p["leader"] or "UNAVAILABLE", str(p["epoch"]),
                      ",".join(p["replicas"]), ",".join(p["isr"]),
                      "-" if p["last_seq"] is None else str(p["last_seq"]), lag)
    out.print(parts)
