"""Access control: which client key may publish and subscribe to which topics.

Pure code: no sockets, no files read here (the hub passes the ACL text and the names of the
authorised keys). Everything that decides a right lives in this module.

Theory of operation
-------------------
A client is known by its CURVE public key, in Z85 (40 characters), which ZeroMQ's handshake
proved and the ZAP handler put into every frame's ``User-Id``. The ACL file grants each key, by
its name (the file name of its ``NAME.key`` in the authorised directory) or by its Z85 text,
two lists of topic patterns::

    [clients.alice]
    publish = ["orders.*"]
    subscribe = ["orders.>", "audit"]

A pattern is dot-separated tokens, like a topic. A token ``*`` matches exactly one token of the
topic; a last token ``>`` matches one or more remaining tokens; any other token matches itself.
So ``orders.*`` matches ``orders.eu`` but neither ``orders`` nor ``orders.eu.west``;
``orders.>`` matches ``orders.eu`` and ``orders.eu.west`` but not ``orders``; ``>`` alone
matches every topic. A key absent from the file has no rights at all (deny by default).

Decisions are cached per (key, action, topic): the hot path (every PUBLISH) is one dict lookup.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .protocol import PATTERN_ONE as ONE
from .protocol import PATTERN_REST as REST
from .protocol import check_pattern
from .protocol import tokens_match as matches

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
ACTIONS = (PUBLISH, SUBSCRIBE)

__all__ = ["ACTIONS", "ONE", "PUBLISH", "REST", "SUBSCRIBE", "Acl", "AclError", "Grant",
           "matches", "parse_pattern"]

_Z85_KEY_RE = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")

# Decisions remembered before the cache is cleared: bounds memory against a client that
# publishes to ever new topic names, while every real workload fits many times over.
MAX_CACHED_DECISIONS = 100_000


class AclError(ValueError):
    """The ACL file is not valid (the operator's fault); the message says where."""


def parse_pattern(pattern: Any) -> tuple[str, ...]:
    """Check a pattern (the protocol's pattern rules) and return its tokens, for
    :func:`matches` (the protocol's one matcher); raises AclError with the reason."""
    if not isinstance(pattern, str) or not pattern:
        raise AclError(f"a pattern must be a non-empty string, not {pattern!r}")
    problem = check_pattern(pattern)
    if problem:
        raise AclError(problem)
    return tuple(pattern.split("."))


@dataclass(frozen=True, slots=True)
class Grant:
    """The rights of one client key: the patterns it may publish to and subscribe to."""

    name: str
    publish: tuple[tuple[str, ...], ...] = ()
    subscribe: tuple[tuple[str, ...], ...] = ()

    def permits(self, action: str, topic: str) -> bool:
        patterns = self.publish if action == PUBLISH else self.subscribe
        return any(matches(p, topic) for p in patterns)

    def reads_everything(self) -> bool:
        """True if this key may subscribe to every topic (a ``>`` pattern)."""
        return (REST,) in self.subscribe


class Acl:
    """Grants by client key (Z85), with a decision cache for the hub's hot path."""

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self.grants = dict(grants)
        self._cache: dict[tuple[str, str, str], bool] = {}

    @classmethod
    def from_toml(cls, text: str, names: Mapping[str, str], *, source: str = "ACL") -> "Acl":
        """Parse an ACL file. ``names`` maps key names to Z85 public keys (the authorised keys).

        Every entry must name a known key, or be a 40-character Z85 key; every list holds valid
        patterns. Raises AclError naming the first problem.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AclError(f"{source}: not valid TOML: {exc}") from None
        unknown = set(data) - {"clients"}
        if unknown:
            raise AclError(f"{source}: unknown section(s) {sorted(unknown)}; use [clients.NAME]")
        clients = data.get("clients", {})
        if not isinstance(clients, dict):
            raise AclError(f"{source}: 'clients' must be a table of [clients.NAME] sections")
        grants: dict[str, Grant] = {}
        for who, rights in clients.items():
            where = f"{source}: [clients.{who}]"
            if who in names:
                key, name = names[who], who
            elif _Z85_KEY_RE.match(who):
                key = who
                name = next((n for n, k in names.items() if k == who), who[:8] + "...")
            else:
                known = ", ".join(sorted(names)) or "none"
                raise AclError(
                    f"{where}: not the name of an authorised key (known: {known}) nor a "
                    "40-character Z85 public key"
                )
            if not isinstance(rights, dict):
                raise AclError(f"{where}: must be a table with 'publish' and/or 'subscribe'")
            extra = set(rights) - set(ACTIONS)
            if extra:
                raise AclError(f"{where}: unknown field(s) {sorted(extra)}; use publish, subscribe")
            parsed: dict[str, tuple[tuple[str, ...], ...]] = {}
            for action in ACTIONS:
                patterns = rights.get(action, [])
                if isinstance(patterns, str):
                    patterns = [patterns]
                if not isinstance(patterns, list):
                    raise AclError(f"{where}: {action} must be a list of patterns")
                try:
                    parsed[action] = tuple(parse_pattern(p) for p in patterns)
                except AclError as exc:
                    raise AclError(f"{where}: {action}: {exc}") from None
            if key in grants:
                raise AclError(f"{where}: this key already has a section ({grants[key].name})")
            grants[key] = Grant(name, parsed[PUBLISH], parsed[SUBSCRIBE])
        return cls(grants)

    def permits(self, key: str | None, action: str, topic: str) -> bool:
        """May client ``key`` do ``action`` (PUBLISH or SUBSCRIBE) on ``topic``?"""
        cache_key = (key, action, topic)
        decision = self._cache.get(cache_key)
        if decision is None:
            grant = self.grants.get(key) if key is not None else None
            decision = grant is not None and grant.permits(action, topic)
            if len(self._cache) >= MAX_CACHED_DECISIONS:
                self._cache.clear()
            self._cache[cache_key] = decision
        return decision

    def reads_everything(self, key: str | None) -> bool:
        grant = self.grants.get(key) if key is not None else None
        return grant is not None and grant.reads_everything()

    def name_of(self, key: str | None) -> str | None:
        grant = self.grants.get(key) if key is not None else None
        return grant.name if grant else None

    def keys(self) -> Iterable[str]:
        return self.grants.keys()
