"""Support film, optics and detector of the synthetic microscope.

- :func:`support_film`: amorphous carbon as band-limited noise (fine grain + slow mottle), an
  optional holey-carbon region (vacuum hole or thicker film) with a curved, slightly blurred
  edge, and an illumination gradient (plane + vignette).
- :func:`form_image`: bright field ``I = illum · carbon · exp(-A) · (1 + fringe)`` with a
  Fresnel fringe = difference of Gaussians of the projected thickness (bright outside the edge
  under focus, dark over focus); HAADF ``I = illum · (c0 · carbon + A)`` (incoherent, no
  Fresnel fringe). Then the optical / gas blur (Gaussian PSF), gas haze, STEM line noise,
  scaling so the background is ``dose`` counts/px, shot + read noise (:func:`shot_noise`) and a
  detector bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "Optics",
    "POISSON_EXACT_BELOW",
    "band_noise",
    "form_image",
    "periodic_band_noise",
    "shot_noise",
    "support_film",
]


def band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian white noise low-passed at ``sigma`` px, normalised to unit standard deviation."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        n *= np.float32(2.0 * math.sqrt(math.pi) * sigma)  # std of blurred unit white noise
    return n


def thick_support(rng: np.random.Generator, shape: tuple[int, int], scale: float,
                  coverage: float, texture: float) -> np.ndarray:
    """A thick support under the particles (oxide aggregates, graphitic carbon): 0 off it, about
    1 on it (blurred edges, internal texture of relative amplitude ``texture`` at 1.5 - 5 px).

    Made from smooth noise at ``scale`` px thresholded at its ``coverage`` quantile, so the
    aggregates are rounded lumps of about ``scale`` px with lobes, covering ``coverage`` of the
    frame; on it a coarser undulation (thickness varies across an aggregate) and fine grain.
    """
    H, W = shape
    f = max(1, int(scale // 8))
    small = band_noise(rng, (H // f + 2, W // f + 2), max(scale / f / 2.5, 0.5))
    field = cv2.resize(small, (W + 2 * f, H + 2 * f), interpolation=cv2.INTER_LINEAR)[f:f + H, f:f + W]
    thr = float(np.quantile(field, 1.0 - coverage))
    edge = max(0.15, float(field.std()) * 0.15)
    sup = 1.0 / (1.0 + np.exp(np.clip(-(field - thr) / edge, -30, 30)))
    sup *= np.float32(0.7) + np.float32(0.3) * np.clip(field - thr, 0, 1.0)  # thicker inside
    fine = band_noise(rng, shape, float(rng.uniform(1.5, 5.0)))
    sup *= 1.0 + np.float32(texture) * fine
    return np.maximum(sup, 0.0).astype(np.float32)


def periodic_band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Like :func:`band_noise` but periodic (FFT filtered), so a drifting crop can wrap around."""
    n = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    tf = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fy * fy + fx * fx))
    out = np.fft.irfft2(np.fft.rfft2(n) * tf, s=shape).astype(np.float32)
    out /= max(float(out.std()), 1e-12)
    return out


