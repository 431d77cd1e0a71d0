"""``zmq-mq hub``: run the hub in the foreground, from its flags and an optional TOML file.

The one cli module that imports the hub (lazily, when the command runs). ``zmq-mq demo`` starts
its in-process hub through :func:`start_in_thread` here rather than importing the hub itself.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Optional

import typer

from ..logs import LOG_FORMATS, setup_logging
from ..router.config import (
    DEFAULT_BIND,
    DEFAULT_DATA_DIR,
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_KEYS_DIR,
    DEFAULT_PUB,
    HEARTBEAT_INTERVAL_MS,
    HubConfig,
)
from ..router.endpoint import endpoint_problem
from ..router.protocol import MAX_HEADERS_BYTES, MAX_MESSAGE_BYTES
from .common import fail

if TYPE_CHECKING:
    from ..testing import HubThread

__all__ = ["DEFAULT_DATA_DIR", "HUB_FILE_KEYS", "check_bind_options", "hub", "start_in_thread"]

# Keys a `zmq-mq hub --config FILE` may set: the flag names (dashes or underscores), with types.
HUB_FILE_KEYS: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "bind": (str,),
    "pub": (str,),
    "sync": (str,),
    "map_size_mb": (int,),
    "max_size_mb": (int,),
    "max_message_bytes": (int,),
    "max_headers_bytes": (int,),
    "heartbeat_ms": (int,),
    "log_level": (str,),
    "log_format": (str,),
    "metrics_port": (int,),
    "metrics_addr": (str,),
    "curve": (bool,),
    "keys": (str,),
    "authorized": (str,),
    "acl": (str,),
    "dedup_window": (int, float),
    # cluster mode (checked as the flags are, by _cluster_options)
    "cluster": (str,),
    "node": (str,),
    "advertise": (str,),
    "zk_session_timeout": (int, float),
}


def hub(
    ctx: typer.Context,
    config_file: Optional[str] = typer.Option(
        None, "--config",
        help="TOML file of hub settings; keys are these flag names (e.g. map-size-mb = 2048); "
        "flags given on the command line win.",
    ),
    data: str = typer.Option(DEFAULT_DATA_DIR, "--data", help="Data directory (LMDB)."),
    bind: str = typer.Option(DEFAULT_BIND, "--bind", help="ROUTER endpoint clients connect to."),
    pub: str = typer.Option(DEFAULT_PUB, "--pub", help="PUB endpoint for live listeners ('' for none)."),
    sync: str = typer.Option(
        "full", "--sync",
        help="full: fsync every commit before confirming (survives power loss); "
        "none: let the OS flush (a killed hub loses nothing, a crashed machine may lose the last commits).",
    ),
    map_size_mb: int = typer.Option(1024, "--map-size-mb", help="Initial LMDB map size (grows on demand)."),
    max_size_mb: Optional[int] = typer.Option(None, "--max-size-mb", help="Cap on the LMDB map size (default: until the disk is full)."),
    max_message_bytes: int = typer.Option(MAX_MESSAGE_BYTES, "--max-message-bytes", help="Largest payload accepted."),
    max_headers_bytes: int = typer.Option(
        MAX_HEADERS_BYTES, "--max-headers-bytes",
        help="Largest key plus headers of one message, packed (default 65536).",
    ),
    heartbeat_ms: int = typer.Option(HEARTBEAT_INTERVAL_MS, "--heartbeat-ms", help="Heartbeat interval told to clients."),
    curve: bool = typer.Option(
        False, "--curve",
        help="Encrypt and authenticate with CurveZMQ: only clients whose public key is in "
        "--authorized get in. Without it the hub is plain (no encryption, no authentication).",
    ),
    keys: str = typer.Option(
        DEFAULT_KEYS_DIR, "--keys",
        help="With --curve: directory holding the hub's key pair hub.key / hub.key_secret "
        "(`zmq-mq keygen --out DIR --name hub`).",
    ),
    authorized: Optional[str] = typer.Option(
        None, "--authorized",
        help="With --curve: directory of authorised client public keys (NAME.key files); "
        "default KEYS/authorized.",
    ),
    acl: Optional[str] = typer.Option(
        None, "--acl",
        help="With --curve: TOML file granting each client key publish / subscribe topic "
        "patterns (default: every authorised key may do everything).",
    ),
    dedup_window: float = typer.Option(
        DEFAULT_DEDUP_WINDOW_MS / 1000, "--dedup-window",
        help="Seconds a producer msg_id is remembered: a publish repeating it is stored once (0: off).",
    ),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per line (ts, level, logger, message)."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port",
        help="Serve Prometheus metrics on http://METRICS_ADDR:PORT/metrics (0 picks a free port; default: off).",
    ),
    metrics_addr: str = typer.Option("127.0.0.1", "--metrics-addr", help="Address the metrics endpoint binds."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster",
        help="Join a cluster: zk://HOST:PORT[,HOST:PORT...]/CHROOT (ZooKeeper; needs the "
        "'cluster' extra). Without it the hub is a single hub and needs nothing else.",
    ),
    node: Optional[str] = typer.Option(None, "--node", help="With --cluster: this hub's name in the cluster (stable across restarts)."),
    advertise: Optional[str] = typer.Option(
        None, "--advertise",
        help="With --cluster: the ROUTER endpoint other hubs and clients reach this hub on "
        "(default: the bound endpoint).",
    ),
    zk_session_timeout: float = typer.Option(
        6.0, "--zk-session-timeout",
        help="With --cluster: seconds ZooKeeper waits before taking a silent hub for dead "
        "(its partitions then fail over).",
    ),
) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    from ..router.config import ConfigError, load_toml
    from ..router.hub import Hub
    from ..router.security import SecurityError

    opts = {name: value for name, value in locals().items() if name in HUB_FILE_KEYS}
    if config_file:
        try:
            from_file = load_toml(config_file, HUB_FILE_KEYS)
        except ConfigError as exc:
            fail(str(exc), 2)
        for name, value in from_file.items():
            # a flag typed on the command line wins over the file (the source's enum name is
            # compared: typer vendors click, so its ParameterSource class is not importable)
            source = ctx.get_parameter_source(name)
            if getattr(source, "name", "DEFAULT") not in ("COMMANDLINE", "ENVIRONMENT"):
                opts[name] = value
    if opts["log_format"] not in LOG_FORMATS:
        fail("--log-format must be 'text' or 'json'", 2)
    setup_logging(opts["log_level"], opts["log_format"])
    if opts["dedup_window"] < 0:
        fail("--dedup-window must be >= 0", 2)
    for name in ("max_message_bytes", "max_headers_bytes"):
        if opts[name] < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1", 2)
    if opts["sync"] not in ("full", "none"):
        fail("--sync must be 'full' or 'none'", 2)
    if not opts["curve"] and (opts["authorized"] or opts["acl"]):
        fail("--authorized and --acl need --curve", 2)
    check_bind_options(opts["bind"], opts["pub"])
    cluster_opts = _cluster_options(opts["cluster"], opts["node"], opts["advertise"],
                                    opts["zk_session_timeout"])
    if cluster_opts is not None and opts["curve"]:
        fail("--cluster with --curve is not supported yet (hubs would need keys to replicate)", 2)
    config = HubConfig(
        data_dir=opts["data"],
        bind=opts["bind"],
        pub=opts["pub"] or None,
        sync=opts["sync"] == "full",
        map_size=opts["map_size_mb"] * 1024 * 1024,
        max_map_size=None if opts["max_size_mb"] is None else opts["max_size_mb"] * 1024 * 1024,
        max_message_bytes=opts["max_message_bytes"],
        max_headers_bytes=opts["max_headers_bytes"],
        heartbeat_ms=opts["heartbeat_ms"],
        curve=opts["curve"],
        keys_dir=opts["keys"],
        authorized_dir=opts["authorized"],
        acl_file=opts["acl"],
        dedup_window_ms=int(opts["dedup_window"] * 1000),
    )
    try:
        if cluster_opts is not None:  # the single hub (no --cluster) never imports this
            from ..router.cluster_hub import ClusterHub

            the_hub = ClusterHub(config, **cluster_opts)
        else:
            the_hub = Hub(config)
    except SecurityError as exc:
        fail(f"cannot start the hub: {exc}", 2)
    except Exception as exc:
        fail(f"cannot start the hub: {exc}")
    try:
        the_hub.bind()
    except Exception as exc:
        the_hub.close()
        fail(f"cannot start the hub: {exc}")
    metrics = None
    if opts["metrics_port"] is not None:
        from ..router.metrics import MetricsServer

        try:
            metrics = MetricsServer(the_hub, opts["metrics_port"], opts["metrics_addr"]).start()
        except OSError as exc:
            the_hub.close()
            fail(f"cannot serve metrics on {opts['metrics_addr']}:{opts['metrics_port']}: {exc}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: the_hub.stop())
    typer.echo(
        f"zmq-mq hub ready: router {the_hub.endpoint} pub {the_hub.pub_endpoint} data {opts['data']} "
        f"sync {opts['sync']} security {'curve' if opts['curve'] else 'plain'}"
        + (f" metrics {metrics.url}" if metrics else ""),
        err=True,
    )
    try:
        the_hub.run()
    finally:
        if metrics is not None:
            metrics.stop()
        the_hub.close()


def _cluster_options(cluster: str | None, node: str | None, advertise: str | None,
                     session_timeout: float) -> dict | None:
    """--cluster, --node, --advertise checked (one line and exit 2 if wrong); None without
    --cluster."""
    if cluster is None:
        if node is not None or advertise is not None:
            fail("--node and --advertise need --cluster", 2)
        return None
    from ..router.cluster.address import parse_cluster_address
    from ..router.cluster.layout import check_node_name

    try:
        parse_cluster_address(cluster)
    except ValueError as exc:
        fail(f"--cluster: {exc}", 2)
    if node is None:
        fail("--cluster needs --node NAME (this hub's name in the cluster)", 2)
    bad = check_node_name(node)
    if bad:
        fail(f"--node: {bad}", 2)
    if advertise is not None:
        problem = endpoint_problem(advertise)
        if problem:
            fail(f"--advertise: {problem}", 2)
    if session_timeout <= 0:
        fail("--zk-session-timeout must be > 0", 2)
    try:
        import kazoo  # noqa: F401
    except ImportError:
        fail("--cluster needs kazoo: pip install 'zmq-mq[cluster]'", 2)
    return {"cluster": cluster, "node": node, "advertise": advertise,
            "session_timeout": session_timeout}


def check_bind_options(bind: str, pub: str | None) -> None:
    """The hub's --bind and --pub ('' for none): one line and exit 2 if malformed."""
    for flag, value in (("--bind", bind), ("--pub", pub)):
        if flag == "--pub" and not value:
            continue
        problem = endpoint_problem(value, bind=True)
        if problem:
            fail(f"{flag}: {problem}", 2)


def start_in_thread(data: str, bind: str, pub: str | None) -> "HubThread":
    """A hub on a thread of this process (``zmq-mq demo``), checked like ``zmq-mq hub``'s flags;
    exits with one line if it cannot start. The caller stops it (``.stop()``)."""
    from ..storage import DataDirInUse
    from ..testing import HubThread

    check_bind_options(bind, pub)
    try:
        return HubThread(data, bind=bind, pub=pub or None).start()
    except DataDirInUse as exc:
        fail(f"cannot start the hub: {exc}")
    except Exception as exc:
        fail(f"cannot start the hub on {bind} ({exc}); is another hub running? "
             "try --bind tcp://127.0.0.1:*")
