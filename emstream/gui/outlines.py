"""Particle outlines and display scaling for the frame view (numpy + OpenCV, no Qt).

Outlines are traced per particle inside its bounding box (the boxes packed into one mosaic, one
``cv2.findContours`` call), so the cost follows the particles' pixel count, not the frame size;
touching particles keep their own outlines. The frame is scaled to uint8 once, with percentile levels taken from a subsample, so
the Qt side only ever uploads bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from emstream.results import FrameResult, ParticleTable

__all__ = [
    "DisplayFrame",
    "Outlines",
    "auto_levels",
    "nice_length",
    "particle_outlines",
    "prepare_display",
    "to_display_u8",
]


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


#: Rough costs used to choose the outline strategy: per particle for the crop loop, per pixel for
#: the whole-frame pass (measured on a 2-core machine; only their ratio matters).
_LOOP_S_PER_PARTICLE = 24e-6
_FULL_S_PER_PIXEL = 22e-9

#: Above this mean bounding-box area (pixels) copying the boxes into the mosaic costs more than
#: the per-box OpenCV calls it saves (measured: mosaic ≈ 7.5 µs + 5 ns/px per particle, crop loop
#: ≈ 13 µs + 2.4 ns/px idle; the mosaic is also far kinder to a busy GUI thread, see
#: :func:`_outlines_mosaic`, hence a threshold above the idle break-even of ~2,000 px).
_MOSAIC_MAX_MEAN_BOX_PX = 3000.0

# 3×3 square: findContours follows 8-connected pixels, so diagonal contacts must be cut too
_SQUARE = np.ones((3, 3), np.uint8)


def particle_outlines(labels: np.ndarray, particles: ParticleTable) -> Outlines:
    """Trace one closed outline per particle-table row (its largest external contour).

    Two strategies with the same result up to where touching particles meet: per particle in
    its bounding box (cost ∝ particles; the boxes are packed into one mosaic and traced with
    one ``cv2.findContours``), or one ``cv2.findContours`` over the whole frame after cutting
    the boundaries between touching instances (cost ∝ pixels). The cheaper one is used.
    """
    n = len(particles["label"])
    if n == 0:
        return _empty()
    if labels.size * _FULL_S_PER_PIXEL < n * _LOOP_S_PER_PARTICLE and labels.max() < (1 << 24):
        return _outlines_whole_frame(labels, particles)
    box = (particles["bbox_max_y_px"] - particles["bbox_min_y_px"]).astype(np.float64) * (
        particles["bbox_max_x_px"] - particles["bbox_min_x_px"]
    )
    if float(box.mean()) <= _MOSAIC_MAX_MEAN_BOX_PX:
        return _outlines_mosaic(labels, particles, np.arange(n))
    return _outlines_per_particle(labels, particles, np.arange(n))


def _empty() -> Outlines:
    z = np.zeros(0)
    return Outlines(z, z, np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64))


def _pack(xs: list[np.ndarray], ys: list[np.ndarray], rows: list[int] | np.ndarray) -> Outlines:
    if len(rows) == 0:
        return _empty()
    lengths = np.fromiter((len(a) for a in xs), np.int64, len(xs))
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


def _outlines_mosaic(labels: np.ndarray, particles: ParticleTable, which: np.ndarray) -> Outlines:
    """Per-particle outlines with ONE ``cv2.findContours`` call: each particle's mask, cut from
    its bounding box, is packed into a mosaic (shelf packing, zero gaps between tiles), traced
    once, and every contour is mapped back to its tile. Same outlines as
    :func:`_outlines_per_particle`, without a thousand small OpenCV calls (each of which gives up
    and re-takes the GIL, a convoy behind the GUI thread on a busy 2-core machine).
    """
    which = np.asarray(which, np.int64)
    if len(which) == 0:
        return _empty()
    h, w = labels.shape
    y0 = particles["bbox_min_y_px"][which].astype(np.int64)
    x0 = particles["bbox_min_x_px"][which].astype(np.int64)
    y1 = np.minimum(h, particles["bbox_max_y_px"][which].astype(np.int64))  # exclusive
    x1 = np.minimum(w, particles["bbox_max_x_px"][which].astype(np.int64))
    y0, x0 = np.clip(y0, 0, h), np.clip(x0, 0, w)
    th, tw = np.maximum(y1 - y0, 0), np.maximum(x1 - x0, 0)
    # shelf packing, tallest first; a tile is th × tw plus a zero gap of 1 px right and below
    order = np.argsort(-th, kind="stable")
    width = int(max(tw.max() + 2, np.sqrt(float(((th + 1) * (tw + 1)).sum())) * 1.3))
    ox = np.empty(len(which), np.int64)
    oy = np.empty(len(which), np.int64)
    shelf = np.empty(len(which), np.int64)
    cx, cy, shelf_h, k = 1, 1, 0, 0
    tw_l, th_l = tw.tolist(), th.tolist()
    for i in order.tolist():
        if cx + tw_l[i] + 1 > width:
            cx, cy, shelf_h, k = 1, cy + shelf_h + 1, 0, k + 1
        ox[i], oy[i], shelf[i] = cx, cy, k
        cx += tw_l[i] + 1
        shelf_h = max(shelf_h, th_l[i])
    # Copy each box of labels into the mosaic and its own label into a twin, then compare once:
    # small copies and fills keep the GIL, where a thousand small ufunc calls would each give it
    # up and wait for it again (measured: 5× slower beside a busy GUI thread).
    shape = (cy + shelf_h + 1, width)
    mosaic = np.zeros(shape, labels.dtype)
    # the twin's gaps hold a value no particle has (the mosaic's gaps hold 0)
    kind = labels.dtype.kind
    wanted = np.full(shape, np.iinfo(labels.dtype).max if kind == "u" else -1, labels.dtype)
    lab = particles["label"][which].tolist()
    boxes = (y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), oy.tolist(), ox.tolist(), lab)
    for a, b, c, d, e, f, v in zip(*boxes, strict=True):
        mosaic[e : e + b - a, f : f + d - c] = labels[a:b, c:d]
        wanted[e : e + b - a, f : f + d - c] = v
    inside = np.equal(mosaic, wanted).view(np.uint8)
    contours = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return _empty()
    # each contour's tile: its first vertex's shelf (by y), then the tile in that shelf (by x)
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    first_idx = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    fx, fy = pts[first_idx, 0], pts[first_idx, 1]
    placed = order  # placement order: shelf-major, x increasing within a shelf
    shelf_top = np.full(int(shelf.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(shelf_top, shelf, oy)
    s_of = np.searchsorted(shelf_top, fy, side="right") - 1
    big = width + 1
    keys = shelf[placed] * big + ox[placed]
    tile = placed[np.searchsorted(keys, s_of * big + fx, side="right") - 1]
    # keep the longest contour of each tile (ties: the first found, as max() would)
    best = np.lexsort((np.arange(len(contours))[::-1], lengths, tile))
    last = np.r_[tile[best][1:] != tile[best][:-1], True]
    keep = best[last]  # one contour per tile, in tile order
    keep = keep[np.argsort(which[tile[keep]], kind="stable")]
    rows = which[tile[keep]]
    klen = lengths[keep]
    starts = np.concatenate([[0], np.cumsum(klen)[:-1]])
    sel = np.arange(int(klen.sum())) + np.repeat(first_idx[keep] - starts, klen)
    xy = pts[sel].astype(np.float64)
    t = np.repeat(tile[keep], klen)
    xy[:, 0] += (x0 - ox)[t] + 0.5
    xy[:, 1] += (y0 - oy)[t] + 0.5
    # close each loop by repeating its start
    xy = np.insert(xy, starts + klen, xy[starts], axis=0)
    start = np.concatenate([[0], np.cumsum(klen + 1)])
    connect = np.ones(len(xy), np.int32)
    connect[start[1:] - 1] = 0
    return Outlines(xy[:, 0].copy(), xy[:, 1].copy(), connect, start, rows)


def _outlines_per_particle(
    labels: np.ndarray, particles: ParticleTable, which: np.ndarray
) -> Outlines:
    lab = particles["label"].tolist()
    y0s = particles["bbox_min_y_px"].tolist()
    x0s = particles["bbox_min_x_px"].tolist()
    y1s = particles["bbox_max_y_px"].tolist()
    x1s = particles["bbox_max_x_px"].tolist()
    h, w = labels.shape
    pieces: list[np.ndarray] = []
    offsets: list[tuple[int, int]] = []
    rows: list[int] = []
    find, external, simple = cv2.findContours, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    for i in np.asarray(which).tolist():
        y0, x0 = max(0, y0s[i] - 1), max(0, x0s[i] - 1)
        crop = (labels[y0 : min(h, y1s[i] + 1), x0 : min(w, x1s[i] + 1)] == lab[i]).view(np.uint8)
        contours = find(crop, external, simple)[0]
        if not contours:
            continue
        pieces.append(max(contours, key=len) if len(contours) > 1 else contours[0])
        offsets.append((x0, y0))
        rows.append(i)
    if not rows:
        return _empty()
    # one vectorised pass: offsets, pixel centres, and each loop closed by repeating its start
    lengths = np.fromiter((len(c) for c in pieces), np.int64, len(pieces))
    pts = np.concatenate(pieces).reshape(-1, 2).astype(np.float64)
    off = np.repeat(np.asarray(offsets, np.float64) + 0.5, lengths, axis=0)
    pts += off
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pts = np.insert(pts, first + lengths, pts[first], axis=0)
    start = np.concatenate([[0], np.cumsum(lengths + 1)])
    connect = np.ones(len(pts), np.int32)
    connect[start[1:] - 1] = 0
    return Outlines(pts[:, 0].copy(), pts[:, 1].copy(), connect, start, np.asarray(rows, np.int64))


def _outlines_whole_frame(labels: np.ndarray, particles: ParticleTable) -> Outlines:
    # Morphology on a small dtype: largest label, and smallest non-zero label, in each 3×3
    # neighbourhood. A particle pixel with a different particle next to it is cut, so touching
    # particles become separate blobs; edges against the background stay where they are.
    use16 = labels.max() < (1 << 16) - 1
    small = labels.astype(np.uint16 if use16 else np.float32)
    top = float((1 << 16) - 1 if use16 else 1e9)
    fg = cv2.compare(small, 0, cv2.CMP_GT)
    dil = cv2.dilate(small, _SQUARE)
    filled = small.copy()
    filled[fg == 0] = top
    ero_nz = cv2.erode(filled, _SQUARE)
    cut = cv2.bitwise_or(
        cv2.compare(dil, small, cv2.CMP_GT), cv2.compare(ero_nz, small, cv2.CMP_LT)
    )
    inside = cv2.bitwise_and(fg, cv2.bitwise_not(cut))
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    lab = particles["label"]
    n = len(lab)
    row_of = np.full(int(labels.max()) + 1, -1, np.int64)
    row_of[lab] = np.arange(n)
    best: dict[int, np.ndarray] = {}
    for c in contours:
        x, y = c[0, 0]
        r = int(row_of[labels[y, x]])
        if r >= 0 and (r not in best or len(c) > len(best[r])):
            best[r] = c
    rows = sorted(best)
    xs, ys = [], []
    for r in rows:
        c = best[r].reshape(-1, 2)
        c = np.concatenate([c, c[:1]])
        xs.append(c[:, 0] + 0.5)
        ys.append(c[:, 1] + 0.5)
    out = _pack(xs, ys, rows)
    missing = np.setdiff1d(np.arange(n), out.rows)
    if len(missing):  # a particle lost entirely to cuts (tiny, wedged between others)
        extra = _outlines_mosaic(labels, particles, missing)
        out = _merge(out, extra)
    return out


def _merge(a: Outlines, b: Outlines) -> Outlines:
    if b.count == 0:
        return a
    order_rows = np.concatenate([a.rows, b.rows])
    parts = [(a, k) for k in range(a.count)] + [(b, k) for k in range(b.count)]
    parts = [parts[i] for i in np.argsort(order_rows, kind="stable")]
    xs = [o.x[o.start[k] : o.start[k + 1]] for o, k in parts]
    ys = [o.y[o.start[k] : o.start[k + 1]] for o, k in parts]
    return _pack(xs, ys, np.sort(order_rows))


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


@dataclass
class DisplayFrame:
    """A result made ready to draw: uint8 pixels, their levels, outlines and the target mask."""

    result: FrameResult
    u8: np.ndarray
    levels: tuple[float, float]
    outlines: Outlines | None
    matches: np.ndarray | None
    prepare_ms: float = 0.0
    #: ``u8`` area-averaged by ``factor`` (a power of two) for the current zoom, or None.
    small: np.ndarray | None = None
    factor: int = 1
    #: Ready-made outline paths (built by the window's display thread with Qt value types).
    paths: object = None
    #: Ready-made (trails, ID labels) paths of the frame's tracks, or None.
    tracks: object = None

    @property
    def nbytes(self) -> int:
        lab = self.result.labels.nbytes if self.result.labels is not None else 0
        return self.u8.nbytes + self.result.frame.pixels.nbytes + lab


def prepare_display(
    result: FrameResult,
    *,
    low_pct: float = 0.5,
    high_pct: float = 99.5,
    matching: Callable[[FrameResult], np.ndarray | None] | None = None,
    factor: int = 1,
) -> DisplayFrame:
    """Everything about drawing ``result`` that does not need Qt (runs off the GUI thread).

    ``factor`` is the display downsampling the view currently wants (see :func:`downsample`).
    """
    t0 = time.perf_counter()
    levels = auto_levels(result.frame.pixels, low_pct, high_pct)
    u8 = to_display_u8(result.frame.pixels, levels)
    n = len(result.particles.get("label", ()))
    outlines = (
        particle_outlines(result.labels, result.particles)
        if result.labels is not None and n
        else None
    )
    matches = matching(result) if matching is not None else None
    small = downsample(u8, factor) if factor > 1 else None
    ms = (time.perf_counter() - t0) * 1e3
    return DisplayFrame(result, u8, levels, outlines, matches, ms, small, factor)


def display_factor(image_px_per_screen_px: float) -> int:
    """The power of two (1, 2, 4, …) at or below the image-to-screen pixel ratio."""
    f = 1
    while f * 2 <= image_px_per_screen_px:
        f *= 2
    return f


def downsample(u8: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``u8`` by an integer ``factor`` (``cv2.INTER_AREA``, fast for exact ratios)."""
    if factor <= 1:
        return u8
    h, w = u8.shape[:2]
    hh, ww = max(1, h // factor), max(1, w // factor)
    return cv2.resize(u8[: hh * factor, : ww * factor], (ww, hh), interpolation=cv2.INTER_AREA)
