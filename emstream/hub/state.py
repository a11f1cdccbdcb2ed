"""What each monitor is doing, from the messages it publishes (``sinks.publish`` schema v1).

Pure Python (no sockets, no web): :meth:`FacilityState.receive` takes one message's two frames
as bytes and either applies it or rejects and counts it; :meth:`FacilityState.snapshot` is what
the terminal table and the web page show.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALIVE_S", "MAX_MESSAGE_BYTES", "FacilityState", "Monitor"]

#: a monitor that sent nothing (frames, alerts or its once-a-second heartbeat) for this long is
#: shown as silent
ALIVE_S = 5.0
#: larger messages are rejected unread (a frame summary is ~1 kB)
MAX_MESSAGE_BYTES = 1 << 20
TOPICS = ("frame", "alert", "event", "session", "heartbeat")
TREND_POINTS = 300
ALERTS_KEPT = 20
FRAME_KEYS = ("seq", "source", "status", "reason", "state", "unit", "count", "d50", "coverage",
              "lag_s", "t")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _text(v: Any, limit: int = 300) -> str:
    return str(v)[:limit] if v is not None else ""


@dataclass
class Monitor:
    """One microscope's monitor as the hub knows it."""

    name: str
    endpoint: str
    last_seen: float | None = None  # this computer's clock (time.time) at the last message
    session_open: bool | None = None
    source: str = ""
    backend: str = ""
    frames: int = 0
    processed: int = 0
    quarantined: int = 0
    not_ok: int = 0
    alerts_total: int = 0
    last_frame: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(FRAME_KEYS))
    d50: deque = field(default_factory=lambda: deque(maxlen=TREND_POINTS))  # (t, d50)
    alerts: deque = field(default_factory=lambda: deque(maxlen=ALERTS_KEPT))
    done_times: deque = field(default_factory=lambda: deque(maxlen=64))

    def status(self, now: float, alive_s: float = ALIVE_S) -> str:
        if self.last_seen is None:
            return "waiting"
        if now - self.last_seen <= alive_s:
            return "alive" if self.session_open is not False else "ended"
        return "ended" if self.session_open is False else "silent"


class FacilityState:
    """Every monitor's latest summary, D50 trend and alerts; thread-safe."""

    def __init__(self, monitors: dict[str, str], *, alive_s: float = ALIVE_S):
        """``monitors``: name -> endpoint, in the order to show them; a monitor silent for
        ``alive_s`` is shown as such."""
        self.alive_s = float(alive_s)
        self._lock = threading.Lock()
        self.monitors = {name: Monitor(name, ep) for name, ep in monitors.items()}
        self.rejected = 0
        self.last_rejection = ""

    def _reject(self, why: str) -> bool:
        with self._lock:
            self.rejected += 1
            self.last_rejection = why
        return False

    def receive(self, name: str, parts: list[bytes], now: float | None = None) -> bool:
        """Apply one message (``[topic, json]``) from monitor ``name``; ``False`` if rejected."""
        now = time.time() if now is None else now
        if name not in self.monitors:
            return self._reject(f"message from an unknown monitor {name!r}")
        if len(parts) != 2:
            return self._reject(f"{name}: {len(parts)} message parts, expected 2")
        topic_b, body_b = parts
        if len(body_b) > MAX_MESSAGE_BYTES:
            return self._reject(f"{name}: message of {len(body_b)} bytes, over the limit")
        try:
            topic = topic_b.decode("ascii")
            body = json.loads(body_b)
        except (UnicodeDecodeError, ValueError):
            return self._reject(f"{name}: not UTF-8 JSON")
        if (not isinstance(body, dict) or body.get("schema") != "emstream.publish"
                or body.get("v") != 1 or body.get("type") != topic or topic not in TOPICS):
            return self._reject(f"{name}: not an emstream.publish v1 message ({topic[:20]!r})")
        with self._lock:
            m = self.monitors[name]
            m.last_seen = now
            getattr(self, f"_on_{topic}")(m, body, now)
        return True

    # -- one method per topic (called with the lock held) ------------------------------------
    def _on_session(self, m: Monitor, b: dict[str, Any], now: float) -> None:
        opened = b.get("state") == "open"
        if opened and m.session_open is not True:  # a new run: its counts start again
            m.frames = m.processed = m.quarantined = m.not_ok = 0
        m.session_open = opened
        m.source, m.backend = _text(b.get("source")), _text(b.get("backend"))

    def _on_heartbeat(self, m: Monitor, b: dict[str, Any], now: float) -> None:
        if m.session_open is None:
            m.session_open = True
        if b.get("source"):
            m.source = _text(b.get("source"))

    def _on_frame(self, m: Monitor, b: dict[str, Any], now: float) -> None:
        m.session_open = True
        m.frames += 1
        status = b.get("status")
        summary = b.get("summary") if isinstance(b.get("summary"), dict) else {}
        if status == "quarantined":
            m.quarantined += 1
        elif status == "ok":
            m.processed += 1
            m.done_times.append(now)
        trusted = b.get("trusted", b.get("state") in (None, "ok", "moved"))
        if status == "ok" and not trusted:
            m.not_ok += 1
        m.backend = _text(b.get("backend")) or m.backend
        m.last_frame = {
            "seq": b.get("seq") if isinstance(b.get("seq"), int) else None,
            "source": _text(b.get("source")).rsplit("/", 1)[-1],
            "status": _text(status, 20), "reason": _text(b.get("reason")),
            "state": _text(b.get("state"), 20), "unit": _text(b.get("unit"), 4) or "px",
            "count": _num(summary.get("count")), "d50": _num(summary.get("d50")),
            "coverage": _num(summary.get("coverage")), "lag_s": _num(b.get("lag_s")),
            "t": _num(b.get("t_acq")),
        }
        d50 = _num(summary.get("d50"))
        if status == "ok" and trusted and d50 is not None:
            m.d50.append((_num(b.get("t_acq")) or now, d50))

    def _on_alert(self, m: Monitor, b: dict[str, Any], now: float) -> None:
        m.alerts_total += 1
        m.alerts.append({"t": _num(b.get("t")) or now, "rule": _text(b.get("rule"), 80),
                         "severity": _text(b.get("severity"), 10),
                         "message": _text(b.get("message"))})

    def _on_event(self, m: Monitor, b: dict[str, Any], now: float) -> None:
        pass  # tracking events: counted by the monitor's own report, not shown here yet

    # -- what the views show ------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self._lock:
            out = []
            for m in self.monitors.values():
                recent = [t for t in m.done_times if now - t <= 10.0]
                fps = (len(recent) - 1) / max(now - recent[0], 1e-6) if len(recent) >= 2 else 0.0
                out.append({
                    "name": m.name, "endpoint": m.endpoint, "status": m.status(now, self.alive_s),
                    "seen_s_ago": None if m.last_seen is None else round(now - m.last_seen, 1),
                    "source": m.source, "backend": m.backend, "frames": m.frames,
                    "processed": m.processed, "quarantined": m.quarantined, "not_ok": m.not_ok,
                    "alerts_total": m.alerts_total, "fps": round(fps, 2),
                    "last_frame": dict(m.last_frame),
                    "d50_trend": [[t, d] for t, d in m.d50],
                    "alerts": list(m.alerts)[::-1],
                })
            return {"t": now, "monitors": out, "rejected": self.rejected,
                    "last_rejection": self.last_rejection}
