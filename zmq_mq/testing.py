"""Run a real hub for tests of your own actors (and ours), in-process or as a process.

::

    from zmq_mq.testing import running_hub

    def test_my_actor(tmp_path):
        with running_hub(tmp_path) as hub:
            with Producer(hub.endpoint) as p:
                p.publish("orders", b"hi")

:class:`HubThread` runs the hub on a thread of the test's process; :class:`HubProcess` runs
``zmq-mq hub`` as a subprocess (so it can be killed -9 and restarted on its data). The test suite,
``zmq-mq bench`` and the fault harness (bench/faults.py) all start hub processes through
:class:`HubProcess`, and :data:`READY_RE` is the one parser of the hub's ready line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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
        try:
            self.hub.bind()
        except BaseException:
            self.hub.close()  # releases the data directory for the next try
            self.hub = None
            raise
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


# --- the hub as a process ----------------------------------------------------------------------

# What ``zmq-mq hub`` prints on stderr once it is bound (cli/hub.py), e.g.
#   zmq-mq hub ready: router tcp://127.0.0.1:5555 pub tcp://127.0.0.1:5556 data ./data sync full
#   security plain [metrics http://...]
# ``pub None`` when the PUB socket is disabled (``--pub ""``). The data path may hold spaces.
READY_RE = re.compile(
    r"zmq-mq hub ready: router (?P<endpoint>\S+) pub (?P<pub>\S+) data (?P<data>.*) "
    r"sync (?P<sync>\S+)"
)
HUB_START_TIMEOUT = 20.0


@dataclass(frozen=True)
class HubReady:
    """What a hub's ready line says: where it listens, its data directory and sync mode."""

    endpoint: str
    pub_endpoint: str | None
    data: str
    sync: str


def parse_ready_line(text: str) -> HubReady | None:
    """The first ready line in ``text`` (a hub's stderr), or None if it has not printed one."""
    m = READY_RE.search(text)
    if m is None:
        return None
    pub = m.group("pub")
    return HubReady(m.group("endpoint"), None if pub == "None" else pub, m.group("data"),
                    m.group("sync"))


def zmq_mq_command() -> list[str]:
    """How to run the CLI: the console script beside this Python, else on PATH, else the module."""
    exe = shutil.which("zmq-mq", path=os.path.dirname(sys.executable)) or shutil.which("zmq-mq")
    return [exe] if exe else [sys.executable, "-m", "zmq_mq.cli.main"]


class HubProcess:
    """``zmq-mq hub`` as a subprocess on ``data_dir``: started on free loopback ports (or the
    given ``bind``), ready once its ready line is printed, stopped with SIGTERM (SIGKILL if it
    does not exit), killable with ``kill9`` and restartable on the same data and endpoint.

    Its stderr goes to a new file in ``log_dir`` (default: beside the data directory) on every
    start: nothing to drain, and it is there to read when something fails (:meth:`log`).
    ``extra`` are more ``zmq-mq hub`` flags (``--sync``, ``--heartbeat-ms``, ``--config`` ...).
    """

    def __init__(self, data_dir: str | Path, extra: list[str] | None = None, *,
                 pub: str = LOOPBACK_ANY_PORT, log_level: str = "info",
                 log_dir: str | Path | None = None, new_session: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.extra = list(extra or [])
        self.pub = pub
        self.log_level = log_level
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir.parent
        self.new_session = new_session
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.ready: HubReady | None = None
        self.bind: str | None = None
        self.starts = 0  # successful starts (restarts + 1)

    # what the ready line said
    @property
    def endpoint(self) -> str | None:
        return self.ready.endpoint if self.ready else None

    @property
    def pub_endpoint(self) -> str | None:
        return self.ready.pub_endpoint if self.ready else None

    @property
    def sync(self) -> str | None:
        return self.ready.sync if self.ready else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, bind: str) -> list[str]:
        return [*zmq_mq_command(), "hub", "--data", str(self.data_dir), "--bind", bind,
                "--pub", self.pub, "--log-level", self.log_level, *self.extra]

    def start(self, bind: str = LOOPBACK_ANY_PORT,
              timeout: float = HUB_START_TIMEOUT) -> "HubProcess":
        """Start and wait for the ready line. A fixed port still held by a hub that was just
        killed (EADDRINUSE) is retried until ``timeout``; any other early exit raises."""
        self.bind = bind
        self.ready = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            self.log_path = self.log_dir / f"hub.{time.monotonic_ns()}.log"
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    self.command(bind), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=log, start_new_session=self.new_session,
                )
            while time.monotonic() < deadline and self.proc.poll() is None:
                self.ready = parse_ready_line(self.log())
                if self.ready is not None:
                    self.starts += 1
                    return self
                time.sleep(0.01)
            text = self.log()
            if self.proc.poll() is None:
                self._terminate(10.0)
                raise RuntimeError(f"hub process did not print its ready line within "
                                   f"{timeout:g} s: {text}")
            if "Address already in use" in text and time.monotonic() < deadline:
                time.sleep(0.1)  # the killed hub's port is not released yet
                continue
            raise RuntimeError(f"hub process exited with {self.proc.returncode} before it was "
                               f"ready: {text}")

    def restart(self, timeout: float = HUB_START_TIMEOUT) -> "HubProcess":
        """Stop it if it runs, then start again on the same data directory and the endpoint it
        had (the port it was given, or the one it picked the first time)."""
        bind = self.endpoint or self.bind or LOOPBACK_ANY_PORT
        self.stop()
        return self.start(bind, timeout)

    def log(self) -> str:
        """The current run's stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, lines: int = 20) -> str:
        return "".join(self.log().splitlines(keepends=True)[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """``kill -9``: no shutdown, nothing flushed that was not committed."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the hub commits its last turn and exits), SIGKILL after ``timeout``;
        the exit code (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._terminate(timeout)
        return self.proc.returncode

    def _terminate(self, timeout: float) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
