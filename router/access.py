"""Access: who each connection is (its CURVE client key) and what the ACL lets it do.

A CURVE hub learns each command's client key from its routing-id frame (set by the ZAP
handler, router/security.py) and checks it against the ACL (router/acl.py); a plain hub has no
ACL and permits everything. Refusals are logged here, rate-limited. No socket of its own: the
monitor socket and the time come in as arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from .acl import PUBLISH, SUBSCRIBE
from .protocol import ErrorCode
from .requests import Refusal
from .security import HubKeys, LogLimiter, describe_handshake_failure

__all__ = ["MAX_REMEMBERED_USERS", "Access", "log_handshake_failures"]

log = logging.getLogger("zmq_mq.hub")

# CURVE mode remembers the client key of each ROUTER identity, to notice an identity reused by
# another key; past this many the entries of connections with no attachment are dropped (the
# key is read again from the next frame, so forgetting costs nothing but that check).
MAX_REMEMBERED_USERS = 50_000


class Access:
    """The client key of each connection (CURVE only) and the ACL checks on it."""

    __slots__ = ("keys", "acl", "users", "limiter")

    def __init__(self, keys: HubKeys | None, limiter: LogLimiter) -> None:
        self.keys = keys
        self.acl = keys.acl if keys else None
        self.users: dict[bytes, str | None] = {}  # ROUTER identity -> client key (Z85)
        self.limiter = limiter

    def learn(self, identity: bytes, user: str | None, attached: Container[bytes]) -> bool:
        """Note the client key of a command's connection. True if the identity was known with
        another key: a ROUTER identity freed by one client and claimed by another, which must
        not inherit the first one's rights or attachments (the caller drops them)."""
        users = self.users
        known = users.get(identity, False)
        if known == user:
            return False
        if len(users) >= MAX_REMEMBERED_USERS:
            self.users = users = {i: u for i, u in users.items() if i in attached}
        users[identity] = user
        return known is not False

    def permits(self, identity: bytes, action: str, topic: str) -> bool:
        """Whether this client may ``action`` on ``topic`` (always, without an ACL)."""
        acl = self.acl
        return acl is None or acl.permits(self.users.get(identity), action, topic)

    def visible(self, identity: bytes, topic: str) -> bool:
        """Whether this client may see ``topic`` (publish or read it; always, without an ACL)."""
        acl = self.acl
        if acl is None:
            return True
        user = self.users.get(identity)
        return acl.permits(user, PUBLISH, topic) or acl.permits(user, SUBSCRIBE, topic)

    def require(self, identity: bytes, action: str, topic: str, ref: Any, now_ms: int) -> None:
        """Refuse a command on a topic the client has no ``action`` right on."""
        if self.acl is not None and not self.acl.permits(self.users.get(identity), action, topic):
            raise Refusal(ErrorCode.FORBIDDEN, self.forbidden(identity, action, topic, now_ms), ref)

    def forbidden(self, identity: bytes, action: str, topic: str, now_ms: int) -> str:
        """Log an ACL refusal (rate-limited) and return the text of the error."""
        user = self.users.get(identity)
        who = self.keys.name_of(user) if self.keys else "?"
        skipped = self.limiter.allow((user, action, topic), now_ms)
        if skipped is not None:
            more = f" ({skipped} more since the last report)" if skipped else ""
            log.warning(
                "forbidden: client %s (key %s) may not %s to %r%s", who, user, action, topic, more
            )
        return f"client {who} may not {action} to {topic!r}"


def log_handshake_failures(monitor: zmq.Socket, limiter: LogLimiter, now_ms: int) -> None:
    """Log handshakes that failed before ZAP saw them (no keys, wrong hub key), rate-limited."""
    while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        msg = parse_monitor_message(frames)
        event, value = int(msg["event"]), int(msg["value"])
        what = describe_handshake_failure(event, value)
        skipped = limiter.allow(("handshake", event, value), now_ms)
        if skipped is not None:
            more = f" ({skipped} more since the last report)" if skipped else ""
            log.warning(
                "refused a connection on %s: CURVE handshake failed, %s%s",
                msg["endpoint"].decode("utf-8", "replace"),
                what,
                more,
            )
