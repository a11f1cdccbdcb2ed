"""Synthetic frames for the GUI tests, measured by the real measurement code."""

from __future__ import annotations

import time

import cv2
import numpy as np

from emstream.frame import Calibration, Frame
from emstream.process.measure import measure
from emstream.process.stats import summarize
from emstream.results import FrameRecord, FrameResult


def draw_scene(
    rng: np.random.Generator,
    shape: tuple[int, int] = (512, 512),
    n: int = 40,
    mode: str = "bf",
    radius: tuple[float, float] = (4.0, 16.0),
    touching: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """A frame with ``n`` roundish particles (some touching pairs): (uint16 image, int32 labels)."""
    h, w = shape
    labels = np.zeros(shape, np.int32)
    k = 0
    tries = 0
    while k < n and tries < 50 * n:
        tries += 1
        r = rng.uniform(*radius)
        ry, rx = r * rng.uniform(0.75, 1.0), r
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        y0, y1 = int(max(0, cy - r - 2)), int(min(h, cy + r + 3))
        x0, x1 = int(max(0, cx - r - 2)), int(min(w, cx + r + 3))
        if labels[y0:y1, x0:x1].any():
            continue
        k += 1
        ang = rng.uniform(0, 180)
        cv2.ellipse(labels, (round(cx), round(cy)), (round(rx), round(ry)), ang, 0, 360, k, -1)
        if k <= touching and k < n:  # a touching neighbour: separate instances sharing an edge
            k += 1
            mask = np.zeros(shape, np.uint8)
            cv2.circle(mask, (round(cx + rx + r * 0.55), round(cy)), round(r * 0.6), 1, -1)
            labels[(mask > 0) & (labels == 0)] = k
    fg = labels > 0
    signal = cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 1.2)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 2200 + 300 * (xx / w) + 120 * np.sin(yy / 37.0)
    if mode == "bf":
        img = base * (1 - 0.55 * signal)
    else:
        img = 300 + 60 * (xx / w) + 2600 * signal
    img = rng.poisson(np.clip(img, 1, None)).astype(np.float64)
    return np.clip(img, 0, 65535).astype(np.uint16), labels


def make_result(
    rng: np.random.Generator,
    seq: int = 0,
    *,
    shape: tuple[int, int] = (512, 512),
    n: int = 40,
    mode: str = "bf",
    nm_per_px: float | None = 0.5,
    t_acq: float | None = None,
    radius: tuple[float, float] = (4.0, 16.0),
) -> FrameResult:
    """A FrameResult as the pipeline makes it (real measure + summarize) on a drawn scene."""
    img, labels = draw_scene(rng, shape, n, mode, radius)
    cal = Calibration((nm_per_px, nm_per_px), "file", "test") if nm_per_px else Calibration.none()
    t = time.time() if t_acq is None else t_acq
    frame = Frame(img, f"test/{seq}", t, t, cal, seq, {"mode": mode})
    particles = measure(labels, img, cal)
    summary = summarize(particles, valid_area_px=labels.size, unit=cal.unit)
    return FrameResult(frame, particles, summary, "classical", {"total": 1.0}, labels, None, t)


def as_record(result: FrameResult) -> FrameRecord:
    f = result.frame
    return FrameRecord(f.seq, f.source_id, "ok", f.t_arrival, "", result, f.t_acq, f.calibration)
