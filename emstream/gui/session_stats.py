"""Session-wide statistics the window plots: fixed-bin histograms and trend series.

Qt-free and cheap: the GUI sink updates these from the pipeline's sink thread for every result it
receives (a ``bincount`` per quantity and one trend point), and the window reads copies under
the lock. Memory is bounded however long the session: histograms have fixed bins, the recent
window is a fixed number of frames, and trend series halve their resolution when full.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from emstream.gui.trails import TrackHistory
from emstream.process.quality import TRUSTED_STATES
from emstream.process.stats import SizeHistogram
from emstream.results import FrameRecord, FrameResult, ParticleTable


@dataclass(frozen=True)
class Quantity:
    """A particle-table column the size distribution can show, with its fine fixed bins."""

    column: str
    label: str
    kind: str  # "length" (nm or px), "area" (nm² or px²) or "ratio" (dimensionless)
    lo: float
    hi: float
    width: float

    @property
    def nbins(self) -> int:
        return int(round((self.hi - self.lo) / self.width))

    @property
    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.nbins + 1)

    def unit(self, length_unit: str) -> str:
        if self.kind == "length":
            return length_unit
        if self.kind == "area":
            return f"{length_unit}²"
        return ""

    def axis_label(self, length_unit: str) -> str:
        u = self.unit(length_unit)
        return f"{self.label} ({u})" if u else self.label

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Fine-bin counts of the finite values inside the range (same rule as SizeHistogram)."""
        v = np.asarray(values, dtype=np.float64)
        return np.histogram(v[np.isfinite(v)], self.edges)[0].astype(np.int64)


#: What the size-distribution plot can show. Fine bins are fixed for the whole session; the plot
#: merges neighbours for display, so a session never re-bins and counts are exact.
QUANTITIES: dict[str, Quantity] = {
    q.column: q
    for q in (
        Quantity("equivalent_diameter_nm", "Equivalent diameter", "length", 0.0, 1000.0, 0.25),
        Quantity("feret_diameter_max_nm", "Feret diameter (max)", "length", 0.0, 1000.0, 0.25),
        Quantity("feret_diameter_min_nm", "Feret diameter (min)", "length", 0.0, 1000.0, 0.25),
        Quantity("axis_major_length_nm", "Major axis", "length", 0.0, 1000.0, 0.25),
        Quantity("area_nm2", "Area", "area", 0.0, 100_000.0, 25.0),
        Quantity("aspect_ratio", "Aspect ratio", "ratio", 1.0, 11.0, 0.005),
        Quantity("roundness", "Roundness", "ratio", 0.0, 1.0025, 0.0025),
        Quantity("circularity", "Circularity", "ratio", 0.0, 1.0025, 0.0025),
        Quantity("solidity", "Solidity", "ratio", 0.0, 1.0025, 0.0025),
    )
}


def quantiles_from_counts(
    counts: np.ndarray, edges: np.ndarray, qs: tuple[float, ...] = (0.1, 0.5, 0.9)
) -> list[float]:
    """Quantiles of binned data, interpolated linearly inside the bin (NaN when empty)."""
    total = counts.sum()
    if total <= 0:
        return [math.nan] * len(qs)
    cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.float64)
    return [float(np.interp(q * total, cum, edges)) for q in qs]


class TrendSeries:
    """Per-frame points (acquisition time, count, mean/median diameter, coverage), bounded.

    When ``capacity`` points are stored, every other point is dropped and from then on only every
    ``stride``-th frame is kept: resolution halves, the time span stays the whole session.
    """

    FIELDS = ("t_acq", "seq", "count", "mean_diameter", "median_diameter", "coverage",
              "drift_y", "drift_x")

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = int(capacity)
        self._data = np.full((len(self.FIELDS), self.capacity), np.nan)
        self.n = 0
        self.stride = 1
        self._seen = 0

    def add(
        self, t_acq: float, seq: int, count: int, mean: float, median: float, cov: float,
        drift_y: float = math.nan, drift_x: float = math.nan,
    ) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        if self.n == self.capacity:
            half = self._data[:, ::2].copy()
            self._data[:] = np.nan
            self._data[:, : half.shape[1]] = half
            self.n = half.shape[1]
            self.stride *= 2
        self._data[:, self.n] = (t_acq, seq, count, mean, median, cov, drift_y, drift_x)
        self.n += 1

    def arrays(self) -> dict[str, np.ndarray]:
        """A copy of the stored points, one array per field."""
        return {f: self._data[i, : self.n].copy() for i, f in enumerate(self.FIELDS)}


