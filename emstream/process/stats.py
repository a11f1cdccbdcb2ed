"""Frame summaries, size quantiles, bootstrap confidence intervals and running size histograms.

Pure numpy. Diameters are equivalent circular diameters in the frame's unit (nm or px).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from emstream.results import FrameSummary, ParticleTable

__all__ = ["summarize", "quantiles", "bootstrap_ci", "SizeHistogram", "log_bin_edges"]


def quantiles(values: np.ndarray | Iterable[float], qs: Iterable[float] = (0.1, 0.5, 0.9)) -> np.ndarray:
    """Quantiles of the finite values (linear interpolation); NaN for each q when none.

    Parameters
    ----------
    values : sizes (any shape; NaN / inf are ignored).
    qs : quantile levels in [0, 1], e.g. ``(0.1, 0.5, 0.9)`` for D10, D50, D90.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    q = np.asarray(list(qs), dtype=np.float64)
    if np.any((q < 0) | (q > 1)):
        raise ValueError(f"quantile levels must be in [0, 1], got {q.tolist()}")
    if v.size == 0:
        return np.full(q.shape, np.nan)
    return np.quantile(v, q)


def summarize(particles: ParticleTable, *, valid_area_px: float, unit: str) -> FrameSummary:
    """Frame-level statistics of a particle table.

    Parameters
    ----------
    particles : the frame's particle table (uses ``area_px`` and ``equivalent_diameter_nm``).
    valid_area_px : image area that could hold particles (pixels outside banners / scale bars).
    unit : ``"nm"`` or ``"px"`` (the unit of ``equivalent_diameter_nm``).

    Returns
    -------
    FrameSummary
        count (every particle); coverage = particle area / valid area (0..1); mean, std
        (ddof 0), D10/D50/D90, min and max of the equivalent diameter of the particles **not cut
        by the image edge** (``touches_border``: their size is not known) — NaN when there are
        none. The window, the report and the rules use the same rule.
    """
    d = np.asarray(particles.get("equivalent_diameter_nm", np.zeros(0)), dtype=np.float64)
    cut = np.asarray(particles.get("touches_border", np.zeros(d.size, bool)), dtype=bool)
    area = np.asarray(particles.get("area_px", np.zeros(0)), dtype=np.float64)
    count = int(d.size)
    if cut.shape == d.shape:
        d = d[~cut]
    coverage = float(area.sum() / valid_area_px) if valid_area_px > 0 else float("nan")
    if valid_area_px > 0:
        coverage = min(max(coverage, 0.0), 1.0)
    s = FrameSummary(count=count, coverage=coverage, unit=unit)
    fin = d[np.isfinite(d)]
    if fin.size:
        d10, d50, d90 = np.quantile(fin, (0.1, 0.5, 0.9))
        s.mean_diameter = float(fin.mean())
        s.std_diameter = float(fin.std())
        s.d10, s.d50, s.d90 = float(d10), float(d50), float(d90)
        s.min_diameter = float(fin.min())
        s.max_diameter = float(fin.max())
    return s


