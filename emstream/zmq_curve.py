"""CURVE encryption and allow-lists for the ZeroMQ sockets emstream opens (stream input,
summary publisher, facility hub).

Certificates are the files ``zmq.auth.create_certificates`` writes (``NAME.key`` public,
``NAME.key_secret`` secret). A side that binds is the CURVE *server*: it needs its secret
certificate and a folder of the client public certificates it accepts (checked by a ZAP
:class:`~zmq.auth.thread.ThreadAuthenticator`). A side that connects is a *client*: it needs its
own secret certificate and the server's public one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from emstream.errors import ConfigError

__all__ = ["setup_curve"]


def setup_curve(ctx: zmq.Context, sock: zmq.Socket, *, keys: str | Path | None,
                allow: str | Path | None = None, server: str | Path | None = None,
                bind: bool, what: str = "curve") -> ThreadAuthenticator | None:
    """Make ``sock`` a CURVE server (``bind``) or client; nothing when ``keys`` is ``None``.

    Returns the authenticator a server needs kept running (stop it when closing the socket).

    Raises
    ------
    ConfigError
        unreadable or wrong certificates, a server without an allow-list, a client without
        the server's public certificate, a libzmq without CURVE.
    """
    if not keys:
        return None
    if not zmq.has("curve"):
        raise ConfigError("this libzmq has no CURVE support; cannot encrypt the socket")
    try:
        public, secret = zmq.auth.load_certificate(str(keys))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}_keys {str(keys)!r}: cannot read certificate ({exc})") from None
    if not secret:
        raise ConfigError(f"{what}_keys {str(keys)!r} is a public certificate; "
                          "pass the secret one (*.key_secret)")
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if bind:
        if not allow:
            raise ConfigError(f"a CURVE server needs {what}_allow (allowed client certificates)")
        allow_dir = Path(allow)
        if not allow_dir.is_dir() or not any(allow_dir.glob("*.key")):
            raise ConfigError(f"{what}_allow {str(allow)!r}: expected a folder of client "
                              "public certificates (*.key)")
        auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".auth"))
        auth.start()
        auth.configure_curve(domain="*", location=str(allow_dir))
        sock.curve_server = True
        return auth
    if not server:
        raise ConfigError(f"connecting with CURVE needs {what}_server "
                          "(the server's public certificate)")
    try:
        server_public, _ = zmq.auth.load_certificate(str(server))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}_server {str(server)!r}: cannot read ({exc})") from None
    sock.curve_serverkey = server_public
    return None
