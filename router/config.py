"""Hub configuration: one frozen dataclass with the defaults every entry point shares, and the
reader of the TOML file ``zmq-mq hub --config`` takes.

Log formatting lives in ``zmq_mq/logs.py`` (the hub's command and ``zmq-mq run`` share it);
``JsonLogFormatter`` is re-exported here for code that imported it from this module."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from . import protocol

# The endpoints and heartbeat defaults are the protocol's (clients need them without the hub's
# configuration); re-exported here for the hub's entry points.
from .protocol import DEFAULT_BIND, DEFAULT_PUB, HEARTBEAT_INTERVAL_MS, LIVENESS
from .security import DEFAULT_KEYS_DIR
from ..logs import JsonLogFormatter  # noqa: F401  (re-exported: its home is zmq_mq/logs.py)

DEFAULT_DATA_DIR = "./zmq-mq-data"
# Two minutes: longer than any producer's reconnect-and-resend after a hub restart, short
# enough that the dedup index stays small.
DEFAULT_DEDUP_WINDOW_MS = 120_000


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything the hub needs to start; ``zmq-mq hub`` flags map one-to-one onto these fields."""

    data_dir: str = DEFAULT_DATA_DIR
    bind: str = DEFAULT_BIND
    pub: str | None = DEFAULT_PUB
    # sync=True: every confirm follows an fsync'd commit (survives power loss).
    # sync=False: the OS flushes when it likes; a killed hub loses nothing, a crashed machine may
    # lose the last confirmed commits.
    sync: bool = True
    map_size: int = 1 << 30  # initial LMDB map: address space, not disk; it grows on demand
    max_map_size: int | None = None  # cap on growth (None: until the disk is full)
    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES
    max_headers_bytes: int = protocol.MAX_HEADERS_BYTES
    max_frame_bytes: int = protocol.MAX_FRAME_BYTES
    max_batch_messages: int = protocol.MAX_BATCH_MESSAGES
    heartbeat_ms: int = HEARTBEAT_INTERVAL_MS
    liveness: int = LIVENESS
    # Fairness and latency: a loop turn reads at most this many commands before it commits and
    # answers, so one flooding client cannot delay everyone else's confirms and deliveries.
    max_turn_commands: int = 1000
    # ... and stops reading once this many published messages are staged: a turn's cost grows
    # with its messages (one PUBLISH may carry thousands), and every client waits for the turn's
    # commit. Small enough that a flooding producer's turn stays short, large enough that the
    # fsync per commit is shared by thousands of messages.
    max_turn_messages: int = 2000
    # Deliveries one subscription hands out in a turn, and messages in one DELIVER frame.
    max_dispatch_per_turn: int = 5000
    max_deliver_frame: int = 500
    # Security (see router/security.py and README "Security"). curve=False: plain ZeroMQ, no
    # encryption, anyone who reaches the port may do anything: for loopback / a trusted host.
    curve: bool = False
    keys_dir: str = DEFAULT_KEYS_DIR  # holds hub.key / hub.key_secret (zmq-mq keygen --name hub)
    authorized_dir: str | None = None  # client NAME.key files allowed in; None: <keys_dir>/authorized
    acl_file: str | None = None  # TOML grants per client key; None: every authorised key may do all
    # Producer message ids (PUBLISH opts "msg_id"): a publish whose id was stored within this
    # many ms is not stored again and is confirmed with the original sequence. 0: no dedup.
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS

    def limits(self) -> dict:
        """The limits told to clients in WELCOME."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_headers_bytes": self.max_headers_bytes,
            "max_frame_bytes": self.max_frame_bytes,
            "max_batch_messages": self.max_batch_messages,
            "max_credit": protocol.MAX_CREDIT,
        }


# --- configuration files ----------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration file that cannot be used (unreadable, not TOML, unknown key, bad type)."""


def load_toml(path: str, known: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """Read a flat TOML file of ``key = value`` (keys are the command's flag names without the
    dashes in front, e.g. ``map-size-mb``; ``map_size_mb`` works too), optionally inside a
    ``[hub]`` table. ``known`` maps each allowed key (underscored) to its accepted types.
    Returns ``{underscored_key: value}``; raises :class:`ConfigError` naming the file and key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("hub"), dict):
        data = data["hub"]
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            allowed = ", ".join(sorted(k.replace("_", "-") for k in known))
            raise ConfigError(f"config file {path}: unknown key {key!r} (known: {allowed})")
        types = known[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"config file {path}: {key} must be {want}, not {type(value).__name__}")
        out[name] = value
    return out
