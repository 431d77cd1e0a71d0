"""What the cluster bench scripts share: one ZooKeeper and N ``zmq-mq hub --cluster`` processes
on loopback, and waiting for a topic's partitions to be led and in sync.

A module of ``cluster_failover.py`` and ``cluster_soak.py``, not a script of its own.
"""

from __future__ import annotations

import time
from pathlib import Path

from zmq_mq.testing import HubProcess, ZooKeeperServer


class LocalCluster:
    """ZooKeeper (``zmq_mq.testing.ZooKeeperServer``, Debian's package) on a free port and
    ``hubs`` cluster hubs ``hub0``.. on free ports, each with its data and logs under
    ``workdir/<node>``; ``session`` is the hubs' ZooKeeper session timeout (the failure
    detector), and ZooKeeper's tick is short enough to grant it."""

    def __init__(self, workdir: Path, *, hubs: int = 3, session: float = 2.0, sync: str = "full",
                 chroot: str = "/zmq-mq", extra: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.session = session
        self.zk = ZooKeeperServer(self.workdir / "zk", tick_ms=min(500, int(session * 1000 / 2)))
        self.chroot = chroot
        self.nodes = [f"hub{n}" for n in range(hubs)]
        self.sync = sync
        self.extra = list(extra or [])
        self.hubs: dict[str, HubProcess] = {}
        self._client = None

    @property
    def url(self) -> str:
        return self.zk.url(self.chroot)

    def start(self) -> "LocalCluster":
        self.zk.start()
        for node in self.nodes:
            self.hubs[node] = HubProcess(
                self.workdir / node / "data",
                ["--cluster", self.url, "--node", node, "--zk-session-timeout",
                 f"{self.session:g}", "--sync", self.sync, *self.extra],
                log_dir=self.workdir / node).start()
        return self

    def client(self):
        """A ``ClusterClient`` of this process (one, started on first use)."""
        if self._client is None:
            from zmq_mq.router.cluster.coordinator import ClusterClient

            self._client = ClusterClient(self.url).start()
        return self._client

    def healthy(self, topic: str, replicas: int) -> bool:
        """Every partition of ``topic`` led, with all its ``replicas`` in sync, and every hub
        registered (False too while ZooKeeper cannot be read)."""
        try:
            client = self.client()
            states = client.partitions(topic)
            return (len(client.hubs()) == len(self.nodes) and bool(states)
                    and all(s.leader and len(s.isr) == replicas for s in states.values()))
        except Exception:  # kazoo's connection and session errors: not healthy now
            return False

    def stop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
        for h in self.hubs.values():
            h.stop()
        self.zk.stop()


def wait(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; exit the script with a one-line reason after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
