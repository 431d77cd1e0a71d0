"""Hub configuration: one frozen dataclass with the defaults every entry point shares."""

from __future__ import annotations

from dataclasses import dataclass

from . import protocol

DEFAULT_DATA_DIR = "./zmq-mq-data"
DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_PUB = "tcp://127.0.0.1:5556"

# Heartbeats: clients send one every interval; a peer silent for LIVENESS intervals is dead.
# One second and three misses detach a dead actor within about three seconds, which is the
# "a few heartbeat intervals" the design promises, without flapping on a loaded 2-core machine.
HEARTBEAT_INTERVAL_MS = 1000
LIVENESS = 3


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

    def limits(self) -> dict:
        """The limits told to clients in WELCOME."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_headers_bytes": self.max_headers_bytes,
            "max_frame_bytes": self.max_frame_bytes,
            "max_batch_messages": self.max_batch_messages,
            "max_credit": protocol.MAX_CREDIT,
        }
