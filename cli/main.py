"""The ``zmq-mq`` command: run the hub, publish, subscribe, list topics, a demo, and the
operator commands of cli/ops.py (stats, dlq, listen, bench)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

import typer

from ..actors import Actor, Consumer, Producer
from ..actors.connection import ENV_CURVE_KEY, ENV_HUB, ENV_SERVER_KEY, CurveKeys, request
from ..actors.errors import HubError, HubUnavailable, InvalidMessage, ZmqMqError
from ..router.config import (
    DEFAULT_BIND,
    DEFAULT_DATA_DIR,
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_KEYS_DIR,
    DEFAULT_PUB,
    HEARTBEAT_INTERVAL_MS,
    HubConfig,
)
from ..router.endpoint import endpoint_problem
from ..router.protocol import MAX_DELAY_MS, MAX_HEADERS_BYTES, MAX_MESSAGE_BYTES
from ..router import protocol
from ..router.protocol import Command
from .ops import HubOption  # --hub, checked before anything connects

CONNECT_TIMEOUT = 10.0  # seconds to wait for the hub when a command has no --timeout of its own

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="zmq-mq: a durable message queue over ZeroMQ and LMDB.",
)


CurveKeyOption = typer.Option(
    None, "--curve-key", envvar=ENV_CURVE_KEY,
    help="This client's secret key file (NAME.key_secret from `zmq-mq keygen`), for a --curve hub.",
)
ServerKeyOption = typer.Option(
    None, "--server-key", envvar=ENV_SERVER_KEY,
    help="The --curve hub's public key: its hub.key file, or the Z85 key itself.",
)


def _curve(curve_key: str | None, server_key: str | None) -> CurveKeys | None:
    """Client keys from --curve-key / --server-key (or their environment variables)."""
    if not curve_key and not server_key:
        return None
    if not (curve_key and server_key):
        _fail("--curve-key and --server-key go together (a --curve hub needs both)", 2)
    try:
        return CurveKeys.load(curve_key, server_key)
    except ValueError as exc:
        _fail(str(exc), 2)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"zmq-mq: error: {message}", err=True)
    raise typer.Exit(code)


def _setup_logging(level: str, fmt: str = "text") -> None:
    """Logs to stderr: ``text`` for people, ``json`` (one object per line) for log shippers."""
    from ..router.config import JsonLogFormatter

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


# --- hub -----------------------------------------------------------------------------------

# Keys a `zmq-mq hub --config FILE` may set: the flag names (dashes or underscores), with types.
_HUB_FILE_KEYS: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "bind": (str,),
    "pub": (str,),
    "sync": (str,),
    "map_size_mb": (int,),
    "max_size_mb": (int,),
    "max_message_bytes": (int,),
    "max_headers_bytes": (int,),
    "heartbeat_ms": (int,),
    "log_level": (str,),
    "log_format": (str,),
    "metrics_port": (int,),
    "metrics_addr": (str,),
    "curve": (bool,),
    "keys": (str,),
    "authorized": (str,),
    "acl": (str,),
    "dedup_window": (int, float),
}


@app.command()
def hub(
    ctx: typer.Context,
    config_file: Optional[str] = typer.Option(
        None, "--config",
        help="TOML file of hub settings; keys are these flag names (e.g. map-size-mb = 2048); "
        "flags given on the command line win.",
    ),
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
    max_headers_bytes: int = typer.Option(
        MAX_HEADERS_BYTES, "--max-headers-bytes",
        help="Largest key plus headers of one message, packed (default 65536).",
    ),
    heartbeat_ms: int = typer.Option(HEARTBEAT_INTERVAL_MS, "--heartbeat-ms", help="Heartbeat interval told to clients."),
    curve: bool = typer.Option(
        False, "--curve",
        help="Encrypt and authenticate with CurveZMQ: only clients whose public key is in "
        "--authorized get in. Without it the hub is plain (no encryption, no authentication).",
    ),
    keys: str = typer.Option(
        DEFAULT_KEYS_DIR, "--keys",
        help="With --curve: directory holding the hub's key pair hub.key / hub.key_secret "
        "(`zmq-mq keygen --out DIR --name hub`).",
    ),
    authorized: Optional[str] = typer.Option(
        None, "--authorized",
        help="With --curve: directory of authorised client public keys (NAME.key files); "
        "default KEYS/authorized.",
    ),
    acl: Optional[str] = typer.Option(
        None, "--acl",
        help="With --curve: TOML file granting each client key publish / subscribe topic "
        "patterns (default: every authorised key may do everything).",
    ),
    dedup_window: float = typer.Option(
        DEFAULT_DEDUP_WINDOW_MS / 1000, "--dedup-window",
        help="Seconds a producer msg_id is remembered: a publish repeating it is stored once (0: off).",
    ),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per line (ts, level, logger, message)."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port",
        help="Serve Prometheus metrics on http://METRICS_ADDR:PORT/metrics (0 picks a free port; default: off).",
    ),
    metrics_addr: str = typer.Option("127.0.0.1", "--metrics-addr", help="Address the metrics endpoint binds."),
) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    from ..router.config import ConfigError, load_toml
    from ..router.hub import Hub
    from ..router.security import SecurityError

    opts = {name: value for name, value in locals().items() if name in _HUB_FILE_KEYS}
    if config_file:
        try:
            from_file = load_toml(config_file, _HUB_FILE_KEYS)
        except ConfigError as exc:
            _fail(str(exc), 2)
        for name, value in from_file.items():
            # a flag typed on the command line wins over the file (the source's enum name is
            # compared: typer vendors click, so its ParameterSource class is not importable)
            source = ctx.get_parameter_source(name)
            if getattr(source, "name", "DEFAULT") not in ("COMMANDLINE", "ENVIRONMENT"):
                opts[name] = value
    if opts["log_format"] not in ("text", "json"):
        _fail("--log-format must be 'text' or 'json'", 2)
    _setup_logging(opts["log_level"], opts["log_format"])
    if opts["dedup_window"] < 0:
        _fail("--dedup-window must be >= 0", 2)
    for name in ("max_message_bytes", "max_headers_bytes"):
        if opts[name] < 1:
            _fail(f"--{name.replace('_', '-')} must be at least 1", 2)
    if opts["sync"] not in ("full", "none"):
        _fail("--sync must be 'full' or 'none'", 2)
    if not opts["curve"] and (opts["authorized"] or opts["acl"]):
        _fail("--authorized and --acl need --curve", 2)
    _check_bind_options(opts["bind"], opts["pub"])
    config = HubConfig(
        data_dir=opts["data"],
        bind=opts["bind"],
        pub=opts["pub"] or None,
        sync=opts["sync"] == "full",
        map_size=opts["map_size_mb"] * 1024 * 1024,
        max_map_size=None if opts["max_size_mb"] is None else opts["max_size_mb"] * 1024 * 1024,
        max_message_bytes=opts["max_message_bytes"],
        max_headers_bytes=opts["max_headers_bytes"],
        heartbeat_ms=opts["heartbeat_ms"],
        curve=opts["curve"],
        keys_dir=opts["keys"],
        authorized_dir=opts["authorized"],
        acl_file=opts["acl"],
        dedup_window_ms=int(opts["dedup_window"] * 1000),
    )
    try:
        the_hub = Hub(config)
    except SecurityError as exc:
        _fail(f"cannot start the hub: {exc}", 2)
    except Exception as exc:
        _fail(f"cannot start the hub: {exc}")
    try:
        the_hub.bind()
    except Exception as exc:
        the_hub.close()
        _fail(f"cannot start the hub: {exc}")
    metrics = None
    if opts["metrics_port"] is not None:
        from ..router.metrics import MetricsServer

        try:
            metrics = MetricsServer(the_hub, opts["metrics_port"], opts["metrics_addr"]).start()
        except OSError as exc:
            the_hub.close()
            _fail(f"cannot serve metrics on {opts['metrics_addr']}:{opts['metrics_port']}: {exc}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: the_hub.stop())
    typer.echo(
        f"zmq-mq hub ready: router {the_hub.endpoint} pub {the_hub.pub_endpoint} data {opts['data']} "
        f"sync {opts['sync']} security {'curve' if opts['curve'] else 'plain'}"
        + (f" metrics {metrics.url}" if metrics else ""),
        err=True,
    )
    try:
        the_hub.run()
    finally:
        if metrics is not None:
            metrics.stop()
        the_hub.close()


def _check_bind_options(bind: str, pub: str | None) -> None:
    """The hub's --bind and --pub ('' for none): one line and exit 2 if malformed."""
    for flag, value in (("--bind", bind), ("--pub", pub)):
        if flag == "--pub" and not value:
            continue
        problem = endpoint_problem(value, bind=True)
        if problem:
            _fail(f"{flag}: {problem}", 2)