def bootstrap_ci(
    values: np.ndarray | Iterable[float],
    stat: Callable[..., np.ndarray] = np.median,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` over the finite ``values``.

    ``stat`` must accept ``axis=`` (numpy reductions such as ``np.median``, ``np.mean`` or
    ``functools.partial(np.quantile, q=0.9)`` do); all ``n`` resamples are drawn and reduced in
    one vectorised call. Deterministic for a given ``seed``. Returns ``(nan, nan)`` for no data.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if v.size == 0 or n < 1:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # chunk so that n x size stays within ~4 M samples
    per = max(1, 4_000_000 // v.size)
    reps = []
    for start in range(0, n, per):
        k = min(per, n - start)
        idx = rng.integers(0, v.size, size=(k, v.size))
        reps.append(np.asarray(stat(v[idx], axis=1), dtype=np.float64))
    boot = np.concatenate(reps)
    lo, hi = np.quantile(boot, (alpha / 2, 1 - alpha / 2))
    return (float(lo), float(hi))


def log_bin_edges(lo: float = 0.5, hi: float = 500.0, bins: int = 60) -> np.ndarray:
    """Logarithmically spaced bin edges, the usual choice for log-normal particle sizes."""
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got {lo}, {hi}")
    return np.geomspace(lo, hi, bins + 1)


class SizeHistogram:
    """A size histogram on fixed bin edges: cumulative over a session and over recent frames.

    ``add(values)`` adds one frame's sizes; ``counts`` is the cumulative histogram, ``recent``
    the sum over the last ``window`` frames (kept as a ring of per-frame histograms).
    Values below the first edge go to ``underflow``, above the last to ``overflow``, NaN are
    dropped; ``total`` = everything added that is finite, so ``counts.sum() + underflow +
    overflow == total``.

    Parameters
    ----------
    edges : strictly increasing bin edges (``len(edges) - 1`` bins; the last bin is closed).
    window : number of recent frames kept for :attr:`recent`.
    """

    def __init__(self, edges: np.ndarray | Iterable[float], window: int = 50):
        e = np.asarray(list(edges) if not isinstance(edges, np.ndarray) else edges, np.float64)
        if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0) or not np.all(np.isfinite(e)):
            raise ValueError("edges must be a finite, strictly increasing 1-D sequence of >= 2")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.edges = e
        self.window = int(window)
        self.counts = np.zeros(e.size - 1, np.int64)
        self.underflow = 0
        self.overflow = 0
        self.frames = 0
        self._ring: deque[np.ndarray] = deque(maxlen=self.window)
        self._recent = np.zeros(e.size - 1, np.int64)

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.underflow + self.overflow

    @property
    def recent(self) -> np.ndarray:
        """Counts over the last ``window`` frames added."""
        return self._recent.copy()

    def _bin(self, values: np.ndarray | Iterable[float]) -> tuple[np.ndarray, int, int]:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        under = int(np.count_nonzero(v < self.edges[0]))
        over = int(np.count_nonzero(v > self.edges[-1]))
        h, _ = np.histogram(v, self.edges)
        return h.astype(np.int64), under, over

    def add(self, values: np.ndarray | Iterable[float]) -> np.ndarray:
        """Add one frame's sizes; returns that frame's histogram."""
        h, under, over = self._bin(values)
        self.counts += h
        self.underflow += under
        self.overflow += over
        self.frames += 1
        if len(self._ring) == self._ring.maxlen:
            self._recent -= self._ring[0]
        self._ring.append(h)
        self._recent += h
        return h

    def merge(self, other: SizeHistogram) -> SizeHistogram:
        """Add another histogram with the same edges into this one (cumulative counts only;
        the recent window becomes the other's recent frames appended after ours)."""
        if other.edges.shape != self.edges.shape or not np.allclose(other.edges, self.edges):
            raise ValueError("cannot merge histograms with different bin edges")
        self.counts += other.counts
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.frames += other.frames
        for h in list(other._ring):
            if len(self._ring) == self._ring.maxlen:
                self._recent -= self._ring[0]
            self._ring.append(h.copy())
            self._recent += h
        return self

    def quantiles(self, qs: Iterable[float] = (0.1, 0.5, 0.9), recent: bool = False) -> np.ndarray:
        """Approximate quantiles from the binned counts (linear within a bin)."""
        c = (self._recent if recent else self.counts).astype(np.float64)
        q = np.asarray(list(qs), np.float64)
        if c.sum() == 0:
            return np.full(q.shape, np.nan)
        cdf = np.concatenate([[0.0], np.cumsum(c)]) / c.sum()
        return np.interp(q, cdf, self.edges)

    def reset_recent(self) -> None:
        self._ring.clear()
        self._recent[:] = 0
