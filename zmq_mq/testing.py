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


class ClusterHubThread:
    """A cluster hub (router/cluster_hub.py, ``zmq-mq hub --cluster``) on a thread of this
    process, bound to a free loopback port, a member of the cluster at ``url`` as ``node``."""

    def __init__(self, data_dir: str | Path, url: str, node: str, *,
                 session_timeout: float = 2.0, **config: Any) -> None:
        config.setdefault("bind", LOOPBACK_ANY_PORT)
        config.setdefault("pub", None)
        config.setdefault("sync", False)
        self.config = HubConfig(data_dir=str(data_dir), **config)
        self.url = url
        self.node = node
        self.session_timeout = session_timeout
        self.hub = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ClusterHubThread":
        from .router.cluster_hub import ClusterHub

        self.hub = ClusterHub(self.config, cluster=self.url, node=self.node,
                              session_timeout=self.session_timeout)
        try:
            self.hub.bind()
        except BaseException:
            self.hub.close()
            self.hub = None
            raise
        self._thread = threading.Thread(target=self.hub.run, daemon=True,
                                        name=f"zmq-mq-hub-{self.node}")
        self._thread.start()
        if not self.hub.running.wait(10):
            raise RuntimeError("cluster hub thread did not start")
        return self

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint

    def stop(self) -> None:
        if self.hub is None:
            return
        self.hub.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.hub.close()
        self.hub = None


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


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc`` and wait for it; SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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
        terminate(self.proc, timeout)


# --- a real ZooKeeper for the cluster tests -----------------------------------------------------

# Debian's ``zookeeper`` package: zookeeper.jar names its dependencies in its manifest
# (Class-Path), so the server needs only it plus one slf4j binding; '/usr/share/java/*' would
# also put every other slf4j binding on the class path, and slf4j would pick one at random.
ZOOKEEPER_CLASSPATH_ENV = "ZMQ_MQ_ZOOKEEPER_CLASSPATH"
DEBIAN_ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
DEBIAN_SLF4J_SIMPLE_JAR = "/usr/share/java/slf4j-simple.jar"
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
ZOOKEEPER_START_TIMEOUT = 30.0
ZOOKEEPER_INSTALL_HINT = (
    "ZooKeeper is not installed: on Debian/Ubuntu run `apt-get install zookeeper` (it needs a "
    f"Java runtime), or set {ZOOKEEPER_CLASSPATH_ENV} to the class path of a ZooKeeper 3.5+ "
    "server"
)


def zookeeper_classpath() -> str | None:
    """The class path of an installed ZooKeeper server (``$ZMQ_MQ_ZOOKEEPER_CLASSPATH``, else
    Debian's package), or None when there is none (or no ``java`` to run it)."""
    if shutil.which("java") is None:
        return None
    explicit = os.environ.get(ZOOKEEPER_CLASSPATH_ENV)
    if explicit:
        return explicit
    if not os.path.exists(DEBIAN_ZOOKEEPER_JAR):
        return None
    jars = [DEBIAN_ZOOKEEPER_JAR]
    if os.path.exists(DEBIAN_SLF4J_SIMPLE_JAR):
        jars.append(DEBIAN_SLF4J_SIMPLE_JAR)
    return os.pathsep.join(jars)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zookeeper_four_letter(port: int, command: str, timeout: float = 1.0) -> str:
    """Send one of ZooKeeper's four-letter commands (``ruok``, ``srvr``) and return its answer
    ("" when nothing listens or it closes without one)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(command.encode())
            chunks = []
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return ""
    return b"".join(chunks).decode(errors="replace")


class ZooKeeperServer:
    """A standalone ZooKeeper server as a subprocess, on a free loopback port and a data
    directory of its own (``data_dir``), for tests of cluster mode.

    It writes its own ``zoo.cfg`` there (short ``tick_ms`` so sessions of a test expire within
    seconds, no admin HTTP server, only the ``ruok``/``srvr`` four-letter commands), is ready
    once ``ruok`` answers ``imok`` and ``srvr`` says it serves, and can be stopped, killed -9 and
    restarted on the same port and data (what ZooKeeper stored survives). ``forceSync=no``: a
    write reaches the OS, not the disk, before ZooKeeper answers; enough for tests, where the
    machine does not crash, and much faster on a loaded one.
    """

    def __init__(self, data_dir: str | Path, *, port: int | None = None, tick_ms: int = 500,
                 min_session_ms: int | None = None, max_session_ms: int | None = None,
                 log_level: str = "warn", heap_mb: int = 256) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms if min_session_ms is not None else 2 * tick_ms
        self.max_session_ms = max_session_ms if max_session_ms is not None else 40 * tick_ms
        self.log_level = log_level
        self.heap_mb = heap_mb
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.starts = 0

    @property
    def hosts(self) -> str:
        """``127.0.0.1:PORT``: the connect string of this server (kazoo's ``hosts``)."""
        return f"127.0.0.1:{self.port}"

    def url(self, chroot: str = "/zmq-mq") -> str:
        """The cluster address of a cluster living under ``chroot`` on this server."""
        if not chroot.startswith("/"):
            chroot = "/" + chroot
        return f"zk://{self.hosts}{chroot}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "zoo.cfg"

    def write_config(self) -> Path:
        store = self.data_dir / "store"
        store.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join([
            f"tickTime={self.tick_ms}",
            f"dataDir={store}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr",
            f"minSessionTimeout={self.min_session_ms}",
            f"maxSessionTimeout={self.max_session_ms}",
            "maxClientCnxns=0",
            "maxCnxns=1000",
            "forceSync=no",
            "",
        ]))
        return self.config_path

    def command(self) -> list[str]:
        classpath = zookeeper_classpath()
        if classpath is None:
            raise RuntimeError(ZOOKEEPER_INSTALL_HINT)
        return ["java", f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC",
                f"-Dorg.slf4j.simpleLogger.defaultLogLevel={self.log_level}",
                "-Dzookeeper.jmx.log4j.disable=true", "-cp", classpath, ZOOKEEPER_MAIN,
                str(self.config_path)]

    def start(self, timeout: float = ZOOKEEPER_START_TIMEOUT) -> "ZooKeeperServer":
        """Start it (on a free port the first time, on the same port after) and wait until it
        serves; raises with its log if it exits or does not serve within ``timeout``."""
        if self.running():
            return self
        if self.port is None:
            self.port = free_loopback_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.log_path = self.data_dir / f"zookeeper.{time.monotonic_ns()}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode} before it "
                                   f"served: {self.log()}")
            if self.serving():
                self.starts += 1
                return self
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError(f"ZooKeeper did not serve on {self.hosts} within {timeout:g} s: "
                           f"{self.log()}")

    def serving(self) -> bool:
        """Whether it answers ``imok`` and serves requests (``srvr`` shows its mode)."""
        return (zookeeper_four_letter(self.port, "ruok") == "imok"
                and "Mode:" in zookeeper_four_letter(self.port, "srvr"))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        terminate(self.proc, timeout)

    def kill9(self) -> None:
        """``kill -9``: what it had written to its log files stays (they are in the OS)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, timeout: float = ZOOKEEPER_START_TIMEOUT) -> "ZooKeeperServer":
        """Stop it and start it again on the same port and data."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> "ZooKeeperServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a cluster of hub processes on one ZooKeeper -----------------------------------------------


