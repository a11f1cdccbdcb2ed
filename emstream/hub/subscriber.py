"""ZeroMQ side of the hub: one SUB socket per monitor, received messages into the state.

Loopback endpoints are read as they are; any other endpoint needs CURVE (the hub's secret
certificate and that monitor's public one; the monitor publishes with ``--publish-curve-keys``
and lists the hub's public certificate in ``--publish-curve-allow``). A SUB socket only
receives: there is no path back to a microscope. ZeroMQ reconnects by itself when a monitor
dies and comes back on the same endpoint.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq

from emstream.errors import ConfigError
from emstream.hub.state import MAX_MESSAGE_BYTES, FacilityState
from emstream.sources.zmq import check_endpoint
from emstream.zmq_curve import setup_curve

__all__ = ["Subscriber"]

log = logging.getLogger(__name__)


class Subscriber:
    """Reads every monitor's PUB socket into ``state`` on a background thread.

    Parameters
    ----------
    state : the :class:`~emstream.hub.state.FacilityState` to update.
    monitors : name -> endpoint (``tcp://HOST:PORT``).
    curve_keys : the hub's secret certificate (needed for any non-loopback endpoint).
    curve_servers : name -> the monitor's public certificate, for each non-loopback endpoint.

    Raises
    ------
    ConfigError
        a malformed endpoint, or a non-loopback one without keys.
    """

    def __init__(self, state: FacilityState, monitors: dict[str, str], *,
                 curve_keys: str | Path | None = None,
                 curve_servers: dict[str, str | Path] | None = None) -> None:
        curve_servers = curve_servers or {}
        self.state = state
        self._ctx = zmq.Context()
        self._socks: dict[zmq.Socket, str] = {}
        try:
            for name, ep in monitors.items():
                local = check_endpoint(ep, bind=False, allow_remote=True)
                server = curve_servers.get(name)
                if not local and not (curve_keys and server):
                    raise ConfigError(
                        f"{name} ({ep}) is not on loopback: reading it needs CURVE, the hub's "
                        f"secret certificate (--curve-keys) and the monitor's public one "
                        f"(--curve-server {name}=FILE)")
                sock = self._ctx.socket(zmq.SUB)
                self._socks[sock] = name
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, 10_000)
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES + 4096)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                if server or not local:
                    setup_curve(self._ctx, sock, keys=curve_keys, server=server, bind=False)
                sock.connect(ep)
        except BaseException:
            self.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-subscriber", daemon=True)

    def start(self) -> Subscriber:
        self._thread.start()
        return self

    def _run(self) -> None:
        poller = zmq.Poller()
        for s in self._socks:
            poller.register(s, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(200))
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise
            for sock in ready:
                name = self._socks[sock]
                for _ in range(1000):  # drain, but let the other monitors in
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.state.receive(name, parts)

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            if self._thread.is_alive():
                self._thread.join(2)
        for s in self._socks:
            s.close(0)
        self._ctx.term()