# --- publish -------------------------------------------------------------------------------


def _parse_headers(pairs: list[str]) -> dict[str, str] | None:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"--header takes K=V, got {pair!r}", 2)
        reserved = protocol.check_reserved_headers({name: value})
        if reserved:
            _fail(f"--header: {reserved}", 2)
        headers[name] = value
    return headers or None


@app.command()
def publish(
    topic: str = typer.Argument(..., help="Topic to publish to."),
    message: Optional[str] = typer.Argument(None, help="The message; '-' (or nothing) reads stdin, one message per line."),
    hub: Optional[str] = HubOption,
    key: Optional[str] = typer.Option(None, "--key", help="Message key (ordering and routing)."),
    header: list[str] = typer.Option([], "--header", help="Header K=V (repeatable)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the hub, connecting and confirming together (waiting for stdin does not count)."),
    priority: Optional[int] = typer.Option(None, "--priority", help="0-9, higher delivered first (default 0)."),
    delay: Optional[float] = typer.Option(None, "--delay", help="Seconds before subscriptions may deliver it (held back durably; at most 366 days)."),
    deliver_at: Optional[str] = typer.Option(None, "--deliver-at", help="ISO8601 time to deliver it at (no zone: UTC)."),
    msg_id: Optional[str] = typer.Option(
        None, "--msg-id",
        help="Your id for this one message: the hub stores an id once within its --dedup-window, "
        "so publishing again with it stores nothing and prints the first sequence.",
    ),
    curve_key: Optional[str] = CurveKeyOption,
    server_key: Optional[str] = ServerKeyOption,
) -> None:
    """Publish messages; exits 0 only once every one is confirmed durable."""
    if not timeout > 0:
        _fail("--timeout must be a number of seconds > 0", 2)
    if priority is not None and protocol.check_priority(priority):
        _fail(f"--priority: {protocol.check_priority(priority)}", 2)
    if msg_id is not None and protocol.check_msg_id(msg_id):
        _fail(f"--msg-id: {protocol.check_msg_id(msg_id)}", 2)
    if delay is not None and deliver_at is not None:
        _fail("give --delay or --deliver-at, not both", 2)
    if delay is not None and not 0 <= delay <= MAX_DELAY_MS / 1000:
        _fail(f"--delay must be a number of seconds from 0 to {MAX_DELAY_MS // 1000} (366 days)", 2)
    at = None
    if deliver_at is not None:
        import datetime as dt

        try:
            at = dt.datetime.fromisoformat(deliver_at)
        except ValueError:
            _fail("--deliver-at must be an ISO8601 time, e.g. 2026-12-01T09:00:00Z", 2)
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.timezone.utc)
        if (at.timestamp() - time.time()) * 1000 > MAX_DELAY_MS:
            _fail("--deliver-at must be at most 366 days from now", 2)
    hold = {"delay": delay, "deliver_at": at}
    headers = _parse_headers(header)
    keys = _curve(curve_key, server_key)
    lines = None
    if msg_id is not None and (message is None or message == "-"):
        # one id names one message: read stdin before connecting, so nothing is published
        # when it holds several lines
        lines = list(_stdin_lines())
        if len(lines) != 1:
            _fail(f"--msg-id names one message, but stdin held {len(lines)} lines: "
                  "publish each with its own --msg-id, or leave --msg-id out", 2)
    wait = _HubWait(timeout)
    left = wait.left
    producer = Producer(hub, timeout=timeout, name="cli-publish", curve=keys)
    try:
        producer.connect()
        if lines is not None or (message is not None and message != "-"):
            payload = lines[0] if lines is not None else message.encode()
            future = producer.publish_async(topic, payload, key=key, headers=headers,
                                            msg_id=msg_id, priority=priority, **hold)
            _, seq, _ = _collect(producer, [future], None, None, 0, left(), timeout)
            typer.echo(seq)
        else:
            count = 0
            first = last = None
            futures = []
            with _publish_progress(topic) as progress:
                for line in wait.not_counting(_stdin_lines()):
                    futures.append(producer.publish_async(topic, line, key=key, headers=headers,
                                                          priority=priority, **hold))
                    if len(futures) >= 10_000:
                        first, last, count = _collect(producer, futures, first, last, count, left(), timeout)
                        futures = []
                        progress(count)
                        wait.restart()  # the hub is confirming: a new --timeout for what follows
                first, last, count = _collect(producer, futures, first, last, count, left(), timeout)
            span = f" (seq {first}..{last})" if count else ""
            typer.echo(f"confirmed {count} messages on {topic}{span}", err=True)
    except HubUnavailable as exc:
        # exit now, without close(): it would wait for the hub again past --timeout, and what is
        # unconfirmed stays unconfirmed (the error says so); the producer's I/O thread is a
        # daemon and ends with the process
        _fail(str(exc))
    except (HubError, InvalidMessage, ZmqMqError) as exc:
        # the hub is there: let what was sent before the error be confirmed, within --timeout
        with contextlib.suppress(ZmqMqError):
            producer.close(left())
        _fail(str(exc))
    producer.close(left())