@dataclass
class Optics:
    """Imaging conditions of one frame (everything except the particles).

    Attributes
    ----------
    mode : ``"bf"`` (bright-field TEM, dark particles) or ``"haadf"`` (bright particles).
    dose : mean background counts per pixel (BF) / carbon counts per pixel (HAADF).
    read_noise : Gaussian read noise, counts rms.
    bias : detector offset added to every pixel, counts.
    blur_sigma : optics + gas blur, Gaussian sigma in px.
    grain_amp, grain_sigma : amorphous-carbon fine grain (relative amplitude, correlation px).
    mottle_amp, mottle_sigma : slow thickness variation of the carbon film.
    halo_amp : Fresnel fringe strength (signed: > 0 bright outside the edge, under focus).
    halo_sigma : Fresnel fringe width in px.
    gradient : (amplitude, direction radians) of a linear illumination gradient.
    vignette : relative intensity drop at the corners.
    hole : holey-carbon region ``(cy, cx, radius, level, edge_px, vacuum)`` in px, or ``None``.
        ``level`` is the region's signal relative to the carbon film; ``vacuum`` True for a hole
        (no carbon grain there; BF brighter, HAADF darker), False for a thicker film patch.
    haadf_carbon : HAADF signal of the carbon film relative to the unit particle signal.
    haze : fraction of the signal replaced by a flat diffuse background (gas scattering in an
        environmental cell): lowers every contrast by ``1 - haze``.
    row_noise : relative rms gain jitter per scan line (STEM line noise; 0 = none).
    """

    mode: str = "bf"
    dose: float = 200.0
    read_noise: float = 2.0
    bias: float = 0.0
    blur_sigma: float = 1.0
    grain_amp: float = 0.12
    grain_sigma: float = 1.0
    mottle_amp: float = 0.03
    mottle_sigma: float = 8.0
    halo_amp: float = 0.1
    halo_sigma: float = 1.5
    gradient: tuple[float, float] = (0.0, 0.0)
    vignette: float = 0.0
    hole: tuple[float, float, float, float, float, bool] | None = None
    haadf_carbon: float = 0.25
    haze: float = 0.0
    row_noise: float = 0.0


