"""The session report: ONE self-contained HTML file (``SESSION/report.html``) from the ledger.

``write_report(session_dir)`` reads ``SESSION/ledger.sqlite`` (read-only) and ``config.json`` and
writes, atomically, a page a facility can hand over: headline numbers; the size distribution
(equivalent circular diameter) with D10/D50/D90 and 95 % bootstrap confidence intervals; count,
size and coverage trends over time with the alerts marked; the alert timeline with the alert
snapshots embedded; quarantined and skipped frames with reasons; calibration, processing
performance, and the configuration, model, backend and software versions. Plots are inline SVG
and snapshots base64 PNG: no scripts, no network, no external files.

Statistics, stated in the report too
------------------------------------
* Sizes are equivalent circular diameters in nm (px where no frame was calibrated). Particles
  touching the image edge or a masked banner are excluded from the size statistics (their size is
  cut off); the number excluded is shown.
* Every particle of every frame counts, so a particle seen in many frames counts many times: the
  statistics describe what was imaged over the session.
* Confidence intervals are 95 % percentile bootstrap intervals resampling whole **frames**
  (particles in one frame are not independent); with a single frame, particles are resampled
  (:func:`emstream.process.stats.bootstrap_ci`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import closing
from html import escape
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np

import emstream
from emstream.process.quality import TRUSTED_STATES
from emstream.process.rules import snapshot_name
from emstream.sinks.base import replace_atomically
from emstream.sinks.export import connect_ledger_readonly

__all__ = ["REPORT_NAME", "collect", "write_report"]

REPORT_NAME = "report.html"
MAX_SNAPSHOTS = 40
MAX_ALERT_ROWS = 300
_TEMPLATES = Path(__file__).with_name("templates")
_QS = (0.1, 0.5, 0.9)


# ------------------------------------------------------------------------------------------------
# reading the session


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    try:
        return [dict(r) for r in con.execute(sql)]
    except Exception:  # noqa: BLE001 - an older/partial ledger: report what is there
        return []


def _load(session_dir: Path, include_states: tuple[str, ...] = TRUSTED_STATES) -> dict[str, Any]:
    with closing(connect_ledger_readonly(session_dir)) as con:
        facts = {}
        for r in _rows(con, "SELECT key, value FROM session"):
            try:
                facts[r["key"]] = json.loads(r["value"])
            except (TypeError, ValueError):
                facts[r["key"]] = r["value"]
        frames = _rows(con, "SELECT * FROM frames ORDER BY seq")
        parts = con.execute(
            "SELECT p.seq, p.equivalent_diameter_nm, p.touches_border, f.unit, f.t_acq "
            "FROM particles p JOIN frames f ON f.seq = p.seq WHERE f.status = 'ok' "
            f"AND (f.state IS NULL OR f.state IN ({', '.join(repr(s) for s in include_states)})) "
            "ORDER BY p.seq"
        ).fetchall()
        per_frame = _rows(
            con,
            "SELECT seq, SUM(equivalent_diameter_nm * equivalent_diameter_nm * "
            "equivalent_diameter_nm) AS sum_d3, SUM(area_nm2) AS sum_area FROM particles "
            "GROUP BY seq",
        )
        tracks = _rows(con, "SELECT * FROM tracks")
        alerts = _rows(con, "SELECT * FROM alerts ORDER BY t, id")
        events = _rows(con, "SELECT * FROM events ORDER BY t, id")
        qfiles = _rows(
            con,
            "SELECT path, version, reason, t_terminal FROM files WHERE status = 'quarantined' "
            "ORDER BY t_terminal",
        )
    config: dict[str, Any] = {}
    cfg_path = session_dir / "config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
    if not config and isinstance(facts.get("config"), dict):
        config = facts["config"]
    p = {
        "seq": np.array([r[0] for r in parts], dtype=np.int64),
        "d": np.array([np.nan if r[1] is None else r[1] for r in parts], dtype=np.float64),
        "border": np.array([bool(r[2]) for r in parts], dtype=bool),
        "unit": np.array([r[3] or "px" for r in parts], dtype=object),
    }
    return {
        "facts": facts,
        "config": config,
        "frames": frames,
        "particles": p,
        "alerts": alerts,
        "events": events,
        "qfiles": qfiles,
        "per_frame": {r["seq"]: r for r in per_frame},
        "tracks": tracks,
    }


# ------------------------------------------------------------------------------------------------
# statistics


def frame_bootstrap_ci(
    values: np.ndarray,
    groups: np.ndarray,
    qs: tuple[float, ...] = _QS,
    *,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Percentile-bootstrap CIs of the quantiles ``qs`` resampling whole groups (frames).

    Each resample draws as many frames as there are, with replacement, and takes the weighted
    quantiles of the pooled particles (one sort, then a cumulative sum per resample).
    """
    ok = np.isfinite(values)
    v, g = values[ok], groups[ok]
    if v.size == 0:
        return [(math.nan, math.nan) for _ in qs]
    uniq, gi = np.unique(g, return_inverse=True)
    if uniq.size < 2:
        try:
            from emstream.process.stats import bootstrap_ci
        except ImportError:  # pragma: no cover
            bootstrap_ci = None
        out = []
        for q in qs:
            if bootstrap_ci is not None:
                out.append(
                    bootstrap_ci(
                        v, lambda a, axis, q=q: np.quantile(a, q, axis=axis), n=n, seed=seed
                    )
                )
            else:  # pragma: no cover
                out.append((math.nan, math.nan))
        return out
    order = np.argsort(v, kind="stable")
    vs, gs = v[order], gi[order]
    rng = np.random.default_rng(seed)
    k = uniq.size
    n = max(50, min(n, int(4e8 // max(v.size, 1))))  # bound the work on huge sessions
    boot = np.empty((n, len(qs)))
    p = np.full(k, 1.0 / k)
    for b in range(n):
        w = rng.multinomial(k, p)[gs]
        cw = np.cumsum(w)
        total = cw[-1]
        for j, q in enumerate(qs):
            idx = min(int(np.searchsorted(cw, q * total, side="left")), vs.size - 1)
            boot[b, j] = vs[idx]
    lo = np.quantile(boot, alpha / 2, axis=0)
    hi = np.quantile(boot, 1 - alpha / 2, axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _nice_step(raw: float) -> float:
    e = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= raw:
            return m * e
    return 10 * e


def _hist_edges(d: np.ndarray, min_width: float = 0.0) -> np.ndarray:
    """Bins from 0 to past the 99.5 % quantile, about 40 of them, none finer than
    ``min_width`` (the diameter step one pixel makes, as in the window)."""
    hi = float(np.quantile(d, 0.995)) if d.size else 1.0
    hi = max(hi * 1.08, float(np.max(d)) if d.size < 200 else hi * 1.08, 1e-6)
    step = _nice_step(max(hi / 40, min_width))
    return np.arange(0, hi + step, step)


# ------------------------------------------------------------------------------------------------
# assembling the page


def _fmt_time(t: float | None, with_date: bool = False) -> str:
    if t is None or not math.isfinite(t):
        return "—"
    d = _dt.datetime.fromtimestamp(t)
    return d.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _fmt_duration(s: float) -> str:
    if not math.isfinite(s) or s < 0:
        return "—"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{sec} s")


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return "—"
    return f"{f:.{digits}g}" if abs(f) < 10**digits else f"{f:,.0f}"


def _embed_png(path: Path, max_side: int = 520) -> str | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    f = max(h, w) / max_side
    if f > 1:
        img = cv2.resize(img, (round(w / f), round(h / f)), interpolation=cv2.INTER_AREA)
    # JPEG keeps the page small (noisy micrographs compress poorly as PNG); the full-resolution
    # PNG stays in SESSION/snapshots/.
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def _snapshot_file(session_dir: Path, alert: dict[str, Any]) -> Path | None:
    root = session_dir.resolve()
    cands = []
    if alert.get("snapshot"):
        cands.append(str(alert["snapshot"]))
    cands.append(snapshot_name(alert.get("seq"), str(alert.get("name", ""))))
    for rel in cands:
        p = (session_dir / rel).resolve()
        if root in p.parents and p.is_file():
            return p
    return None


def collect(session_dir: str | os.PathLike[str],
            include_states: tuple[str, ...] = TRUSTED_STATES) -> dict[str, Any]:
    """Everything the report shows, as plain values (also handy for tests and other formats)."""
    session_dir = Path(session_dir)
    data = _load(session_dir, tuple(include_states))
    facts, config, frames = data["facts"], data["config"], data["frames"]
    P = data["particles"]

    ok_frames = [f for f in frames if f["status"] == "ok"]
    status_counts = {
        s: sum(1 for f in frames if f["status"] == s) for s in ("ok", "quarantined", "skipped")
    }
    t_acq = np.array([f["t_acq"] if f["t_acq"] is not None else np.nan for f in frames], float)
    t_start = facts.get("t_start")
    t0 = float(np.nanmin(t_acq)) if np.isfinite(t_acq).any() else (t_start or 0.0)
    t_end = float(np.nanmax(t_acq)) if np.isfinite(t_acq).any() else t0
    t_stop = facts.get("t_stop")
    span = max(t_end - t0, 0.0)
    minutes = span > 600
    tscale, tunit = (60.0, "min") if minutes else (1.0, "s")

    # --- sizes
    unit = "nm" if (P["unit"] == "nm").any() else "px"
    in_unit = P["unit"] == unit
    sel = in_unit & ~P["border"] & np.isfinite(P["d"])
    d, dseq = P["d"][sel], P["seq"][sel]
    n_border = int((in_unit & P["border"]).sum())
    n_other_unit = int((~in_unit).sum())
    size: dict[str, Any] = {
        "unit": unit,
        "n": int(d.size),
        "n_border": n_border,
        "n_other_unit": n_other_unit,
    }
    hist_svg = ""
    if d.size:
        qv = np.quantile(d, _QS)
        cis = frame_bootstrap_ci(d, dseq)
        size["rows"] = [
            {"name": n, "value": _num(v), "lo": _num(c[0]), "hi": _num(c[1])}
            for n, v, c in zip(("D10", "D50", "D90"), qv, cis, strict=True)
        ]
        size["mean"], size["std"] = _num(d.mean()), _num(d.std(ddof=1) if d.size > 1 else math.nan)
        size["min"], size["max"] = _num(d.min()), _num(d.max())
        size["span"] = _num(((qv[2] - qv[0]) / qv[1]) if qv[1] > 0 else math.nan)
        size["n_frames"] = int(np.unique(dseq).size)
        px = [float(f.get("nm_per_px_y") or 0) for f in ok_frames if f.get("unit") == unit]
        s_px = float(np.median(px)) if unit == "nm" and px and min(px) > 0 else 1.0
        edges = _hist_edges(d, 2.0 * s_px * s_px / (math.pi * max(float(qv[0]), 1e-9)))
        counts, _ = np.histogram(d, edges)
        overlays = []
        seqs = np.array(sorted({f["seq"] for f in ok_frames}))
        if seqs.size >= 10:
            k = max(1, seqs.size // 5)
            first, last = seqs[:k], seqs[-k:]
            for label, s_, colour in (
                ("first 20 % of frames", first, "#2f80ed"),
                ("last 20 % of frames", last, "#d64545"),
            ):
                part = d[np.isin(dseq, s_)]
                if part.size >= 20:
                    c, _ = np.histogram(part, edges)
                    overlays.append((f"{label} (scaled)", c * (d.size / part.size), colour))
        hist_svg = histogram_svg(
            edges,
            counts,
            xlabel=f"equivalent circular diameter ({unit})",
            markers=[
                (f"D{int(q * 100)} {_num(v)}", float(v)) for q, v in zip(_QS, qv, strict=True)
            ],
            overlays=overlays,
        )

    # --- trends
    trend_svgs: list[tuple[str, str]] = []
    alert_marks = [
        ((a["t"] - t0) / tscale, SEVERITY_COLOURS.get(a["severity"], MUTED))
        for a in data["alerts"]
        if a.get("t") is not None
    ]
    if ok_frames:
        ft = np.array(
            [(f["t_acq"] - t0) / tscale if f["t_acq"] is not None else np.nan for f in ok_frames]
        )

        def col(name: str) -> np.ndarray:
            return np.array([np.nan if f.get(name) is None else float(f[name]) for f in ok_frames])

        xl = f"time since first frame ({tunit})"
        trend_svgs.append(
            (
                "Particles per frame",
                timeseries_svg(
                    ft,
                    [("count", col("count"), "#334e68")],
                    xlabel=xl,
                    ylabel="particles",
                    events=alert_marks,
                    ymin=0,
                ),
            )
        )
        same_unit = np.array([f.get("unit") == unit for f in ok_frames])
        d10, d50, d90 = (np.where(same_unit, col(c), np.nan) for c in ("d10", "d50", "d90"))
        # frames left out of the statistics (out of focus, beam off ...): orange lines
        state_marks = [((f["t_acq"] - t0) / tscale, "#e07b00") for f in ok_frames
                       if f.get("state") and f["state"] not in TRUSTED_STATES
                       and f.get("t_acq") is not None]
        trend_svgs.append(
            (
                f"Size over time (D50, D10–D90 band, {unit}); orange: frames not in the statistics",
                timeseries_svg(
                    ft,
                    [("D50", d50, "#0b6e4f")],
                    xlabel=xl,
                    ylabel=f"diameter ({unit})",
                    band=(d10, d90, "#0b6e4f"),
                    events=[*alert_marks, *state_marks[:500]],
                ),
            )
        )
        conf = col("confidence")
        if np.isfinite(conf).any():
            trend_svgs.append(
                (
                    "Segmentation confidence (0..1: how sure the learned model is of each frame)",
                    timeseries_svg(ft, [("confidence", conf, "#5b4b8a")], xlabel=xl,
                                   ylabel="confidence", events=alert_marks, ymin=0),
                )
            )
        trend_svgs.append(
            (
                "Coverage (particle area / valid image area)",
                timeseries_svg(
                    ft,
                    [("coverage %", 100 * col("coverage"), "#7c5e10")],
                    xlabel=xl,
                    ylabel="coverage (%)",
                    events=alert_marks,
                    ymin=0,
                ),
            )
        )

    kin = _kinetics_section(data, ok_frames, unit, t0, tscale, tunit)

    # --- alerts
    alerts = []
    n_embedded = 0
    for a in data["alerts"]:
        snap = _snapshot_file(session_dir, a)
        uri = None
        if snap is not None and n_embedded < MAX_SNAPSHOTS:
            uri = _embed_png(snap)
            n_embedded += uri is not None
        alerts.append(
            {
                "time": _fmt_time(a.get("t")),
                "rel": f"{(a['t'] - t0) / tscale:.1f} {tunit}" if a.get("t") is not None else "—",
                "seq": "—" if a.get("seq") is None else a["seq"],
                "rule": a.get("name", ""),
                "severity": a.get("severity", "info"),
                "message": a.get("message") or "",
                "builtin": bool(a.get("builtin")),
                "snapshot": uri,
                "snapshot_name": snap.name if snap is not None else "",
            }
        )
    timeline = ""
    if data["alerts"]:
        timeline = timeline_svg(
            0.0,
            max(span, max((a["t"] - t0) for a in data["alerts"])) or 1.0,
            [(a["t"] - t0, a["severity"], a["name"]) for a in data["alerts"]],
            xlabel=f"time since first frame ({tunit})",
            scale=tscale,
        )
    by_rule: dict[str, int] = {}
    for a in data["alerts"]:
        by_rule[a["name"]] = by_rule.get(a["name"], 0) + 1

    # --- quarantine / skipped
    quarantined = [
        {"source": f["source"], "reason": f.get("reason") or "", "seq": f["seq"]}
        for f in frames
        if f["status"] == "quarantined"
    ]
    by_state: dict[str, list[int]] = {}
    for f in ok_frames:
        by_state.setdefault(f.get("state") or "not judged", []).append(f["seq"])
    frame_states = [
        {"state": st, "n": len(seqs), "first": ", ".join(map(str, seqs[:8])) + (
            " …" if len(seqs) > 8 else ""),
         "used": "yes" if st in include_states or st == "not judged" else "no"}
        for st, seqs in sorted(by_state.items(), key=lambda kv: (kv[0] != "ok", -len(kv[1])))
    ] if any(f.get("state") for f in ok_frames) else []
    flagged = [
        {"seq": f["seq"], "source": f["source"], "reason": f["seg_flag"],
         "count": f.get("count"), "confidence": _num(f.get("confidence"))}
        for f in ok_frames if f.get("seg_flag")
    ]
    seen_src = {q["source"] for q in quarantined}
    for q in data["qfiles"]:
        if q["path"] not in seen_src:
            quarantined.append({"source": q["path"], "reason": q.get("reason") or "", "seq": "—"})
    skipped: dict[str, int] = {}
    for f in frames:
        if f["status"] == "skipped":
            r = f.get("reason") or "skipped"
            skipped[r] = skipped.get(r, 0) + 1

    # --- calibration
    cal: dict[tuple, int] = {}
    for f in ok_frames:
        key = (
            f.get("nm_per_px_y"),
            f.get("nm_per_px_x"),
            f.get("calibration_source"),
            f.get("calibration_detail"),
        )
        cal[key] = cal.get(key, 0) + 1
    calibration = [
        {
            "nm_per_px": "uncalibrated (px)"
            if y is None
            else (
                f"{y:.4g}"
                if x is None or math.isclose(y, x, rel_tol=1e-6)
                else f"{y:.4g} × {x:.4g}"
            ),
            "source": src or "none",
            "detail": det or "",
            "frames": n,
        }
        for (y, x, src, det), n in sorted(cal.items(), key=lambda kv: -kv[1])
    ]

    # --- performance
    stages: dict[str, list[float]] = {}
    lags = []
    for f in ok_frames:
        try:
            tm = json.loads(f.get("timings_json") or "{}")
        except ValueError:
            tm = {}
        for k, v in tm.items():
            stages.setdefault(k, []).append(float(v))
        if f.get("t_done") is not None and f.get("t_acq") is not None:
            lags.append(f["t_done"] - f["t_acq"])
    perf = [
        {"stage": k, "median": _num(np.median(v)), "p95": _num(np.quantile(v, 0.95))}
        for k, v in stages.items()
    ]
    lag = {
        "median": _num(np.median(lags)) if lags else "—",
        "p95": _num(np.quantile(lags, 0.95)) if lags else "—",
    }
    rate = (len(ok_frames) - 1) / span * 60 if span > 0 and len(ok_frames) > 1 else math.nan

    # --- provenance
    versions = facts.get("versions") or config.get("versions") or {}
    backends = sorted({f.get("backend") for f in ok_frames if f.get("backend")})
    cfg_shown = {k: v for k, v in config.items() if k not in ("versions", "runs")}
    provenance = [
        ("Session folder", str(session_dir.resolve())),
        ("Source", str(facts.get("source") or config.get("source") or "—")),
        ("Command", str(config.get("command") or "—")),
        ("Segmenter / backend", ", ".join(backends) or str(facts.get("backend") or "—")),
        ("Model", str(config.get("model") or "—")),
        ("Started", _fmt_time(t_start, True)),
        ("Stopped", _fmt_time(t_stop, True)),
        ("Ledger schema", str(facts.get("schema_version", "—"))),
        ("Restarts", str(max(0, len(facts.get("starts", [])) - 1))),
    ]

    counts = np.array([f["count"] for f in ok_frames if f.get("count") is not None], float)
    cards = [
        ("Duration", _fmt_duration(span)),
        ("Frames", f"{len(frames):,}"),
        ("Particles measured", f"{int(P['d'].size):,}"),
        ("Median per frame", _num(np.median(counts)) if counts.size else "—"),
        (f"D50 ({unit})", size["rows"][1]["value"] if d.size else "—"),
        ("Alerts", f"{len(data['alerts']):,}"),
        ("Doubtful segmentation", f"{len(flagged):,} frame{'' if len(flagged) == 1 else 's'}"),
    ]
    name = Path(session_dir).resolve().name
    return {
        "title": f"Session report — {name}",
        "name": name,
        "date": _fmt_time(t_start if t_start else t0, True),
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "emstream_version": emstream.__version__,
        "cards": cards,
        "status_counts": status_counts,
        "size": size,
        "hist_svg": hist_svg,
        "trend_svgs": trend_svgs,
        "kinetics": kin,
        "alerts": alerts,
        "alerts_by_rule": sorted(by_rule.items(), key=lambda kv: -kv[1]),
        "n_snapshots_not_embedded": max(
            0, sum(1 for a in data["alerts"] if _snapshot_file(session_dir, a)) - n_embedded
        ),
        "timeline_svg": timeline,
        "quarantined": quarantined,
        "flagged": flagged,
        "frame_states": frame_states,
        "skipped": sorted(skipped.items(), key=lambda kv: -kv[1]),
        "calibration": calibration,
        "perf": perf,
        "lag": lag,
        "rate": _num(rate),
        "events": [
            {
                "time": _fmt_time(e.get("t")),
                "kind": e.get("kind", ""),
                "message": e.get("message") or "",
            }
            for e in data["events"][:200]
        ],
        "n_events": len(data["events"]),
        "provenance": provenance,
        "versions": sorted(versions.items()),
        "config_json": json.dumps(cfg_shown, indent=2, sort_keys=True, default=str),
        "tunit": tunit,
        "max_alert_rows": MAX_ALERT_ROWS,
    }


_TRACK_EVENT_COLOURS = {"coalescence": "#d64545", "nucleation": "#2f80ed",
                        "dissolution": "#7c5e10", "left_field": "#9aa5b1"}


def _kinetics_section(data: dict[str, Any], ok_frames: list[dict[str, Any]], unit: str,
                      t0: float, tscale: float, tunit: str) -> dict[str, Any] | None:
    """Drift, tracks, events and coarsening kinetics (``process.kinetics``); ``None`` for a
    session that was not tracked."""
    from emstream.process.kinetics import kinetics

    frames = [f for f in ok_frames if f.get("unit") == unit and f.get("t_acq") is not None]
    if not frames or not any(f.get("drift_y_px") is not None for f in frames):
        return None
    track_events = [e for e in data["events"] if e.get("kind") in _TRACK_EVENT_COLOURS]
    ev_data = []
    for e in track_events:
        try:
            ev_data.append((e, json.loads(e.get("data_json") or "{}")))
        except ValueError:
            ev_data.append((e, {}))
    t = np.array([f["t_acq"] for f in frames], float)
    seq_t = {f["seq"]: f["t_acq"] for f in frames}
    pf = data["per_frame"]

    def per(key: str) -> np.ndarray:
        return np.array([np.nan if (pf.get(f["seq"]) or {}).get(key) is None
                         else float(pf[f["seq"]][key]) for f in frames])

    count = np.array([float(f.get("count") or 0) for f in frames])
    cov = np.array([np.nan if f.get("coverage") is None else float(f["coverage"]) for f in frames])
    px_area = np.array([float(f.get("height") or 0) * float(f.get("width") or 0) *
                        float(f.get("nm_per_px_y") or 1) * float(f.get("nm_per_px_x") or 1)
                        for f in frames])
    with np.errstate(divide="ignore", invalid="ignore"):
        field_area = np.where(cov > 0, per("sum_area") / cov, px_area)
    merges = [(seq_t.get(d.get("seq"), e["t"]), len(d.get("merged") or []))
              for e, d in ev_data if e["kind"] == "coalescence"]
    counts_by_kind = {k: sum(1 for e in track_events if e["kind"] == k)
                      for k in _TRACK_EVENT_COLOURS}
    k = kinetics(t, count, np.array([np.nan if f.get("mean_diameter") is None
                                     else f["mean_diameter"] for f in frames], float),
                 np.array([np.nan if f.get("d50") is None else f["d50"] for f in frames], float),
                 per("sum_d3"), field_area, calibrated=unit == "nm", merges=merges,
                 event_counts=counts_by_kind)
    ft = (t - t0) / tscale
    xl = f"time since first frame ({tunit})"
    marks = [((seq_t.get(d.get("seq"), e["t"]) - t0) / tscale, _TRACK_EVENT_COLOURS[e["kind"]])
             for e, d in ev_data if e["kind"] in ("coalescence", "nucleation")]
    svgs = [
        (f"Mean and median diameter ({unit}); lines: coalescence (red), nucleation (blue)",
         timeseries_svg(ft, [("mean", k.mean_d, "#334e68"), ("median (D50)", k.median_d,
                                                               "#0b6e4f")],
                        xlabel=xl, ylabel=f"diameter ({unit})", events=marks[:400])),
        (f"Number density ({k.density_unit})",
         timeseries_svg(ft, [("density", k.density, "#7c5e10")], xlabel=xl,
                        ylabel=k.density_unit, ymin=0)),
        (f"Ripening test: <r>³ − <r₀>³ ({unit}³; a straight line is LSW coarsening)",
         timeseries_svg(ft, [("<r>³ − <r₀>³", k.r3_minus_r03, "#5b4b8a"),
                             *([("fit", k.lsw_k * (t - t0) + k.lsw_intercept, "#d64545")]
                               if math.isfinite(k.lsw_k) else [])],
                        xlabel=xl, ylabel=f"{unit}³")),
    ]
    dy = np.array([np.nan if f.get("drift_y_px") is None else f["drift_y_px"] for f in frames])
    dx = np.array([np.nan if f.get("drift_x_px") is None else f["drift_x_px"] for f in frames])
    scale = np.array([float(f.get("nm_per_px_y") or 1.0) for f in frames]) if unit == "nm" \
        else np.ones(len(frames))
    svgs.append((f"Stage drift since the first frame ({unit}; y and x)",
                 timeseries_svg(ft, [("y", dy * scale, "#2f80ed"), ("x", dx * scale, "#d64545")],
                                xlabel=xl, ylabel=f"drift ({unit})")))
    tracks = data["tracks"]
    long = [r for r in tracks if (r.get("frames_seen") or 0) >= 10]
    rates = np.array([r["growth_rate"] for r in long if r.get("growth_rate") is not None], float)
    speeds = np.array([r["mean_speed"] for r in long if r.get("mean_speed") is not None], float)
    began: dict[str, int] = {}
    ended: dict[str, int] = {}
    for r in tracks:
        began[r.get("began") or "?"] = began.get(r.get("began") or "?", 0) + 1
        ended[r.get("ended") or "?"] = ended.get(r.get("ended") or "?", 0) + 1
    share = k.coalescence_share
    rows = [
        ("Tracks", f"{len(tracks):,} ({len(long):,} seen in ≥ 10 frames)"),
        ("How tracks began", ", ".join(f"{n} {b.replace('_', ' ')}" for b, n in
                                       sorted(began.items(), key=lambda kv: -kv[1]))),
        ("How tracks ended", ", ".join(f"{n} {b.replace('_', ' ')}" for b, n in
                                       sorted(ended.items(), key=lambda kv: -kv[1]))),
        ("Events", ", ".join(f"{n} {kk.replace('_', ' ')}" for kk, n in counts_by_kind.items())),
        (f"Median growth rate of tracks ≥ 10 frames ({unit}/s)",
         _num(np.median(rates)) if rates.size else "—"),
        (f"Median speed on the sample ({unit}/s)", _num(np.median(speeds)) if speeds.size else "—"),
        (f"LSW rate K (<r>³ − <r₀>³ = K t; {unit}³/s)",
         f"{_num(k.lsw_k)} (R² {_num(k.lsw_r2)})"),
        ("Count decay exponent a (N ∝ t^−a)", _num(k.count_decay_exponent)),
        ("Growth of ln⟨V⟩ explained by coalescence",
         f"{100 * share:.0f} %" if math.isfinite(share) else "— (mean volume did not grow)"),
        ("Total drift", f"{_num(math.hypot(dy[-1] * scale[-1], dx[-1] * scale[-1]))} {unit}"
         if np.isfinite(dy[-1]) else "—"),
    ]
    recent = [{"time": _fmt_time(e.get("t")), "seq": d.get("seq", "—"), "kind": e["kind"],
               "message": e.get("message") or ""} for e, d in ev_data[-MAX_ALERT_ROWS:]]
    return {"svgs": svgs, "rows": rows, "events": recent, "n_events": len(ev_data)}


def render_report(session_dir: str | os.PathLike[str],
                  include_states: tuple[str, ...] = TRUSTED_STATES) -> str:
    """The report's HTML text."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**collect(session_dir, include_states))


def write_report(session_dir: str | os.PathLike[str],
                 include_states: tuple[str, ...] = TRUSTED_STATES) -> Path:
    """Write ``SESSION/report.html`` atomically and return its path."""
    session_dir = Path(session_dir)
    html = render_report(session_dir, include_states)
    out = session_dir / REPORT_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{REPORT_NAME}.", suffix=".tmp", dir=session_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        replace_atomically(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ------------------------------------------------------------------------------------------------
# small inline SVG charts (dependency-free)

W, H = 760, 270
ML, MR, MT, MB = 62, 18, 30, 44
INK = "#1f2933"
GRID = "#e4e7eb"
MUTED = "#616e7c"
SEVERITY_COLOURS = {"info": "#2f80ed", "warning": "#f2994a", "critical": "#d64545"}


def nice_ticks(lo: float, hi: float, n: int = 5, *, cover: bool = False) -> list[float]:
    """About ``n`` round tick values within [lo, hi] (``cover``: extended to enclose it)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    e = 10 ** math.floor(math.log10(raw))
    step = min((m * e for m in (1, 2, 2.5, 5, 10) if m * e >= raw), default=10 * e)
    start = math.ceil(lo / step - 1e-9) * step
    if cover:
        start = math.floor(lo / step + 1e-9) * step
    out = []
    v = start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    if cover and out and out[-1] < hi - 1e-9 * step:
        out.append(round(out[-1] + step, 10))
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-2:
        return f"{v:.1e}"
    return f"{v:.3g}" if a < 100 else f"{v:.0f}"


class _Axes:
    def __init__(
        self, x0: float, x1: float, y0: float, y1: float, w: int = W, h: int = H, ml: int = ML
    ) -> None:
        self.ml = ml
        if x1 <= x0:
            x1 = x0 + 1.0
        if y1 <= y0:
            y1 = y0 + 1.0
        self.x0, self.x1, self.y0, self.y1, self.w, self.h = x0, x1, y0, y1, w, h
        self.parts: list[str] = []

    def X(self, x: float) -> float:
        return self.ml + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.ml - MR)

    def Y(self, y: float) -> float:
        return self.h - MB - (y - self.y0) / (self.y1 - self.y0) * (self.h - MT - MB)

    def frame(
        self, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]
    ) -> None:
        p = self.parts
        for t in yticks:
            y = self.Y(t)
            p.append(
                f'<line x1="{ML}" x2="{self.w - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            )
            p.append(
                f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end" class="tk">{_fmt(t)}</text>'
            )
        for t in xticks:
            x = self.X(t)
            p.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.h - MB}" y2="{self.h - MB + 5}" stroke="{MUTED}"/>'
            )
            p.append(
                f'<text x="{x:.1f}" y="{self.h - MB + 18}" text-anchor="middle" class="tk">{_fmt(t)}</text>'
            )
        p.append(
            f'<line x1="{ML}" x2="{self.w - MR}" y1="{self.h - MB}" y2="{self.h - MB}" stroke="{INK}"/>'
        )
        p.append(f'<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{self.h - MB}" stroke="{INK}"/>')
        p.append(
            f'<text x="{(ML + self.w - MR) / 2:.0f}" y="{self.h - 6}" text-anchor="middle" '
            f'class="lb">{escape(xlabel)}</text>'
        )
        p.append(
            f'<text transform="translate(15 {(MT + self.h - MB) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle" class="lb">{escape(ylabel)}</text>'
        )

    def svg(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.w} {self.h}" '
            f'role="img" aria-label="{escape(title)}" class="chart">'
            f"<style>.tk{{font:11px sans-serif;fill:{MUTED}}}.lb{{font:12px sans-serif;fill:{INK}}}"
            f".an{{font:11px sans-serif}}</style>{body}</svg>"
        )


def histogram_svg(
    edges: np.ndarray,
    counts: np.ndarray,
    *,
    xlabel: str,
    ylabel: str = "particles",
    markers: Sequence[tuple[str, float]] = (),
    overlays: Sequence[tuple[str, np.ndarray, str]] = (),
) -> str:
    """Bars for ``counts`` over ``edges``; dashed vertical ``markers`` (label, x); ``overlays``
    are (label, counts scaled to the same axis, colour) drawn as step outlines with a legend."""
    edges = np.asarray(edges, float)
    counts = np.asarray(counts, float)
    ymax = float(
        max([counts.max(initial=0)] + [float(np.max(o, initial=0)) for _, o, _ in overlays])
    )
    yt = nice_ticks(0, ymax * 1.04 or 1, 4, cover=True)
    ax = _Axes(float(edges[0]), float(edges[-1]), 0, max(yt[-1] if yt else 1, ymax * 1.08 or 1))
    ax.frame(xlabel, ylabel, nice_ticks(edges[0], edges[-1], 8), yt)
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c <= 0:
            continue
        x, x2, y = ax.X(a), ax.X(b), ax.Y(c)
        ax.parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(0.5, x2 - x - 1):.1f}" '
            f'height="{ax.Y(0) - y:.1f}" fill="#9fb3c8"/>'
        )
    for i, (label, oc, colour) in enumerate(overlays):
        pts = [f"{ax.X(edges[0]):.1f},{ax.Y(0):.1f}"]
        for c, a, b in zip(oc, edges[:-1], edges[1:], strict=True):
            pts += [f"{ax.X(a):.1f},{ax.Y(c):.1f}", f"{ax.X(b):.1f},{ax.Y(c):.1f}"]
        pts.append(f"{ax.X(edges[-1]):.1f},{ax.Y(0):.1f}")
        ax.parts.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
        )
        lx = W - MR - 190 * (len(overlays) - i)
        ly = MT - 12
        ax.parts.append(
            f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{lx + 24}" y="{ly}" class="an" fill="{INK}">{escape(label)}</text>'
        )
    for j, (label, x) in enumerate(markers):
        if not math.isfinite(x) or not edges[0] <= x <= edges[-1]:
            continue
        px = ax.X(x)
        ax.parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{MT}" y2="{ax.Y(0):.1f}" stroke="{INK}" '
            f'stroke-dasharray="4 3"/>'
            f'<text x="{px + 3:.1f}" y="{MT + 10 + 13 * (j % 3)}" class="an" fill="{INK}">'
            f"{escape(label)}</text>"
        )
    return ax.svg(f"histogram of {xlabel}")


