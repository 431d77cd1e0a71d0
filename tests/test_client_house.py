"""The client library's house rules: it builds on the codec, never on the hub, and its
heartbeat timers read a clock the tests can move."""

from __future__ import annotations

import ast
import queue
import threading
from pathlib import Path

import pytest
import zmq

from zmq_mq.router import protocol
from zmq_mq.router.clock import FakeClock
from zmq_mq.router.protocol import Command

ACTORS = Path(__file__).resolve().parent.parent / "actors"
# The common ground of hub and clients: the codec, the clock, the endpoint check and frame
# transport. Everything else under router/ is the hub's (config, hub, subscription, acl, ...).
CLIENT_ROUTER_MODULES = {"protocol", "clock", "endpoint", "wire", "cluster"}
# Of router/cluster (cluster mode's coordination), the client may use the pure modules and the
# coordinator's ClusterClient (reads ZooKeeper, creates topics), never ClusterMember (a hub's).
CLIENT_CLUSTER_MODULES = {"address", "layout", "placement", "errors", "coordinator"}
CLIENT_COORDINATOR_NAMES = {"ClusterClient"}


def _router_imports(path: Path) -> set[str]:
    """The router modules a module of actors/ imports (``from ..router import x``,
    ``from ..router.x import y``, ``import zmq_mq.router.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            parts = module.split(".")
            if node.level == 2 and parts[0] == "router" or module.startswith("zmq_mq.router"):
                rest = parts[parts.index("router") + 1:]
                if rest:
                    found.add(rest[0])
                else:  # from ..router import protocol, clock
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["zmq_mq", "router"]:
                    found.add(parts[2] if len(parts) > 2 else "*")
    return found


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports of a module (``msgpack``, ``zmq``, ...)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_import_rule_sees_every_form_of_a_router_import(tmp_path):
    # the rule below is only worth something if it notices the imports it forbids
    module = tmp_path / "sample.py"
    module.write_text("from ..router.config import LIVENESS\nfrom ..router import hub, protocol\n"
                      "import zmq_mq.router.acl\nfrom zmq_mq.router.stats import x\n"
                      "from .session import Session\n")
    assert _router_imports(module) == {"config", "hub", "protocol", "acl", "stats"}


@pytest.mark.parametrize("path", sorted(ACTORS.glob("*.py")), ids=lambda p: p.name)
def test_no_module_of_the_client_library_imports_a_hub_side_module(path):
    hub_side = _router_imports(path) - CLIENT_ROUTER_MODULES
    assert not hub_side, (
        f"actors/{path.name} imports router module(s) {sorted(hub_side)}: the client builds on "
        f"{sorted(CLIENT_ROUTER_MODULES)} only (move what it needs into router/protocol.py)"
    )


def _cluster_imports(path: Path) -> tuple[set[str], set[str], bool]:
    """What a module of actors/ takes from router/cluster: the submodules, the names it takes
    from the coordinator, and whether it imports kazoo (or the coordinator) at module level."""
    modules: set[str] = set()
    names: set[str] = set()
    eager = False
    tree = ast.parse(path.read_text(), str(path))
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if "router" in parts and parts[parts.index("router") + 1:][:1] == ["cluster"]:
                rest = parts[parts.index("router") + 2:]
                if rest:
                    modules.add(rest[0])
                    if rest[0] == "coordinator":
                        names.update(alias.name for alias in node.names)
                        eager |= id(node) in top_level
                else:
                    modules.update(alias.name for alias in node.names)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) in top_level:
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""])
            eager |= any(m.split(".")[0] == "kazoo" for m in mods)
    return modules, names, eager


@pytest.mark.parametrize("path", sorted(ACTORS.glob("*.py")), ids=lambda p: p.name)
def test_the_client_takes_only_the_pure_cluster_modules_and_cluster_client_and_kazoo_lazily(path):
    modules, names, eager = _cluster_imports(path)
    assert modules <= CLIENT_CLUSTER_MODULES, f"actors/{path.name} imports router.cluster {modules}"
    assert names <= CLIENT_COORDINATOR_NAMES, f"actors/{path.name} takes {names} from coordinator"
    assert not eager, f"actors/{path.name} imports kazoo or the coordinator at import time"


def test_the_cluster_import_rule_sees_a_hub_side_cluster_import(tmp_path):
    module = tmp_path / "sample.py"
    module.write_text("from ..router.cluster.coordinator import ClusterMember\n"
                      "from ..router.cluster import hubside\nimport kazoo.client\n")
    assert _cluster_imports(module) == ({"coordinator", "hubside"}, {"ClusterMember"}, True)


@pytest.mark.parametrize("path", sorted(ACTORS.glob("*.py")), ids=lambda p: p.name)
def test_no_module_of_the_client_library_packs_or_parses_bodies_itself(path):
    # every body and record layout is the codec's (router/protocol.py): no msgpack here
    assert "msgpack" not in _imports(path), f"actors/{path.name} imports msgpack"


def test_the_client_session_has_its_own_module_and_the_consumer_still_exports_it():
    from zmq_mq.actors import consumer, session

    assert consumer.Session is session.Session
    assert consumer.wire_start is session.wire_start
    assert consumer.DEFAULT_CREDIT == session.DEFAULT_CREDIT


def test_admin_describes_a_dead_letter_as_the_hub_side_description_does():
    from zmq_mq.router.deadletters import dead_letter_record, describe

    record = protocol.pack_record(1_000, "k", {"trace": "t1"}, b"body")
    dead = dead_letter_record(record, "orders", 7, "billing", 5, "max_deliver", 2_000)
    described = protocol.describe_dead_letter(3, dead)
    assert described == describe(3, dead)
    assert described["origin_topic"] == "orders" and described["origin_seq"] == 7
    assert described["headers"] == {"trace": "t1"} and described["payload"] == b"body"


# --- the clients' clock --------------------------------------------------------------------

HEARTBEAT_MS = 1000


class _FakeHub:
    """A raw ROUTER that welcomes every HELLO and queues every other command it receives, in
    order (a DEALER's commands arrive in the order it sent them)."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-hub", daemon=True)

    def __enter__(self) -> "_FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, *frames = self.sock.recv_multipart()
            command, body = protocol.decode(frames)
            if command == Command.HELLO:
                welcome = {"hub": "fake", "heartbeat_ms": HEARTBEAT_MS, "liveness": 3,
                           "limits": {}, "pub": None}
                self.sock.send_multipart([peer, *protocol.encode(Command.WELCOME, welcome)])
            else:
                self.received.put((command, body))

    def next_command(self) -> bytes:
        return self.received.get(timeout=10)[0]


def test_a_session_on_a_fake_clock_heartbeats_when_the_clock_passes_the_interval_not_before(socket):
    # Given a session on a fake clock, connected to a hub that tells a 1 s heartbeat
    from zmq_mq.actors.session import Session

    router = socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    clock = FakeClock()
    with _FakeHub(router) as fake:
        session = Session(fake.endpoint, name="clocked", timeout=10, clock=clock)
        try:
            session.connect()
            session.keepalive()  # the first heartbeat goes at once
            assert fake.next_command() == Command.HEARTBEAT
            # When the clock stays short of the interval (however much real time passes)
            clock.advance(HEARTBEAT_MS - 1)
            session.keepalive()
            session.conn.send(Command.TOPICS, [1])  # a marker: anything sent before it came first
            # Then no heartbeat is sent
            assert fake.next_command() == Command.TOPICS
            # When the clock reaches the interval, Then the next keepalive heartbeats
            clock.advance(1)
            session.keepalive()
            assert fake.next_command() == Command.HEARTBEAT
        finally:
            session.close()


def test_a_connection_takes_its_hub_for_silent_by_its_clock(socket):
    # Given a connection on a fake clock that has just heard the hub's WELCOME
    from zmq_mq.actors.connection import Connection

    router = socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    clock = FakeClock()
    with _FakeHub(router) as fake:
        conn = Connection(fake.endpoint, clock=clock)
        try:
            conn.open(10)
            assert conn.last_heard == clock.monotonic_ms()
            # When the clock moves to liveness intervals exactly, Then the hub is not silent yet
            clock.advance(HEARTBEAT_MS * 3)
            assert not conn.hub_silent(conn.now_ms())
            # When it moves past them, Then it is
            clock.advance(1)
            assert conn.hub_silent(conn.now_ms())
        finally:
            conn.close()


def test_producer_consumer_and_actor_hand_their_clock_to_their_connection(hub):
    # Given one fake clock handed to each kind of client
    from zmq_mq.actors import Actor, Consumer, Producer

    clock = FakeClock()
    producer = Producer(hub.endpoint, clock=clock)
    consumer = Consumer(hub.endpoint, clock=clock)
    actor = Actor(hub.endpoint, name="clocked-actor", clock=clock)
    actor.subscribe("clock.t", group="g")(lambda msg: None)
    try:
        actor.start()
        # Then each one's connection reads it (heartbeats and hub silence follow it)
        assert producer._conn.clock is clock
        assert consumer._session.conn.clock is clock
        assert actor.session.conn.clock is clock
    finally:
        actor.stop()
        consumer.close()
        producer.close()
