"""The hub a workload measures: one started for it (a ``zmq-mq hub`` process through
:class:`zmq_mq.testing.HubProcess`), or one somebody else runs (``--hub``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .measure import process_status


class BenchHub:
    """A ``zmq-mq hub`` subprocess on a fresh temporary data directory and free loopback ports,
    with the given ``--sync``; stopped with SIGTERM (SIGKILL after 15 s) and its directory
    removed by :meth:`stop`."""

    def __init__(self, sync: str) -> None:
        # here, not at the top: the workload processes import this package and need no hub code
        from ..testing import HubProcess

        self.sync = sync
        self.tmp = tempfile.mkdtemp(prefix="zmq-mq-bench-")
        # its own session: a Ctrl-C in the terminal reaches the bench, which then stops the hub
        self.process = HubProcess(Path(self.tmp) / "data", ["--sync", sync], log_level="warning",
                                  new_session=True)

    def start(self) -> "BenchHub":
        self.process.start()
        return self

    @property
    def endpoint(self) -> str | None:
        return self.process.endpoint

    @property
    def pid(self) -> int | None:
        """The hub process's id (None before it started): what the bench samples in /proc."""
        return self.process.pid if self.process.proc is not None else None

    @property
    def pub(self) -> str | None:
        return self.process.pub_endpoint

    def log_tail(self, lines: int = 20) -> str:
        """The end of the hub's stderr (what to show when a workload failed)."""
        return self.process.log_tail(lines)

    def status(self) -> dict:
        """Peak RSS, RSS and CPU seconds of the running hub (empty once it exited)."""
        if not self.process.running():
            return {}
        return process_status(self.process.pid)

    def stop(self) -> int | None:
        """Stop the hub, remove its data; its exit code (None if it never started)."""
        try:
            return self.process.stop(15.0)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class ExternalHub:
    """A hub somebody else runs (``--hub``): nothing to start or stop, no /proc numbers."""

    pid = None

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def start(self) -> "ExternalHub":
        return self

    def log_tail(self, lines: int = 20) -> str:
        return ""

    def status(self) -> dict:
        return {}

    def stop(self) -> None:
        return None