def timeseries_svg(
    t: np.ndarray,
    series: Sequence[tuple[str, np.ndarray, str]],
    *,
    xlabel: str,
    ylabel: str,
    band: tuple[np.ndarray, np.ndarray, str] | None = None,
    events: Sequence[tuple[float, str]] = (),
    ymin: float | None = None,
) -> str:
    """Lines (label, y, colour) against ``t``; an optional shaded ``band`` (lo, hi, colour) and
    vertical ``events`` (t, colour) such as alerts. Points are joined in time order (frames can
    be recorded out of acquisition order: several files, stacks, restarts)."""
    t = np.asarray(t, float)
    order = np.argsort(np.where(np.isfinite(t), t, np.inf), kind="stable")
    t = t[order]
    ys = [np.asarray(y, float)[order] for _, y, _ in series]
    if band is not None:
        band = (np.asarray(band[0], float)[order], np.asarray(band[1], float)[order], band[2])
    allv = np.concatenate(
        [y[np.isfinite(y)] for y in ys] + ([b[np.isfinite(b)] for b in band[:2]] if band else [])
    )
    t_ok = t[np.isfinite(t)]
    x0, x1 = (float(t_ok.min()), float(t_ok.max())) if t_ok.size else (0.0, 1.0)
    lo = float(allv.min()) if allv.size else 0.0
    hi = float(allv.max()) if allv.size else 1.0
    if ymin is not None:
        lo = min(lo, ymin)
    pad = 0.06 * (hi - lo or 1.0)
    yt = nice_ticks(lo - (pad if ymin is None else 0), hi + pad, 4, cover=True)
    ax = _Axes(x0, x1, yt[0] if yt else lo, yt[-1] if yt else hi)
    ax.frame(xlabel, ylabel, nice_ticks(x0, x1, 8), yt)
    for te, colour in events:
        if x0 <= te <= x1:
            ax.parts.append(
                f'<line x1="{ax.X(te):.1f}" x2="{ax.X(te):.1f}" y1="{MT}" y2="{H - MB}" '
                f'stroke="{colour}" stroke-opacity="0.55" stroke-width="1.2"/>'
            )
    if band is not None:
        blo, bhi, colour = (np.asarray(band[0], float), np.asarray(band[1], float), band[2])
        ok = np.isfinite(blo) & np.isfinite(bhi) & np.isfinite(t)
        if ok.any():
            upper = [f"{ax.X(a):.1f},{ax.Y(b):.1f}" for a, b in zip(t[ok], bhi[ok], strict=True)]
            lower = [
                f"{ax.X(a):.1f},{ax.Y(b):.1f}"
                for a, b in zip(t[ok][::-1], blo[ok][::-1], strict=True)
            ]
            ax.parts.append(
                f'<polygon points="{" ".join(upper + lower)}" fill="{colour}" fill-opacity="0.22" stroke="none"/>'
            )
    for i, ((label, _, colour), y) in enumerate(zip(series, ys, strict=True)):
        ok = np.isfinite(y) & np.isfinite(t)
        pts = " ".join(f"{ax.X(a):.1f},{ax.Y(b):.1f}" for a, b in zip(t[ok], y[ok], strict=True))
        if pts:
            ax.parts.append(
                f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6" '
                'stroke-linejoin="round"/>'
            )
            if ok.sum() <= 60:
                ax.parts += [
                    f'<circle cx="{ax.X(a):.1f}" cy="{ax.Y(b):.1f}" r="2.2" fill="{colour}"/>'
                    for a, b in zip(t[ok], y[ok], strict=True)
                ]
        lx = ML + 4 + 150 * i
        ax.parts.append(
            f'<line x1="{lx}" x2="{lx + 18}" y1="{MT - 16}" y2="{MT - 16}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{lx + 24}" y="{MT - 12}" class="an" fill="{INK}">{escape(label)}</text>'
        )
    return ax.svg(ylabel)


