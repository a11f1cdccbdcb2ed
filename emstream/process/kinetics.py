"""Coarsening kinetics of a session from its frames, tracks and events (pure numpy).

What an in-situ sintering experiment asks, in the classic indicators:

- **mean and median diameter** and **number density** against time;
- **Ostwald ripening** (LSW): the mean radius grows as ``<r>^3 - <r0>^3 = K t``; ``K`` is the
  least-squares slope of ``<r>^3 - <r0>^3`` against time (``<r0>`` the median of the first frames'
  mean radii) and ``R²`` says how well a straight line holds;
- **coalescence**: the count decays (``N ~ t^-a``; ``a`` fitted on log-log over ``t > 0``), and
  each merge of ``k`` tracks removes ``k`` particles without changing the total volume, so it
  raises the mean particle volume ``<V> = sum(d^3) / N`` by ``ln(N / (N - k))``. The **share of
  the growth of ln<V> explained by coalescence** is ``sum over merges of ln(N/(N-k))`` over the
  observed change of ``ln<V>``; the rest is smooth growth (ripening, deposition), nucleation and
  loss. It is only given when ``<V>`` grew.

All lengths are in the frames' unit (nm when calibrated); densities per µm² when calibrated, else
per 10⁶ px².
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Kinetics", "kinetics"]


@dataclass
class Kinetics:
    """The session's kinetics (NaN where the data cannot say)."""

    t: np.ndarray  # s since the first frame
    mean_d: np.ndarray
    median_d: np.ndarray
    density: np.ndarray
    density_unit: str
    r3_minus_r03: np.ndarray  # <r>^3 - <r0>^3, unit^3
    lsw_k: float = math.nan  # unit^3/s
    lsw_intercept: float = math.nan  # unit^3 (the fitted line is lsw_k * t + lsw_intercept)
    lsw_r2: float = math.nan
    count_decay_exponent: float = math.nan
    coalescence_share: float = math.nan
    mean_volume_log_change: float = math.nan
    events: dict[str, int] = field(default_factory=dict)


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and R² of a least-squares line (NaN with < 3 finite points)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or float(np.ptp(x[ok])) <= 0:
        return math.nan, math.nan, math.nan
    slope, icpt = np.polyfit(x[ok], y[ok], 1)
    res = y[ok] - (slope * x[ok] + icpt)
    tot = float(((y[ok] - y[ok].mean()) ** 2).sum())
    return float(slope), float(icpt), 1.0 - float((res**2).sum()) / tot if tot > 0 else math.nan


def kinetics(t: np.ndarray, count: np.ndarray, mean_d: np.ndarray, median_d: np.ndarray,
             sum_d3: np.ndarray, field_area: np.ndarray, *, calibrated: bool,
             merges: list[tuple[float, int]] = (), event_counts: dict[str, int] | None = None,
             baseline_fraction: float = 0.05) -> Kinetics:
    """The kinetics of a session from per-frame arrays (one entry per ``ok`` frame, in time
    order): acquisition ``t`` (s), particle ``count``, ``mean_d`` / ``median_d`` diameters,
    ``sum_d3`` (sum of diameter³ of the frame's particles), the field's valid area (unit²);
    ``merges`` the coalescences as ``(t, tracks merged away)``."""
    t = np.asarray(t, float)
    order = np.argsort(t, kind="stable")
    t, count, mean_d, median_d, sum_d3, field_area = (
        np.asarray(a, float)[order] for a in (t, count, mean_d, median_d, sum_d3, field_area))
    t0 = float(t[0]) if t.size else 0.0
    ts = t - t0
    per = 1e6  # nm² per µm² (calibrated), or px² per 10⁶ px²
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(field_area > 0, count / field_area * per, np.nan)
    r = mean_d / 2.0
    n0 = max(1, int(math.ceil(baseline_fraction * t.size))) if t.size else 0
    r0 = float(np.nanmedian(r[:n0])) if n0 and np.isfinite(r[:n0]).any() else math.nan
    r3 = r**3 - r0**3
    k, icpt, r2 = _linear_fit(ts, r3)
    out = Kinetics(t=ts, mean_d=mean_d, median_d=median_d, density=density,
                   density_unit="µm⁻²" if calibrated else "per 10⁶ px²", r3_minus_r03=r3,
                   lsw_k=k, lsw_intercept=icpt, lsw_r2=r2, events=dict(event_counts or {}))
    pos = (ts > 0) & (count > 0)
    if pos.sum() >= 3:
        out.count_decay_exponent = -_linear_fit(np.log(ts[pos]), np.log(count[pos]))[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_v = np.where(count > 0, sum_d3 / count, np.nan)
    good = np.flatnonzero(np.isfinite(mean_v) & (mean_v > 0))
    if good.size >= 2:
        a, b = good[: max(1, good.size // 20)], good[-max(1, good.size // 20):]
        change = float(np.log(np.median(mean_v[b])) - np.log(np.median(mean_v[a])))
        out.mean_volume_log_change = change
        if change > 0 and merges:
            n_at = np.interp([m[0] - t0 for m in merges], ts, count)
            gain = sum(math.log(n / (n - k)) for (_, k), n in zip(merges, n_at, strict=True)
                       if n > k >= 1)
            out.coalescence_share = gain / change
    return out
