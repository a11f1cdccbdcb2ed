"""ZeroMQ PUB sink: a JSON summary of every frame and every alert, for scripts and dashboards.

Wire format (schema version 1)
------------------------------
Every message is two frames, ``[topic, json]``, both UTF-8. Subscribe to ``b"frame"``,
``b"alert"``, ``b"event"``, ``b"session"`` or ``b""`` for everything. Every JSON object has
``"schema": "emstream.publish"``, ``"v": 1`` and ``"type"`` (= the topic). NaN/inf are ``null``.

``frame`` (one per frame, any status)::

    {"schema": "emstream.publish", "v": 1, "type": "frame",
     "seq": 17, "source": "/data/run3/img_0017.tif", "status": "ok",  # ok | quarantined | skipped
     "reason": "",                       # why, for quarantined / skipped
     "t_acq": 1732243200.1, "t_arrival": 1732243200.3, "t_done": 1732243200.5, "lag_s": 0.4,
     "unit": "nm",                       # unit of every length below: "nm" or "px" (uncalibrated)
     "nm_per_px": [0.21, 0.21],          # null when uncalibrated
     "calibration": "file",              # file | stream | override | none
     "backend": "classical",
     "summary": {"count": 42, "coverage": 0.13, "mean_diameter": 8.1, "std_diameter": 2.0,
                 "d10": 5.9, "d50": 7.8, "d90": 10.9, "min_diameter": 3.1, "max_diameter": 14.2},
     "matching": 2,                      # particles that match any particle rule (if rules given)
     "timings_ms": {"prepare": 3.1, "segment": 40.2, "measure": 6.5},
     "state": "ok",                      # process.quality: ok | out_of_focus | beam_off | ...
     "quality": {"dose": 412.0, "focus_ratio": 0.98, ...}}   # the figures behind the state

(``summary`` is ``null`` for quarantined / skipped frames.)

``alert``::

    {"schema": "emstream.publish", "v": 1, "type": "alert",
     "rule": "large particles", "severity": "warning",   # info | warning | critical
     "seq": 17,                         # triggering frame; null for stall / disk alerts
     "message": "...", "t": 1732243200.1, "particle_labels": [3, 9],
     "actions": ["banner", "publish"], "builtin": false,
     "snapshot": "snapshots/alert_000017_large_particles.png"}   # relative to the session, or null

An alert is published when its actions include ``"publish"`` (the default for rules and for every
built-in alert). ``event``: ``{"kind", "message", "t", "data"}``; the tracking events
(``process.track``) have ``kind`` ``coalescence`` | ``nucleation`` | ``dissolution`` |
``left_field`` and ``data`` ``{"seq": frame it happened on, "tracks": [ids], "into": id
(coalescence), "merged": [ids], "y_px", "x_px": drift-corrected position, "d": diameter,
"unit": "nm" | "px"}``; a coalescence seen as a joined pair's outline rounding up has
``"rounded": true``, ``"merged": []`` and ``"area_before_px"`` / ``"area_after_px"``. ``session``:
``{"state": "open"|"close", "session_dir", "source", "backend", "t"}``. ``heartbeat``
(when nothing else went out for a second): ``{"t", "session_dir", "source"}``.

Security: the socket binds to loopback, unless it is encrypted with CURVE and an allow-list of
subscriber certificates (``curve_keys``, ``curve_allow``: ``--publish-curve-keys``,
``--publish-curve-allow``), or ``allow_remote=True`` is passed in code (then anyone who can
reach the port reads the summaries: they carry no pixels, but keep it on a trusted network).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from emstream.errors import ConfigError
from emstream.results import Alert, Event, FrameRecord
from emstream.sinks.base import Session, Sink
from emstream.zmq_curve import setup_curve

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Publisher", "alert_message", "frame_message"]

log = logging.getLogger(__name__)

SCHEMA = "emstream.publish"
SCHEMA_VERSION = 1

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def _envelope(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "v": SCHEMA_VERSION, "type": kind, **body}


def frame_message(record: FrameRecord, matching: int | None = None) -> dict[str, Any]:
    """The ``frame`` topic's JSON object for one frame record."""
    res = record.result
    cal = res.calibration if res is not None else record.calibration
    body: dict[str, Any] = {
        "seq": record.seq,
        "source": record.source_id,
        "status": record.status,
        "reason": record.reason or "",
        "t_acq": record.t_acq if record.t_acq is not None else (res.frame.t_acq if res else None),
        "t_arrival": record.t_arrival,
        "t_done": res.t_done if res is not None else None,
        "lag_s": res.lag_s if res is not None else None,
        "unit": cal.unit if cal is not None else None,
        "nm_per_px": list(cal.nm_per_px) if cal is not None and cal.nm_per_px else None,
        "calibration": cal.source if cal is not None else None,
        "backend": res.backend if res is not None else None,
        "summary": res.summary.as_dict() if res is not None else None,
        "timings_ms": dict(res.timings_ms) if res is not None else {},
        "state": res.state if res is not None else None,
        "trusted": res.is_trusted if res is not None else None,
        "quality": dict(res.quality) if res is not None and res.quality else None,
    }
    if body["summary"] is not None:
        body["summary"].pop("unit", None)
    if matching is not None:
        body["matching"] = int(matching)
    return _clean(_envelope("frame", body))


def alert_message(alert: Alert) -> dict[str, Any]:
    """The ``alert`` topic's JSON object."""
    body = alert.as_dict()
    body["snapshot"] = getattr(alert, "snapshot", None)
    return _clean(_envelope("alert", body))


