"""The cluster address: ``zk://HOST:PORT[,HOST:PORT...]/CHROOT`` (what ``--cluster`` takes).

Pure parsing, no ZooKeeper: a bad address raises ``ValueError`` with a one-line message that
says what is wrong and shows the expected form, fit to print as a usage error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "zk://"
FORM = "zk://HOST:PORT[,HOST:PORT...]/CHROOT"
EXAMPLE = "zk://127.0.0.1:2181/zmq-mq"

# A chroot segment: what a ZooKeeper node name may be, minus what would surprise in a path
# given on a command line (spaces, quotes, control characters); '.' and '..' are not names.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """Where a cluster's ZooKeeper ensemble is and under which path (``chroot``) the cluster
    keeps its nodes; several clusters may share one ensemble under different chroots."""

    servers: tuple[tuple[str, int], ...]
    chroot: str  # "/name[/more]", never "/" alone

    @property
    def hosts(self) -> str:
        """The ensemble's connect string, ``host:port,host:port`` (IPv6 in brackets)."""
        return ",".join(f"{_host_text(h)}:{p}" for h, p in self.servers)

    @property
    def kazoo_hosts(self) -> str:
        """The connect string with the chroot, as kazoo's ``KazooClient(hosts=...)`` takes it:
        every path the client uses is then relative to the chroot."""
        return self.hosts + self.chroot

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.hosts}{self.chroot}"

    def __str__(self) -> str:
        return self.url


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad cluster address {text!r}: {why}; use {FORM}, e.g. {EXAMPLE}")


def parse_cluster_address(text: str) -> ClusterAddress:
    """Parse ``zk://HOST:PORT[,HOST:PORT...]/CHROOT``; raise ``ValueError`` if it is not one.

    Every server needs its port; the chroot is required (a cluster never writes at the root
    of an ensemble another system may use) and may have several segments (``/prod/zmq-mq``).
    """
    if not isinstance(text, str):
        raise ValueError(f"bad cluster address {text!r}: not a string; use {FORM}")
    if not text.startswith(SCHEME):
        raise _bad(text, f"it must start with {SCHEME}")
    rest = text[len(SCHEME):]
    if any(c in rest for c in "?#@ \t\n"):
        raise _bad(text, "no user, query, fragment or spaces")
    slash = rest.find("/")
    if slash < 0:
        raise _bad(text, "the chroot path is missing")
    netloc, chroot = rest[:slash], rest[slash:]
    if not netloc:
        raise _bad(text, "no ZooKeeper server given")
    servers = tuple(_parse_server(text, part) for part in netloc.split(","))
    if len(set(servers)) != len(servers):
        raise _bad(text, "a server is listed twice")
    return ClusterAddress(servers, _parse_chroot(text, chroot))


def _parse_server(text: str, part: str) -> tuple[str, int]:
    if not part:
        raise _bad(text, "an empty server between commas")
    if part.startswith("["):  # [IPv6]:port
        close = part.find("]")
        if close < 0:
            raise _bad(text, f"unclosed '[' in {part!r}")
        host, after = part[1:close], part[close + 1:]
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise _bad(text, f"bad IPv6 address in {part!r}")
        if not after.startswith(":"):
            raise _bad(text, f"server {part!r} has no port")
        port_text = after[1:]
    else:
        host, sep, port_text = part.rpartition(":")
        if not sep:
            raise _bad(text, f"server {part!r} has no port")
        if not host or not _HOST_RE.match(host):
            raise _bad(text, f"bad host in {part!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _bad(text, f"bad port in {part!r} (1..65535)")
    return host, int(port_text)


def _parse_chroot(text: str, chroot: str) -> str:
    if chroot == "/":
        raise _bad(text, "the chroot path is missing")
    if chroot.endswith("/"):
        raise _bad(text, "the chroot path must not end with '/'")
    segments = chroot[1:].split("/")
    for seg in segments:
        if not seg:
            raise _bad(text, "an empty segment in the chroot path")
        if seg in (".", "..") or not _SEGMENT_RE.match(seg):
            raise _bad(text, f"bad chroot segment {seg!r} (letters, digits, '_', '-', '.')")
    if segments[0] == "zookeeper":
        raise _bad(text, "/zookeeper is ZooKeeper's own")
    return chroot
