"""Listener: the live, at-most-once feed from the hub's PUB socket.

Fast and simple, with no acks and no storage on the reader's side: a listener that is slow, or
not connected, misses messages. Use a durable subscription (Consumer, Actor) when every message
matters. Topic matching is ZeroMQ's prefix match on the topic name.

A SUB socket is never told "no" by a PUB: a CURVE hub that refuses the handshake only closes the
connection. So the listener watches its own socket's handshake events (a ZeroMQ socket monitor)
and ``receive`` raises HubError ``forbidden`` once the hub has refused it, instead of waiting
for messages that can never come.
"""

from __future__ import annotations

import time
from typing import Iterator

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..router import protocol
from ..router.endpoint import check_endpoint
from .connection import CurveKeys, resolve_curve
from .errors import HubError
from .message import Message

# Handshake outcomes that mean "the hub will not talk to this listener": it refused the key
# (ZAP said no), or the two sides disagree on the security mechanism or the keys.
REFUSAL_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
# A hub that cannot decrypt our hello (a wrong hub public key) just hangs up: NO_DETAIL. A hub
# stopping mid-handshake looks the same once, so only this many in a row, with no handshake
# succeeding in between, count as a refusal (ZeroMQ retries every ~100-200 ms).
HANGUPS_REFUSED = 3
MONITOR_EVENTS = (REFUSAL_EVENTS | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                  | zmq.EVENT_HANDSHAKE_SUCCEEDED)
_NEEDS_KEYS = ("a --curve hub needs client keys (curve=CurveKeys.load(...), or $ZMQ_MQ_CURVE_KEY "
               "and $ZMQ_MQ_SERVER_KEY), a plain hub none")
_PROTOCOL_HINTS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: f"one side uses CURVE and the other not: {_NEEDS_KEYS}",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "is the hub public key right?",
}


def describe_refusal(event: int, value: int, has_keys: bool) -> str:
    """Why the hub refused this client's handshake, from a socket monitor event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"its key was refused (ZAP status {value}): is it authorised on the hub and, with "
            "an ACL, granted subscribe '>' (the live feed cannot filter per topic)?"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if not has_keys:  # a CURVE server hangs up on a plain client as often as it says why
            return f"it hangs up during the handshake: {_NEEDS_KEYS}"
        return "it hangs up during the CURVE handshake: is the hub public key right?"
    return _PROTOCOL_HINTS.get(value, f"ZeroMQ protocol error {value:#x}")


class Listener:
    """Receive live messages whose topic starts with one of ``prefixes`` ('' for all)."""

    def __init__(self, pub_endpoint: str, prefixes: tuple[str, ...] | list[str] = ("",), *,
                 context: zmq.Context | None = None, curve: CurveKeys | None = None) -> None:
        self.endpoint = check_endpoint(pub_endpoint, "live-feed endpoint")
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        keys = resolve_curve(curve)
        self._has_keys = keys is not None
        if keys is not None:  # a --curve hub's live feed (with an ACL: keys allowed to read '>')
            keys.apply(self.socket)
        for prefix in prefixes:
            self.socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._monitor = self.socket.get_monitor_socket(MONITOR_EVENTS)  # before connect
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._refused: HubError | None = None
        self._hangups = 0
        self.socket.connect(pub_endpoint)
        self._pending: list[Message] = []

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next live message, or None after ``timeout`` seconds.

        Raises HubError (code ``forbidden``) once the hub has refused this listener's handshake.
        """
        if not self._pending:
            if self._refused is not None:
                raise self._refused
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
                events = dict(self._poller.poll(left))
                if self._monitor in events:
                    self._check_monitor()  # raises on a refusal; a handshake event is no message
                if self.socket in events:
                    break
                if not events or left == 0:
                    return None
            name, first, records = protocol.decode_pub(self.socket.recv_multipart())
            unpack_record = protocol.unpack_record
            for seq, record in enumerate(records, first):
                ts, key, headers, payload = unpack_record(record)
                self._pending.append(Message(name, seq, key, headers, payload, 1, ts, "", 0, None))
            self._pending.reverse()
        return self._pending.pop()

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.receive()
            if msg is not None:
                yield msg

    def _check_monitor(self) -> None:
        """Raise (and remember) a refusal the monitor reported."""
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._hangups = 0
                continue
            if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._hangups += 1
                if self._hangups < HANGUPS_REFUSED:
                    continue
            self._refused = HubError(
                "forbidden",
                f"the hub's live feed at {self.endpoint} refused this listener: "
                + describe_refusal(kind, event["value"], self._has_keys),
            )
        if self._refused is not None:
            raise self._refused

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.socket.close(linger=0)

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
