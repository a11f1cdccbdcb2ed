"""The one renderer of the synthetic microscope: particles → projected absorbance → detector counts.

Both the training-data generator (:mod:`.training`) and the time-series microscope (:mod:`.scene`)
draw through this module, so what the segmenter learns is exactly what the demo shows.

Image formation (all maps float32, shape ``(H, W)``):

1. **Particles** (:func:`draw_particles`). Each :class:`Particle` has a *level function*
   ``f(y, x)`` that is < 1 inside and 1 on its outline (round with a little Fourier roughness,
   ellipse, faceted polygon as a soft maximum of side projections, triangle/truncated triangle,
   rod = capsule). Inside, the projected thickness profile is ``(1 - f²)**gamma`` (gamma 0.5 ≈
   sphere, smaller = flat-topped plate) times the particle's peak absorbance ``strength``, with
   optional lattice fringes. Only the particle's bounding box is touched. Truth labels are the
   pixel centres with ``f < 1``; where particles overlap the later one wins; sintering necks
   (:class:`Neck`) fill the concave gap of a touching pair and go to the nearer particle.
   Every instance is kept connected (:func:`keep_connected`).
2. **Support** (:func:`support_film`): amorphous carbon as band-limited noise (fine grain +
   slow mottle), an optional holey-carbon region (vacuum hole or thicker film) with a curved,
   slightly blurred edge, and an illumination gradient (plane + vignette).
3. **Optics** (:func:`form_image`): bright field ``I = illum · carbon · exp(-A) · (1 + halo)``
   with a Fresnel fringe ``halo`` = difference of Gaussians of the projected thickness (bright
   outside the edge under focus, dark over focus); HAADF ``I = illum · (c0 · carbon + A)``
   (incoherent, no Fresnel fringe). Then the optical / gas blur (Gaussian PSF), scaling so the
   background is ``dose`` counts/px, Poisson shot noise (:func:`shot_noise`), Gaussian read
   noise and a detector bias.
4. **Overlays** (:func:`burn_overlays`): a burned-in data bar (bottom strip with text-like
   blocks) and/or a scale bar (solid bar + text blocks) drawn after the noise, exactly as
   acquisition software does; their pixels are set to background (0) in the labels and are
   returned as an invalid mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from skimage import measure

__all__ = [
    "SHAPES",
    "Particle",
    "Neck",
    "Optics",
    "Overlays",
    "draw_particles",
    "keep_connected",
    "support_film",
    "form_image",
    "burn_overlays",
    "band_noise",
    "periodic_band_noise",
    "shot_noise",
]

#: Particle shapes the renderer knows.
SHAPES = ("round", "ellipse", "polygon", "triangle", "rod")


@dataclass
class Particle:
    """One nanoparticle as drawn, in pixels.

    Attributes
    ----------
    y, x : centre (pixel coordinates, pixel centres at integers).
    r : radius of the circle of equal area (the nominal size; the mask decides the measured one).
    shape : one of :data:`SHAPES`.
    aspect : long/short axis ratio (ellipse, rod; polygons stretch too).
    angle : orientation in radians.
    n_sides : polygon sides (3 for triangles; 0 otherwise).
    side_jitter : per-side apothem factors (faceted shapes; irregular/truncated facets).
    corner_p : soft-max exponent of polygon corners (large = sharp corners).
    rough : Fourier roughness as an array of (k, amplitude, phase) rows (round/ellipse).
    strength : peak absorbance (BF: centre transmits ``exp(-strength)``) or HAADF signal above
        the carbon (in units of the carbon signal).
    gamma : thickness profile exponent (0.5 sphere-like, 0.15 flat plate).
    fringe : lattice fringes (period_px, angle, amplitude, phase) or ``None``.
    id : instance id written into the truth labels (0 = use position in the list + 1).
    """

    y: float
    x: float
    r: float
    shape: str = "round"
    aspect: float = 1.0
    angle: float = 0.0
    n_sides: int = 0
    side_jitter: np.ndarray | None = None
    corner_p: float = 16.0
    rough: np.ndarray | None = None
    strength: float = 0.5
    gamma: float = 0.5
    fringe: tuple[float, float, float, float] | None = None
    id: int = 0
    _geom: tuple | None = field(default=None, repr=False, compare=False)

    # -- geometry ------------------------------------------------------------------------------
    def _geometry(self) -> tuple:
        """Cache the shape constants (semi-axes, side normals/apothems, bounding radius)."""
        if self._geom is not None:
            return self._geom
        r = max(float(self.r), 0.5)
        a = max(float(self.aspect), 1.0)
        rough_amp = 0.0 if self.rough is None else float(np.abs(self.rough[:, 1]).sum())
        if self.shape == "rod":
            # capsule of half-length L and half-width w with area pi r^2, (L + w)/w = aspect
            w = r * math.sqrt(math.pi / (math.pi + 4.0 * (a - 1.0)))
            half_len = (a - 1.0) * w
            geom = ("rod", w, half_len, half_len + w + 1.0)
        elif self.shape in ("polygon", "triangle"):
            n = max(int(self.n_sides) or (3 if self.shape == "triangle" else 6), 3)
            h = r * math.sqrt(math.pi / (n * math.tan(math.pi / n)))  # regular n-gon apothem
            jit = np.ones(n) if self.side_jitter is None else np.asarray(self.side_jitter, float)
            if jit.size != n:
                jit = np.resize(jit, n)
            theta = np.arange(n) * (2 * math.pi / n)
            sa, sb = math.sqrt(a), 1.0 / math.sqrt(a)
            # normals of the stretched polygon: stretch (u, v) by (sa, sb) -> normals by (1/sa, 1/sb)
            nx, ny = np.cos(theta) / sa, np.sin(theta) / sb
            norm = np.hypot(nx, ny)
            nx, ny = nx / norm, ny / norm
            hk = h * jit / norm  # apothem along the normalised normals
            bound = float(hk.max()) / math.cos(math.pi / n) * max(sa, sb) * 1.3 + 1.0
            geom = ("polygon", nx.astype(np.float32), ny.astype(np.float32),
                    hk.astype(np.float32), bound)
        else:
            sa = r * math.sqrt(a) if self.shape == "ellipse" else r
            sb = r / math.sqrt(a) if self.shape == "ellipse" else r
            geom = ("ellipse", sa, sb, sa * (1.0 + rough_amp) + 1.0)
        self._geom = geom
        return geom

    def invalidate(self, rough: bool = False) -> None:
        """Forget cached geometry after changing r / aspect / shape (and ``rough`` if asked)."""
        self._geom = None
        if rough:
            self._rtab = None

    @property
    def bound(self) -> float:
        """Radius of a circle around the centre that contains the whole particle."""
        return float(self._geometry()[-1])

    def level(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Level function at offsets ``(dy, dx)`` from the centre: < 1 inside, 1 on the outline.

        ``dy`` and ``dx`` broadcast against each other (a column and a row are fine).
        """
        g = self._geometry()
        if g[0] == "ellipse" and g[1] == g[2] and self.rough is None:
            return np.sqrt(dy * dy + dx * dx) / g[1]
        ca, sa_ = math.cos(self.angle), math.sin(self.angle)
        u = dx * ca + dy * sa_
        v = dy * ca - dx * sa_
        if g[0] == "rod":
            _, w, half_len, _ = g
            du = np.maximum(np.abs(u) - half_len, 0.0)
            return np.sqrt(du * du + v * v) / w
        if g[0] == "polygon":
            _, nx, ny, hk, _ = g
            proj = (u[..., None] * nx + v[..., None] * ny) / hk
            f = proj.max(axis=-1)
            # rounded corners: soft maximum (p-norm) of the side projections, only where it
            # matters (the soft maximum is >= the hard one, so outside stays outside)
            near = f > 0.3
            near &= f < 1.0
            sub = np.maximum(proj[near], 1e-6)
            p = np.float32(self.corner_p)
            f[near] = (sub ** p).sum(axis=-1) ** (1.0 / p)
            return f
        _, sa, sb, _ = g
        f = np.sqrt((u / sa) ** 2 + (v / sb) ** 2)
        if self.rough is not None and len(self.rough):
            f = f / self._rough_table()[
                (np.arctan2(v, u) * np.float32(_NTAB / (2 * math.pi))).astype(np.int32) % _NTAB]
        return f

    def _rough_table(self) -> np.ndarray:
        """Outline radius factor 1 + sum a_k cos(k theta + phi_k), tabulated over theta."""
        tab = getattr(self, "_rtab", None)
        if tab is None:
            tab = self._rtab = _rough_tables([self.rough])[0]
        return tab


