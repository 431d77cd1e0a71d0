"""Operator commands of ``zmq-mq``: ``stats`` (counters, lag, dead letters per subscription),
``dlq`` (list, show, redrive, purge dead letters) and ``bench`` (the one command line of the
zmq_mq.bench package; bench/bench.py runs it too: it starts its own hub processes through that
package, unless given --hub).

Registered on the main typer app by cli/main.py. Rendering is split from I/O (``stats_tables``,
``letter_json``) so that it is tested without a hub.
"""

from __future__ import annotations

import datetime as _dt
import json
import signal
import sys
import threading
from typing import Any

import typer

from ..actors.admin import Admin
from ..actors.errors import HubError, HubUnavailable, ZmqMqError
from ..router import protocol
from .common import HubOption, TimeoutOption, check_hub_option, console, fail, payload_fields

# Dead letters per REDRIVE / PURGE request: one hub commit each, small enough that a large redrive
# never holds the hub's loop for long and the progress bar moves.
DLQ_CHUNK = 500

dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters (topic dlq.<group>): list, show, redrive to their origin topic, purge.",
)


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --- stats ---------------------------------------------------------------------------------


def stats_tables(stats: dict):
    """Two rich tables (topics; subscriptions) for one STATS document; for a cluster's
    (``{"cluster": true, "hubs": {node: STATS}}``), the two of each hub."""
    from rich.console import Group
    from rich.table import Table

    if stats.get("cluster") and "hubs" in stats:
        return Group(*(stats_tables(one) for one in stats["hubs"].values()))

    topics = Table(title=f"topics (hub {stats.get('hub')}, up {stats.get('uptime_ms', 0) // 1000} s)")
    for col in ("topic", "messages", "bytes", "first", "last", "published", "rate/s"):
        topics.add_column(col, justify="left" if col == "topic" else "right")
    for t in stats["topics"]:
        topics.add_row(
            t["topic"], f"{t['messages']:,}", _size(t["bytes"]), str(t["first_seq"]),
            str(t["last_seq"]), f"{t['published']:,}", f"{t['publish_rate']:,.1f}",
        )
    subs = Table(title="subscriptions")
    cols = ("topic", "group", "ack floor", "lag", "in flight", "actors", "delivered", "acked",
            "redelivered", "dead-lettered")
    for col in cols:
        subs.add_column(col, justify="left" if col in ("topic", "group") else "right")
    for s in stats["subscriptions"]:
        subs.add_row(
            s["topic"], s["group"], str(s["ack_floor"]), f"{s['lag']:,}", str(s["in_flight"]),
            str(s["actors"]), f"{s['delivered']:,}", f"{s['acked']:,}", f"{s['redelivered']:,}",
            f"{s['dead_lettered']:,}",
        )
    return Group(topics, subs)


def stats(
    hub: str | None = HubOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (schema in docs/PROTOCOL.md)."),
    watch: bool = typer.Option(False, "--watch", help="Refresh the tables until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch."),
    timeout: float = TimeoutOption,
) -> None:
    """Topics and subscriptions: counts, lag, in flight, acks, redeliveries, dead letters.

    Topics: messages, bytes, first/last sequence, published and publish rate (last 10 s).
    Subscriptions: ack floor, lag, in flight, attached actors, delivered, acked, redelivered,
    dead-lettered. Counters count since the hub started.
    """
    if interval <= 0:
        fail("--interval must be positive", 2)
    try:
        with Admin(hub, timeout=timeout) as admin:
            data = admin.stats()
            if as_json:
                typer.echo(json.dumps(data, indent=2))
                return
            if not watch:
                console().print(stats_tables(data))
                return
            from rich.live import Live

            stop = threading.Event()
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
            screen = console()
            try:
                if screen.is_terminal:
                    with Live(stats_tables(data), console=screen, auto_refresh=False) as live:
                        while not stop.wait(interval):
                            live.update(stats_tables(admin.stats()), refresh=True)
                else:  # piped: Live would print only at the end; print each refresh instead
                    screen.print(stats_tables(data))
                    sys.stdout.flush()
                    while not stop.wait(interval):
                        screen.print(stats_tables(admin.stats()))
                        sys.stdout.flush()
            except KeyboardInterrupt:
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))


# --- dlq -----------------------------------------------------------------------------------

NodeOption = typer.Option(
    None, "--node", help="Cluster: the hub whose dead letters the seqs are (dlq list shows each "
    "letter's node; default: found by seq in that listing).")


