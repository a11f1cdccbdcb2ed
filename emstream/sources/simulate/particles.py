"""Particles as drawn by the synthetic microscope: shapes, projected thickness, exact truth labels.

Each :class:`Particle` has a *level function* ``f(y, x)`` that is < 1 inside and 1 on its
outline (round with a little Fourier roughness, ellipse, faceted polygon as a soft maximum of
side projections, triangle / truncated triangle, rod = capsule). Inside, the projected
thickness profile is ``(1 - f²)**gamma`` (gamma 0.5 ≈ sphere, smaller = flat-topped plate)
times the particle's peak absorbance ``strength``, with optional lattice fringes. Only the
particle's bounding box is touched (small particles: vectorised batches). Truth labels are the
pixel centres with ``f < 1``; where particles overlap the later one wins; sintering necks
(:class:`Neck`) fill the concave gap of a touching pair and go to the nearer particle. Every
instance is kept one connected region (:func:`keep_connected`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage import measure

__all__ = ["SHAPES", "Particle", "Neck", "draw_particles", "keep_connected"]

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
            # irregular facets change the area: rescale so that it is exactly pi r^2 (the level
            # function is 1-homogeneous, so the outline is rho(t) = 1 / f(unit vector at t)
            # and the area is 1/2 * integral of rho^2)
            t = np.linspace(0.0, 2 * math.pi, 720, endpoint=False)
            proj = np.maximum((np.cos(t)[:, None] * nx + np.sin(t)[:, None] * ny) / hk, 1e-9)
            f_unit = (proj ** float(self.corner_p)).sum(axis=1) ** (1.0 / float(self.corner_p))
            area = 0.5 * float(np.mean(1.0 / f_unit**2)) * 2 * math.pi
            hk = hk * math.sqrt(math.pi * r * r / area)
            rho_max = float((1.0 / f_unit).max()) * math.sqrt(math.pi * r * r / area)
            bound = rho_max * 1.05 + 1.0
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

    Every instance is checked (labelling passes over the frame; ``drawn`` is accepted for
    compatibility and ignored). The largest piece keeps the id; a detached piece that
    touches another particle joins it (it is the part an occluding particle cut off), otherwise
    it becomes a new instance (``fragments_new_ids``) or background when smaller than
    ``min_fragment_px``.
    """
    if labels.max() == 0:
        return labels
    # a piece handed to a neighbour may touch only a piece of that neighbour that moves on in
    # turn: repeat until nothing is split (twice is the rule, a few passes at most)
    for _ in range(6):
        if not _split_pass(labels, min_fragment_px, fragments_new_ids):
            return labels
    # last resort (never seen in practice): keep the largest piece of each id, drop the rest
    _split_pass(labels, min_fragment_px, False, join=False)
    return labels


def _split_ids(labels: np.ndarray) -> np.ndarray:
    """Ids owning more than one 8-connected region (one labelling pass over the frame)."""
    comp = measure.label(labels, background=0, connectivity=2)
    comp_label = np.zeros(int(comp.max()) + 1, labels.dtype)
    comp_label[comp.ravel()] = labels.ravel()
    pieces = np.bincount(comp_label[1:], minlength=int(labels.max()) + 1)
    return np.nonzero(pieces > 1)[0]


def _split_pass(labels: np.ndarray, min_fragment_px: int, fragments_new_ids: bool,
                join: bool = True) -> bool:
    """Re-assign the detached pieces of split ids once; False when nothing was split."""
    dirty = _split_ids(labels)
    if len(dirty) == 0:
        return False
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
            neigh = np.zeros(0, labels.dtype)
            if join:
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
    return True
