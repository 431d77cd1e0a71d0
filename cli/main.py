"""The ``zmq-mq`` command: run the hub, publish, subscribe, list topics, and a demo."""

from __future__ import annotations

import base64
import json
import logging
import signal
import sys
import threading
import time
from typing import Optional

import typer

from ..actors import Actor, Consumer, Producer
from ..actors.connection import ENV_HUB, request
from ..actors.errors import HubError, HubUnavailable, InvalidMessage, ZmqMqError
from ..router.config import DEFAULT_BIND, DEFAULT_DATA_DIR, DEFAULT_PUB, HEARTBEAT_INTERVAL_MS, HubConfig
from ..router.config import DEFAULT_DEDUP_WINDOW_MS
from ..router.protocol import MAX_MESSAGE_BYTES
from ..router.protocol import Command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="zmq-mq: a durable message queue over ZeroMQ and LMDB.",
)

HubOption = typer.Option(
    None, "--hub", envvar=ENV_HUB, help=f"Hub endpoint (default {DEFAULT_BIND})."
)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"zmq-mq: error: {message}", err=True)
    raise typer.Exit(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- hub -----------------------------------------------------------------------------------


@app.command()
def hub(
    data: str = typer.Option(DEFAULT_DATA_DIR, "--data", help="Data directory (LMDB)."),
    bind: str = typer.Option(DEFAULT_BIND, "--bind", help="ROUTER endpoint clients connect to."),
    pub: str = typer.Option(DEFAULT_PUB, "--pub", help="PUB endpoint for live listeners ('' for none)."),
    sync: str = typer.Option(
        "full", "--sync",
        help="full: fsync every commit before confirming (survives power loss); "
        "none: let the OS flush (a killed hub loses nothing, a crashed machine may lose the last commits).",
    ),
    map_size_mb: int = typer.Option(1024, "--map-size-mb", help="Initial LMDB map size (grows on demand)."),
    max_size_mb: Optional[int] = typer.Option(None, "--max-size-mb", help="Cap on the LMDB map size (default: until the disk is full)."),
    max_message_bytes: int = typer.Option(MAX_MESSAGE_BYTES, "--max-message-bytes", help="Largest payload accepted."),
    heartbeat_ms: int = typer.Option(HEARTBEAT_INTERVAL_MS, "--heartbeat-ms", help="Heartbeat interval told to clients."),
    dedup_window: float = typer.Option(
        DEFAULT_DEDUP_WINDOW_MS / 1000, "--dedup-window",
        help="Seconds a producer msg_id is remembered: a publish repeating it is stored once (0: off).",
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    from ..router.hub import Hub

    _setup_logging(log_level)
    if dedup_window < 0:
        _fail("--dedup-window must be >= 0", 2)
    if sync not in ("full", "none"):
        _fail("--sync must be 'full' or 'none'", 2)
    config = HubConfig(
        data_dir=data,
        bind=bind,
        pub=pub or None,
        sync=sync == "full",
        map_size=map_size_mb * 1024 * 1024,
        max_map_size=None if max_size_mb is None else max_size_mb * 1024 * 1024,
        max_message_bytes=max_message_bytes,
        heartbeat_ms=heartbeat_ms,
        dedup_window_ms=int(dedup_window * 1000),
    )
    try:
        the_hub = Hub(config)
        the_hub.bind()
    except Exception as exc:
        _fail(f"cannot start the hub: {exc}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: the_hub.stop())
    typer.echo(
        f"zmq-mq hub ready: router {the_hub.endpoint} pub {the_hub.pub_endpoint} data {data} "
        f"sync {sync}",
        err=True,
    )
    try:
        the_hub.run()
    finally:
        the_hub.close()


# --- publish -------------------------------------------------------------------------------


def _parse_headers(pairs: list[str]) -> dict[str, str] | None:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"--header takes K=V, got {pair!r}", 2)
        headers[name] = value
    return headers or None


@app.command()
def publish(
    topic: str = typer.Argument(..., help="Topic to publish to."),
    message: Optional[str] = typer.Argument(None, help="The message; '-' (or nothing) reads stdin, one message per line."),
    hub: Optional[str] = HubOption,
    key: Optional[str] = typer.Option(None, "--key", help="Message key (ordering and routing)."),
    header: list[str] = typer.Option([], "--header", help="Header K=V (repeatable)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the hub."),
) -> None:
    """Publish messages; exits 0 only once every one is confirmed durable."""
    headers = _parse_headers(header)
    try:
        with Producer(hub, timeout=timeout, name="cli-publish") as producer:
            if message is not None and message != "-":
                seq = producer.publish(topic, message.encode(), key=key, headers=headers)
                typer.echo(seq)
                return
            count = 0
            first = last = None
            futures = []
            for line in sys.stdin.buffer:
                if line.endswith(b"\n"):
                    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                futures.append(producer.publish_async(topic, line, key=key, headers=headers))
                if len(futures) >= 10_000:
                    first, last, count = _collect(producer, futures, first, last, count, timeout)
                    futures = []
            first, last, count = _collect(producer, futures, first, last, count, timeout)
            span = f" (seq {first}..{last})" if count else ""
            typer.echo(f"confirmed {count} messages on {topic}{span}", err=True)
    except (HubUnavailable, HubError, InvalidMessage, ZmqMqError) as exc:
        _fail(str(exc))


def _collect(producer: Producer, futures: list, first, last, count: int, timeout: float):
    producer.flush(timeout)
    for f in futures:
        seq = f.result(0)
        first = seq if first is None else min(first, seq)
        last = seq if last is None else max(last, seq)
    return first, last, count + len(futures)


# --- subscribe -----------------------------------------------------------------------------


def _message_json(msg) -> str:
    obj = {
        "topic": msg.topic,
        "seq": msg.seq,
        "key": msg.key,
        "headers": msg.headers,
        "deliveries": msg.deliveries,
        "timestamp": msg.timestamp,
        "group": msg.group,
    }
    try:
        obj["payload"] = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        obj["payload_b64"] = base64.b64encode(msg.payload).decode("ascii")
    return json.dumps(obj, ensure_ascii=False, default=str)


@app.command()
def subscribe(
    topic: str = typer.Argument(..., help="Topic to read."),
    group: str = typer.Option(..., "--group", help="Subscription name: same group = share the work, other group = own copy."),
    count: Optional[int] = typer.Option(None, "--count", help="Stop after this many messages."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many seconds without a message."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    credit: int = typer.Option(100, "--credit", help="Most unacked messages held at once."),
    ack_wait: Optional[float] = typer.Option(None, "--ack-wait", help="Seconds before an unacked message is redelivered (default 30)."),
    max_deliver: Optional[int] = typer.Option(None, "--max-deliver", help="Deliveries before dead-lettering (default 5; 0 = unlimited)."),
    start: str = typer.Option("first", "--start", help="Where a NEW group starts: first (all retained) or new."),
    hub: Optional[str] = HubOption,
) -> None:
    """Print messages of a subscription, acking each one after printing it."""
    if count is not None and count <= 0:
        _fail("--count must be positive", 2)
    if start not in ("first", "new"):
        _fail("--start must be 'first' or 'new'", 2)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    received = 0
    out = sys.stdout
    consumer = Consumer(hub, name=f"cli-subscribe-{group}")
    try:
        consumer.connect()
        consumer.subscribe(topic, group, credit=credit, ack_wait=ack_wait, max_deliver=max_deliver,
                           start=start)
        while not stop.is_set() and (count is None or received < count):
            # wake at least every second to notice SIGTERM
            wait = 1.0 if timeout is None else min(timeout, 1.0)
            idle_since = time.monotonic()
            msg = None
            while msg is None and not stop.is_set():
                msg = consumer.receive(wait)
                if msg is None and timeout is not None and time.monotonic() - idle_since >= timeout:
                    break
            if msg is None:
                break
            if as_json:
                out.write(_message_json(msg) + "\n")
            else:
                out.write(msg.payload.decode("utf-8", "replace") + "\n")
            out.flush()
            msg.ack()
            received += 1
    except KeyboardInterrupt:
        pass
    except (HubUnavailable, HubError, ValueError, ZmqMqError) as exc:
        consumer.close(timeout=1.0)
        _fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)
    consumer.close()


# --- topics --------------------------------------------------------------------------------


@app.command()
def topics(
    hub: Optional[str] = HubOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    timeout: float = typer.Option(5.0, "--timeout"),
) -> None:
    """Topics with their message counts and subscriptions."""
    try:
        data = request(hub, Command.TOPICS, timeout=timeout)
    except (HubUnavailable, HubError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="zmq-mq topics")
    for col in ("topic", "messages", "first", "last", "bytes", "subscription", "ack floor", "lag", "in flight", "actors"):
        table.add_column(col, justify="left" if col in ("topic", "subscription") else "right")
    for t in data:
        subs = t["subscriptions"] or [None]
        for i, s in enumerate(subs):
            head = [t["topic"], str(t["messages"]), str(t["first_seq"]), str(t["last_seq"]), str(t["bytes"])] if i == 0 else [""] * 5
            tail = [s["group"], str(s["ack_floor"]), str(s["lag"]), str(s["in_flight"]), str(s["actors"])] if s else ["-", "", "", "", ""]
            table.add_row(*head, *tail)
    # piped output: wide enough that no column is cut to "…"
    Console(width=None if sys.stdout.isatty() else 200).print(table)


# --- demo ----------------------------------------------------------------------------------


@app.command()
def demo(
    messages: int = typer.Option(12, "--messages", help="Orders to publish."),
    data: str = typer.Option(DEFAULT_DATA_DIR, "--data"),
    bind: str = typer.Option(DEFAULT_BIND, "--bind"),
    pub: str = typer.Option(DEFAULT_PUB, "--pub"),
    serve: bool = typer.Option(False, "--serve", help="Keep the hub running after the demo (Ctrl-C stops)."),
) -> None:
    """Start the hub on its defaults and show messages flowing: a work queue and a fan-out."""
    from ..testing import HubThread

    from rich.console import Console

    console = Console()
    try:
        hub_thread = HubThread(data, bind=bind, pub=pub or None).start()
    except Exception as exc:
        _fail(f"cannot start the hub on {bind} ({exc}); is another hub running? try --bind tcp://127.0.0.1:*")
    console.print(f"[bold]hub[/] serving on {hub_thread.endpoint} (data in {data})")
    endpoint = hub_thread.endpoint
    lock = threading.Lock()
    seen: dict[str, int] = {}
    done = threading.Event()
    total_expected = messages * 2  # every order: once to a billing worker, once to emails

    def handler(worker: str, colour: str):
        def handle(msg):
            with lock:
                console.print(f"  [{colour}]{worker:<10}[/] got {msg.topic} seq {msg.seq}: {msg.text()}")
                seen[worker] = seen.get(worker, 0) + 1
                if sum(seen.values()) >= total_expected:
                    done.set()
        return handle

    actors = []
    for worker, group, colour in (("billing-1", "billing", "cyan"), ("billing-2", "billing", "cyan"),
                                  ("emails-1", "emails", "magenta")):
        actor = Actor(endpoint, name=worker)
        actor.add_handler("orders", handler(worker, colour), group=group, credit=2, start="new")
        actors.append(actor.start())
    try:
        with Producer(endpoint) as producer:
            console.print(f"[bold]producer[/] publishing {messages} orders to topic 'orders'")
            for i in range(1, messages + 1):
                seq = producer.publish("orders", f"order #{i}".encode(), key=f"user-{i % 3}")
                console.print(f"  [green]producer[/]   order #{i} durable as seq {seq}")
        if not done.wait(30):
            console.print("[red]not every message arrived within 30 s[/]")
    finally:
        for actor in actors:
            actor.stop()
    console.print(
        f"[bold]done:[/] billing workers shared the orders ({seen.get('billing-1', 0)} + "
        f"{seen.get('billing-2', 0)}), emails got its own copy of all {seen.get('emails-1', 0)}."
    )
    if serve:
        console.print(f"hub still serving on {endpoint}; Ctrl-C to stop")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    hub_thread.stop()


# --- run -----------------------------------------------------------------------------------


@app.command()
def run(
    target: str = typer.Argument(..., help="path/to/actors.py, a module, or either with :attr naming an Actor (or a list of them)."),
    hub: Optional[str] = HubOption,
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run the Actors of a script or module until SIGINT or SIGTERM (then stop them gracefully)."""
    import os

    from ..actors.runner import LoadError, load_actors, run_actors

    _setup_logging(log_level)
    if hub:
        os.environ[ENV_HUB] = hub  # actors created without an endpoint connect here
    try:
        actors = load_actors(target)
    except LoadError as exc:
        _fail(str(exc), 2)
    except Exception as exc:  # the user's module raised while importing
        logging.getLogger("zmq_mq.run").exception("loading %s failed", target)
        _fail(f"cannot load {target}: {exc!r}", 2)
    logging.getLogger("zmq_mq.run").info(
        "running %s", ", ".join(f"{a.name} (concurrency {a.concurrency})" for a in actors)
    )
    raise typer.Exit(run_actors(actors))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