def check_loopback(endpoint: str) -> None:
    """Raise :class:`~emstream.errors.ConfigError` unless ``endpoint`` binds to loopback
    (or is ``ipc://`` / ``inproc://``)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ConfigError(f"not a ZeroMQ endpoint: {endpoint!r} (e.g. tcp://127.0.0.1:5556)")
    if scheme in ("ipc", "inproc"):
        return
    if scheme != "tcp":
        raise ConfigError(f"unsupported transport {scheme!r} in {endpoint!r}")
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    if ";" in host:  # tcp://source;dest form: the bind side is after the ';'
        host = host.split(";", 1)[1]
    if host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"refusing to publish on {endpoint!r}: not a loopback address. Use tcp://127.0.0.1:PORT, "
        "or encrypt it with an allow-list of subscribers (--publish-curve-keys, "
        "--publish-curve-allow)"
    )


class Publisher(Sink):
    """Publishes frame summaries and alerts on a ZeroMQ PUB socket (see the module docstring).

    Parameters
    ----------
    endpoint : where to bind; ``tcp://127.0.0.1:*`` picks a free port (see :attr:`endpoint`).
    allow_remote : allow binding to a non-loopback address.
    matching : optional ``callable(particles, unit) -> bool array`` (``RuleEngine.matching``) to
        report how many particles match the rules in each frame message.
    rules : alternatively a ``RulesFile`` / ``RuleEngine`` (anything with ``.engine`` or
        ``.matching``), looked up per frame so reloaded rules count.
    hwm : send high-water mark; a slow subscriber loses messages, the pipeline never waits.
    context : a ``zmq.Context`` (default: the process-wide instance).
    """

    name = "publish"
    latest_only = False

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5556",
        *,
        allow_remote: bool = False,
        matching: Callable[..., np.ndarray] | None = None,
        rules: Any = None,
        hwm: int = 1000,
        context: zmq.Context | None = None,
        curve_keys: str | os.PathLike[str] | None = None,
        curve_allow: str | os.PathLike[str] | None = None,
        heartbeat_s: float = 1.0,
    ) -> None:
        if not (allow_remote or (curve_keys and curve_allow)):
            check_loopback(endpoint)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 500)
        self._auth = None
        try:
            self._auth = setup_curve(self._ctx, self._sock, keys=curve_keys, allow=curve_allow,
                                     bind=True, what="publish_curve")
            self._sock.bind(endpoint)
        except (zmq.ZMQError, ConfigError) as exc:
            self._sock.close(0)
            if self._auth is not None:
                self._auth.stop()
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cannot publish on {endpoint}: {exc}") from None
        #: The endpoint actually bound (with the real port when ``*`` / ``0`` was asked for).
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.matching = matching
        self.rules = rules
        self.sent = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._closed = False
        self._session: Session | None = None
        self.heartbeat_s = float(heartbeat_s)
        self._last_sent = 0.0

    def describe(self) -> str:
        return f"publishing on {self.endpoint}"

    def _send(self, topic: str, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, allow_nan=False, separators=(",", ":"), default=str).encode()
        with self._lock:
            if self._closed:
                return
            try:
                self._sock.send_multipart([topic.encode(), data], flags=zmq.NOBLOCK)
                self.sent += 1
                self._last_sent = time.monotonic()
            except zmq.Again:
                self.dropped += 1

    # -- Sink API ------------------------------------------------------------------------------
    def open(self, session: Session) -> None:
        self._session = session
        self._send(
            "session",
            _clean(
                _envelope(
                    "session",
                    {
                        "state": "open",
                        "session_dir": str(session.session_dir),
                        "source": session.source,
                        "backend": session.backend,
                        "t": session.t_start or time.time(),
                    },
                )
            ),
        )

    def frame_done(self, record: FrameRecord) -> None:
        n_match = None
        fn = self.matching
        if fn is None and self.rules is not None:
            engine = getattr(self.rules, "engine", self.rules)
            fn = getattr(engine, "matching", None)
        if fn is not None and record.result is not None:
            try:
                n_match = int(np.count_nonzero(fn(record.result.particles, record.result.unit)))
            except Exception:  # noqa: BLE001 - a rules hiccup must not stop publishing
                log.exception("matching() failed on frame %s", record.seq)
        self._send("frame", frame_message(record, n_match))

    def flush(self) -> None:
        """Called while the pipeline is idle: a ``heartbeat`` when nothing went out for
        ``heartbeat_s``, so that a subscriber (``emstream hub``) tells a quiet monitor from a
        dead one."""
        if self.heartbeat_s > 0 and time.monotonic() - self._last_sent >= self.heartbeat_s:
            s = self._session
            self._send("heartbeat", _clean(_envelope("heartbeat", {
                "t": time.time(), "session_dir": str(s.session_dir) if s else None,
                "source": s.source if s else None})))

    def alert(self, alert: Alert) -> None:
        if "publish" in alert.actions or not alert.actions:
            self._send("alert", alert_message(alert))

    def event(self, event: Event) -> None:
        self._send(
            "event",
            _clean(
                _envelope(
                    "event",
                    {
                        "kind": event.kind,
                        "message": event.message,
                        "t": event.t,
                        "data": event.data,
                    },
                )
            ),
        )

    def close(self) -> None:
        if self._closed:
            return
        s = self._session
        self._send(
            "session",
            _clean(
                _envelope(
                    "session",
                    {
                        "state": "close",
                        "session_dir": str(s.session_dir) if s else None,
                        "source": s.source if s else None,
                        "backend": s.backend if s else None,
                        "t": time.time(),
                    },
                )
            ),
        )
        with self._lock:
            self._closed = True
            self._sock.close()
        if self._auth is not None:
            self._auth.stop()
