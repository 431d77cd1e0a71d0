"""CURVE on the hub: its key pair, the authorised client keys, and the ZAP handler.

All cryptography and the ZAP protocol are pyzmq's (``zmq.auth``); this module only loads the
files, names the keys, and logs every decision. The security model:

- CurveZMQ encrypts and authenticates every connection at the ZeroMQ layer (the ROUTER and the
  PUB socket are CURVE servers with the hub's secret key); a client must know the hub's public
  key, so it cannot be fooled by another server.
- A client is its CURVE public key. pyzmq's ZAP authenticator (``configure_curve``) accepts only
  keys whose ``NAME.key`` certificate is in the authorised directory; the accepted key (Z85) is
  the ``User-Id`` of every frame that client sends, which the hub checks against the ACL.
- With an ACL, the live feed (PUB) admits only keys that may subscribe to everything (``>``),
  because a PUB socket cannot filter per subscriber.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .acl import Acl

log = logging.getLogger("zmq_mq.auth")

# Where `zmq-mq keygen` writes key pairs and the hub looks for its own (--out / --keys default).
DEFAULT_KEYS_DIR = "./zmq-mq-keys"
HUB_KEY_NAME = "hub"  # the hub's pair: <keys>/hub.key and <keys>/hub.key_secret
AUTHORIZED_SUBDIR = "authorized"  # default authorised directory: <keys>/authorized
ROUTER_DOMAIN = "zmq-mq"  # ZAP domains: which socket a handshake is for
LIVE_DOMAIN = "zmq-mq.live"
_ZAP_VERSION = b"1.0"  # ZAP (ZeroMQ RFC 27) reply version


class SecurityError(Exception):
    """Keys or ACL cannot be loaded (the operator's fault); the message says which file."""


@dataclass
class HubKeys:
    """What a CURVE hub needs: its own pair, the authorised keys by name, and the ACL."""

    public: bytes
    secret: bytes
    authorized_dir: str
    names: dict[str, str] = field(default_factory=dict)  # name -> Z85 public key
    acl: Acl | None = None

    def name_of(self, key: str | None) -> str:
        """A key's name for log lines (the file name of its certificate), else its Z85 prefix."""
        for name, k in self.names.items():
            if k == key:
                return name
        return f"{key[:8]}..." if key else "?"

    @classmethod
    def load(cls, keys_dir: str, authorized_dir: str | None = None,
             acl_file: str | None = None) -> "HubKeys":
        secret_file = os.path.join(keys_dir, f"{HUB_KEY_NAME}.key_secret")
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as exc:
            raise SecurityError(
                f"cannot read the hub's secret key {secret_file} ({exc}); create it with "
                f"`zmq-mq keygen --out {keys_dir} --name {HUB_KEY_NAME}`"
            ) from None
        if not secret:
            raise SecurityError(f"{secret_file} holds no secret key")
        authorized_dir = authorized_dir or os.path.join(keys_dir, AUTHORIZED_SUBDIR)
        names = authorized_names(authorized_dir)
        acl = None
        if acl_file:
            from .acl import AclError

            try:
                text = Path(acl_file).read_text()
            except OSError as exc:
                raise SecurityError(f"cannot read the ACL file {acl_file}: {exc}") from None
            try:
                acl = Acl.from_toml(text, names, source=acl_file)
            except AclError as exc:
                raise SecurityError(str(exc)) from None
        return cls(public, secret, authorized_dir, names, acl)


def authorized_names(directory: str) -> dict[str, str]:
    """``{name: Z85 public key}`` of the ``NAME.key`` certificates in ``directory``."""
    if not os.path.isdir(directory):
        raise SecurityError(
            f"authorised-keys directory {directory} does not exist; create it and copy each "
            "client's NAME.key (public certificate) into it"
        )
    names = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.key"))):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise SecurityError(f"cannot read the certificate {path}: {exc}") from None
        names[Path(path).stem] = public.decode("ascii")
    return names


def make_curve_server(sock: zmq.Socket, keys: HubKeys, domain: str) -> None:
    """Turn ``sock`` into a CURVE server with the hub's keys, authenticated in ZAP ``domain``."""
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)


class HubAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, allowing the authorised keys, and logging each accept and refusal.

    The decision is pyzmq's (``configure_curve`` with the authorised directory, for both ZAP
    domains); this class adds the log lines and, with an ACL, the live-feed rule.
    """

    def __init__(self, context: zmq.Context, keys: HubKeys) -> None:
        super().__init__(context, log=logging.getLogger("zmq_mq.auth.zap"))
        self.keys = keys
        self._granted: bytes | None = None

    def start(self) -> None:
        super().start()
        for domain in (ROUTER_DOMAIN, LIVE_DOMAIN):
            self.configure_curve(domain=domain, location=self.keys.authorized_dir)
        log.info(
            "CURVE on: %d authorised client keys in %s%s", len(self.keys.names),
            self.keys.authorized_dir,
            f", ACL for {len(self.keys.acl.grants)} keys" if self.keys.acl else ", no ACL (all rights)",
        )

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called by pyzmq only when it accepted the key: remember that, keep the Z85 user id.
        self._granted = client_public_key
        return super().curve_user_id(client_public_key)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) < 7 or msg[5] != b"CURVE":
            await super().handle_zap_message(msg)  # pyzmq answers malformed requests itself
            return
        request_id, domain, address, client_key = msg[1], msg[2], msg[3], msg[6]
        where = "live feed" if domain == LIVE_DOMAIN.encode() else "router"
        address = address.decode("utf-8", "replace")
        key = z85.encode(client_key).decode("ascii") if len(client_key) == 32 else repr(client_key)
        acl = self.keys.acl
        if where == "live feed" and acl is not None and not acl.reads_everything(key):
            # A PUB socket cannot filter per subscriber: with an ACL, only keys that may read
            # every topic (subscribe ">") get the live feed; the others use subscriptions.
            log.warning(
                "refused client %s (key %s) from %s on the live feed: its ACL does not grant "
                "subscribe '>'", self.keys.name_of(key), key, address,
            )
            self.zap_socket.send_multipart(
                [_ZAP_VERSION, request_id, b"400", b"live feed needs subscribe '>'", b"", b""]
            )
            return
        self._granted = None
        await super().handle_zap_message(msg)
        if self._granted is None:
            log.warning(
                "refused client key %s from %s on the %s: not an authorised key (add its .key "
                "file to %s and restart the hub)", key, address, where, self.keys.authorized_dir,
            )
        else:
            log.info("authenticated client %s (key %s) from %s on the %s",
                     self.keys.name_of(key), key, address, where)


# Handshake failures the ROUTER's monitor reports (the ZAP handler logs refused keys itself,
# with the key and address; these are the failures ZAP never sees).
MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_PROTOCOL_HINTS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "a client without CURVE keys (plain mode?)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "a client using a wrong hub public key",
}


def describe_handshake_failure(event: int, value: int) -> str:
    """What a monitor event most likely means, for the hub's log."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL_HINTS.get(value, f"protocol error {value:#x}")
    # NO_DETAIL carries an errno: the peer hung up mid-handshake, which a plain client (or one
    # with a wrong hub key) does as often as the hub notices the mismatch itself
    try:
        reason = os.strerror(value)
    except (ValueError, OverflowError):
        reason = str(value)
    return f"the peer hung up during the handshake ({reason}): a client without CURVE keys, or with a wrong hub key?"


class LogLimiter:
    """Lets a log line through at most once per ``interval_ms`` per kind, counting the rest.

    A client retrying with a wrong key every 100 ms, or flooding refused publishes, must not
    flood the hub's log; the first line says it, later ones say how many were not shown.
    """

    def __init__(self, interval_ms: int = 10_000, max_kinds: int = 10_000) -> None:
        self.interval_ms = interval_ms
        self.max_kinds = max_kinds
        self._last: dict[object, tuple[int, int]] = {}  # kind -> (logged at, suppressed since)

    def allow(self, kind: object, now_ms: int) -> int | None:
        """None: stay quiet. Else log now; the int is how many were suppressed before this."""
        last = self._last.get(kind)
        if last is not None and now_ms - last[0] < self.interval_ms:
            self._last[kind] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.max_kinds:
            self._last.clear()
        self._last[kind] = (now_ms, 0)
        return last[1] if last else 0
