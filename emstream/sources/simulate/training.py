"""Training samples for the learned segmenter: one random synthetic micrograph + exact instance truth.

``training_sample(rng, size=256)`` draws a new imaging condition and a new particle field every
call (wide domain randomisation) through the same renderer as the time-series microscope
(:mod:`emstream.sources.simulate.render`). Returns ``(image, labels, meta)``:

- ``image``: float32 raw detector counts, shape ``(size, size)`` (not normalised: normalise as
  the deployed segmenter does, e.g. :func:`emstream.process.prepare.prepare`).
- ``labels``: int32 instance labels, 0 = background; every instance is one 8-connected region;
  burned-in data bars, scale bars and their text are background.
- ``meta``: JSON-able dict (see keys below).

Parameter ranges (per sample unless "per particle"; U = uniform, LU = log-uniform):

============================  =====================================================================
mode                          ``bf`` (60 %: dark particles on bright carbon) / ``haadf`` (40 %)
nm_per_px                     LU 0.05 – 2 (recorded only; sizes are drawn in px)
particle diameter (median)    78 %: LU 6 – 60 px; 11 %: LU 3.5 – 8 px; 11 %: LU 40 – 200 px
                              (capped at 0.8·size); per particle log-normal, sigma U 0.08 – 0.45;
                              diameters clipped to 3.5 px – 0.9·size; at most 0.015·size² particles
coverage (target)             LU 0.3 % – 55 %; 15 % of samples packed monolayers U 45 – 70 %
                              (realised coverage is lower when placement fails; in ``meta``)
touching                      fraction U 0 – 0.6 of particles placed touching/overlapping a
                              neighbour (centre distance 0.78 – 1.0 × sum of radii); of those,
                              U 0 – 0.8 get a sintering neck (width 0.3 – 0.8 × smaller radius)
shapes                        Dirichlet mix over round (with Fourier roughness ≤ 6 %), ellipse
                              (aspect 1.1 – 1.9), faceted polygon (4/5/6/8 sides, facet jitter
                              ±12 %, corner sharpness p 6 – 30), triangle (incl. truncated), rod
                              (aspect 2 – 6); round is favoured
thickness profile             per particle gamma U 0.15 – 0.6 (flat plate … sphere); bright field
                              ×0.1 (diffraction contrast: a flat-topped disc, ``BF_GAMMA_SCALE``)
contrast  BF                  centre contrast 1 − exp(−A): sample level LU c_lo – 0.8 with
                              c_lo = min(0.6, max(0.08, 1.5/√dose, 1.2·grain·√max(1, 10/d50),
                              3·mottle) / (1 − haze)) (weak … strong but visible to an expert),
                              per particle ×U 0.75 – 1.3 (capped 0.95)
contrast  HAADF               particle/carbon signal ratio − 1: LU c_lo – 8 with c_lo =
                              max(0.3, 1.5/√dose, 2× the BF texture term) / (1 − haze),
                              per particle ×U 0.75 – 1.3
lattice fringes               40 % of particles ≥ 8 px: period U 2.5 – 8 px, amplitude U 0.05 – 0.35
Fresnel fringe (BF)           amplitude U −0.08 – 0.25 (> 0 bright halo outside), width U 1 – 4 px
amorphous carbon              grain: amplitude U 0.03 – 0.25 (HAADF 0.05 – 0.35), correlation
                              U 0.6 – 1.8 px (at most max(0.5, 0.15 × median diameter));
                              mottle: amplitude U 0 – 0.04, scale U 6 – 30 px
holey-carbon edge             22 %: circle radius U 0.5 – 3 × size crossing the frame, edge width
                              U 0.5 – 3 px; 70 % vacuum hole (BF ×U 1.15 – 1.8, HAADF ×U 0.02 – 0.4,
                              no particles inside), 30 % thicker film (BF ×U 0.6 – 0.85, HAADF
                              ×U 1.3 – 2); always background
illumination                  linear gradient amplitude U 0 – 0.35, vignette U 0 – 0.3
gas haze                      30 %: U 0 – 0.3 of the signal replaced by a flat background
                              (contrast floor raised by 1/(1 − haze))
thick support                 30 %: oxide aggregates / graphitic carbon under the particles
                              (``thick_support``: lumps of LU 0.15 – 0.6 × size covering U 30 –
                              80 %, texture U 0.05 – 0.3); HAADF signal ×(1 + LU 0.5 – 6) on it,
                              so it is brighter than many particles, which are brighter only than
                              their own surroundings; BF transmission ×exp(−U 0.2 – 1.5); 85 %
                              of the particles off the support are removed (catalyst particles
                              sit on it); always background
internal texture              particles ≥ 30 px, 25 %: mesopores (dark pits of U 2 – 6 px
                              covering U 10 – 40 % of the particle) or a core–shell step (core
                              U 0.4 – 0.8 of the radius, shell contrast ×U 0.3 – 0.7); still one
                              particle
SEM-like contrast             8 %: secondary-electron edge brightening (bright rims of U 1 – 4 px
                              on every particle, the particle bright whatever the mode)
STEM line noise               HAADF 50 %: per-row gain jitter U 0.5 – 4 % rms
blur (optics + gas)           Gaussian sigma LU 0.4 – 2.5 px; 10 % gas-blurred U 2.5 – 3.5 px;
                              capped at 0.2 × the median diameter (particles stay visible)
dose                          LU 10 – 1000 counts/px (background BF / carbon HAADF), Poisson
read noise, bias              read noise U 0 – 6 counts rms; bias 0 (50 %) or U 0 – 100 counts
data bar                      25 %: bottom strip 6 – 12 % of the height, black or white, with
                              text-like glyph blocks
scale bar                     35 %: in the data bar if any, else burned into a bottom corner
                              (solid bar 10 – 25 % of the width, 2 – 5 px thick, glyph label;
                              40 % of free-standing bars on an opaque box); the rectangle
                              around bar + label is background
============================  =====================================================================

``meta`` keys: ``mode``, ``polarity`` (``dark``/``bright``), ``nm_per_px``, ``dose``,
``read_noise``, ``bias``, ``blur_sigma``, ``halo_amp``, ``n_particles``, ``coverage``,
``median_diameter_px``, ``shapes`` (count per shape), ``hole`` (bool), ``support`` (bool: thick
support), ``textured_particles`` (count), ``sem`` (bool), ``banner_rows``
(``[first, stop]`` or ``None``), ``scale_bar`` (``[y0, y1, x0, x1]`` incl. its label, or
``None``), ``invalid_px`` (pixels covered by overlays).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .optics import band_noise, thick_support
from .render import (
    SHAPES,
    Neck,
    Optics,
    Overlays,
    Particle,
    burn_overlays,
    draw_particles,
    form_image,
    keep_connected,
    support_film,
)

__all__ = ["training_sample", "random_particle", "random_optics", "place_particles"]


def _lu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


#: Bright-field thickness profiles are this much flatter (gamma ×0.1: U 0.015 – 0.06). A crystalline
#: particle's bright-field contrast is mostly diffraction (amplitude) contrast, nearly uniform across
#: the particle rather than proportional to its thickness, so it images as a blurred step whose
#: half-contrast line is its edge. Measured on the real bright-field images (contrast against
#: signed distance from the hand-drawn outlines, ``-5 .. +5`` px): 0.90 0.86 0.79 0.73 0.63 | 0.51
#: 0.41 0.32 0.22 0.13, symmetric about the outline as a blurred step is. With thickness-like
#: (HAADF) profiles the simulated edge sat where the contrast had nearly faded (0.36 | 0.04), so
#: an outline on the visible edge was 1 – 2 px inside the truth.
BF_GAMMA_SCALE = 0.1


def random_particle(
    rng: np.random.Generator | np.ndarray, y: float, x: float, r: float, shape: str,
    strength: float, mode: str = "haadf",
) -> Particle:
    """One particle of the given kind with randomised facets, roughness, profile and fringes.

    ``rng`` may be a generator or a pre-drawn row of >= 24 uniforms in [0, 1) (fast path used
    when thousands of particles are drawn). ``mode="bf"`` flattens the thickness profile
    (:data:`BF_GAMMA_SCALE`).
    """
    u = rng.random(24) if isinstance(rng, np.random.Generator) else rng
    p = Particle(y=y, x=x, r=r, shape=shape, angle=float(u[0] * math.pi),
                 strength=strength, gamma=float(0.15 + 0.45 * u[1]))
    if shape == "round":
        if r >= 3:
            ks = np.arange(2.0, 6.0)
            p.rough = np.stack([ks, u[2:6] * 0.12 / ks, u[6:10] * 2 * math.pi], axis=1)
    elif shape == "ellipse":
        p.aspect = float(1.1 + 0.8 * u[2])
        p.rough = np.array([[3.0, 0.03 * u[3], 6.3 * u[4]]])
    elif shape == "polygon":
        p.n_sides = (4, 5, 6, 6, 8)[int(u[2] * 5)]
        p.side_jitter = 0.88 + 0.24 * u[10:10 + p.n_sides]
        p.corner_p = float(6 + 24 * u[3])
        p.aspect = float(1.0 + 0.3 * u[4])
    elif shape == "triangle":
        if u[2] < 0.5:
            p.n_sides = 3
            p.side_jitter = 0.92 + 0.16 * u[10:13]
        else:  # truncated triangle: alternate long and short facets
            p.n_sides = 6
            t = 1.15 + 0.55 * u[3]
            p.side_jitter = np.array([1, t, 1, t, 1, t]) * (0.95 + 0.1 * u[10:16])
        p.corner_p = float(8 + 22 * u[4])
    elif shape == "rod":
        p.aspect = float(2.0 + 4.0 * u[2])
        p.gamma = float(0.3 + 0.3 * u[3])
    if mode == "bf":
        p.gamma *= BF_GAMMA_SCALE
    if r >= 4 and u[18] < 0.4:
        p.fringe = (float(2.5 + 5.5 * u[19]), float(u[20] * math.pi),
                    float(0.05 + 0.3 * u[21]), float(u[22] * 2 * math.pi))
    return p


def place_particles(
    rng: np.random.Generator,
    shape: tuple[int, int],
    radii: np.ndarray,
    *,
    touch_frac: float = 0.2,
    tries: int = 6,
) -> tuple[np.ndarray, list[int], list[tuple[int, int]]]:
    """Place discs of the given radii (largest first) without unintended overlap.

    Returns ``(centres[n, 2], placed, touching)``: centres of the placed discs, the index into
    ``radii`` of each, and pairs (positions in the placed list) put deliberately in contact.
    Discs that found no room are dropped. A fraction ``touch_frac`` is placed against an already
    placed neighbour (centre distance 0.78 – 1.0 × the sum of radii). Occupancy is kept in a
    raster (cheap for thousands of particles).
    """
    H, W = shape
    order = np.argsort(-radii)
    occ = np.zeros((H, W), np.int32)
    cy: list[float] = []
    cx: list[float] = []
    cr: list[float] = []
    placed: list[int] = []
    pairs: list[tuple[int, int]] = []
    u = rng.random((radii.size, tries, 4))
    for i in order:
        r = float(radii[i])
        m = len(placed)
        touch = m > 0 and u[i, 0, 3] < touch_frac
        s = r * 0.9 + 0.5
        for t in range(tries):
            a, b, c = u[i, t, 0], u[i, t, 1], u[i, t, 2]
            partner = -1
            if touch:
                partner = int(a * m)
                ang = b * 2 * math.pi
                d = (r + cr[partner]) * (0.78 + 0.22 * c)
                y, x = cy[partner] + d * math.sin(ang), cx[partner] + d * math.cos(ang)
                if not (-r * 0.5 <= y <= H + r * 0.5 and -r * 0.5 <= x <= W + r * 0.5):
                    continue
            else:
                y = -r * 0.5 + a * (H + r)
                x = -r * 0.5 + b * (W + r)
            y0, y1 = max(int(y - s), 0), min(int(y + s) + 1, H)
            x0, x1 = max(int(x - s), 0), min(int(x + s) + 1, W)
            patch = occ[y0:y1, x0:x1]
            if touch:
                if np.any((patch != 0) & (patch != partner + 1)):
                    continue
            elif patch.any():
                continue
            cv2.circle(occ, (int(round(x)), int(round(y))), int(round(r * 1.02)), m + 1, -1)
            cy.append(y)
            cx.append(x)
            cr.append(r)
            placed.append(int(i))
            if partner >= 0:
                pairs.append((partner, m))
            break
    centres = np.stack([np.asarray(cy), np.asarray(cx)], axis=1) if placed else np.zeros((0, 2))
    return centres, placed, pairs


def random_optics(rng: np.random.Generator, size: int, mode: str | None = None) -> Optics:
    """Random imaging conditions (ranges in the module docstring)."""
    if mode is None:
        mode = "bf" if rng.random() < 0.6 else "haadf"
    o = Optics(mode=mode)
    o.dose = _lu(rng, 10, 1000)
    o.read_noise = float(rng.uniform(0, 6))
    o.bias = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, 100))
    o.blur_sigma = _lu(rng, 0.4, 2.5) if rng.random() > 0.1 else float(rng.uniform(2.5, 3.5))
    if mode == "bf":
        o.grain_amp = float(rng.uniform(0.03, 0.25))
        o.halo_amp = float(rng.uniform(-0.08, 0.25))
    else:
        o.grain_amp = float(rng.uniform(0.05, 0.35))
        o.halo_amp = 0.0
        o.haadf_carbon = 0.25
    o.grain_sigma = float(rng.uniform(0.6, 1.8))
    o.mottle_amp = float(rng.uniform(0, 0.04))
    o.mottle_sigma = float(rng.uniform(6, 30))
    o.halo_sigma = float(rng.uniform(1, 4))
    o.gradient = (float(rng.uniform(0, 0.35)), float(rng.uniform(0, 2 * math.pi)))
    o.haze = float(rng.uniform(0, 0.3)) if rng.random() < 0.3 else 0.0
    if mode == "haadf" and rng.random() < 0.5:
        o.row_noise = float(rng.uniform(0.005, 0.04))
    o.vignette = float(rng.uniform(0, 0.3))
    if rng.random() < 0.22:
        rad = float(rng.uniform(0.5, 3.0)) * size
        py, px = rng.uniform(0.15, 0.85, 2) * size
        ang = rng.uniform(0, 2 * math.pi)
        vacuum = rng.random() < 0.7
        if mode == "bf":
            level = rng.uniform(1.15, 1.8) if vacuum else rng.uniform(0.6, 0.85)
        else:
            level = rng.uniform(0.02, 0.4) if vacuum else rng.uniform(1.3, 2.0)
        o.hole = (float(py + rad * math.sin(ang)), float(px + rad * math.cos(ang)), rad,
                  float(level), float(rng.uniform(0.5, 3.0)), bool(vacuum))
    return o


def _diameters(rng: np.random.Generator, size: int) -> tuple[float, float]:
    u = rng.random()
    if u < 0.78:
        med = _lu(rng, 6, 60)
    elif u < 0.89:
        med = _lu(rng, 3.5, 8)
    else:
        med = _lu(rng, 40, 200)
    return min(med, 0.8 * size), float(rng.uniform(0.08, 0.45))


def training_sample(
    rng: np.random.Generator, size: int = 256
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One randomised synthetic micrograph with exact instance truth.

    Parameters
    ----------
    rng : source of all randomness (same generator state → same sample).
    size : side of the square image in px.

    Returns
    -------
    image : float32 ``(size, size)`` detector counts.
    labels : int32 ``(size, size)`` instance labels (0 = background, overlays are background).
    meta : JSON-able description of the sample (keys in the module docstring).
    """
    shape = (size, size)
    optics = random_optics(rng, size)
    mode = optics.mode

    # --- particle field -------------------------------------------------------------------
    med_d, sig = _diameters(rng, size)
    coverage = _lu(rng, 0.003, 0.55) if rng.random() > 0.15 else float(rng.uniform(0.45, 0.7))
    mean_area = math.pi * (med_d / 2) ** 2 * math.exp(2 * sig * sig)
    n = int(np.clip(round(coverage * size * size / mean_area), 1, 0.015 * size * size))
    diam = np.clip(med_d * np.exp(sig * rng.standard_normal(n)), 3.5, 0.9 * size)
    touch_frac = float(rng.uniform(0, 0.6))
    centres, placed, pairs = place_particles(rng, shape, diam / 2, touch_frac=touch_frac)

    weights = rng.dirichlet(np.array([2.5, 1.0, 1.0, 0.6, 0.5]))
    kinds = rng.choice(len(SHAPES), size=len(placed), p=weights)

    # an expert must be able to see the particles: the blur may not wipe out the typical
    # particle, and the contrast floor rises with shot noise and with the carbon texture
    optics.blur_sigma = min(optics.blur_sigma, max(0.4, 0.2 * med_d))
    # small particles = low magnification: the carbon grain is finer than at high magnification,
    # and a particle barely larger than a grain needs more contrast to stand out of it
    optics.grain_sigma = min(optics.grain_sigma, max(0.5, 0.15 * med_d))
    texture = max(1.2 * optics.grain_amp * math.sqrt(max(1.0, 10.0 / med_d)),
                  3.0 * optics.mottle_amp)
    hz = 1.0 / (1.0 - optics.haze)  # the gas haze lowers every contrast by (1 - haze)
    if mode == "bf":
        c_lo = min(max(0.08, 1.5 / math.sqrt(optics.dose), texture) * hz, 0.6)
        c_level = _lu(rng, c_lo, max(0.8, c_lo * 1.2))
    else:
        c_lo = max(0.3, 1.5 / math.sqrt(optics.dose), 2 * texture) * hz
        c_level = _lu(rng, c_lo, max(8.0, c_lo * 1.2))

    hole_fn = None
    if optics.hole is not None and optics.hole[5]:
        hcy, hcx, hrad = optics.hole[:3]

        def hole_fn(y: float, x: float) -> bool:
            return math.hypot(y - hcy, x - hcx) < hrad

    support = None
    if rng.random() < 0.3:  # a thick textured support; the particles sit on it
        support = thick_support(rng, shape, _lu(rng, 0.15, 0.6) * size,
                                float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.05, 0.3)))
    particles: list[Particle] = []
    new_index = {}
    uni = rng.random((len(placed), 24))
    off_support = rng.random(len(placed)) < 0.85
    for k, (i, (y, x), kind) in enumerate(zip(placed, centres, kinds, strict=True)):
        if hole_fn is not None and hole_fn(y, x):
            continue
        if support is not None and off_support[k]:
            yy, xx = min(max(int(y), 0), size - 1), min(max(int(x), 0), size - 1)
            if support[yy, xx] < 0.5:
                continue
        c = c_level * (0.75 + 0.55 * uni[k, 23])
        if mode == "bf":
            strength = -math.log(1.0 - min(c, 0.95))
        else:
            strength = c * optics.haadf_carbon
        new_index[k] = len(particles)
        particles.append(random_particle(uni[k], float(y), float(x), float(diam[i] / 2),
                                         SHAPES[int(kind)], strength, mode))
    neck_frac = float(rng.uniform(0, 0.8))
    necks = [Neck(new_index[a], new_index[b], float(rng.uniform(0.3, 0.8)))
             for a, b in pairs
             if a in new_index and b in new_index and rng.random() < neck_frac]

    absorb, thick, labels = draw_particles(particles, shape, necks)
    texture = _internal_texture(rng, absorb, labels)
    sem = rng.random() < 0.08
    if sem:  # secondary-electron contrast: bright particles with brighter rims, either mode
        absorb = _sem_contrast(rng, absorb, labels, mode)

    # --- support, optics, detector ----------------------------------------------------------
    carbon, illum, hole_mask = support_film(optics, shape, rng)
    if support is not None:
        if mode == "bf":
            carbon *= np.exp(-np.float32(rng.uniform(0.2, 1.5)) * support)
        else:
            carbon *= 1.0 + np.float32(_lu(rng, 0.5, 6.0)) * support
    image = form_image(absorb, thick, carbon, illum, optics, rng, hole_mask=hole_mask)

    # --- burned-in overlays ---------------------------------------------------------------
    ov = Overlays()
    hi = float(np.percentile(image[:: 4, :: 4], 99.5)) * rng.uniform(1.05, 1.6) + 1.0
    lo = float(optics.bias)
    banner_rows = None
    if rng.random() < 0.25:
        ov.banner = int(round(size * rng.uniform(0.06, 0.12)))
        dark_bar = rng.random() < 0.6
        ov.banner_value = lo if dark_bar else hi
        ov.text_value = hi if dark_bar else lo
        banner_rows = [size - ov.banner, size]
    else:
        ov.text_value = hi if rng.random() < 0.7 else lo
    sb_box = None
    if rng.random() < 0.35:
        length = int(size * rng.uniform(0.1, 0.25))
        thick_px = int(rng.integers(2, 6))
        if ov.banner:
            y = size - ov.banner + max((ov.banner - thick_px) // 2, 1)
            x = int(size * rng.uniform(0.03, 0.08))
        else:
            y = size - int(size * rng.uniform(0.04, 0.1)) - thick_px
            x = (int(size * rng.uniform(0.03, 0.08)) if rng.random() < 0.5
                 else size - length - int(size * rng.uniform(0.03, 0.08)))
        ov.scale_bar = (y, x, length, thick_px)
        if not ov.banner and rng.random() < 0.4:
            ov.label_box = True
            ov.banner_value = lo if ov.text_value == hi else hi
    drawn = np.bincount(labels.ravel())
    valid = burn_overlays(image, labels, ov, rng)
    if ov.scale_bar is not None:
        inval = ~valid
        if banner_rows is not None:
            inval[banner_rows[0]:, :] = False
        if inval.any():
            ys, xs = np.nonzero(inval)
            sb_box = [int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1]
    keep_connected(labels, {i: int(c) for i, c in enumerate(drawn) if i and c})

    n_inst = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    eq_d = 2 * np.sqrt(counts / math.pi) if counts.size else np.zeros(0)
    meta = {
        "mode": mode,
        "polarity": "dark" if mode == "bf" and not sem else "bright",
        "nm_per_px": _lu(rng, 0.05, 2.0),
        "dose": optics.dose,
        "read_noise": optics.read_noise,
        "bias": optics.bias,
        "blur_sigma": optics.blur_sigma,
        "halo_amp": optics.halo_amp,
        "n_particles": n_inst,
        "coverage": float(np.count_nonzero(labels)) / labels.size,
        "median_diameter_px": float(np.median(eq_d)) if eq_d.size else 0.0,
        "shapes": {s: int(np.sum(kinds == j)) for j, s in enumerate(SHAPES)},
        "hole": optics.hole is not None,
        "support": support is not None,
        "textured_particles": texture,
        "sem": sem,
        "banner_rows": banner_rows,
        "scale_bar": sb_box,
        "invalid_px": int(np.count_nonzero(~valid)),
    }
    return image, labels, meta


def _internal_texture(rng: np.random.Generator, absorb: np.ndarray, labels: np.ndarray) -> int:
    """Mesopores or a core-shell step inside a quarter of the particles of 30 px and more (in
    place on ``absorb``; the labels stay whole: a textured particle is still one particle).
    Returns how many particles were textured."""
    ids, area = np.unique(labels[labels > 0], return_counts=True)
    big = ids[(area >= math.pi * 15 ** 2) & (rng.random(ids.size) < 0.25)]
    if big.size == 0:
        return 0
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(labels)
    for i in big:
        sl = boxes[int(i) - 1]
        if sl is None:
            continue
        m = labels[sl] == i
        a = absorb[sl]
        if rng.random() < 0.5:  # mesopores: dark (BF: bright) pits, thinner material
            pits = band_noise(rng, m.shape, float(rng.uniform(2, 6)))
            frac = float(rng.uniform(0.1, 0.4))
            hole = pits > np.quantile(pits[m], 1 - frac)
            a[m & hole] *= np.float32(rng.uniform(0.2, 0.6))
        else:  # core-shell: a core of another contrast inside a shell
            d = ndi.distance_transform_edt(m)
            core = d > (1 - rng.uniform(0.4, 0.8)) * d.max()
            a[m & ~core] *= np.float32(rng.uniform(0.3, 0.7))
    return int(big.size)


def _sem_contrast(rng: np.random.Generator, absorb: np.ndarray, labels: np.ndarray,
                  mode: str) -> np.ndarray:
    """Secondary-electron look: every particle a flat level with bright rims (edge effect) of
    U 1 - 4 px; in bright field the sign is flipped so that the particle images bright."""
    from scipy import ndimage as ndi

    inside = labels > 0
    depth = ndi.distance_transform_edt(inside).astype(np.float32)
    width = float(rng.uniform(1, 4))
    level = float(np.median(absorb[inside])) if inside.any() else 0.0
    rim = np.exp(-depth / width) * inside
    out = (np.float32(level) * (0.8 + np.float32(1.2) * rim)).astype(np.float32)
    return -out if mode == "bf" else out
