"""One client connection to the hub: a DEALER socket, the handshake and liveness.

Not thread-safe: each Connection is used by exactly one thread (the producer's I/O thread, a
consumer's caller, an actor's loop). Other threads talk to that thread, never to the socket.

Heartbeat bookkeeping (when this client last sent, last heard the hub, whether a heartbeat is
due or the hub silent) reads a :class:`~zmq_mq.router.clock.Clock` (``clock=``; the system
clock by default), so tests can move it. Waits a caller asked for (the handshake, a request's
timeout, a poll) are real time: :func:`monotonic_ms`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth

from ..router import protocol
from ..router.clock import Clock, SystemClock
from ..router.endpoint import check_endpoint
from ..router.protocol import DEFAULT_BIND, HEARTBEAT_INTERVAL_MS, LIVENESS, Command, DecodeError
from ..router.wire import NOBLOCK, recv_frames, send_frames
from .errors import HubError, HubUnavailable, InvalidMessage

log = logging.getLogger("zmq_mq.connection")

ENV_HUB = "ZMQ_MQ_HUB"
ENV_CURVE_KEY = "ZMQ_MQ_CURVE_KEY"  # this client's NAME.key_secret file
ENV_SERVER_KEY = "ZMQ_MQ_SERVER_KEY"  # the hub's hub.key file, or its Z85 public key


@dataclass(frozen=True)
class CurveKeys:
    """A client's CURVE key pair and the hub's public key (all Z85), for a ``--curve`` hub.

    ``CurveKeys.load("keys/alice.key_secret", "keys/hub.key")`` reads the files
    ``zmq-mq keygen`` writes; :meth:`from_env` reads the same from $ZMQ_MQ_CURVE_KEY and
    $ZMQ_MQ_SERVER_KEY.
    """

    public: bytes
    secret: bytes = field(repr=False)
    server: bytes

    @classmethod
    def load(cls, secret_key_file: str | os.PathLike, server_key: str | os.PathLike) -> "CurveKeys":
        """Read this client's ``NAME.key_secret`` and the hub's ``hub.key`` (or Z85 key text)."""
        try:
            public, secret = zmq.auth.load_certificate(secret_key_file)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the client secret key {secret_key_file}: {exc}") from None
        if not secret:
            raise ValueError(
                f"{secret_key_file} holds no secret key: give the NAME.key_secret file, not NAME.key"
            )
        text = os.fspath(server_key)
        if len(text) == 40 and not os.path.exists(text):
            server = text.encode("ascii")  # the Z85 public key itself
        else:
            try:
                server, _ = zmq.auth.load_certificate(text)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read the hub public key {text}: {exc}") from None
        return cls(public, secret, server)

    @classmethod
    def from_env(cls) -> "CurveKeys | None":
        """Keys named by $ZMQ_MQ_CURVE_KEY and $ZMQ_MQ_SERVER_KEY, or None if neither is set."""
        secret_file = os.environ.get(ENV_CURVE_KEY)
        server = os.environ.get(ENV_SERVER_KEY)
        if not secret_file and not server:
            return None
        if not (secret_file and server):
            raise ValueError(f"set both ${ENV_CURVE_KEY} and ${ENV_SERVER_KEY} (or neither)")
        return cls.load(secret_file, server)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the hub (before it connects)."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)


def resolve_curve(curve: CurveKeys | None) -> CurveKeys | None:
    """The CURVE keys to use: the argument, else those named by the environment, else None."""
    return curve if curve is not None else CurveKeys.from_env()


def resolve_endpoint(endpoint: str | None) -> str:
    """The hub endpoint: the argument, else $ZMQ_MQ_HUB, else the hub's default bind.

    Raises ValueError, saying what an endpoint looks like, if the one found is malformed.
    """
    if endpoint:
        return check_endpoint(endpoint)
    if os.environ.get(ENV_HUB):
        return check_endpoint(os.environ[ENV_HUB], f"${ENV_HUB}")
    return DEFAULT_BIND


# How often a cancellable handshake looks at its cancel() while waiting for WELCOME.
CANCEL_POLL_MS = 100


def monotonic_ms() -> int:
    """Real monotonic time in ms: for the waits a caller asked for (timeouts, polls)."""
    return time.monotonic_ns() // 1_000_000


# The clock of clients not given one: the machine's.
SYSTEM_CLOCK = SystemClock()


class Connection:
    """A DEALER connected to the hub, with HELLO/WELCOME done and heartbeat bookkeeping.

    ``clock``: what ``last_sent``, ``last_heard`` and ``last_heartbeat`` are read from, and what
    callers pass to :meth:`heartbeat_due` and :meth:`hub_silent` (``conn.now_ms()``).
    """

    def __init__(self, endpoint: str | None, *, name: str = "", context: zmq.Context | None = None,
                 curve: CurveKeys | None = None, clock: Clock | None = None):
        self.endpoint = resolve_endpoint(endpoint)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.now_ms = self.clock.monotonic_ms  # bound once: read per batch sent or received
        self.name = name
        # kept for every socket this connection opens, so reconnects stay encrypted
        self.curve = resolve_curve(curve)
        self._ctx = context or zmq.Context.instance()
        self.socket: zmq.Socket | None = None
        self.welcome: dict[str, Any] = {}
        self.hub_instance: str | None = None
        self.heartbeat_ms = HEARTBEAT_INTERVAL_MS
        self.liveness = LIVENESS
        self.last_heard = 0
        self.last_sent = 0
        self.last_heartbeat = 0  # when this client last sent HEARTBEAT (whatever else it sent)
        self.limits: dict[str, int] = {}
        self._valid_topics: set[str] = set()

    def _new_socket(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop: flow is bounded by our own windows
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.endpoint)
        self.socket = sock

    def open(self, timeout: float, cancel: Callable[[], bool] | None = None) -> dict:
        """(Re)connect and handshake. Raises HubUnavailable if no WELCOME within ``timeout`` s,
        or within a tenth of a second once ``cancel()`` is true (the owner is closing)."""
        self._new_socket()
        self.send(Command.HELLO, {"name": self.name, "pid": os.getpid()})
        deadline = monotonic_ms() + int(timeout * 1000)
        while True:
            left = deadline - monotonic_ms()
            if cancel is not None:
                while 0 < left and not cancel() and not self.socket.poll(min(left, CANCEL_POLL_MS)):
                    left = deadline - monotonic_ms()
                if cancel():
                    left = 0
            if left <= 0 or not self.socket.poll(left, zmq.POLLIN):
                hint = (
                    "is `zmq-mq hub --curve` running there, is this client's public key "
                    "authorised on it, and is the hub key right?"
                    if self.curve is not None
                    else "is `zmq-mq hub` running there? a --curve hub needs client keys"
                )
                raise HubUnavailable(
                    f"no answer from the hub at {self.endpoint} within {timeout:g} s ({hint})"
                )
            try:
                command, body = self.recv()
            except DecodeError as exc:  # not an answer to our HELLO: keep waiting for it
                log.warning("ignoring a bad frame from the hub: %s", exc.message)
                continue
            if command == Command.WELCOME:
                self._welcomed(body)
                return body
            if command == Command.ERROR:
                raise HubError.from_body(protocol.parse_error(body))

    def _welcomed(self, body: dict) -> None:
        self.welcome = body
        self.hub_instance = body.get("hub")
        self.heartbeat_ms = int(body.get("heartbeat_ms", HEARTBEAT_INTERVAL_MS))
        self.liveness = int(body.get("liveness", LIVENESS))
        self.limits = dict(body.get("limits") or {})

    def send(self, command: bytes, body: Any) -> None:
        # copying sends: zero-copy costs a garbage-collector round trip each, dearer than memcpy
        send_frames(self.socket, protocol.encode(command, body))
        self.last_sent = self.now_ms()

    def heartbeat(self) -> None:
        """Send HEARTBEAT: it tells the hub we live, and its answer tells us the hub does."""
        self.send(Command.HEARTBEAT, [])
        self.last_heartbeat = self.last_sent

    def recv(self) -> tuple[bytes, Any]:
        """Receive one command (blocking; poll first)."""
        frames = recv_frames(self.socket)
        self.last_heard = self.now_ms()
        return protocol.decode(frames, protocol.HUB_COMMANDS)

    def try_recv(self) -> tuple[bytes, Any] | None:
        """Receive one command if one is waiting, else None (never blocks)."""
        # EVENTS first: an empty NOBLOCK recv costs a zmq.Again exception, about twice as dear
        if not self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return None
        try:
            frames = recv_frames(self.socket, NOBLOCK)
        except zmq.Again:
            return None
        self.last_heard = self.now_ms()
        return protocol.decode(frames, protocol.HUB_COMMANDS)

    def heartbeat_due(self, now: int) -> bool:
        """True every ``heartbeat_ms``, however busy the connection is otherwise.

        Other traffic does not put it off: the hub answers HEARTBEAT and nothing else that a
        busy client may send (PROGRESS, ACK, NACK), so a client that skipped heartbeats while
        sending those would hear nothing, take the hub for silent and reconnect, and the hub
        would then take its old connection for a lost actor.
        """
        return now - self.last_heartbeat >= self.heartbeat_ms

    def hub_silent(self, now: int) -> bool:
        """True when the hub has said nothing for ``liveness`` heartbeat intervals."""
        return now - self.last_heard > self.heartbeat_ms * self.liveness

    def check_message(self, topic: str, payload: bytes, key: str | None, headers: dict | None) -> int:
        """Refuse locally what the hub would refuse, with the same words.

        Returns the message's approximate size on the wire, for sizing batches.
        """
        if topic not in self._valid_topics:
            problem = protocol.check_topic(topic)
            if problem:
                raise InvalidMessage(problem)
            if len(self._valid_topics) < 10_000:  # a cache, not a leak
                self._valid_topics.add(topic)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidMessage(f"payload must be bytes, not {type(payload).__name__}")
        limit = self.limits.get("max_message_bytes", protocol.MAX_MESSAGE_BYTES)
        if len(payload) > limit:
            raise InvalidMessage(f"payload of {len(payload)} bytes is over the hub's limit of {limit}")
        if key is not None and not isinstance(key, str):
            raise InvalidMessage("key must be a string")
        if headers:
            problem = protocol.check_headers(headers) or protocol.check_reserved_headers(headers)
            if problem:
                raise InvalidMessage(problem)
            try:  # here, not in the I/O thread: a value msgpack cannot encode fails this call only
                size = len(protocol.pack(headers)) + (len(key.encode()) if key else 0)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidMessage(f"headers cannot be encoded: {exc}") from None
            limit = self.limits.get("max_headers_bytes", protocol.MAX_HEADERS_BYTES)
            if size > limit:
                raise InvalidMessage(f"key and headers of {size} bytes are over the hub's limit of {limit}")
            return len(payload) + len(topic) + size + 16
        elif headers is not None and not isinstance(headers, dict):
            raise InvalidMessage("headers must be a dict")
        return len(payload) + len(topic) + (len(key) * 4 if key else 0) + 16

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


def request(endpoint: str | None, command: bytes, *, timeout: float = 10.0,
            context: zmq.Context | None = None, curve: CurveKeys | None = None) -> Any:
    """One admin round trip (e.g. TOPICS): connect, ask, return the REPLY body, close.
    ``timeout`` bounds the whole of it, connecting included."""
    conn = Connection(endpoint, name="admin", context=context, curve=curve)
    try:
        deadline = monotonic_ms() + int(timeout * 1000)
        conn.open(timeout)
        conn.send(command, [1])
        while True:
            left = deadline - monotonic_ms()
            if left <= 0 or not conn.socket.poll(left, zmq.POLLIN):
                raise HubUnavailable(f"no answer to {command.decode()} within {timeout:g} s")
            reply, body = conn.recv()
            if reply == Command.REPLY and isinstance(body, list) and body and body[0] == 1:
                return body[1]
            if reply == Command.ERROR:
                raise HubError.from_body(protocol.parse_error(body))
    finally:
        conn.close()
