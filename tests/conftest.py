"""Fixtures that own every hub, process and socket a test starts, and stop them afterwards."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import zmq

from zmq_mq.actors import Admin
from zmq_mq.actors.connection import request
from zmq_mq.router.clock import FakeClock
from zmq_mq.router.protocol import Command
from zmq_mq.testing import LOOPBACK_ANY_PORT, HubProcess, HubThread, zmq_mq_command

CONTEXT_TERM_TIMEOUT = 5.0


@pytest.fixture
def hub(tmp_path):
    """A real hub on a thread, on free loopback ports and a temp data dir."""
    h = HubThread(tmp_path / "data").start()
    yield h
    h.stop()


@pytest.fixture
def hub_process(tmp_path):
    """Factory of hub subprocesses (zmq_mq.testing.HubProcess) on one data dir; every one is
    stopped at the end."""
    started: list[HubProcess] = []

    def start(bind: str = LOOPBACK_ANY_PORT, extra: list[str] | None = None) -> HubProcess:
        h = HubProcess(tmp_path / "data", extra)
        started.append(h)
        return h.start(bind)

    yield start
    for h in started:
        h.stop()


# --- zmq contexts and sockets a test opens itself (as pyzmq's own tests/conftest.py does) -------


@pytest.fixture
def contexts():
    """Every zmq context a test uses (its own, or the one of its sockets); each is terminated
    at teardown, and the test fails if one cannot be: open sockets likely remain."""
    tracked: list[zmq.Context] = []
    yield tracked
    stuck = []
    for ctx in tracked:
        if ctx is zmq.Context.instance() or ctx.closed:
            continue  # the shared instance belongs to the client library and lives on
        done = threading.Thread(target=ctx.term, name="zmq-ctx-term", daemon=True)
        done.start()
        done.join(CONTEXT_TERM_TIMEOUT)
        if done.is_alive():
            stuck.append(ctx)
    if stuck:
        pytest.fail(f"{len(stuck)} zmq context(s) could not terminate within "
                    f"{CONTEXT_TERM_TIMEOUT:g} s: open sockets likely remain in the test")


@pytest.fixture
def context(contexts):
    """A fresh zmq context for the test, terminated at teardown (see ``contexts``)."""
    ctx = zmq.Context()
    contexts.append(ctx)
    return ctx


@pytest.fixture
def sockets(contexts):
    """Every zmq socket a test registers; closed with linger 0 at teardown, then their
    contexts terminated (see ``contexts``)."""
    tracked: list[zmq.Socket] = []
    yield tracked
    for s in tracked:
        if s.context not in contexts:
            contexts.append(s.context)
    for s in tracked:
        s.close(linger=0)


@pytest.fixture
def socket(context, sockets):
    """Factory of zmq sockets on the test's own context: ``socket(zmq.DEALER)``; every one is
    closed at teardown. ``ctx=`` puts the socket on another context (still tracked)."""

    def make(kind: int, ctx: zmq.Context | None = None) -> zmq.Socket:
        s = (ctx or context).socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        sockets.append(s)
        return s

    return make


@pytest.fixture
def processes():
    """Track subprocesses a test starts; any still running at the end are killed."""
    procs: list[subprocess.Popen] = []

    def track(p: subprocess.Popen) -> subprocess.Popen:
        procs.append(p)
        return p

    yield track
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def run_cli(*args: str, input: bytes | None = None, env_hub: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_hub:
        env["ZMQ_MQ_HUB"] = env_hub
    return subprocess.run([*zmq_mq_command(), *args], input=input, capture_output=True,
                          timeout=timeout, env=env)


@pytest.fixture
def raw_client(hub, socket):
    """A raw DEALER to the hub, for protocol-level tests; closed at the end (``socket``)."""

    def make() -> zmq.Socket:
        s = socket(zmq.DEALER)
        s.connect(hub.endpoint)
        return s

    return make


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


# --- a hub whose time the test moves ------------------------------------------------------------


@pytest.fixture
def fake_clock_hub(tmp_path):
    """Start hubs on a thread whose clock only moves when the test advances it:
    ``hub, clock = fake_clock_hub(**config)``. The clock starts at the machine's wall time (so
    a ``deliver_at`` a client computes from ``time.time()`` means the same to the hub) and moves
    by whole ``clock.advance(ms)`` steps; stopped at teardown. ``clock`` and ``data_dir``: start
    one again on an earlier one's clock and data (a restart)."""
    started: list[HubThread] = []

    def start(clock: FakeClock | None = None, data_dir=None,
              **config) -> tuple[HubThread, FakeClock]:
        clock = clock or FakeClock(wall_ms=time.time_ns() // 1_000_000)
        data_dir = data_dir or tmp_path / f"fake-clock-{len(started)}"
        h = HubThread(data_dir, clock=clock, **config).start()
        started.append(h)
        return h, clock

    yield start
    for h in started:
        h.stop()


def settled_stats(endpoint: str) -> dict:
    """The hub's STATS after at least one full loop turn that began after this call, asked over
    the wire: the first answer may come from a turn already under way when a test moved the
    clock (read before that turn's dispatch), the second from a later turn, which saw it."""
    with Admin(endpoint, timeout=10) as admin:
        admin.stats()
        return admin.stats()


def subscription_stats(endpoint: str, topic: str, group: str) -> dict:
    """One subscription's row of :func:`settled_stats` ({} if it has none)."""
    for row in settled_stats(endpoint)["subscriptions"]:
        if row["topic"] == topic and row["group"] == group:
            return row
    return {}


def sub_state(endpoint: str, topic: str, group: str) -> dict:
    """One subscription's row of TOPICS, asked over the wire ({} if it has none)."""
    for t in request(endpoint, Command.TOPICS):
        if t["topic"] == topic:
            for s in t["subscriptions"]:
                if s["group"] == group:
                    return s
    return {}


def _idle_rows(endpoint: str, groups: tuple[str, ...]) -> list[dict] | None:
    rows = [r for r in settled_stats(endpoint)["subscriptions"] if r["group"] in groups]
    return rows if len(rows) == len(groups) and all(r["in_flight"] == 0 for r in rows) else None


def step_hub_clock_while_idle(endpoint: str, clock: FakeClock, groups: tuple[str, ...], until,
                              step_ms: int = 100, limit_ms: int = 30_000) -> list[dict]:
    """Move a fake-clock hub through nack delays: each ``step_ms`` step is taken only once no
    message of the subscriptions of ``groups`` is in flight (every try ran and was settled, so
    no ack_wait runs out), until ``until(rows)`` holds for their STATS rows; returns them."""
    moved = 0
    while True:
        rows = wait_for(lambda: _idle_rows(endpoint, groups),
                        message=f"no message of {', '.join(groups)} in flight")
        if until(rows):
            return rows
        assert moved < limit_ms, f"not done after {moved} ms of hub time"
        clock.advance(step_ms)
        moved += step_ms


# --- a real ZooKeeper for the cluster tests (Debian's `zookeeper` package) ----------------------


def _require_zookeeper() -> None:
    """Fail in CI (CI set: .ci/run installs ZooKeeper, so its absence is a broken setup), skip
    only on a developer's machine without it."""
    from zmq_mq.testing import ZOOKEEPER_INSTALL_HINT, zookeeper_classpath

    if zookeeper_classpath() is not None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{ZOOKEEPER_INSTALL_HINT} (CI is set, so this fails instead of skipping)")
    pytest.skip(f"{ZOOKEEPER_INSTALL_HINT} (skipped only because CI is not set; in CI this "
                "fails)")


@pytest.fixture(scope="session")
def zookeeper_server(tmp_path_factory):
    """One ZooKeeper server for the whole session (starting one costs 1-2 s), on a free port;
    tests share it through fresh chroots (``zookeeper``)."""
    from zmq_mq.testing import ZooKeeperServer

    _require_zookeeper()
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zookeeper(zookeeper_server):
    """A cluster address (``zk://127.0.0.1:PORT/<fresh chroot>``) of its own for the test, on
    the session's ZooKeeper."""
    import uuid

    return zookeeper_server.url(f"/test-{uuid.uuid4().hex}")


@pytest.fixture
def own_zookeeper(tmp_path):
    """A ZooKeeper server of the test's own (for tests that stop or restart it), stopped at
    the end."""
    from zmq_mq.testing import ZooKeeperServer

    _require_zookeeper()
    server = ZooKeeperServer(tmp_path / "zookeeper")
    server.start()
    yield server
    server.kill9()


@pytest.fixture
def hub_cluster(tmp_path, zookeeper):
    """Start ``zmq-mq hub --cluster`` processes on the test's own chroot of the session's
    ZooKeeper: ``hub_cluster("a", "b", "c", session=2.0, ...)`` returns a started
    ``zmq_mq.testing.Cluster`` (one per test); every hub is resumed and stopped at the end."""
    from zmq_mq.testing import Cluster

    made: list[Cluster] = []

    def start(*nodes: str, **options) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", nodes, zookeeper=zookeeper,
                          **options)
        made.append(cluster)
        return cluster.start()

    yield start
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster_hubs(tmp_path, zookeeper):
    """Start cluster hubs on threads of the test (``zmq_mq.testing.ClusterHubThread``) on the
    test's own chroot: ``cluster_hubs("a", "b", session_timeout=2.0, **hub_config)`` returns
    them by node name; ``cluster_hubs.url`` is the cluster address. Stopped at the end."""
    from zmq_mq.testing import ClusterHubThread

    started: list[ClusterHubThread] = []

    def start(*nodes: str, session_timeout: float = 2.0, **config) -> dict[str, ClusterHubThread]:
        out = {}
        for node in nodes:
            h = ClusterHubThread(tmp_path / node, zookeeper, node,
                                 session_timeout=session_timeout, **config).start()
            started.append(h)
            out[node] = h
        return out

    start.url = zookeeper
    yield start
    for h in reversed(started):
        h.stop()