class Cluster:
    """One ZooKeeper and ``zmq-mq hub --cluster`` processes on loopback, for tests and
    benchmarks of cluster mode (tests/, bench/cluster_*.py). ::

        with Cluster(tmp_dir, nodes=("a", "b", "c")) as cluster:   # ZooKeeper + 3 hubs
            cluster.create_topic("orders", partitions=6, replicas=2)  # waits: led, ISR full
            victim, epoch = cluster.leader("orders.0")
            cluster.kill(victim)          # kill -9 (also pause/resume/restart, restart_zookeeper)
            cluster.wait_moved("orders.0", victim, epoch)
            with Producer(cluster.url) as p: ...

    ``root``: a directory of its own (each hub's data and log under ``root/<node>``, ZooKeeper's
    under ``root/zk``). ``zookeeper``: the cluster address (``zk://HOST:PORT/CHROOT``) of a
    ZooKeeper already running (the tests' shared one), else one is started here and stopped on
    ``stop()``; ``zookeeper_server`` is that server (None for a given address), for a test
    that restarts it. ``session``: the hubs' ZooKeeper session timeout in seconds (the failure
    detector); ``sync``: their ``--sync``; ``extra``: more ``zmq-mq hub`` flags for each.

    ``hubs`` maps node names to their :class:`HubProcess`; ``client`` is one
    ``ClusterClient`` (opened on first use) for reading placement. ``stop()`` (or leaving the
    ``with``) resumes paused hubs, stops every hub and the ZooKeeper it started: nothing of
    it outlives the test.
    """

    def __init__(self, root: str | Path, nodes: tuple[str, ...] | list[str] = ("a", "b", "c"), *,
                 zookeeper: str | None = None, chroot: str = "/zmq-mq", session: float = 2.0,
                 sync: str = "none", extra: list[str] | None = None,
                 tick_ms: int | None = None) -> None:
        self.root = Path(root)
        self.nodes = list(nodes)
        self.session = session
        self.sync = sync
        self.extra = list(extra or [])
        self.zookeeper_server: ZooKeeperServer | None = None
        if zookeeper is None:
            tick = tick_ms if tick_ms is not None else min(500, int(session * 1000 / 2))
            self.zookeeper_server = ZooKeeperServer(self.root / "zk", tick_ms=tick,
                                                    port=free_loopback_port())
            zookeeper = self.zookeeper_server.url(chroot)
        self.url = zookeeper
        self.hubs: dict[str, HubProcess] = {}
        self._client = None

    # --- lifecycle ---

    def start(self) -> "Cluster":
        """Start ZooKeeper (if it is this cluster's own) and a hub for each of ``nodes``."""
        try:
            if self.zookeeper_server is not None:
                self.zookeeper_server.start()
            for node in self.nodes:
                self.add(node)
        except BaseException:
            self.stop()
            raise
        return self

    def add(self, node: str, extra: list[str] | None = None) -> HubProcess:
        """Start one more hub process, ``node``, in the cluster (ready once it printed its
        ready line; it has joined ZooKeeper by then)."""
        hub = HubProcess(self.root / node / "data",
                         ["--cluster", self.url, "--node", node, "--zk-session-timeout",
                          f"{self.session:g}", "--sync", self.sync, *self.extra,
                          *(extra or [])],
                         log_dir=self.root / node)
        self.hubs[node] = hub
        if node not in self.nodes:
            self.nodes.append(node)
        return hub.start()

    def stop(self) -> None:
        """Resume any paused hub, stop every hub (SIGTERM, SIGKILL if slow), close the client
        and stop this cluster's own ZooKeeper."""
        try:
            for hub in self.hubs.values():
                if hub.running():
                    self.resume(hub)
                    hub.stop()
        finally:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None
            if self.zookeeper_server is not None:
                self.zookeeper_server.stop()

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ---

    def kill(self, node: str) -> None:
        """``kill -9`` the hub ``node`` (its ZooKeeper session ends after ``session`` s)."""
        self.hubs[node].kill9()

    def restart(self, node: str) -> HubProcess:
        """Start ``node`` again on its data and endpoint (stopping it first if it runs)."""
        self.resume(self.hubs[node])
        return self.hubs[node].restart()

    def pause(self, node: str) -> None:
        """SIGSTOP the hub ``node``: alive but silent (its session ends if paused too long)."""
        os.kill(self.hubs[node].pid, signal.SIGSTOP)

    def resume(self, node: str | HubProcess) -> None:
        """SIGCONT (harmless on a hub that is not paused or no longer runs)."""
        hub = self.hubs[node] if isinstance(node, str) else node
        if hub.proc is not None:
            with contextlib.suppress(OSError):
                os.kill(hub.pid, signal.SIGCONT)

    def restart_zookeeper(self) -> None:
        """Stop this cluster's own ZooKeeper (SIGTERM) and start it again on its port and data:
        what it stored stays, and sessions that come back within their timeout survive."""
        if self.zookeeper_server is None:
            raise RuntimeError("this cluster runs on a ZooKeeper it did not start")
        self.zookeeper_server.restart()

    # --- placement ---

    @property
    def client(self):
        """A ``ClusterClient`` on this cluster's ZooKeeper (kept open until ``stop()``)."""
        if self._client is None:
            from .router.cluster.coordinator import ClusterClient

            self._client = ClusterClient(self.url).start()
        return self._client

    def endpoints(self, live: bool = True) -> list[str]:
        """The ROUTER endpoints of the hubs (only the running ones unless ``live=False``)."""
        return [h.endpoint for h in self.hubs.values()
                if h.endpoint and (h.running() or not live)]

    def create_topic(self, name: str, partitions: int, replicas: int,
                     min_insync: int | None = None, *, timeout: float = 60.0):
        """Create a cluster topic and wait until every partition has a leader and its full
        in-sync set (:meth:`wait_settled`); its ``TopicSpec``."""
        spec = self.client.create_topic(name, partitions, replicas, min_insync=min_insync,
                                        wait=timeout)
        self.wait_settled(name, timeout=timeout)
        return spec

    def settled(self, topic: str) -> bool:
        """Whether every partition of ``topic`` has a leader and every replica in sync."""
        spec = self.client.topic(topic)
        if spec is None:
            return False
        states = self.client.partitions(topic)
        return len(states) == spec.partitions and all(
            s.leader and len(s.isr) == len(s.replicas) for s in states.values())

    def wait_settled(self, topic: str, timeout: float = 60.0) -> None:
        """Wait until :meth:`settled` (TimeoutError with the placement if it is not)."""
        self._wait(lambda: self.settled(topic), timeout,
                   lambda: f"{topic} settled: {self.client.partitions(topic)}")

    def leader(self, partition: str) -> tuple[str | None, int]:
        """(leader node, epoch) of ``partition`` (``<topic>.<i>``) as ZooKeeper holds it."""
        state = self.client.partition(partition)
        return state.leader, state.epoch

    def leader_endpoint(self, partition: str) -> str | None:
        """The ROUTER endpoint of ``partition``'s leader (None while it has none)."""
        leader, _ = self.leader(partition)
        return self.hubs[leader].endpoint if leader in self.hubs else None

    def wait_moved(self, partition: str, old: str, epoch: int, timeout: float = 60.0) -> str:
        """Wait until ``partition`` is led by a node other than ``old`` at an epoch above
        ``epoch``; the new leader's node."""
        def moved() -> bool:
            leader, now = self.leader(partition)
            return leader not in (None, old) and now > epoch

        self._wait(moved, timeout, lambda: f"{partition} moved off {old}")
        return self.leader(partition)[0]

    @staticmethod
    def _wait(predicate, timeout: float, what, interval: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what()}")
            time.sleep(interval)
