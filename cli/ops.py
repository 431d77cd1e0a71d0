"""Operator commands of ``zmq-mq``: stats, dlq (list, show, redrive, purge), listen and bench
(the one command line of the zmq_mq.bench package; bench/bench.py runs it too).

Registered on the main typer app by cli/main.py. Rendering is split from I/O (``stats_tables``,
``letter_json``) so that it is tested without a hub.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import signal
import sys
import threading
import time
from typing import Any

import typer

from ..actors.admin import Admin
from ..actors.connection import ENV_HUB
from ..actors.errors import HubError, HubUnavailable, ZmqMqError
from ..router import protocol
from ..router.config import DEFAULT_BIND
from ..router.deadletters import describe
from ..router.endpoint import endpoint_problem



def check_hub_option(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """--hub (or $ZMQ_MQ_HUB) checked before anything connects: one line and exit 2 if malformed."""
    if value is None or ctx.resilient_parsing:
        return value
    problem = endpoint_problem(value)
    if problem:
        source = ctx.get_parameter_source(param.name)
        # compared by name: typer vendors click, so its ParameterSource is not importable
        where = f"${ENV_HUB}" if getattr(source, "name", "") == "ENVIRONMENT" else "--hub"
        _fail(f"{where}: {problem}", 2)
    return value


HubOption = typer.Option(None, "--hub", envvar=ENV_HUB, callback=check_hub_option,
                         help=f"Hub endpoint (default {DEFAULT_BIND}).")
TimeoutOption = typer.Option(10.0, "--timeout", help="Seconds to wait for the hub.")
# Dead letters per REDRIVE / PURGE request: one hub commit each, small enough that a large redrive
# never holds the hub's loop for long and the progress bar moves.
DLQ_CHUNK = 500

dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters (topic dlq.<group>): list, show, redrive to their origin topic, purge.",
)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"zmq-mq: error: {message}", err=True)
    raise typer.Exit(code)


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped output: wide enough that no column is cut to "…"
    return Console(file=stream, width=None if stream.isatty() else 200)


def _payload_fields(payload: bytes) -> dict[str, str]:
    try:
        return {"payload": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(payload).decode("ascii")}


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
    """Two rich tables (topics; subscriptions) for one STATS document."""
    from rich.console import Group
    from rich.table import Table

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
        _fail("--interval must be positive", 2)
    try:
        with Admin(hub, timeout=timeout) as admin:
            data = admin.stats()
            if as_json:
                typer.echo(json.dumps(data, indent=2))
                return
            if not watch:
                _console().print(stats_tables(data))
                return
            from rich.live import Live

            stop = threading.Event()
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
            console = _console()
            try:
                if console.is_terminal:
                    with Live(stats_tables(data), console=console, auto_refresh=False) as live:
                        while not stop.wait(interval):
                            live.update(stats_tables(admin.stats()), refresh=True)
                else:  # piped: Live would print only at the end; print each refresh instead
                    console.print(stats_tables(data))
                    sys.stdout.flush()
                    while not stop.wait(interval):
                        console.print(stats_tables(admin.stats()))
                        sys.stdout.flush()
            except KeyboardInterrupt:
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        _fail(str(exc))


# --- dlq -----------------------------------------------------------------------------------


def letter_json(letter: dict, group: str) -> dict:
    """A described dead letter as JSON-able data (payload as text, or base64 if not UTF-8)."""
    out = {k: v for k, v in letter.items() if k != "payload"}
    out["group"] = group
    out["dlq_topic"] = protocol.dlq_topic(group)
    out.update(_payload_fields(letter["payload"]))
    return out


def _dlq_groups(admin: Admin) -> list[str]:
    prefix = "dlq."
    return [t["topic"][len(prefix):] for t in admin.topics() if t["topic"].startswith(prefix)]


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
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps([letter_json(d, g) for g, d in letters], indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"dead letters ({len(letters)})")
    for col in ("group", "seq", "origin", "deliveries", "reason", "dead since", "key", "payload"):
        table.add_column(col, justify="right" if col in ("seq", "deliveries") else "left")
    for g, d in letters:
        text = d["payload"][:40].decode("utf-8", "replace")
        table.add_row(
            g, str(d["seq"]), f"{d['origin_topic']}:{d['origin_seq']}", str(d["deliveries"]),
            str(d["reason"]), _when(d["timestamp"]), str(d["key"] or ""), text,
        )
    _console().print(table)


@dlq_app.command("show")
def dlq_show(
    seq: int = typer.Argument(..., help="Sequence of the dead letter in dlq.<group>."),
    group: str = typer.Option(..., "--group", help="Subscription that dead-lettered it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """One dead letter in full: origin, reason, deliveries, key, headers and payload."""
    topic = protocol.dlq_topic(group)
    try:
        with Admin(hub, timeout=timeout) as admin:
            page = admin.fetch(topic, seq, 1)
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        _fail(str(exc))
    if not page or page[0].seq != seq:
        _fail(f"no dead letter {seq} in {topic}")
    data = letter_json(describe(page[0].seq, page[0].record), group)
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
        _fail("give --seq N (repeatable) or --all", 2)
    if all_:
        return [m.seq for m in admin.scan(topic)]
    return list(dict.fromkeys(seqs))


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=_console(stderr=True), transient=False, disable=total < DLQ_CHUNK,
    )


@dlq_app.command("redrive")
def dlq_redrive(
    group: str = typer.Option(..., "--group", help="Subscription whose dead letters to send back."),
    seq: list[int] = typer.Option([], "--seq", help="Sequence in dlq.<group> (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Every dead letter of the group."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-letter results as JSON."),
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Send dead letters back to their origin topic and remove them from the DLQ.

    Same key, payload and headers (plus x-redriven-from); publish and removal happen in one hub
    transaction, so a crash in the middle neither loses nor duplicates a message.
    """
    topic = protocol.dlq_topic(group)
    results: list[dict] = []
    try:
        with Admin(hub, timeout=timeout) as admin:
            seqs = _chosen(admin, topic, seq, all_)
            with _progress(len(seqs), f"redriving {topic}") as progress:
                task = progress.add_task("redrive", total=len(seqs))
                for i in range(0, len(seqs), DLQ_CHUNK):
                    chunk = seqs[i : i + DLQ_CHUNK]
                    results += admin.redrive(topic, chunk)["results"]
                    progress.advance(task, len(chunk))
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        _fail(str(exc))
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
    hub: str | None = HubOption,
    timeout: float = TimeoutOption,
) -> None:
    """Delete dead letters for good."""
    topic = protocol.dlq_topic(group)
    if bool(seq) == all_:
        _fail("give --seq N (repeatable) or --all", 2)
    purged = 0
    try:
        with Admin(hub, timeout=timeout) as admin:
            if all_:
                purged = admin.purge(topic, "all")["purged"]
            else:
                seqs = list(dict.fromkeys(seq))
                for i in range(0, len(seqs), DLQ_CHUNK):
                    purged += admin.purge(topic, seqs[i : i + DLQ_CHUNK])["purged"]
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        _fail(str(exc))
    typer.echo(f"purged {purged} dead letters from {topic}", err=True)