def timeline_svg(
    t0: float,
    t1: float,
    alerts: Sequence[tuple[float, str, str]],
    *,
    xlabel: str,
    scale: float = 1.0,
) -> str:
    """Alerts (t, severity, rule) as markers on one lane per rule; ``scale`` divides t for the axis."""
    rules = list(dict.fromkeys(r for _, _, r in alerts))
    lane_h = 26
    h = MT + MB + max(1, len(rules)) * lane_h + 6
    x0, x1 = t0 / scale, max(t1 / scale, t0 / scale + 1e-9)
    left = 150
    ax = _Axes(x0, x1, 0, 1, w=W, h=h, ml=left)
    p = ax.parts
    for i, rule in enumerate(rules):
        y = MT + i * lane_h + lane_h / 2
        p.append(f'<line x1="{left}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        name = rule if len(rule) <= 22 else rule[:21] + "…"
        p.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" class="lb">{escape(name)}</text>'
        )
    for t, sev, rule in alerts:
        y = MT + rules.index(rule) * lane_h + lane_h / 2
        x = ax.X(t / scale)
        c = SEVERITY_COLOURS.get(sev, MUTED)
        p.append(
            f'<path d="M{x:.1f},{y - 7:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} '
            f'L{x - 6:.1f},{y:.1f}Z" fill="{c}" stroke="white" stroke-width="0.8">'
            f"<title>{escape(rule)} ({escape(sev)}) at {t / scale:.3g}</title></path>"
        )
    base = h - MB + 4
    p.append(f'<line x1="{left}" x2="{W - MR}" y1="{base}" y2="{base}" stroke="{INK}"/>')
    for tk in nice_ticks(x0, x1, 8):
        x = ax.X(tk)
        p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 5}" stroke="{MUTED}"/>')
        p.append(
            f'<text x="{x:.1f}" y="{base + 18}" text-anchor="middle" class="tk">{_fmt(tk)}</text>'
        )
    p.append(
        f'<text x="{(left + W - MR) / 2:.0f}" y="{h - 6}" text-anchor="middle" class="lb">'
        f"{escape(xlabel)}</text>"
    )
    return ax.svg("alert timeline")