def letter_json(letter: dict, group: str) -> dict:
    """A described dead letter as JSON-able data (payload as text, or base64 if not UTF-8)."""
    out = {k: v for k, v in letter.items() if k != "payload"}
    out["group"] = group
    out["dlq_topic"] = protocol.dlq_topic(group)
    out.update(payload_fields(letter["payload"]))
    return out


def _dlq_groups(admin: Admin) -> list[str]:
    prefix = "dlq."
    # through a cluster every hub has its own dlq.<group>: each group once
    return list(dict.fromkeys(t["topic"][len(prefix):] for t in admin.topics()
                              if t["topic"].startswith(prefix)))


@dlq_app.command("list")
def dlq_list(
    group: str | None = typer.Option(None, "--group", help="Subscription whose dead letters to list (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of dead letters."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Dead letters with their reason and origin (topic and sequence)."""
    try:
        with Admin(hub, timeout=timeout) as admin:
            groups = [group] if group else _dlq_groups(admin)
            letters = [(g, d) for g in groups for d in admin.dead_letters(g)]
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([letter_json(d, g) for g, d in letters], indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"dead letters ({len(letters)})")
    cluster = any("node" in d for _, d in letters)  # a cluster: seqs are each hub's own
    for col in ("group", *(("node",) if cluster else ()), "seq", "origin", "deliveries", "reason",
                "dead since", "key", "payload"):
        table.add_column(col, justify="right" if col in ("seq", "deliveries") else "left")
    for g, d in letters:
        text = d["payload"][:40].decode("utf-8", "replace")
        table.add_row(
            g, *((str(d.get("node", "")),) if cluster else ()), str(d["seq"]),
            f"{d['origin_topic']}:{d['origin_seq']}", str(d["deliveries"]),
            str(d["reason"]), _when(d["timestamp"]), str(d["key"] or ""), text,
        )
    console().print(table)


@dlq_app.command("show")
def dlq_show(
    seq: int = typer.Argument(..., help="Sequence of the dead letter in dlq.<group>."),
    group: str = typer.Option(..., "--group", help="Subscription that dead-lettered it."),
    node: str | None = NodeOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """One dead letter in full: origin, reason, deliveries, key, headers and payload."""
    topic = protocol.dlq_topic(group)
    try:
        with Admin(hub, timeout=timeout) as admin:
            if hasattr(admin, "metadata"):  # a cluster: the letter on the hub holding it
                on = _by_node(admin, group, [seq], False, node)
                letter = next(d for d in admin.dead_letters(group)
                              if d["seq"] == seq and d["node"] in on)
            else:
                if node is not None:
                    fail("--node needs a cluster address (--hub zk://... or a list of hubs)", 2)
                page = admin.fetch(topic, seq, 1)
                if not page or page[0].seq != seq:
                    fail(f"no dead letter {seq} in {topic}")
                letter = protocol.describe_dead_letter(page[0].seq, page[0].record)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    except StopIteration:
        fail(f"no dead letter {seq} in {topic} on {node}")
    data = letter_json(letter, group)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    for name in ("dlq_topic", "seq", "origin_topic", "origin_seq", "subscription", "deliveries",
                 "reason", "key"):
        typer.echo(f"{name:>17}: {data[name]}")
    typer.echo(f"{'origin time':>17}: {_when(data['origin_timestamp'])}")
    typer.echo(f"{'dead since':>17}: {_when(data['timestamp'])}")
    typer.echo(f"{'headers':>17}: {json.dumps(data['headers'], default=str)}")
    if "payload" in data:
        typer.echo(f"{'payload':>17}: {data['payload']}")
    else:
        typer.echo(f"{'payload (base64)':>17}: {data['payload_b64']}")


def _chosen(admin: Admin, topic: str, seqs: list[int], all_: bool) -> list[int]:
    if bool(seqs) == all_:
        fail("give --seq N (repeatable) or --all", 2)
    if all_:
        return [m.seq for m in admin.scan(topic)]
    return list(dict.fromkeys(seqs))


def _by_node(admin: Any, group: str, seqs: list[int], all_: bool,
             node: str | None) -> dict[str | None, list[int]]:
    """The dead letters to act on, by the hub holding them (key None: a single hub). In a
    cluster a dead letter's seq is its hub's own: ``node`` names the hub, else each seq is
    looked up in the listing (``dead_letters``: each letter once, on the hub that redrives it)."""
    if bool(seqs) == all_:
        fail("give --seq N (repeatable) or --all", 2)
    if not hasattr(admin, "metadata"):  # one hub
        if node is not None:
            fail("--node needs a cluster address (--hub zk://... or a list of hubs)", 2)
        return {None: _chosen(admin, protocol.dlq_topic(group), seqs, all_)}
    wanted = list(dict.fromkeys(seqs))
    if node is not None and not all_:
        return {node: wanted}
    out: dict[str | None, list[int]] = {}
    letters = admin.dead_letters(group)
    if all_:
        for d in letters:
            if node is None or d["node"] == node:
                out.setdefault(d["node"], []).append(d["seq"])
        return out
    for seq in wanted:
        nodes = sorted({d["node"] for d in letters if d["seq"] == seq})
        if not nodes:
            fail(f"no dead letter {seq} in {protocol.dlq_topic(group)} on any hub "
                 f"(zmq-mq dlq list --group {group} shows each with its node)")
        if len(nodes) > 1:
            fail(f"dead letter seq {seq} is on hubs {', '.join(nodes)} (each hub numbers its "
                 f"own): give --node", 2)
        out.setdefault(nodes[0], []).append(seq)
    return out


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console(stderr=True), transient=False, disable=total < DLQ_CHUNK,
    )


@dlq_app.command("redrive")
def dlq_redrive(
    group: str = typer.Option(..., "--group", help="Subscription whose dead letters to send back."),
    seq: list[int] = typer.Option([], "--seq", help="Sequence in dlq.<group> (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Every dead letter of the group."),
    node: str | None = NodeOption,
    as_json: bool = typer.Option(False, "--json", help="Print the per-letter results as JSON."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Send dead letters back to their origin topic and remove them from the DLQ.

    Same key, payload and headers (plus x-redriven-from); publish and removal happen in one hub
    transaction, so a crash in the middle neither loses nor duplicates a message. Through a
    cluster each dead letter is redriven on the hub that holds it (--node, or found by seq in
    the listing).
    """
    topic = protocol.dlq_topic(group)
    results: list[dict] = []
    try:
        with Admin(hub, timeout=timeout) as admin:
            by_node = _by_node(admin, group, seq, all_, node)
            total = sum(map(len, by_node.values()))
            with _progress(total, f"redriving {topic}") as progress:
                task = progress.add_task("redrive", total=total)
                for on, seqs in by_node.items():
                    for i in range(0, len(seqs), DLQ_CHUNK):
                        chunk = seqs[i : i + DLQ_CHUNK]
                        answer = (admin.redrive(topic, chunk) if on is None
                                  else admin.redrive(topic, chunk, node=on))
                        results += [r if on is None else {**r, "node": on}
                                    for r in answer["results"]]
                        progress.advance(task, len(chunk))
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    failed = [r for r in results if "error" in r]
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in failed:
            typer.echo(f"seq {r['seq']}: {r['error']}", err=True)
    typer.echo(f"redriven {len(results) - len(failed)} of {len(results)} dead letters from {topic}", err=True)
    if failed:
        raise typer.Exit(1)


@dlq_app.command("purge")
def dlq_purge(
    group: str = typer.Option(..., "--group", help="Subscription whose dead letters to delete."),
    seq: list[int] = typer.Option([], "--seq", help="Sequence in dlq.<group> (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Every dead letter of the group."),
    node: str | None = NodeOption,
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Delete dead letters for good (through a cluster: on the hub holding each, as redrive)."""
    topic = protocol.dlq_topic(group)
    if bool(seq) == all_:
        fail("give --seq N (repeatable) or --all", 2)
    purged = 0
    try:
        with Admin(hub, timeout=timeout) as admin:
            cluster = hasattr(admin, "metadata")
            if node is not None and not cluster:
                fail("--node needs a cluster address (--hub zk://... or a list of hubs)", 2)
            if all_ and node is None:  # a cluster: every hub purges what it leads
                purged = admin.purge(topic, "all")["purged"]
            elif not cluster:
                seqs = list(dict.fromkeys(seq))
                for i in range(0, len(seqs), DLQ_CHUNK):
                    purged += admin.purge(topic, seqs[i : i + DLQ_CHUNK])["purged"]
            else:
                for on, seqs in _by_node(admin, group, seq, all_, node).items():
                    for i in range(0, len(seqs), DLQ_CHUNK):
                        purged += admin.purge(topic, seqs[i : i + DLQ_CHUNK], node=on)["purged"]
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    typer.echo(f"purged {purged} dead letters from {topic}", err=True)


# --- bench ---------------------------------------------------------------------------------


def bench(
    workloads: str = typer.Option("W1,W2,W3", "--workloads", help="Comma-separated: W1 durable publish, W2 end to end, W3 publish-confirm latency; only when named: W4 end to end through an Actor, W2A W2 through a Consumer and through the README-default Actor (alternating), W5 publish-to-handler latency through the default Actor, W6 a backlog drained by a Consumer and by the default Actor."),
    messages: int | None = typer.Option(None, "--messages", help="Messages for W1, W2, W2A and W4 (default 200,000) and W6's backlog (default 1,000,000)."),
    sync: str = typer.Option("full", "--sync", help="The started hub's --sync (full or none)."),
    rate: float | None = typer.Option(None, "--rate", help="Target msg/s of W3 (default 5,000) and W5 (default 10,000)."),
    duration: float = typer.Option(10.0, "--duration", help="W3 and W5 seconds."),
    credit: int = typer.Option(1000, "--credit", help="Consumer credit (W2, and the Consumer of W2A and W6)."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Actor worker threads: W4 (default 8); W2A, W5, W6 (default: the Actor's own)."),
    prefetch: int | None = typer.Option(None, "--prefetch", help="Actor prefetch, messages held per worker thread: W4 (default 1); W2A, W5, W6 (default: the Actor's own)."),
    handler: str = typer.Option("sync", "--handler", help="W2A, W5, W6 Actor handler: sync (def, on worker threads) or async (async def)."),
    actor_credit: int | None = typer.Option(None, "--actor-credit", help="W2A, W5, W6: credit= asked in the Actor's subscribe (default: subscribe's own)."),
    rounds: int = typer.Option(2, "--rounds", help="W2A and W6: rounds of Consumer then Actor."),
    timeout: float = typer.Option(120.0, "--timeout", help="Bound on each workload's measured phase (s)."),
    hub: str | None = typer.Option(None, "--hub", callback=check_hub_option, help="Use this running hub (fresh topics per run) instead of starting one per workload in a temp dir."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
    json_out: str | None = typer.Option(None, "--json-out", help="Also write the JSON report to this file."),
) -> None:
    """Measure throughput and latency on this machine (the bench/ workloads).

    Each workload starts its own hub on a temp dir (unless --hub) and runs producers and
    consumers as separate processes; 128-byte payloads. Exit status 1 if a workload errored or
    lost messages.
    """
    import argparse
    from pathlib import Path

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from .. import bench as engine

    try:
        names = engine.workload_names(workloads)
    except ValueError as exc:
        fail(str(exc), 2)
    given = [messages, rate, concurrency, prefetch, actor_credit]
    if (any(v is not None and v <= 0 for v in given) or duration <= 0 or credit <= 0
            or timeout <= 0 or rounds <= 0):
        fail("--messages, --rate, --duration, --credit, --concurrency, --prefetch, "
             "--actor-credit, --rounds and --timeout must be positive", 2)
    if sync not in ("full", "none"):
        fail("--sync must be 'full' or 'none'", 2)
    if handler not in ("sync", "async"):
        fail("--handler must be 'sync' or 'async'", 2)
    args = argparse.Namespace(workloads=workloads, messages=messages, sync=sync, rate=rate,
                              duration=duration, credit=credit, concurrency=concurrency,
                              prefetch=prefetch, handler=handler, actor_credit=actor_credit,
                              rounds=rounds, timeout=timeout, hub=hub)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console(stderr=True)) as progress:
        task = progress.add_task("bench", total=len(names))

        def started(name: str) -> None:
            progress.update(task, description=f"{name}: {engine.WORKLOAD_NAMES[name]}")

        def done(name: str, result: dict) -> None:
            if "error" in result:
                progress.console.print(f"[red]{name} ERROR[/red]: {result['error']}")
            progress.advance(task)

        report = engine.run(args, names, started, done)
    text = json.dumps(report, indent=2, default=str)
    if as_json:
        typer.echo(text)
    else:
        engine.print_table(report)
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        if not as_json:  # with --json, stdout is the report alone
            typer.echo(f"JSON written to {out}")
    if engine.failed_workloads(report):
        raise typer.Exit(1)
