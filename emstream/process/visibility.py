"""How plainly each segmented particle stands out of the frame's noise.

:func:`contrast_to_noise` gives every particle of a label image the detectability index an
observer's eye works with, as ``tools/make_dataset.detectability`` defines it for the truth:
the particle's contrast against a ring of background around it, both seen through a Gaussian
matched to the particle's size (sigma = 0.3 x its equivalent diameter, snapped to 1, 2, 4 or 8
px), over the noise of the background at that scale (robust standard deviation of the frame
band-passed between sigma and 4 sigma over pixels at least 2 px from any particle: shot noise,
carbon grain and mottle at the particle's own scale count, illumination gradients do not).

:func:`drop_faint` removes the small particles below a threshold of it: on grainy bright-field
frames a segmenter finds blobs of carbon grain no observer would call particles.

Pure numpy/OpenCV, no I/O. Approximations against the reference, for speed: the noise is
measured on the frame's central 512² and blurs wider than 8 px run on a shrunk frame.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

#: matched-filter scales (px), shared with ``tools/make_dataset.detectability`` (the truth's d')
SCALES = (1, 2, 4, 8)
#: side (px) of the central square the frame's noise is measured on
NOISE_SIDE = 512


def matched_scale(area: np.ndarray) -> np.ndarray:
    """The matched-filter sigma (one of ``SCALES``) of particles of these areas (px²): 0.3 x the
    equivalent diameter, snapped to the nearest scale on a log axis."""
    d_eq = np.sqrt(4 * np.asarray(area, np.float64) / np.pi)
    scales = np.asarray(SCALES, np.float64)
    return scales[np.abs(np.log(np.clip(0.3 * d_eq, 0.5, None))[:, None]
                         - np.log(scales)[None]).argmin(axis=1)]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones on a frame shrunk by sigma/4 (then resized back)."""
    if sigma < 8:
        return cv2.GaussianBlur(x, (0, 0), sigma)
    f = int(sigma // 4)
    h, w = x.shape
    small = cv2.resize(x, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def contrast_to_noise(image: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None,
                      max_diameter_px: float | None = None) -> np.ndarray:
    """Detectability d' of every particle, indexed by label id (``[0]`` unused; NaN where it
    could not be measured, or for particles over ``max_diameter_px``, which are skipped)."""
    x = np.asarray(image)
    if x.dtype != np.float32:  # centred first: a large offset would eat single precision
        x = (x - np.median(x[::8, ::8])).astype(np.float32)
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    out = np.full(n + 1, np.nan)
    if n == 0:
        return out
    area = np.bincount(labels.ravel(), minlength=n + 1)
    scale = matched_scale(area)
    todo = area > 0
    todo[0] = False
    if max_diameter_px is not None:
        todo &= np.sqrt(4 * area / np.pi) <= max_diameter_px
    if not todo.any():
        return out
    ok = np.ones(labels.shape, bool) if valid is None else np.asarray(valid, bool)
    # the noise is the frame's: measured on its central NOISE_SIDE² (or all of a smaller frame)
    h, w = x.shape
    cy, cx = max(0, (h - NOISE_SIDE) // 2), max(0, (w - NOISE_SIDE) // 2)
    crop = (slice(cy, cy + NOISE_SIDE), slice(cx, cx + NOISE_SIDE))
    far_bg = (cv2.dilate((labels[crop] > 0).astype(np.uint8), _disk(2)) == 0) & ok[crop]
    boxes = ndimage.find_objects(labels)
    for sigma in SCALES:
        ids = np.flatnonzero(todo & (scale == sigma))
        if not ids.size:
            continue
        xc = x[crop]
        bg = (_blur(xc, sigma) - _blur(xc, 4 * sigma))[far_bg][::3]
        if bg.size < 50:
            continue
        noise = 1.4826 * float(np.median(np.abs(bg - np.median(bg))))
        if noise <= 0:
            continue
        r = int(max(2, 2 * sigma))
        ring_kernel = _disk(r)
        pad = r + 3 * sigma  # the blur of the box is exact over the particle and its ring
        for k in ids.tolist():
            ys, xs = boxes[k - 1]
            y0, x0 = max(0, ys.start - pad), max(0, xs.start - pad)
            outer = (slice(y0, ys.stop + pad), slice(x0, xs.stop + pad))
            box = (slice(max(0, ys.start - r) - y0, ys.stop + r - y0),
                   slice(max(0, xs.start - r) - x0, xs.stop + r - x0))
            sub = labels[outer][box]
            mine = sub == k
            ring = (cv2.dilate(mine.view(np.uint8), ring_kernel) > 0) & (sub == 0) & ok[outer][box]
            if ring.any():
                s_box = cv2.GaussianBlur(x[outer], (0, 0), sigma)[box]
                out[k] = abs(float(s_box[mine].mean()) - float(s_box[ring].mean())) / noise
    return out


def drop_faint(labels: np.ndarray, image: np.ndarray, min_d: float,
               valid: np.ndarray | None = None, max_diameter_px: float = 24.0) -> np.ndarray:
    """``labels`` without the particles of at most ``max_diameter_px`` whose d' is below
    ``min_d`` (larger particles and unmeasurable ones are kept), relabelled 1..n."""
    d = contrast_to_noise(image, labels, valid, max_diameter_px)
    faint = np.nan_to_num(d, nan=np.inf) < min_d
    if not faint.any():
        return labels
    keep = ~faint
    keep[0] = False
    lut = np.zeros(len(d), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]