_NTAB = 256
_THETA = np.arange(_NTAB) * (2 * math.pi / _NTAB)


def _rough_tables(roughs: list[np.ndarray]) -> np.ndarray:
    """Tabulate 1 + sum_k a_k cos(k theta + phi_k) for many particles at once -> (n, _NTAB)."""
    m = max(len(r) for r in roughs)
    prm = np.zeros((len(roughs), m, 3))
    for i, r in enumerate(roughs):
        prm[i, : len(r)] = r
    k, a, ph = prm[..., 0:1], prm[..., 1:2], prm[..., 2:3]
    return (1.0 + (a * np.cos(k * _THETA + ph)).sum(axis=1)).astype(np.float32)


@dataclass
class Neck:
    """A sintering neck joining particles ``i`` and ``j`` (indices into the particle list).

    ``width`` is the neck radius as a fraction of the smaller particle's radius.
    """

    i: int
    j: int
    width: float = 0.5


def _box(p: Particle, shape: tuple[int, int], pad: float = 0.0):
    b = p.bound + pad
    y0, y1 = max(int(math.floor(p.y - b)), 0), min(int(math.ceil(p.y + b)) + 1, shape[0])
    x0, x1 = max(int(math.floor(p.x - b)), 0), min(int(math.ceil(p.x + b)) + 1, shape[1])
    return y0, y1, x0, x1