class SessionStatistics:
    """Histograms (this frame / recent window / whole session) and trends for one session.

    One :class:`emstream.process.stats.SizeHistogram` per quantity (fixed fine bins, the recent
    window as a ring of per-frame histograms). Thread-safe: :meth:`account` / :meth:`add_result`
    run on a pipeline thread, the ``*_snapshot`` methods on the GUI thread. :meth:`account`
    ignores records it has already seen (by ``seq``), so it can be fed from two places.
    """

    def __init__(self, recent_frames: int = 50, trend_capacity: int = 20_000) -> None:
        self._lock = threading.Lock()
        self.recent_frames = int(recent_frames)
        self.hist = {
            c: SizeHistogram(q.edges, window=self.recent_frames) for c, q in QUANTITIES.items()
        }
        self.trends = TrendSeries(trend_capacity)
        self.frames_ok = 0
        self.frames_other = 0
        self.particles = 0  # sized particles (not cut by the image edge)
        self.edge_cut = 0  # particles cut by the edge: counted, not sized
        self.unit_per_px = 1.0  # the last frame's pixel size in its length unit
        self.unit = ""  # length unit of the first ok frame ("nm" or "px")
        self.mixed_units = False
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.t0: float | None = None
        #: recent positions and sizes of every live track (trails, size over time)
        self.tracks = TrackHistory()
        #: tracking events as (t_acq, kind), the most recent ones
        self.events: deque[tuple[float, str]] = deque(maxlen=2000)
        #: frames left out of the statistics as (t_acq, state), the most recent ones
        self.untrusted: deque[tuple[float, str]] = deque(maxlen=2000)

    # -- writers (pipeline threads) ----------------------------------------------------------
    def account(self, record: FrameRecord) -> bool:
        """Count one terminal record once (``False`` if its ``seq`` was already counted)."""
        with self._lock:
            if self.last_seq is not None and record.seq <= self.last_seq:
                return False
            self.last_seq = record.seq
        if record.status == "ok" and record.result is not None:
            self.add_result(record.result)
        else:
            with self._lock:
                self.frames_other += 1
        return True

    def add_result(self, result: FrameResult) -> None:
        """Account one processed frame: its particles into every histogram, one trend point."""
        p = result.particles
        s = result.summary
        d = np.asarray(p.get("equivalent_diameter_nm", np.zeros(0)), np.float64)
        # particles cut by the image edge have no known size: left out of every size figure,
        # as in the frame summary, the report and the rules
        cut = np.asarray(p.get("touches_border", np.zeros(d.size, bool)), bool)
        keep = ~cut if cut.shape == d.shape else np.ones(d.size, bool)
        state = getattr(result, "state", "ok") or "ok"
        if not getattr(result, "is_trusted", state in TRUSTED_STATES):
            keep[:] = False  # a defocused / dark / saturated frame: no sizes from it
            with self._lock:
                self.untrusted.append((float(result.frame.t_acq), state))
        d = d[keep & np.isfinite(d)]
        median = float(np.median(d)) if len(d) else math.nan
        mean = float(np.mean(d)) if len(d) else math.nan
        with self._lock:
            if not self.unit:
                self.unit = result.unit
            elif self.unit != result.unit:
                self.mixed_units = True
            for c, h in self.hist.items():
                h.add(np.asarray(p[c])[keep] if c in p else ())
            self.frames_ok += 1
            self.particles += int(keep.sum())
            self.edge_cut += int((~keep).sum())
            if self.first_seq is None:
                self.first_seq = result.seq
                self.t0 = result.frame.t_acq
            self.last_seq = max(result.seq, self.last_seq if self.last_seq is not None else -1)
            self.unit_per_px = float(np.mean(result.frame.calibration.unit_per_px))
            drift = result.drift if result.drift is not None else (math.nan, math.nan)
            self.trends.add(
                result.frame.t_acq, result.seq, s.count, mean, median, float(s.coverage), *drift
            )
        self.tracks.add(result)

    def min_bin_width(self, column: str) -> float:
        """The narrowest histogram bin worth drawing for ``column``: the step one pixel of area
        makes in the equivalent diameter of the smaller particles (``2·s²/(π·D10)`` for a pixel
        size ``s``); 0 for quantities that are not lengths."""
        q = QUANTITIES[column]
        if q.kind != "length":
            return 0.0
        with self._lock:
            counts = self.hist[column].counts.copy()
            s = self.unit_per_px
        d10 = quantiles_from_counts(counts, q.edges, (0.1,))[0]
        return 2.0 * s * s / (math.pi * d10) if math.isfinite(d10) and d10 > 0 else 0.0

    def add_event(self, t_acq: float, kind: str) -> None:
        """Remember a tracking event for the trends (coalescence, nucleation ...)."""
        with self._lock:
            self.events.append((float(t_acq), kind))

    def event_snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.events)

    def untrusted_snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.untrusted)

    def add_history(
        self,
        values: dict[str, np.ndarray],
        frame_seq: np.ndarray,
        trend_rows: list[tuple[float, int, int, float, float, float]],
        unit: str,
        frames_other: int = 0,
    ) -> None:
        """Load a finished session at once (review mode).

        ``values`` holds one array per particle column (all particles of the session),
        ``frame_seq`` the frame of each particle (the recent window = the last frames),
        ``trend_rows`` one ``(t_acq, seq, count, mean, median, coverage)`` per ok frame.
        """
        seqs = np.asarray(frame_seq, np.int64)
        ok_seqs = [int(r[1]) for r in trend_rows]
        recent = ok_seqs[-self.recent_frames :]
        older = seqs < recent[0] if recent else np.ones(len(seqs), bool)
        with self._lock:
            self.unit = unit
            for c, h in self.hist.items():
                v = np.asarray(values.get(c, np.zeros(len(seqs))), np.float64)
                h.counts += QUANTITIES[c].counts(v[older])
                fin = v[older][np.isfinite(v[older])]
                h.underflow += int(np.count_nonzero(fin < h.edges[0]))
                h.overflow += int(np.count_nonzero(fin > h.edges[-1]))
                h.frames += len(ok_seqs) - len(recent)
                lo = np.searchsorted(seqs, recent, "left")
                hi = np.searchsorted(seqs, recent, "right")
                for a, b in zip(lo, hi, strict=True):
                    h.add(v[a:b])
            self.frames_ok += len(trend_rows)
            self.frames_other += int(frames_other)
            self.particles += len(seqs)
            for row in trend_rows:
                self.trends.add(*row)
            if trend_rows:
                self.first_seq, self.last_seq = ok_seqs[0], ok_seqs[-1]
                self.t0 = trend_rows[0][0]

    def add_other(self) -> None:
        """Account a frame that was quarantined or skipped (no particles)."""
        with self._lock:
            self.frames_other += 1

    # -- readers (GUI thread) ----------------------------------------------------------------
    def histogram_snapshot(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the (session, recent-window) fine-bin counts for ``column``."""
        with self._lock:
            h = self.hist[column]
            return h.counts.copy(), h.recent

    def out_of_range(self, column: str) -> int:
        with self._lock:
            h = self.hist[column]
            return h.underflow + h.overflow

    def trend_snapshot(self) -> dict[str, np.ndarray]:
        with self._lock:
            return self.trends.arrays()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "frames_ok": self.frames_ok,
                "frames_other": self.frames_other,
                "particles": self.particles,
                "edge_cut": self.edge_cut,
            }


def frame_counts(particles: ParticleTable, column: str) -> np.ndarray:
    """Fine-bin counts of one frame's particles for ``column`` (same bins as the session),
    particles cut by the image edge left out as in the session figures."""
    q = QUANTITIES[column]
    v = np.asarray(particles.get(column, np.zeros(0)))
    cut = np.asarray(particles.get("touches_border", np.zeros(len(v), bool)), bool)
    return q.counts(v[~cut] if cut.shape == v.shape else v)


def display_bins(
    counts_list: list[np.ndarray], q: Quantity, max_bins: int = 60, *,
    min_width: float = 0.0, trim: float = 0.005,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Merge fine bins into at most ``max_bins`` display bins spanning where the data are.

    The range runs from the ``trim`` to the ``1 - trim`` quantile of all the counts together (a
    few outliers must not squeeze every particle into three bars; what falls outside is left
    out of the display, not of the statistics), and no bin is narrower than ``min_width`` (the
    diameter step one pixel makes, so coarse pixels do not draw a comb). The merge factor is a
    "nice" multiple of the fine width (1, 2, 5 × 10^k), so bin edges are round numbers an
    operator can read. Returns (edges, merged counts for each input).
    """
    total = np.zeros(q.nbins, np.float64)
    for c in counts_list:
        total += c
    nz = np.flatnonzero(total > 0)
    if len(nz) == 0:
        lo_i, hi_i = 0, min(q.nbins, max_bins)
    else:
        cum = np.cumsum(total) / total.sum()
        lo_i = int(np.searchsorted(cum, trim, side="right")) if trim > 0 else int(nz[0])
        hi_i = int(np.searchsorted(cum, 1.0 - trim, side="left")) + 1 if trim > 0 else \
            int(nz[-1]) + 1
        lo_i, hi_i = max(lo_i, int(nz[0])), min(max(hi_i, lo_i + 1), int(nz[-1]) + 1)
    # the smallest nice factor whose bins, aligned to multiples of it, are at most max_bins
    # (aligning can add one bin: 31 for a span of exactly 30 that straddles a boundary)
    first, last = lo_i, hi_i
    factor = 1
    for factor in (m * mag for mag in (1, 10, 100, 1000, 10_000) for m in (1, 2, 5)):
        if factor * q.width < min_width:
            continue
        lo_i = (first // factor) * factor
        hi_i = min(q.nbins, -(-last // factor) * factor)
        if -(-(hi_i - lo_i) // factor) <= max_bins:
            break
    if hi_i <= lo_i:
        hi_i = min(q.nbins, lo_i + factor)
    n = -(-(hi_i - lo_i) // factor)
    edges = q.lo + q.width * (lo_i + factor * np.arange(n + 1))
    merged = []
    for c in counts_list:
        seg = np.zeros(n * factor, np.int64)
        part = c[lo_i:hi_i]
        seg[: len(part)] = part
        merged.append(seg.reshape(n, factor).sum(axis=1))
    return edges, merged
