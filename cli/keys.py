"""``zmq-mq keygen``: create a CurveZMQ key pair, for the hub (``--name hub``) or a client.

By default it writes where ``zmq-mq hub --curve`` looks for keys (router/security.py names the
files and the directory).
"""

from __future__ import annotations

import os

import typer

from ..router.security import DEFAULT_KEYS_DIR
from .common import fail


def keygen(
    out: str = typer.Option(DEFAULT_KEYS_DIR, "--out", help="Directory to write the key pair to (created if missing)."),
    name: str = typer.Option("client", "--name", help="Key name: NAME.key (public) and NAME.key_secret (secret). Use 'hub' for the hub's own pair."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing pair of that name."),
) -> None:
    """Create a CurveZMQ key pair for the hub or a client (for `zmq-mq hub --curve`)."""
    import zmq.auth

    if not name or name.startswith(".") or os.sep in name or (os.altsep and os.altsep in name):
        fail(f"--name must be a plain file name, not {name!r}", 2)
    public_file = os.path.join(out, f"{name}.key")
    secret_file = os.path.join(out, f"{name}.key_secret")
    if not force and (os.path.exists(public_file) or os.path.exists(secret_file)):
        fail(f"{public_file} or {secret_file} exists; use --force to replace the pair", 2)
    # The secret file must be readable by its owner only: create both under a strict umask.
    old_umask = os.umask(0o077)
    try:
        os.makedirs(out, exist_ok=True)
        public_file, secret_file = zmq.auth.create_certificates(out, name)
    except OSError as exc:
        fail(f"cannot write keys to {out}: {exc}")
    finally:
        os.umask(old_umask)
    os.chmod(public_file, 0o644)  # the public half is meant to be copied around
    public, _ = zmq.auth.load_certificate(public_file)
    typer.echo(f"public key file: {public_file}")
    typer.echo(f"secret key file: {secret_file}  (keep it private)")
    typer.echo(f"public key: {public.decode('ascii')}")
