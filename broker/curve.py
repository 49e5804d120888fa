"""CURVE keys for the control endpoint and the data plane (`ddcl keys gen DIR`).

DIR/server.key(_secret): the broker's pair; DIR/client.key(_secret): the pair every
other role uses; DIR/authorized/: the public keys the broker lets in. A client whose key
is not there completes no handshake, so nothing it sends reaches the broker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class CurveError(RuntimeError):
    """Missing, unreadable or unwritable key files."""


def generate(keys_dir: Path) -> list[Path]:
    keys_dir = Path(keys_dir)
    try:
        (keys_dir / "authorized").mkdir(parents=True, exist_ok=True)
        server_pub, _ = zmq.auth.create_certificates(keys_dir, "server")
        client_pub, _ = zmq.auth.create_certificates(keys_dir, "client")
        shutil.copy(client_pub, keys_dir / "authorized" / "client.key")
    except OSError as e:
        raise CurveError(f"cannot write keys to {keys_dir}: {e}") from None
    return [Path(server_pub), Path(client_pub)]


class Curve:
    def __init__(self, keys_dir: Path, client_secret: Path | None = None):
        self.dir = Path(keys_dir)
        self.client_secret = Path(client_secret) if client_secret else self.dir / "client.key_secret"
        try:
            self.server_public, self.server_secret = zmq.auth.load_certificate(self.dir / "server.key_secret")
        except (OSError, ValueError):
            self.server_public, self.server_secret = self._public_only()

    def _public_only(self):
        try:
            public, _ = zmq.auth.load_certificate(self.dir / "server.key")
        except (OSError, ValueError) as e:
            raise CurveError(f"no server key in {self.dir} (run `ddcl keys gen {self.dir}`): {e}") from None
        return public, None

    def serve(self, sock: zmq.Socket) -> None:
        if self.server_secret is None:
            raise CurveError(f"{self.dir} has no server.key_secret: the broker needs it")
        auth = ThreadAuthenticator(sock.context)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.dir / "authorized"))
        self._auth = auth  # keep it running with the socket
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def connect(self, sock: zmq.Socket) -> None:
        try:
            public, secret = zmq.auth.load_certificate(self.client_secret)
        except (OSError, ValueError) as e:
            raise CurveError(f"cannot read client key {self.client_secret}: {e}") from None
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = self.server_public