def draw_particles(
    particles: list[Particle],
    shape: tuple[int, int],
    necks: list[Neck] | tuple = (),
    *,
    min_fragment_px: int = 4,
    fragments_new_ids: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw particles into a projected-absorbance map and exact instance labels.

    Parameters
    ----------
    particles : drawn in order; where two overlap the later one owns the pixels. Particles
        with a bounding radius <= 12 px are drawn in vectorised batches after the larger ones,
        size class by size class (12, 8, 4 px), so a clearly smaller particle wins over a
        larger one whatever the order; within a class the later one wins.
    shape : ``(H, W)`` of the frame.
    necks : sintering necks between touching pairs.
    min_fragment_px, fragments_new_ids : see :func:`keep_connected`.

    Returns
    -------
    absorb : float32 projected absorbance ``A`` (sum over particles; lattice fringes included).
    thick : float32 projected thickness without fringes (drives the Fresnel fringe).
    labels : int32 instance labels (``Particle.id`` or list position + 1; 0 = background).
    """
    H, W = shape
    absorb = np.zeros(shape, np.float32)
    thick = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    drawn: dict[int, int] = {}
    bins: list[list[int]] = [[] for _ in _BATCH_BINS]
    for k, p in enumerate(particles):
        pid = p.id or (k + 1)
        b = p.bound
        if b <= _BATCH_BINS[-1]:
            bins[next(i for i, edge in enumerate(_BATCH_BINS) if b <= edge)].append(k)
            continue
        y0, y1, x0, x1 = _box(p, shape)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(p.y))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(p.x))[None, :]
        f = p.level(dy, dx)
        inside = f < 1.0
        n_in = int(np.count_nonzero(inside))
        if n_in == 0:
            continue
        prof = np.clip(1.0 - f * f, 0.0, None) ** np.float32(p.gamma)
        t = (p.strength * prof).astype(np.float32)
        thick[y0:y1, x0:x1] += t
        if p.fringe is not None:
            period, fang, famp, fph = p.fringe
            kx, ky = 2 * math.pi / period * math.cos(fang), 2 * math.pi / period * math.sin(fang)
            t = t * (1.0 + famp * np.cos(kx * dx + ky * dy + fph)).astype(np.float32)
        absorb[y0:y1, x0:x1] += t
        labels[y0:y1, x0:x1][inside] = pid
        drawn[pid] = drawn.get(pid, 0) + n_in
    # smaller particles in vectorised batches, larger size classes first
    for ks in reversed(bins):
        for c in range(0, len(ks), _BATCH_MAX):
            _draw_small(particles, ks[c:c + _BATCH_MAX], absorb, thick, labels, drawn)
    for neck in necks:
        _draw_neck(particles, neck, absorb, thick, labels, drawn)
    keep_connected(labels, drawn, min_fragment_px=min_fragment_px,
                   fragments_new_ids=fragments_new_ids)
    return absorb, thick, labels


#: Particles whose bounding radius is at most the last edge are drawn in vectorised batches,
#: one batch per size class (a common stencil per class), at most ``_BATCH_MAX`` at a time.
_BATCH_BINS = (4.0, 8.0, 12.0)
_BATCH_MAX = 256


def _draw_small(particles, ks, absorb, thick, labels, drawn) -> None:
    """Draw many small particles at once on a common (n, S, S) stencil (no Python per pixel)."""
    H, W = labels.shape
    ps = [particles[k] for k in ks]
    n = len(ps)
    half = int(math.ceil(max(p.bound for p in ps)))
    S = 2 * half + 1
    cy = np.array([p.y for p in ps], np.float64)
    cx = np.array([p.x for p in ps], np.float64)
    iy, ix = np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64)
    off = np.arange(-half, half + 1, dtype=np.float32)
    dy = off[None, :, None] - (cy - iy).astype(np.float32)[:, None, None]
    dx = off[None, None, :] - (cx - ix).astype(np.float32)[:, None, None]
    ang = np.array([p.angle for p in ps], np.float32)[:, None, None]
    ca, sa = np.cos(ang), np.sin(ang)
    u = dx * ca + dy * sa
    v = dy * ca - dx * sa
    f = np.full((n, S, S), np.inf, np.float32)
    kinds = np.array([p._geometry()[0] for p in ps])
    for kind in ("ellipse", "polygon", "rod"):
        sel = np.nonzero(kinds == kind)[0]
        if sel.size == 0:
            continue
        uu, vv = u[sel], v[sel]
        geo = [ps[i]._geometry() for i in sel]
        if kind == "ellipse":
            a = np.array([g[1] for g in geo], np.float32)[:, None, None]
            b = np.array([g[2] for g in geo], np.float32)[:, None, None]
            ff = np.sqrt((uu / a) ** 2 + (vv / b) ** 2)
            rough = [i for i in range(sel.size) if ps[sel[i]].rough is not None]
            if rough:
                tabs = np.stack([ps[sel[i]]._rough_table() for i in rough])
                th = (np.arctan2(vv[rough], uu[rough]) * np.float32(_NTAB / (2 * math.pi)))
                idx = th.astype(np.int32) % _NTAB
                ff[rough] /= np.take_along_axis(tabs[:, None, :], idx.reshape(len(rough), 1, -1),
                                                axis=2).reshape(idx.shape)
        elif kind == "rod":
            w = np.array([g[1] for g in geo], np.float32)[:, None, None]
            hl = np.array([g[2] for g in geo], np.float32)[:, None, None]
            du = np.maximum(np.abs(uu) - hl, 0.0)
            ff = np.sqrt(du * du + vv * vv) / w
        else:
            m = max(g[1].size for g in geo)
            nx = np.zeros((sel.size, m), np.float32)
            ny = np.zeros((sel.size, m), np.float32)
            hk = np.ones((sel.size, m), np.float32)
            for j, g in enumerate(geo):
                nx[j, : g[1].size], ny[j, : g[1].size], hk[j, : g[1].size] = g[1], g[2], g[3]
            proj = (uu[..., None] * nx[:, None, None, :] + vv[..., None] * ny[:, None, None, :])
            proj /= hk[:, None, None, :]
            np.maximum(proj, 1e-6, out=proj)
            p_ = np.array([ps[i].corner_p for i in sel], np.float32)[:, None, None, None]
            ff = (proj ** p_).sum(axis=-1) ** (1.0 / p_[..., 0])
        f[sel] = ff
    inside = f < 1.0
    gam = np.array([p.gamma for p in ps], np.float32)[:, None, None]
    stren = np.array([p.strength for p in ps], np.float32)[:, None, None]
    t = stren * np.clip(1.0 - f * f, 0.0, None) ** gam
    t[~inside] = 0.0
    fr = [i for i, p in enumerate(ps) if p.fringe is not None]
    tf = t
    if fr:
        tf = t.copy()
        prm = np.array([ps[i].fringe for i in fr], np.float32)
        kx = (2 * np.pi / prm[:, 0] * np.cos(prm[:, 1]))[:, None, None]
        ky = (2 * np.pi / prm[:, 0] * np.sin(prm[:, 1]))[:, None, None]
        tf[fr] *= 1.0 + prm[:, 2, None, None] * np.cos(kx * dx[fr] + ky * dy[fr]
                                                       + prm[:, 3, None, None])
    py = iy[:, None, None] + np.arange(-half, half + 1)[None, :, None]
    px = ix[:, None, None] + np.arange(-half, half + 1)[None, None, :]
    ok = inside & (py >= 0) & (py < H) & (px >= 0) & (px < W)
    flat = (py * W + px)[ok]
    absorb += np.bincount(flat, weights=tf[ok], minlength=H * W).reshape(H, W).astype(np.float32)
    thick += np.bincount(flat, weights=t[ok], minlength=H * W).reshape(H, W).astype(np.float32)
    rank = np.broadcast_to(np.arange(n)[:, None, None], ok.shape)[ok]
    win = np.full(H * W, -1, np.int64)
    np.maximum.at(win, flat, rank)
    ids = np.array([p.id or (k + 1) for p, k in zip(ps, ks, strict=True)], np.int32)
    hit = np.nonzero(win >= 0)[0]
    labels.reshape(-1)[hit] = ids[win[hit]]
    counts = np.bincount(rank, minlength=n)
    for pid, c in zip(ids.tolist(), counts.tolist(), strict=True):
        if c:
            drawn[pid] = drawn.get(pid, 0) + c


def _draw_neck(particles, neck, absorb, thick, labels, drawn) -> None:
    pi, pj = particles[neck.i], particles[neck.j]
    idi, idj = pi.id or (neck.i + 1), pj.id or (neck.j + 1)
    rn = max(neck.width * min(pi.r, pj.r), 1.0)
    ay, ax, by, bx = pi.y, pi.x, pj.y, pj.x
    H, W = labels.shape
    y0 = max(int(min(ay, by) - rn - 1), 0)
    y1 = min(int(max(ay, by) + rn + 2), H)
    x0 = max(int(min(ax, bx) - rn - 1), 0)
    x1 = min(int(max(ax, bx) + rn + 2), W)
    if y0 >= y1 or x0 >= x1:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    yy, xx = np.broadcast_arrays(yy, xx)
    vy, vx = by - ay, bx - ax
    L2 = vy * vy + vx * vx or 1.0
    s = np.clip(((yy - ay) * vy + (xx - ax) * vx) / L2, 0.0, 1.0)
    d = np.hypot(yy - (ay + s * vy), xx - (ax + s * vx))
    fi = pi.level(yy - pi.y, xx - pi.x)
    fj = pj.level(yy - pj.y, xx - pj.x)
    neck_px = (d < rn) & (fi >= 1.0) & (fj >= 1.0)
    if not neck_px.any():
        return
    sub = labels[y0:y1, x0:x1]
    free = neck_px & (sub == 0)
    strength = 0.8 * min(pi.strength, pj.strength)
    t = (strength * np.clip(1.0 - (d / rn) ** 2, 0.0, None) ** 0.5).astype(np.float32) * free
    absorb[y0:y1, x0:x1] += t
    thick[y0:y1, x0:x1] += t
    to_i = free & (fi <= fj)
    to_j = free & (fi > fj)
    sub[to_i] = idi
    sub[to_j] = idj
    drawn[idi] = drawn.get(idi, 0) + int(to_i.sum())
    drawn[idj] = drawn.get(idj, 0) + int(to_j.sum())


def keep_connected(
    labels: np.ndarray,
    drawn: dict[int, int] | None = None,
    *,
    min_fragment_px: int = 4,
    fragments_new_ids: bool = True,
) -> np.ndarray:
    """Make every instance one 8-connected region, in place.

    Every instance is checked (one labelling pass over the frame; ``drawn`` is accepted for
    compatibility and ignored). The largest piece keeps the id; a detached piece that
    touches another particle joins it (it is the part an occluding particle cut off), otherwise
    it becomes a new instance (``fragments_new_ids``) or background when smaller than
    ``min_fragment_px``.
    """
    if labels.max() == 0:
        return labels
    # one pass over the frame: connected regions of equal value (8-connectivity); an id that
    # owns more than one region is split
    comp = measure.label(labels, background=0, connectivity=2)
    comp_label = np.zeros(int(comp.max()) + 1, labels.dtype)
    comp_label[comp.ravel()] = labels.ravel()
    pieces = np.bincount(comp_label[1:], minlength=int(labels.max()) + 1)
    dirty = np.nonzero(pieces > 1)[0]
    if len(dirty) == 0:
        return labels
    next_id = int(labels.max()) + 1
    objs = ndimage.find_objects(labels)
    eight = np.ones((3, 3), bool)
    for pid in dirty:
        sl = objs[pid - 1] if pid - 1 < len(objs) else None
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        sub = labels[sl]
        comp, n = ndimage.label(sub == pid, structure=eight)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        keep = int(np.argmax(sizes))
        for c in range(1, n + 1):
            if c == keep:
                continue
            piece = comp == c
            ring = ndimage.binary_dilation(piece, eight) & ~piece
            neigh = sub[ring]
            neigh = neigh[(neigh > 0) & (neigh != pid)]
            if neigh.size:
                sub[piece] = np.bincount(neigh).argmax()
            elif fragments_new_ids and sizes[c] >= min_fragment_px:
                sub[piece] = next_id
                next_id += 1
            else:
                sub[piece] = 0
    return labels


# ----------------------------------------------------------------------------------------------
# support film and optics


def band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian white noise low-passed at ``sigma`` px, normalised to unit standard deviation."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        n *= np.float32(2.0 * math.sqrt(math.pi) * sigma)  # std of blurred unit white noise
    return n


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


# ----------------------------------------------------------------------------------------------
# burned-in overlays


@dataclass
class Overlays:
    """Burned-in annotations.

    banner : data-bar height in px (0 = none); drawn at the bottom.
    banner_value : fill of the bar (counts; text blocks get ``text_value``).
    scale_bar : ``(y, x, length, thickness)`` of a solid scale bar, or ``None``.
    text_value : value of text blocks and of a free-standing scale bar.
    label_box : a free-standing scale bar sits on an opaque box of ``banner_value``.

    The rectangle around the scale bar and its label is not data (``valid`` False), whether
    or not it has a box.
    """

    banner: int = 0
    banner_value: float = 0.0
    scale_bar: tuple[int, int, int, int] | None = None
    text_value: float = 1000.0
    label_box: bool = False


def _text_blocks(img, valid, rng, y0, x0, height, width_max, value) -> int:
    """Draw a line of text-like glyph blocks starting at (y0, x0); returns the end column."""
    x = x0
    H, W = img.shape
    end = min(x0 + width_max, W)
    ch = max(height, 3)
    while x < end - 2:
        n_chars = int(rng.integers(2, 8))
        for _ in range(n_chars):
            cw = int(rng.integers(max(ch // 3, 1), max(ch * 2 // 3, 2) + 1))
            if x + cw >= end:
                break
            # a glyph: a few strokes in a ch x cw cell
            cell = np.zeros((ch, cw), bool)
            cell[:, : max(cw // 3, 1)] = rng.random() < 0.7
            cell[: max(ch // 5, 1), :] |= rng.random() < 0.5
            cell[ch // 2: ch // 2 + max(ch // 6, 1), :] |= rng.random() < 0.5
            cell[-max(ch // 5, 1):, :] |= rng.random() < 0.5
            cell[:, -max(cw // 3, 1):] |= rng.random() < 0.5
            ys, xs = slice(y0, min(y0 + ch, H)), slice(x, x + cw)
            img[ys, xs][cell[: ys.stop - ys.start]] = value
            valid[ys, xs] = False
            x += cw + max(ch // 5, 1)
        x += ch  # word space
    return x


def burn_overlays(
    image: np.ndarray, labels: np.ndarray, overlays: Overlays, rng: np.random.Generator
) -> np.ndarray:
    """Burn the data bar / scale bar into ``image`` and clear them from ``labels`` (in place).

    Returns the valid mask (False where an overlay was drawn).
    """
    H, W = image.shape
    valid = np.ones((H, W), bool)
    if overlays.banner > 0:
        b = int(overlays.banner)
        image[H - b:, :] = overlays.banner_value
        valid[H - b:, :] = False
        ch = max(int(b * 0.35), 3)
        _text_blocks(image, valid, rng, H - b + max((b - ch) // 2, 1), int(W * 0.35),
                     ch, int(W * 0.6), overlays.text_value)
    if overlays.scale_bar is not None:
        y, x, length, thick = overlays.scale_bar
        y, x = int(np.clip(y, 0, H - 1)), int(np.clip(x, 0, W - 1))
        bar = np.ones((H, W), bool)
        if overlays.label_box and overlays.banner == 0:
            pad = max(thick, 3)
            ch = max(thick * 2, 4)
            by0 = max(y - ch - max(thick, 2) - pad, 0)
            image[by0:y + thick + pad, max(x - pad, 0):x + length + pad] = overlays.banner_value
        image[y:y + thick, x:x + length] = overlays.text_value
        bar[y:y + thick, x:x + length] = False
        ch = max(thick * 2, 4)
        ty = y - ch - max(thick, 2)
        if ty >= (H - overlays.banner if overlays.banner else 0):
            _text_blocks(image, bar, rng, ty, x + length // 4, ch, max(length // 2, ch * 2),
                         overlays.text_value)
        else:  # no room above (inside a thin data bar): label to the right of the bar
            _text_blocks(image, bar, rng, max(y + thick // 2 - ch // 2, 0), x + length + ch,
                         ch, ch * 6, overlays.text_value)
        # the bar, its label and the gaps between glyphs are not data (1 px margin: real
        # software anti-aliases its text)
        ys, xs = np.nonzero(~bar)
        y0, y1 = max(ys.min() - 1, 0), ys.max() + 2
        x0, x1 = max(xs.min() - 1, 0), xs.max() + 2
        if overlays.label_box and overlays.banner == 0:
            y0, x0 = max(y0 - 2, 0), max(x0 - 2, 0)
            y1, x1 = y1 + 2, x1 + 2
        valid[y0:y1, x0:x1] = False
    labels[~valid] = 0
    return valid