class _HubWait:
    """``publish --timeout``: one bound on the time spent waiting for the hub, connecting and
    confirming together, so a hub that dies mid-stream fails the command after at most
    ``seconds``. Time blocked on stdin is the user's, not the hub's, so it does not count; and
    each chunk of confirms starts the bound again (a large input is not one long wait)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        self.until = time.monotonic() + self.seconds

    def left(self) -> float:
        return max(0.0, self.until - time.monotonic())

    def not_counting(self, source):
        """Yield from ``source``, moving the bound by the time spent waiting for each item."""
        items = iter(source)
        while True:
            started = time.monotonic()
            item = next(items, None)
            self.until += time.monotonic() - started
            if item is None:
                return
            yield item


def _stdin_lines():
    """Messages from stdin, one a line, without their line ending."""
    for line in sys.stdin.buffer:
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        yield line


@contextlib.contextmanager
def _publish_progress(topic: str):
    """A live count of confirmed messages on stderr while a large input is published (only
    when stderr is a terminal: pipes and logs get the final line alone)."""
    if not sys.stderr.isatty():
        yield lambda confirmed: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("publishing to {task.fields[topic]}: "
                  "{task.completed:,} confirmed"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("publish", total=None, topic=topic)
        yield lambda confirmed: progress.update(task, completed=confirmed)


def _collect(producer: Producer, futures: list, first, last, count: int, left: float,
             timeout: float):
    """Wait up to ``left`` s for ``futures``; ``timeout`` is the --timeout they were given."""
    try:
        producer.flush(left)
    except HubUnavailable:
        pending = sum(not f.done() for f in futures)
        raise HubUnavailable(
            f"{pending} message{'s' if pending != 1 else ''} not confirmed within {timeout:g} s "
            f"by the hub at {producer.endpoint}"
        ) from None
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
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many seconds without a message; also the most to wait for the hub to answer (default 10)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    credit: int = typer.Option(100, "--credit", help="Most unacked messages held at once."),
    ack_wait: Optional[float] = typer.Option(None, "--ack-wait", help="Seconds before an unacked message is redelivered (default 30)."),
    max_deliver: Optional[int] = typer.Option(None, "--max-deliver", help="Deliveries before dead-lettering (default 5; 0 = unlimited)."),
    start: str = typer.Option("first", "--start", help="Where a NEW group starts: first (all retained), new, "
                              "seq:N (from seq N) or time:ISO8601 (first message at or after it; no zone: UTC)."),
    ordering: Optional[str] = typer.Option(None, "--ordering", help="none (parallel), key (one per key in flight) or strict (one in flight); default none for a NEW group, else unchanged."),
    hub: Optional[str] = HubOption,
    curve_key: Optional[str] = CurveKeyOption,
    server_key: Optional[str] = ServerKeyOption,
) -> None:
    """Print messages of a subscription, acking each one after printing it."""
    if ordering is not None and ordering not in protocol.ORDERINGS:
        _fail("--ordering must be 'none', 'key' or 'strict'", 2)
    if count is not None and count <= 0:
        _fail("--count must be positive", 2)
    position = _start_position(start)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    received = 0
    out = sys.stdout
    if timeout is not None and not timeout > 0:
        _fail("--timeout must be a number of seconds > 0", 2)
    # --timeout also bounds connecting and subscribing, not only the wait for messages
    consumer = Consumer(hub, name=f"cli-subscribe-{group}", curve=_curve(curve_key, server_key),
                        timeout=CONNECT_TIMEOUT if timeout is None else timeout)
    try:
        consumer.connect()
        consumer.subscribe(topic, group, credit=credit, ack_wait=ack_wait, max_deliver=max_deliver,
                           start=position, ordering=ordering)
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
    curve_key: Optional[str] = CurveKeyOption,
    server_key: Optional[str] = ServerKeyOption,
) -> None:
    """Topics with their message counts and subscriptions (with an ACL: those you may use)."""
    keys = _curve(curve_key, server_key)
    try:
        data = request(hub, Command.TOPICS, timeout=timeout, curve=keys)
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


# --- keygen --------------------------------------------------------------------------------


@app.command()
def keygen(
    out: str = typer.Option(DEFAULT_KEYS_DIR, "--out", help="Directory to write the key pair to (created if missing)."),
    name: str = typer.Option("client", "--name", help="Key name: NAME.key (public) and NAME.key_secret (secret). Use 'hub' for the hub's own pair."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing pair of that name."),
) -> None:
    """Create a CurveZMQ key pair for the hub or a client (for `zmq-mq hub --curve`)."""
    import zmq.auth

    if not name or name.startswith(".") or os.sep in name or (os.altsep and os.altsep in name):
        _fail(f"--name must be a plain file name, not {name!r}", 2)
    public_file = os.path.join(out, f"{name}.key")
    secret_file = os.path.join(out, f"{name}.key_secret")
    if not force and (os.path.exists(public_file) or os.path.exists(secret_file)):
        _fail(f"{public_file} or {secret_file} exists; use --force to replace the pair", 2)
    # The secret file must be readable by its owner only: create both under a strict umask.
    old_umask = os.umask(0o077)
    try:
        os.makedirs(out, exist_ok=True)
        public_file, secret_file = zmq.auth.create_certificates(out, name)
    except OSError as exc:
        _fail(f"cannot write keys to {out}: {exc}")
    finally:
        os.umask(old_umask)
    os.chmod(public_file, 0o644)  # the public half is meant to be copied around
    public, _ = zmq.auth.load_certificate(public_file)
    typer.echo(f"public key file: {public_file}")
    typer.echo(f"secret key file: {secret_file}  (keep it private)")
    typer.echo(f"public key: {public.decode('ascii')}")


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
    from ..storage import DataDirInUse
    from ..testing import HubThread

    from rich.console import Console

    _check_bind_options(bind, pub)
    console = Console()
    try:
        hub_thread = HubThread(data, bind=bind, pub=pub or None).start()
    except DataDirInUse as exc:
        _fail(f"cannot start the hub: {exc}")
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


def _start_position(start: str):
    """--start: "first", "new", "seq:N" (an int) or "time:ISO8601" (a datetime; no zone: UTC)."""
    import datetime as dt

    if start in ("first", "new"):
        return start
    kind, _, value = start.partition(":")
    try:
        if kind == "seq" and int(value) >= 0:
            return int(value)
        if kind == "time":
            when = dt.datetime.fromisoformat(value)
            return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    except ValueError:
        pass
    _fail("--start must be first, new, seq:N or time:ISO8601", 2)


# --- operator commands (cli/ops.py) ---------------------------------------------------------

from . import ops as _ops  # noqa: E402  (registered after the app exists)

app.command("stats")(_ops.stats)
app.command("listen")(_ops.listen)
app.add_typer(_ops.dlq_app, name="dlq")
app.command("bench")(_ops.bench)
from .topics import topic_app as _topic_app  # noqa: E402

app.add_typer(_topic_app, name="topic")


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