def support_film(
    optics: Optics,
    shape: tuple[int, int],
    rng: np.random.Generator | None = None,
    *,
    grain: np.ndarray | None = None,
    mottle: np.ndarray | None = None,
    hole: tuple[np.ndarray, float, bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Carbon film and illumination.

    Returns ``(carbon, illum, hole_mask)``: ``carbon`` is the film's relative signal
    (1 ± texture; ``hole.level`` inside the holey region, smooth there), ``illum`` the
    illumination profile, ``hole_mask`` a float map in [0, 1] of the holey region or ``None``.
    Precomputed unit-variance ``grain``/``mottle`` textures may be passed (a drifting scene crops
    them from a larger canvas), and a precomputed holey region ``hole = (mask, level, vacuum)``
    (used instead of ``optics.hole``).
    """
    H, W = shape
    if grain is None:
        grain = band_noise(rng, shape, optics.grain_sigma)
    if mottle is None and optics.mottle_amp > 0:
        # slow mottle: make it on a coarse grid and upsample (cheap)
        f = max(int(optics.mottle_sigma // 2), 1)
        small = band_noise(rng, (H // f + 2, W // f + 2), max(optics.mottle_sigma / f, 0.5))
        mottle = cv2.resize(small, (W + 2 * f, H + 2 * f), interpolation=cv2.INTER_LINEAR)[
            f:f + H, f:f + W]
    carbon = 1.0 + np.float32(optics.grain_amp) * grain
    if mottle is not None and optics.mottle_amp > 0:
        carbon += np.float32(optics.mottle_amp) * mottle
    hole_mask = None
    yy = np.linspace(-1.0, 1.0, H, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, W, dtype=np.float32)[None, :]
    if hole is not None:
        hole_mask, level, vacuum = hole
    elif optics.hole is not None:
        cy, cx, rad, level, edge, vacuum = optics.hole
        py = np.arange(H, dtype=np.float32)[:, None] - np.float32(cy)
        px = np.arange(W, dtype=np.float32)[None, :] - np.float32(cx)
        d = np.sqrt(py * py + px * px) - np.float32(rad)
        hole_mask = 1.0 / (1.0 + np.exp(np.clip(d / max(edge, 0.3), -30, 30)))
        hole_mask = hole_mask.astype(np.float32)
    if hole_mask is not None:
        if vacuum:  # no grain in the hole
            carbon = carbon * (1.0 - hole_mask) + hole_mask
        carbon = carbon * (1.0 + hole_mask * np.float32(level - 1.0))
    g_amp, g_dir = optics.gradient
    illum = 1.0 + np.float32(g_amp) * (np.float32(math.cos(g_dir)) * yy
                                       + np.float32(math.sin(g_dir)) * xx)
    if optics.vignette:
        illum = illum * (1.0 - np.float32(optics.vignette / 2.0) * (yy * yy + xx * xx))
    return carbon.astype(np.float32), illum.astype(np.float32), hole_mask


def form_image(
    absorb: np.ndarray,
    thick: np.ndarray,
    carbon: np.ndarray,
    illum: np.ndarray,
    optics: Optics,
    rng: np.random.Generator,
    *,
    hole_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Detector image in counts (float32, before any burned-in overlay)."""
    if optics.mode == "bf":
        sig = np.exp(-absorb)
        sig *= illum
        sig *= carbon
        if optics.halo_amp:
            # Fresnel fringe from the phase of particles (and of the holey-carbon edge): a
            # difference of Gaussians of the projected thickness, scaled so that the edge of
            # the thickest particle gives a fringe of about ``halo_amp``
            tmax = float(thick.max())
            phase = thick * np.float32(1.0 / tmax) if tmax > 1e-6 else thick
            if hole_mask is not None:
                phase = phase + np.float32(0.5) * hole_mask
            s1 = max(optics.halo_sigma * 0.5, 0.4)
            fringe = cv2.GaussianBlur(phase, (0, 0), optics.halo_sigma * 1.6)
            fringe -= cv2.GaussianBlur(phase, (0, 0), s1)
            fringe *= np.float32(5.0)
            np.clip(fringe, -1.0, 1.0, out=fringe)
            fringe *= np.float32(optics.halo_amp)
            fringe += np.float32(1.0)
            sig *= fringe
        scale = optics.dose
    else:
        c0 = np.float32(optics.haadf_carbon)
        sig = carbon * c0
        sig += absorb
        sig *= illum
        scale = optics.dose / float(optics.haadf_carbon)
    if optics.blur_sigma > 0.3:
        sig = cv2.GaussianBlur(sig, (0, 0), optics.blur_sigma, borderType=cv2.BORDER_REFLECT)
    if optics.haze > 0:
        h = np.float32(optics.haze)
        sig *= 1 - h
        sig += h * np.float32(sig.mean() / (1 - h))
    if optics.row_noise > 0:
        sig *= (1.0 + np.float32(optics.row_noise)
                * rng.standard_normal((sig.shape[0], 1), dtype=np.float32))
    sig *= np.float32(scale)
    np.maximum(sig, 0.0, out=sig)
    img = shot_noise(sig, rng, read_noise=optics.read_noise)
    if optics.bias:
        img += np.float32(optics.bias)
    return img


#: Above this mean (counts) shot noise is drawn as a Gaussian (mean = variance = lambda, plus
#: the read-noise variance in the same draw): indistinguishable from Poisson there (skewness
#: 1/sqrt(lambda) < 0.15) and several times faster. Below it, exact Poisson + Gaussian read noise.
POISSON_EXACT_BELOW = 50.0


def shot_noise(lam: np.ndarray, rng: np.random.Generator, read_noise: float = 0.0) -> np.ndarray:
    """Detector counts for the mean map ``lam``: Poisson shot noise plus Gaussian read noise."""
    rn2 = np.float32(read_noise * read_noise)
    low = lam < POISSON_EXACT_BELOW
    n_low = int(np.count_nonzero(low))
    if n_low == lam.size:
        out = rng.poisson(lam).astype(np.float32)
        if read_noise > 0:
            out += rng.standard_normal(lam.shape, dtype=np.float32) * np.float32(read_noise)
        return out
    out = rng.standard_normal(lam.shape, dtype=np.float32)
    var = lam + rn2 if read_noise > 0 else lam
    out *= np.sqrt(var)
    out += lam
    if read_noise <= 0:
        np.rint(out, out=out)
        np.maximum(out, 0.0, out=out)
    if n_low:
        vals = rng.poisson(lam[low]).astype(np.float32)
        if read_noise > 0:
            vals += rng.standard_normal(n_low, dtype=np.float32) * np.float32(read_noise)
        out[low] = vals
    return out