# --- listen --------------------------------------------------------------------------------


def reachable_pub(pub: str, hub_endpoint: str) -> str:
    """The PUB endpoint as this client can reach it: a hub bound on every interface
    (``tcp://0.0.0.0:5556`` or ``tcp://*:5556``) is reached on the host we reached it on."""
    proto, sep, rest = pub.partition("://")
    host, colon, port = rest.rpartition(":")
    if proto != "tcp" or not sep or not colon or host not in ("*", "0.0.0.0", "[::]", "::"):
        return pub
    hub_host = hub_endpoint.partition("://")[2].rpartition(":")[0]
    return f"tcp://{hub_host or '127.0.0.1'}:{port}"


def listen(
    prefix: str = typer.Argument("", help="Topic prefix to listen to ('' for every topic)."),
    hub: str | None = HubOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    count: int | None = typer.Option(None, "--count", help="Stop after this many messages."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after this many seconds without a message; also the most to wait for the hub to answer (default 10)."),
) -> None:
    """Print the live feed from the hub's PUB socket (ZeroMQ prefix match on the topic).

    AT-MOST-ONCE: nothing is acked or stored for you; messages published while you are not
    connected, or faster than you read, are missed. Use `zmq-mq subscribe` when every message
    matters.
    """
    from ..actors.listener import Listener

    if count is not None and count <= 0:
        _fail("--count must be positive", 2)
    if timeout is not None and not timeout > 0:
        _fail("--timeout must be a number of seconds > 0", 2)
    try:  # --timeout also bounds asking the hub for its live-feed endpoint
        with Admin(hub, timeout=10.0 if timeout is None else timeout) as admin:
            pub = admin.welcome.get("pub")
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        _fail(str(exc))
    if not pub:
        _fail("this hub has no live feed (started with --pub '')")
    pub = reachable_pub(pub, admin.endpoint)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    received = 0
    out = sys.stdout
    idle_since = time.monotonic()
    try:
        with Listener(pub, [prefix]) as listener:
            typer.echo(f"listening to {prefix or 'every topic'!r} on {pub} (at-most-once)", err=True)
            while not stop.is_set() and (count is None or received < count):
                try:
                    msg = listener.receive(0.5)
                except HubError as exc:  # the hub refused this client on its live feed
                    _fail(str(exc))
                if msg is None:
                    if timeout is not None and time.monotonic() - idle_since >= timeout:
                        break
                    continue
                idle_since = time.monotonic()
                if as_json:
                    obj = {"topic": msg.topic, "seq": msg.seq, "key": msg.key, "headers": msg.headers,
                           "timestamp": msg.timestamp, **_payload_fields(msg.payload)}
                    out.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
                else:
                    out.write(f"{msg.topic} {msg.seq}: {msg.payload.decode('utf-8', 'replace')}\n")
                out.flush()
                received += 1
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # the hub announced a live-feed endpoint this client cannot use
        _fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- bench ---------------------------------------------------------------------------------


def bench(
    workloads: str = typer.Option("W1,W2,W3", "--workloads", help="Comma-separated: W1 durable publish, W2 end to end, W3 publish-confirm latency, W4 end to end through an Actor (only when named)."),
    messages: int = typer.Option(200_000, "--messages", help="Messages for W1, W2 and W4."),
    sync: str = typer.Option("full", "--sync", help="The started hub's --sync (full or none)."),
    rate: float = typer.Option(5000.0, "--rate", help="W3 target msg/s."),
    duration: float = typer.Option(10.0, "--duration", help="W3 seconds."),
    credit: int = typer.Option(1000, "--credit", help="W2 consumer credit."),
    concurrency: int = typer.Option(8, "--concurrency", help="W4 actor worker threads."),
    prefetch: int = typer.Option(1, "--prefetch", help="W4 actor prefetch: messages held per worker thread."),
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
        _fail(str(exc), 2)
    if messages <= 0 or rate <= 0 or duration <= 0 or credit <= 0 or timeout <= 0 or concurrency <= 0 or prefetch <= 0:
        _fail("--messages, --rate, --duration, --credit, --concurrency, --prefetch and --timeout "
              "must be positive", 2)
    if sync not in ("full", "none"):
        _fail("--sync must be 'full' or 'none'", 2)
    args = argparse.Namespace(workloads=workloads, messages=messages, sync=sync, rate=rate,
                              duration=duration, credit=credit, concurrency=concurrency,
                              prefetch=prefetch,
                              timeout=timeout, hub=hub)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=_console(stderr=True)) as progress:
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
