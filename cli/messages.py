"""Messages in and out: ``zmq-mq publish`` (durable, confirmed), ``subscribe`` (a subscription,
acked after printing) and ``listen`` (the hub's live feed, at-most-once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
import threading
import time
from typing import Optional

import typer

from ..actors import Consumer, Producer
from ..actors.admin import Admin
from ..actors.errors import HubError, HubUnavailable, InvalidMessage, ZmqMqError
from ..router import protocol
from ..router.protocol import MAX_DELAY_MS
from .common import (
    CONNECT_TIMEOUT,
    CurveKeyOption,
    HubOption,
    ServerKeyOption,
    curve_keys,
    fail,
    payload_fields,
)

# --- publish -------------------------------------------------------------------------------


def _parse_headers(pairs: list[str]) -> dict[str, str] | None:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--header takes K=V, got {pair!r}", 2)
        reserved = protocol.check_reserved_headers({name: value})
        if reserved:
            fail(f"--header: {reserved}", 2)
        headers[name] = value
    return headers or None


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
        fail("--timeout must be a number of seconds > 0", 2)
    if priority is not None and protocol.check_priority(priority):
        fail(f"--priority: {protocol.check_priority(priority)}", 2)
    if msg_id is not None and protocol.check_msg_id(msg_id):
        fail(f"--msg-id: {protocol.check_msg_id(msg_id)}", 2)
    if delay is not None and deliver_at is not None:
        fail("give --delay or --deliver-at, not both", 2)
    if delay is not None and not 0 <= delay <= MAX_DELAY_MS / 1000:
        fail(f"--delay must be a number of seconds from 0 to {MAX_DELAY_MS // 1000} (366 days)", 2)
    at = None
    if deliver_at is not None:
        try:
            at = dt.datetime.fromisoformat(deliver_at)
        except ValueError:
            fail("--deliver-at must be an ISO8601 time, e.g. 2026-12-01T09:00:00Z", 2)
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.timezone.utc)
        if (at.timestamp() - time.time()) * 1000 > MAX_DELAY_MS:
            fail("--deliver-at must be at most 366 days from now", 2)
    hold = {"delay": delay, "deliver_at": at}
    headers = _parse_headers(header)
    keys = curve_keys(curve_key, server_key)
    lines = None
    if msg_id is not None and (message is None or message == "-"):
        # one id names one message: read stdin before connecting, so nothing is published
        # when it holds several lines
        lines = list(_stdin_lines())
        if len(lines) != 1:
            fail(f"--msg-id names one message, but stdin held {len(lines)} lines: "
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
        fail(str(exc))
    except (HubError, InvalidMessage, ZmqMqError) as exc:
        # the hub is there: let what was sent before the error be confirmed, within --timeout
        with contextlib.suppress(ZmqMqError):
            producer.close(left())
        fail(str(exc))
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
    obj.update(payload_fields(msg.payload))
    return json.dumps(obj, ensure_ascii=False, default=str)


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
        fail("--ordering must be 'none', 'key' or 'strict'", 2)
    if count is not None and count <= 0:
        fail("--count must be positive", 2)
    position = _start_position(start)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    received = 0
    out = sys.stdout
    if timeout is not None and not timeout > 0:
        fail("--timeout must be a number of seconds > 0", 2)
    # --timeout also bounds connecting and subscribing, not only the wait for messages
    consumer = Consumer(hub, name=f"cli-subscribe-{group}", curve=curve_keys(curve_key, server_key),
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
        fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)
    consumer.close()


def _start_position(start: str):
    """--start: "first", "new", "seq:N" (an int) or "time:ISO8601" (a datetime; no zone: UTC)."""
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
    fail("--start must be first, new, seq:N or time:ISO8601", 2)


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
        fail("--count must be positive", 2)
    if timeout is not None and not timeout > 0:
        fail("--timeout must be a number of seconds > 0", 2)
    try:  # --timeout also bounds asking the hub for its live-feed endpoint
        with Admin(hub, timeout=CONNECT_TIMEOUT if timeout is None else timeout) as admin:
            pub = admin.welcome.get("pub")
    except (HubUnavailable, HubError, ZmqMqError) as exc:
        fail(str(exc))
    if not pub:
        fail("this hub has no live feed (started with --pub '')")
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
                    fail(str(exc))
                if msg is None:
                    if timeout is not None and time.monotonic() - idle_since >= timeout:
                        break
                    continue
                idle_since = time.monotonic()
                if as_json:
                    obj = {"topic": msg.topic, "seq": msg.seq, "key": msg.key, "headers": msg.headers,
                           "timestamp": msg.timestamp, **payload_fields(msg.payload)}
                    out.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
                else:
                    out.write(f"{msg.topic} {msg.seq}: {msg.payload.decode('utf-8', 'replace')}\n")
                out.flush()
                received += 1
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # the hub announced a live-feed endpoint this client cannot use
        fail(str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)
