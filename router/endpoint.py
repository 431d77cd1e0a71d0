"""ZeroMQ endpoints as zmq-mq accepts them: one pure check shared by the hub, the client
library and the command line, so a typo gets one sentence instead of ``ZMQError: Invalid
argument`` from deep inside ``connect``.

Accepted: ``tcp://HOST:PORT`` (bind also ``tcp://HOST:*`` and port 0, for a free port),
``ipc://PATH`` and ``inproc://NAME``; the transports a ROUTER/DEALER and PUB/SUB pair work over.
"""

from __future__ import annotations

TRANSPORTS = ("tcp", "ipc", "inproc")
FORMS = "tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555), ipc://PATH or inproc://NAME"


def endpoint_problem(endpoint: object, *, bind: bool = False) -> str | None:
    """What is wrong with ``endpoint`` (a sentence saying what it should look like), or None.

    ``bind``: the endpoint is bound (the hub), so ``tcp://HOST:*`` and port 0 are allowed.
    """
    if not isinstance(endpoint, str):
        return f"an endpoint is a string like {FORMS}, not {type(endpoint).__name__}"
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


def check_endpoint(endpoint: object, what: str = "hub endpoint", *, bind: bool = False) -> str:
    """``endpoint`` if it is valid, else ValueError naming ``what`` and the accepted forms."""
    problem = endpoint_problem(endpoint, bind=bind)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return endpoint  # type: ignore[return-value]


def _looks_like_host_port(text: str) -> bool:
    host, colon, port = text.rpartition(":")
    return bool(colon and host and port.isdigit())
