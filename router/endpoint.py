"""ZeroMQ endpoints as zmq-mq accepts them: one pure check shared by the hub, the client
library and the command line, so a typo gets one sentence instead of ``ZMQError: Invalid
argument`` from deep inside ``connect``.

Accepted: ``tcp://HOST:PORT`` (bind also ``tcp://HOST:*`` and port 0, for a free port),
``ipc://PATH`` and ``inproc://NAME``; the transports a ROUTER/DEALER and PUB/SUB pair work over.

Clients (not the hub's ``--bind``) also take a cluster address (:func:`hub_address_problem`):
``zk://HOST:PORT[,HOST:PORT...]/CHROOT`` or a comma-separated list of hub endpoints to
bootstrap from.
"""

from __future__ import annotations

TRANSPORTS = ("tcp", "ipc", "inproc")
ZK_SCHEME = "zk://"
FORMS = "tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555), ipc://PATH or inproc://NAME"


def endpoint_problem(endpoint: object, *, bind: bool = False) -> str | None:
    """What is wrong with ``endpoint`` (a sentence saying what it should look like), or None.

    ``bind``: the endpoint is bound (the hub), so ``tcp://HOST:*`` and port 0 are allowed.
    """
    if not isinstance(endpoint, str):
        return f"an endpoint is a string like {FORMS}, not {type(endpoint).__name__}"
    if "," in endpoint:  # a list of hubs is a cluster address: clients only, never one socket
        return f"{endpoint!r} is a list: give one endpoint, {FORMS}"
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        hint = f"; did you mean tcp://{endpoint}?" if _looks_like_host_port(endpoint) else ""
        return f"{endpoint!r} is not an endpoint: give {FORMS}{hint}"
    if scheme not in TRANSPORTS:
        return f"{endpoint!r}: transport {scheme!r} is not supported; give {FORMS}"
    if not rest:
        return f"{endpoint!r} names no address; give {FORMS}"
    if scheme != "tcp":
        return None
    host, colon, port = rest.rpartition(":")
    if not colon or not host or host in ("[", "[]"):
        return f"{endpoint!r} has no port; give tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555"
    if bind and port == "*":
        return None
    low = 0 if bind else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        wanted = "a port number 1-65535" if not bind else "a port number 0-65535 or *"
        return f"{endpoint!r}: the port must be {wanted}, not {port!r}"
    return None


def is_cluster_address(address: object) -> bool:
    """True for a cluster address (``zk://...`` or a comma list of hub endpoints): what a client
    routes through the cluster layer instead of one connection. One string test, at
    construction: a plain endpoint pays nothing more."""
    return isinstance(address, str) and (address.startswith(ZK_SCHEME) or "," in address)


def hub_address_problem(address: object) -> str | None:
    """What is wrong with a client's hub address, or None: an endpoint, a ``zk://`` cluster
    address, or a comma-separated list of hub endpoints (a cluster to bootstrap from)."""
    if isinstance(address, str) and address.startswith(ZK_SCHEME):
        from .cluster.address import parse_cluster_address  # pure parsing, no kazoo

        try:
            parse_cluster_address(address)
        except ValueError as exc:
            return str(exc)
        return None
    if isinstance(address, str) and "," in address:
        parts = address.split(",")
        for part in parts:
            problem = endpoint_problem(part.strip())
            if problem:
                return f"in the hub list {address!r}: {problem}"
        return None
    return endpoint_problem(address)


def check_hub_address(address: object, what: str = "hub address") -> str:
    """``address`` if :func:`hub_address_problem` finds nothing, else ValueError naming ``what``."""
    problem = hub_address_problem(address)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return address  # type: ignore[return-value]


def split_hub_list(address: str) -> list[str]:
    """The endpoints of a comma-separated hub list, in order, without blanks around them."""
    return [part.strip() for part in address.split(",") if part.strip()]


def check_endpoint(endpoint: object, what: str = "hub endpoint", *, bind: bool = False) -> str:
    """``endpoint`` if it is valid, else ValueError naming ``what`` and the accepted forms."""
    problem = endpoint_problem(endpoint, bind=bind)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return endpoint  # type: ignore[return-value]


def _looks_like_host_port(text: str) -> bool:
    host, colon, port = text.rpartition(":")
    return bool(colon and host and port.isdigit())
