"""Review a finished session from its ledger (read-only): histograms, trends, alerts, snapshots."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emstream.config import read_config
from emstream.gui.session_stats import QUANTITIES, SessionStatistics
from emstream.process.quality import TRUSTED_STATES
from emstream.results import Alert

__all__ = ["SessionReview", "load_session"]

LEDGER_NAME = "ledger.sqlite"
_SNAPSHOT_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


@dataclass
class SessionReview:
    """What the review window shows of one finished session."""

    session_dir: Path
    statistics: SessionStatistics
    alerts: list[Alert]
    snapshots: list[Path]
    info: dict[str, Any] = field(default_factory=dict)
    status_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    def stats(self) -> dict[str, Any]:
        """The status-bar dict (same keys as the live pipeline's statistics)."""
        c = self.status_counts
        total = sum(c.values())
        ok = c.get("ok", 0)
        return {
            "source": _plain(self.info.get("source", "")),
            "backend": _plain(self.info.get("backend", "")),
            "frames_in": total,
            "processed": ok,
            "quarantined": c.get("quarantined", 0),
            "skipped": c.get("skipped", 0),
            "fps": ok / self.duration_s if self.duration_s > 0 else None,
            "lag_s": None,
            "queue_depth": None,
        }


def _plain(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={v[k]}" for k in v)
    return "" if v is None else str(v)


def _connect_ro(path: Path) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True)


def load_session(session_dir: str | Path, *, recent_frames: int = 50) -> SessionReview:
    """Read ``SESSION/ledger.sqlite`` read-only into a :class:`SessionReview`.

    Raises
    ------
    FileNotFoundError
        When the folder has no ledger.
    """
    session_dir = Path(session_dir)
    ledger = session_dir / LEDGER_NAME
    if not ledger.is_file():
        raise FileNotFoundError(f"no {LEDGER_NAME} in {session_dir}")
    con = _connect_ro(ledger)
    try:
        info: dict[str, Any] = {}
        for key, value in con.execute("SELECT key, value FROM session"):
            try:
                info[key] = json.loads(value)
            except (TypeError, ValueError):
                info[key] = value
        status_counts = dict(con.execute("SELECT status, COUNT(*) FROM frames GROUP BY status"))
        rows = con.execute(
            "SELECT t_acq, seq, count, mean_diameter, d50, coverage, unit FROM frames "
            "WHERE status = 'ok' ORDER BY seq"
        ).fetchall()
        trend_rows = [
            (
                float(r[0]) if r[0] is not None else np.nan,
                int(r[1]),
                int(r[2] or 0),
                float(r[3]) if r[3] is not None else np.nan,
                float(r[4]) if r[4] is not None else np.nan,
                float(r[5]) if r[5] is not None else np.nan,
            )
            for r in rows
        ]
        units = {r[6] for r in rows if r[6]}
        cols = [c for c in QUANTITIES]
        # sizes of particles not cut by the image edge, as everywhere else
        # ... of the frames the session trusted (its --include-states), as live and in the report
        states = tuple(read_config(session_dir).get("include_states", ",".join(TRUSTED_STATES))
                       .split(","))
        frame_cols = {r[1] for r in con.execute("PRAGMA table_info(frames)")}
        untrusted: list[tuple[float, str]] = []
        trusted_sql = ""
        if "state" in frame_cols:
            marks = ", ".join("?" * len(states))
            trusted_sql = (f" AND seq IN (SELECT seq FROM frames WHERE state IS NULL "
                           f"OR state IN ({marks}))")
            untrusted = [(float(t), st) for t, st in con.execute(
                f"SELECT t_acq, state FROM frames WHERE status = 'ok' AND state IS NOT NULL "
                f"AND state NOT IN ({marks}) ORDER BY seq", states)]
        data = con.execute(f"SELECT seq, {', '.join(cols)} FROM particles "
                           f"WHERE touches_border = 0{trusted_sql} ORDER BY seq",
                           states if trusted_sql else ()).fetchall()
        arr = np.array(data, dtype=np.float64).reshape(-1, len(cols) + 1)
        values = {c: arr[:, i + 1] for i, c in enumerate(cols)}
        alerts = [
            Alert(
                rule=name,
                severity=sev,
                seq=seq,
                message=msg or "",
                t=float(t),
                particle_labels=json.loads(pj) if pj else [],
                builtin=bool(b),
            )
            for seq, name, sev, t, msg, pj, b in con.execute(
                "SELECT seq, name, severity, t, message, particles_json, builtin FROM alerts "
                "ORDER BY t, id"
            )
        ]
        snaps = [
            session_dir / s
            for (s,) in con.execute("SELECT snapshot FROM alerts WHERE snapshot IS NOT NULL")
        ]
    finally:
        con.close()
    for folder in (session_dir / "snapshots", session_dir):
        if folder.is_dir():
            snaps += sorted(p for p in folder.iterdir() if p.suffix.lower() in _SNAPSHOT_SUFFIXES)
    seen: set[Path] = set()
    snapshots = [
        p for p in snaps if p.is_file() and not (p.resolve() in seen or seen.add(p.resolve()))
    ]

    stats = SessionStatistics(recent_frames=recent_frames)
    other = sum(v for k, v in status_counts.items() if k != "ok")
    unit = sorted(units)[0] if units else "nm"
    stats.add_history(values, arr[:, 0].astype(np.int64), trend_rows, unit, frames_other=other)
    stats.mixed_units = len(units) > 1
    stats.untrusted.extend(untrusted)
    t = [r[0] for r in trend_rows if np.isfinite(r[0])]
    duration = (max(t) - min(t)) if len(t) > 1 else 0.0
    return SessionReview(session_dir, stats, alerts, snapshots, info, status_counts, duration)
