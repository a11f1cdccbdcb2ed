"""Particle outlines and display scaling for the frame view (numpy + OpenCV, no Qt).

Outlines are traced per particle inside its bounding box (``cv2.findContours`` on a small crop), so
the cost follows the particles' pixel count, not the frame size; touching particles keep their own
outlines. The frame is scaled to uint8 once, with percentile levels taken from a subsample, so
the Qt side only ever uploads bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from emstream.results import ParticleTable

__all__ = ["Outlines", "auto_levels", "particle_outlines", "to_display_u8", "nice_length"]


def auto_levels(
    pixels: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5, samples: int = 65_536
) -> tuple[float, float]:
    """Percentile black/white levels from a strided subsample of ~``samples`` pixels."""
    h, w = pixels.shape
    step = max(1, int(np.sqrt(h * w / samples)))
    sub = pixels[::step, ::step]
    finite = sub if sub.dtype.kind in "iub" else sub[np.isfinite(sub)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, (low_pct, high_pct))
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def to_display_u8(pixels: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    """Map ``levels`` (black, white) to 0..255 as uint8 (saturating), any input dtype."""
    lo, hi = levels
    alpha = 255.0 / (hi - lo)
    src = pixels
    if src.dtype.kind in "ub" and src.dtype.itemsize <= 2:
        # unsigned detector counts: saturating subtract, then scale (no negatives to fold)
        return cv2.convertScaleAbs(cv2.subtract(src, (float(lo),)), alpha=alpha)
    if src.dtype not in (np.int8, np.int16, np.int32, np.float32, np.float64):
        src = src.astype(np.float32)
    # convertScaleAbs takes |x|: clamp below the black level first so darks do not fold back up
    return cv2.convertScaleAbs(cv2.max(src, (float(lo),)), alpha=alpha, beta=-lo * alpha)


@dataclass
class Outlines:
    """All outlines of one frame, ready for one QPainterPath per colour.

    ``x``, ``y`` are vertex coordinates in image pixels (pixel centres at +0.5), ``connect[i]`` is
    1 when vertex ``i`` joins vertex ``i+1``, and ``start[k]:start[k+1]`` are the vertices of the
    outline of particle-table row ``rows[k]``.
    """

    x: np.ndarray
    y: np.ndarray
    connect: np.ndarray
    start: np.ndarray
    rows: np.ndarray

    @property
    def count(self) -> int:
        return int(len(self.rows))

    def select(self, keep_rows: np.ndarray) -> Outlines:
        """The outlines of the particle-table rows where ``keep_rows`` (bool per row) is True."""
        keep = np.asarray(keep_rows, bool)[self.rows]
        seg = np.repeat(keep, np.diff(self.start))
        start = np.concatenate([[0], np.cumsum(np.diff(self.start)[keep])])
        return Outlines(self.x[seg], self.y[seg], self.connect[seg], start, self.rows[keep])


def particle_outlines(labels: np.ndarray, particles: ParticleTable) -> Outlines:
    """Trace one closed outline per particle-table row (the largest external contour).

    Uses the table's bounding boxes, so it costs O(particle pixels), not O(frame).
    """
    lab = particles["label"]
    n = len(lab)
    y0s = particles["bbox_min_y_px"]
    x0s = particles["bbox_min_x_px"]
    y1s = particles["bbox_max_y_px"]
    x1s = particles["bbox_max_x_px"]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    rows: list[int] = []
    h, w = labels.shape
    for i in range(n):
        y0, x0 = max(0, int(y0s[i]) - 1), max(0, int(x0s[i]) - 1)
        y1, x1 = min(h, int(y1s[i]) + 1), min(w, int(x1s[i]) + 1)
        crop = (labels[y0:y1, x0:x1] == lab[i]).view(np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        c = max(contours, key=len) if len(contours) > 1 else contours[0]
        c = c.reshape(-1, 2)
        c = np.concatenate([c, c[:1]])  # close the loop
        xs.append(c[:, 0] + (x0 + 0.5))
        ys.append(c[:, 1] + (y0 + 0.5))
        rows.append(i)
    if not rows:
        z = np.zeros(0)
        return Outlines(z, z, np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64))
    lengths = np.array([len(a) for a in xs])
    start = np.concatenate([[0], np.cumsum(lengths)])
    connect = np.ones(int(start[-1]), np.int32)
    connect[start[1:] - 1] = 0
    return Outlines(
        np.concatenate(xs).astype(np.float64),
        np.concatenate(ys).astype(np.float64),
        connect,
        start,
        np.asarray(rows, np.int64),
    )


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``target`` (> 0)."""
    if not target > 0:
        return 0.0
    k = np.floor(np.log10(target))
    for m in (5.0, 2.0, 1.0):
        v = m * 10.0**k
        if v <= target:
            return float(v)
    return float(10.0**k)
