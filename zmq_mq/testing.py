"""Run a real hub in-process, for tests of your own actors (and ours).

::

    from zmq_mq.testing import running_hub

    def test_my_actor(tmp_path):
        with running_hub(tmp_path) as hub:
            with Producer(hub.endpoint) as p:
                p.publish("orders", b"hi")
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from .router.clock import Clock
from .router.config import HubConfig
from .router.hub import Hub

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


class HubThread:
    """A Hub running on its own thread, bound to free loopback ports. ``clock``: the hub's
    clock (e.g. a ``zmq_mq.router.clock.FakeClock`` a test moves), else the system's."""

    def __init__(self, data_dir: str | Path, *, clock: Clock | None = None, **config: Any) -> None:
        config.setdefault("bind", LOOPBACK_ANY_PORT)
        config.setdefault("pub", LOOPBACK_ANY_PORT)
        self.config = HubConfig(data_dir=str(data_dir), **config)
        self.clock = clock
        self.hub: Hub | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> "HubThread":
        self.hub = Hub(self.config, clock=self.clock)
        self.hub.bind()
        self._thread = threading.Thread(target=self._run, name="zmq-mq-hub", daemon=True)
        self._thread.start()
        if not self.hub.running.wait(10):
            raise RuntimeError("hub thread did not start")
        return self

    def _run(self) -> None:
        try:
            self.hub.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint

    @property
    def pub_endpoint(self) -> str | None:
        return self.hub.pub_endpoint

    def stop(self) -> None:
        if self.hub is None:
            return
        self.hub.stop()
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("hub thread did not stop within 10 s")
        self.hub.close()
        self.hub = None
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def running_hub(
    data_dir: str | Path | None = None, *, clock: Clock | None = None, **config: Any
) -> Iterator[HubThread]:
    """A started HubThread (on a temporary data directory unless given), stopped on exit."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="zmq-mq-"))
        hub = HubThread(data_dir, clock=clock, **config).start()
        try:
            yield hub
        finally:
            hub.stop()
