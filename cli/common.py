"""What every ``zmq-mq`` command shares: the one-line error exit, the rich console, and the
options that reach a hub (--hub with its check, --timeout, --curve-key / --server-key).

Nothing here starts or imports the hub: these are the client side of the command line.
"""

from __future__ import annotations

import base64
import sys
from typing import NoReturn

import typer

from ..actors.connection import ENV_CURVE_KEY, ENV_HUB, ENV_SERVER_KEY, CurveKeys
from ..router.endpoint import hub_address_problem
from ..router.protocol import DEFAULT_BIND

CONNECT_TIMEOUT = 10.0  # seconds to wait for the hub when a command has no --timeout of its own


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with one line on stderr: 2 for a usage error, 1 for a failure."""
    typer.echo(f"zmq-mq: error: {message}", err=True)
    raise typer.Exit(code)


def console(stderr: bool = False):
    """A rich console on stdout (or stderr); piped output is wide enough that no column is
    cut to "…"."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 200)


def payload_fields(payload: bytes) -> dict[str, str]:
    """A payload for JSON output: ``payload`` as text, or ``payload_b64`` if it is not UTF-8."""
    try:
        return {"payload": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(payload).decode("ascii")}


# --- reaching the hub --------------------------------------------------------------------------


def check_hub_option(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """--hub (or $ZMQ_MQ_HUB) checked before anything connects: one line and exit 2 if malformed."""
    if value is None or ctx.resilient_parsing:
        return value
    problem = hub_address_problem(value)
    if problem:
        source = ctx.get_parameter_source(param.name)
        # compared by name: typer vendors click, so its ParameterSource is not importable
        where = f"${ENV_HUB}" if getattr(source, "name", "") == "ENVIRONMENT" else "--hub"
        fail(f"{where}: {problem}", 2)
    return value


HubOption = typer.Option(None, "--hub", envvar=ENV_HUB, callback=check_hub_option,
                         help=f"Hub endpoint (default {DEFAULT_BIND}), or a cluster: zk://HOST:PORT/CHROOT or tcp://A,tcp://B.")
TimeoutOption = typer.Option(10.0, "--timeout", help="Seconds to wait for the hub.")

CurveKeyOption = typer.Option(
    None, "--curve-key", envvar=ENV_CURVE_KEY,
    help="This client's secret key file (NAME.key_secret from `zmq-mq keygen`), for a --curve hub.",
)
ServerKeyOption = typer.Option(
    None, "--server-key", envvar=ENV_SERVER_KEY,
    help="The --curve hub's public key: its hub.key file, or the Z85 key itself.",
)


def curve_keys(curve_key: str | None, server_key: str | None) -> CurveKeys | None:
    """Client keys from --curve-key / --server-key (or their environment variables)."""
    if not curve_key and not server_key:
        return None
    if not (curve_key and server_key):
        fail("--curve-key and --server-key go together (a --curve hub needs both)", 2)
    try:
        return CurveKeys.load(curve_key, server_key)
    except ValueError as exc:
        fail(str(exc), 2)
