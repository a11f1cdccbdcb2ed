"""The synthetic E-TEM microscope: a calibrated time series of frames with ground truth.

``Microscope(SceneConfig(...), seed).next_frame()`` returns a :class:`SimFrame` (uint16 image,
int32 truth labels, particle list with stable ids) for a sample that evolves from frame to frame:

- **Stage drift**: a constant drift plus a random walk (``drift_nm_per_frame``,
  ``drift_jitter_nm``). The particles and the carbon film move together. The sample is a torus
  1.25× the frame so drift can go on forever (a particle that leaves on one side comes back,
  much later, on the other, with its id).
- **Growth** (Ostwald-like ripening): per frame ``dr = g·s + o·(r̄/r)·(1 − r̄/r)`` in nm, so
  particles above the mean radius ``r̄`` grow, small ones shrink and dissolve
  (``growth_nm_per_frame`` = g, ``ostwald_nm_per_frame`` = o). The supply ``s`` is 1 up to the
  target coverage and fades to 0 at 1.5× it, so long sessions stay a monolayer.
- **Coalescence**: a touching pair starts to sinter with probability ``coalescence_prob`` per
  frame: a neck grows and the centres approach over ``coalescence_frames`` frames, then the pair
  becomes one particle (volume conserved, elongated along the pair axis, relaxing to round). It
  keeps the larger particle's id; the other id ends.
- **Nucleation**: new small particles appear (``nucleation_per_frame``, Poisson) and more while
  the coverage is below a ramp from ``coverage_start`` to ``coverage_end`` over ``ramp_frames``
  (sparse → crowded).

Sizes are log-normal (``median_diameter_nm``, ``size_sigma``); shapes are a mix (``shapes``
weights over round/ellipse/polygon/triangle/rod). Rendering goes through the same renderer as
the training data (:mod:`.render`, particle shapes from :func:`.training.random_particle`).
Truth ``equivalent_diameter_nm`` is measured from the truth mask (``2·sqrt(area/π)·nm_per_px``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .render import (
    SHAPES,
    Neck,
    Optics,
    Overlays,
    Particle,
    burn_overlays,
    draw_particles,
    form_image,
    periodic_band_noise,
    support_film,
)
from .training import place_particles, random_particle

__all__ = ["SceneConfig", "SimFrame", "Microscope"]


@dataclass
class SceneConfig:
    """What the simulated microscope looks at and how it images it.

    Attributes
    ----------
    shape : frame size ``(H, W)`` in px.
    nm_per_px : calibration (same in y and x).
    mode : ``"bf"`` (bright-field TEM, dark particles) or ``"haadf"`` (STEM, bright particles).
    dose : mean background counts per pixel (HAADF: on the carbon).
    read_noise, bias : detector read noise (counts rms) and offset (counts).
    median_diameter_nm, size_sigma : log-normal size distribution of the initial particles.
    coverage_start, coverage_end, ramp_frames : projected-area coverage ramp (sparse → crowded).
    shapes : relative weights of :data:`render.SHAPES`.
    touching_fraction : fraction of the initial particles placed touching a neighbour.
    contrast : BF centre contrast of a median-sized particle (default 0.4); HAADF particle /
        carbon signal ratio − 1 (default 3).
        BF defaults (dose, grain, contrast) are matched to real BF-TEM of supported particles
        (carbon texture ~15 % rms, correlation ~1.5 px, particle contrast ~0.4).
    drift_nm_per_frame, drift_jitter_nm : stage drift (y, x) per frame and its random walk.
    growth_nm_per_frame, ostwald_nm_per_frame : radius growth and ripening strength.
    coalescence_prob, coalescence_frames : sintering start probability per touching pair and
        frame, and its duration.
    nucleation_per_frame : mean number of new nuclei per frame (on the whole sample).
    blur_sigma_px, grain_amp, grain_sigma_px, halo_amp, gradient, vignette : optics (see
        :class:`render.Optics`).
    hole : holey carbon film: a quarter of the sample is vacuum holes with curved edges
        (drifting with the sample; no particles in them).
    banner, scale_bar : burn a data bar / a scale bar into every frame.
    fps : frame rate used for ``t_acq`` spacing.
    t0 : acquisition time of frame 0 (POSIX s; default: when the microscope is made).
    max_particles : cap on the particle count (keeps the frame time bounded).
    """

    shape: tuple[int, int] = (1024, 1024)
    nm_per_px: float = 0.25
    mode: str = "bf"
    dose: float = 400.0
    read_noise: float = 3.0
    bias: float = 100.0
    median_diameter_nm: float = 8.0
    size_sigma: float = 0.3
    coverage_start: float = 0.03
    coverage_end: float = 0.2
    ramp_frames: int = 400
    shapes: dict[str, float] = field(default_factory=lambda: {
        "round": 0.55, "ellipse": 0.2, "polygon": 0.15, "triangle": 0.05, "rod": 0.05})
    touching_fraction: float = 0.15
    contrast: float | None = None
    drift_nm_per_frame: tuple[float, float] = (0.2, 0.35)
    drift_jitter_nm: float = 0.1
    growth_nm_per_frame: float = 0.006
    ostwald_nm_per_frame: float = 0.005
    coalescence_prob: float = 0.2
    coalescence_frames: int = 8
    nucleation_per_frame: float = 1.0
    blur_sigma_px: float = 0.8
    grain_amp: float = 0.2
    grain_sigma_px: float = 0.9
    halo_amp: float = 0.15
    gradient: float = 0.12
    vignette: float = 0.1
    hole: bool = False
    banner: bool = True
    scale_bar: bool = True
    fps: float = 2.0
    t0: float | None = None
    max_particles: int = 4000


@dataclass
class SimFrame:
    """One simulated frame and its truth.

    Attributes
    ----------
    image : uint16 (H, W) detector counts.
    labels : int32 (H, W) truth instance labels (ids are stable across frames; 0 background;
        data bar / scale bar are background).
    particles : one dict per visible particle: ``id``, ``centroid_yx_px`` [y, x],
        ``equivalent_diameter_nm`` (from the truth mask), ``area_px``, ``shape``,
        ``touches_border``.
    t_acq : acquisition time (POSIX s).
    nm_per_px : calibration.
    mode : ``"bf"`` or ``"haadf"``.
    seq : frame number from 0.
    valid : bool (H, W), False over burned-in overlays.
    stage_offset_px : accumulated drift (y, x): a sample point at ``(sy, sx)`` is imaged at
        ``(sy + oy, sx + ox)`` (modulo the sample torus).
    events : what happened to the sample in the step that led to this frame, each a dict with
        ``kind`` (``"coalescence"``: ``ids`` [kept, gone], ``into`` (the kept id, which goes on),
        ``start_seq`` (the frame the neck began); ``"nucleation"``: ``id``; ``"dissolution"``:
        ``id``). Whether an event was in view is for the scorer to say (``particles``).
    """

    image: np.ndarray
    labels: np.ndarray
    particles: list[dict[str, Any]]
    t_acq: float
    nm_per_px: float
    mode: str
    seq: int = 0
    valid: np.ndarray | None = None
    stage_offset_px: tuple[float, float] = (0.0, 0.0)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Grain:
    id: int
    sy: float
    sx: float
    r: float  # equivalent radius, px
    proto: Particle
    relax: float = 1.0  # aspect after a merge, relaxing to 1


@dataclass
class _Sinter:
    a: int  # grain ids
    b: int
    progress: float = 0.0
    start_seq: int = 0


def _wrap_crop(tex: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """``tex[r0:r0+h, c0:c0+w]`` on a torus (slices, plus one concatenation at a seam)."""
    Hc, Wc = tex.shape
    rows = tex[r0:r0 + h] if r0 + h <= Hc else np.concatenate([tex[r0:], tex[: r0 + h - Hc]])
    if c0 + w <= Wc:
        return rows[:, c0:c0 + w]
    return np.concatenate([rows[:, c0:], rows[:, : c0 + w - Wc]], axis=1)


def _nice_length(target_nm: float) -> float:
    exp = 10 ** math.floor(math.log10(max(target_nm, 1e-6)))
    for m in (5, 2, 1):
        if m * exp <= target_nm:
            return m * exp
    return exp


class Microscope:
    """A simulated E-TEM session. Call :meth:`next_frame` for each frame.

    Parameters
    ----------
    config : what to simulate (defaults: 1024², 0.5 nm/px, BF).
    seed : everything (sample, optics noise, overlays) is reproducible from it.
    """

    def __init__(self, config: SceneConfig | None = None, seed: int = 0) -> None:
        self.config = cfg = config or SceneConfig()
        self.rng = np.random.default_rng(seed)
        self._overlay_seed = int(self.rng.integers(2**31))
        H, W = cfg.shape
        self.shape = (int(H), int(W))
        self.canvas = (int(math.ceil(H * 1.25)), int(math.ceil(W * 1.25)))
        self.seq = 0
        self.t0 = time.time() if cfg.t0 is None else float(cfg.t0)
        self.offset = np.zeros(2)
        self._next_id = 1
        self.grains: dict[int, _Grain] = {}
        self.sinters: list[_Sinter] = []
        self._events: list[dict[str, Any]] = []  # truth events of the current step
        self.nm = float(cfg.nm_per_px)
        self._r_med = cfg.median_diameter_nm / 2 / self.nm
        self.optics = Optics(
            mode=cfg.mode, dose=cfg.dose, read_noise=cfg.read_noise, bias=cfg.bias,
            blur_sigma=cfg.blur_sigma_px, grain_amp=cfg.grain_amp, grain_sigma=cfg.grain_sigma_px,
            mottle_amp=0.02, mottle_sigma=min(H, W) / 40, halo_amp=cfg.halo_amp if cfg.mode == "bf"
            else 0.0, halo_sigma=1.5, gradient=(cfg.gradient, float(self.rng.uniform(0, 6.28))),
            vignette=cfg.vignette)
        # periodic textures on the sample torus: a drifted crop wraps around
        self._grain_tex = periodic_band_noise(self.rng, self.canvas, cfg.grain_sigma_px)
        self._mottle_tex = periodic_band_noise(self.rng, self.canvas, max(min(H, W) / 40, 2.0))
        # holey carbon: the holes are where a smooth periodic field on the sample torus exceeds
        # its 75th percentile (curved edges, a quarter of the sample is vacuum; they drift
        # with the sample and no particle sits in them)
        self._hole = None
        if cfg.hole:
            sig = min(self.canvas) / 8.0
            field = periodic_band_noise(self.rng, self.canvas, sig)
            self._hole = (field, float(np.quantile(field, 0.75)), sig / 1.5)
        w = np.array([max(cfg.shapes.get(s, 0.0), 0.0) for s in SHAPES])
        self._shape_p = w / w.sum() if w.sum() > 0 else np.full(len(SHAPES), 1 / len(SHAPES))
        self._populate()

    # -- sample --------------------------------------------------------------------------------
    def _strength(self, r: float) -> float:
        cfg = self.config
        rel = float(np.clip((r / max(self._r_med, 0.5)) ** 0.5, 0.5, 2.0))
        if cfg.mode == "bf":
            c = min((0.4 if cfg.contrast is None else cfg.contrast) * rel, 0.95)
            return -math.log(1.0 - c)
        return (3.0 if cfg.contrast is None else cfg.contrast) * rel * self.optics.haadf_carbon

    def _strengths(self, r: np.ndarray) -> np.ndarray:
        """:meth:`_strength` for many radii at once."""
        cfg = self.config
        rel = np.clip((np.maximum(r, 0.0) / max(self._r_med, 0.5)) ** 0.5, 0.5, 2.0)
        if cfg.mode == "bf":
            c = np.minimum((0.4 if cfg.contrast is None else cfg.contrast) * rel, 0.95)
            return -np.log1p(-c)
        return (3.0 if cfg.contrast is None else cfg.contrast) * rel * self.optics.haadf_carbon

    def _new_grain(self, sy: float, sx: float, r: float, shape: str | None = None) -> _Grain:
        if shape is None:
            shape = SHAPES[int(self.rng.choice(len(SHAPES), p=self._shape_p))]
        p = random_particle(self.rng, sy, sx, r, shape, self._strength(r), self.config.mode)
        g = _Grain(self._next_id, sy, sx, r, p)
        p.id = g.id
        self._next_id += 1
        self.grains[g.id] = g
        return g

    def _in_hole(self, y: float, x: float) -> bool:
        """Is the sample position (y, x) inside a hole of the carbon film?"""
        if self._hole is None:
            return False
        field, thr, _ = self._hole
        Hc, Wc = self.canvas
        return bool(field[int(y) % Hc, int(x) % Wc] > thr)

    def _populate(self) -> None:
        cfg = self.config
        Hc, Wc = self.canvas
        sig = cfg.size_sigma
        mean_area = math.pi * self._r_med**2 * math.exp(2 * sig * sig)
        n = int(np.clip(cfg.coverage_start * Hc * Wc / mean_area, 1, cfg.max_particles))
        radii = np.clip(self._r_med * np.exp(sig * self.rng.standard_normal(n)), 1.0, None)
        centres, placed, _ = place_particles(self.rng, self.canvas, radii,
                                             touch_frac=cfg.touching_fraction)
        for (y, x), i in zip(centres, placed, strict=True):
            y, x = float(y) % Hc, float(x) % Wc
            if not self._in_hole(y, x):
                self._new_grain(y, x, float(radii[i]))

    def _arrays(self):
        ids = np.fromiter(self.grains.keys(), np.int64, len(self.grains))
        pos = np.array([(g.sy, g.sx) for g in self.grains.values()]).reshape(-1, 2)
        rad = np.array([g.r for g in self.grains.values()])
        return ids, pos, rad

    def _coverage(self) -> float:
        Hc, Wc = self.canvas
        return sum(math.pi * g.r * g.r for g in self.grains.values()) / (Hc * Wc)

    def _step_sample(self) -> None:
        cfg, rng = self.config, self.rng
        Hc, Wc = self.canvas
        # drift
        drift = np.asarray(cfg.drift_nm_per_frame, float) / self.nm
        self.offset += drift + rng.normal(0.0, cfg.drift_jitter_nm / self.nm, 2)
        # growth / ripening (nm per frame converted to px)
        if self.grains:
            rs = np.array([g.r for g in self.grains.values()])
            rmean = float(rs.mean())
            # growth is fed by the precursor supply: it fades out once the coverage passes the
            # ramp's target (to zero at 1.5x), so a long session does not fill the frame
            target = max(cfg.coverage_end, cfg.coverage_start)
            cov = float((np.pi * rs * rs).sum()) / (Hc * Wc)
            supply = 1.0 if cov <= target else max(0.0, 1.0 - (cov - target) / (0.5 * target))
            g_px = supply * cfg.growth_nm_per_frame / self.nm
            o_px = cfg.ostwald_nm_per_frame / self.nm
            q = rmean / np.maximum(rs, 0.3)
            rs = rs + g_px + o_px * q * (1.0 - q)
            strengths = self._strengths(rs)
            for (gid, g), r, s in zip(list(self.grains.items()), rs.tolist(), strengths.tolist(),
                                      strict=True):
                g.r = r
                if g.relax > 1.0:
                    g.relax = 1.0 + (g.relax - 1.0) * 0.92
                    g.proto.aspect = g.relax
                    g.proto.invalidate()
                if r < 0.75:
                    del self.grains[gid]
                    self._events.append({"kind": "dissolution", "id": int(gid)})
                    continue
                g.proto.strength = s
        self._step_sintering()
        # nucleation (+ catch-up towards the coverage ramp)
        t = min(1.0, self.seq / max(cfg.ramp_frames, 1))
        target = cfg.coverage_start + (cfg.coverage_end - cfg.coverage_start) * t
        deficit = max(target - self._coverage(), 0.0)
        r_new = 0.6 * self._r_med
        n_new = rng.poisson(cfg.nucleation_per_frame)
        n_new += rng.poisson(0.05 * deficit * Hc * Wc / (math.pi * max(self._r_med, 1) ** 2))
        n_new = min(n_new, max(cfg.max_particles - len(self.grains), 0))
        if n_new:
            ids, pos, rad = self._arrays()
            for _ in range(int(n_new)):
                r = float(np.clip(r_new * math.exp(0.25 * rng.standard_normal()), 0.8, None))
                for _try in range(5):
                    y, x = rng.uniform(0, Hc), rng.uniform(0, Wc)
                    if pos.size:
                        d = np.abs(pos - (y, x))
                        d = np.minimum(d, np.array([Hc, Wc]) - d)
                        if np.any(np.hypot(d[:, 0], d[:, 1]) < (rad + r) * 1.05):
                            continue
                    if self._in_hole(y, x):
                        continue
                    g = self._new_grain(y, x, r)
                    self._events.append({"kind": "nucleation", "id": int(g.id)})
                    pos = np.vstack([pos, (y, x)])
                    rad = np.append(rad, r)
                    break

    def _step_sintering(self) -> None:
        cfg, rng = self.config, self.rng
        Hc, Wc = self.canvas
        box = np.array([Hc, Wc], float)
        # advance running sinters
        still = []
        for s in self.sinters:
            a, b = self.grains.get(s.a), self.grains.get(s.b)
            if a is None or b is None:
                continue
            s.progress += 1.0 / max(cfg.coalescence_frames, 1)
            d = np.array([b.sy - a.sy, b.sx - a.sx])
            d -= box * np.round(d / box)
            va, vb = a.r**3, b.r**3
            if s.progress >= 1.0:
                keep, gone = (a, b) if a.r >= b.r else (b, a)
                cy = a.sy + d[0] * vb / (va + vb)
                cx = a.sx + d[1] * vb / (va + vb)
                rr = (va + vb) ** (1 / 3)
                dist = float(np.hypot(*d))
                p = keep.proto
                merged = Particle(y=0, x=0, r=rr, shape="ellipse",
                                  angle=math.atan2(d[0], d[1]), strength=self._strength(rr),
                                  gamma=p.gamma, fringe=p.fringe, id=keep.id)
                keep.relax = 1.0 + 0.8 * min(dist / (a.r + b.r), 1.0)
                merged.aspect = keep.relax
                keep.proto, keep.sy, keep.sx, keep.r = merged, cy % Hc, cx % Wc, rr
                del self.grains[gone.id]
                self._events.append({"kind": "coalescence", "ids": [int(keep.id), int(gone.id)],
                                     "into": int(keep.id), "start_seq": int(s.start_seq)})
                continue
            # centres approach (shrinkage during neck growth)
            pull = 0.04 * float(np.hypot(*d)) / max(cfg.coalescence_frames, 1)
            u = d / max(float(np.hypot(*d)), 1e-6)
            a.sy, a.sx = (a.sy + u[0] * pull * vb / (va + vb)) % Hc, (
                a.sx + u[1] * pull * vb / (va + vb)) % Wc
            b.sy, b.sx = (b.sy - u[0] * pull * va / (va + vb)) % Hc, (
                b.sx - u[1] * pull * va / (va + vb)) % Wc
            still.append(s)
        self.sinters = still
        if cfg.coalescence_prob <= 0 or len(self.grains) < 2:
            return
        busy = {i for s in self.sinters for i in (s.a, s.b)}
        ids, pos, rad = self._arrays()
        tree = cKDTree(np.mod(pos, box - 1e-9), boxsize=box)
        pairs = tree.query_pairs(r=2.05 * float(rad.max()), output_type="ndarray")
        if len(pairs) == 0:
            return
        d = pos[pairs[:, 1]] - pos[pairs[:, 0]]
        d -= box * np.round(d / box)
        touching = np.hypot(d[:, 0], d[:, 1]) <= (rad[pairs[:, 0]] + rad[pairs[:, 1]]) * 1.02
        cand = pairs[touching]
        start = rng.random(len(cand)) < cfg.coalescence_prob
        for i, j in cand[start].tolist():
            a, b = int(ids[i]), int(ids[j])
            if a in busy or b in busy:
                continue
            self.sinters.append(_Sinter(a, b, start_seq=self.seq))
            busy.update((a, b))

    # -- imaging -------------------------------------------------------------------------------
    def _visible(self) -> tuple[list[Particle], list[Neck]]:
        H, W = self.shape
        Hc, Wc = self.canvas
        parts: list[Particle] = []
        where: dict[int, int] = {}
        oy, ox = self.offset
        for g in self.grains.values():
            p = g.proto
            if p.r != g.r:
                p.r = g.r
                p.invalidate()
            b = p.bound
            y = (g.sy + oy) % Hc
            x = (g.sx + ox) % Wc
            if y > Hc - b:
                y -= Hc
            if x > Wc - b:
                x -= Wc
            if -b < y < H + b and -b < x < W + b:
                p.y, p.x = y, x
                where[g.id] = len(parts)
                parts.append(p)
        necks = []
        for s in self.sinters:
            if s.a in where and s.b in where:
                pa, pb = parts[where[s.a]], parts[where[s.b]]
                if abs(pa.y - pb.y) < Hc / 2 and abs(pa.x - pb.x) < Wc / 2:
                    necks.append(Neck(where[s.a], where[s.b], 0.3 + 0.6 * s.progress))
        return parts, necks

    def _textures(self) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.shape
        Hc, Wc = self.canvas
        oy, ox = (int(round(v)) for v in self.offset)
        r0, c0 = (-oy) % Hc, (-ox) % Wc
        return _wrap_crop(self._grain_tex, r0, c0, H, W), _wrap_crop(self._mottle_tex, r0, c0, H, W)

    def _overlays(self, image: np.ndarray) -> Overlays:
        cfg = self.config
        H, W = self.shape
        ov = Overlays()
        hi = float(cfg.bias + cfg.dose * (2.2 if cfg.mode == "bf" else 12.0))
        lo = float(max(cfg.bias - 3 * cfg.read_noise, 0.0))
        if cfg.banner:
            ov.banner = max(int(round(H * 0.06)), 8)
            ov.banner_value, ov.text_value = lo, hi
        else:
            ov.text_value = hi if cfg.mode == "bf" else hi
        if cfg.scale_bar:
            length_nm = _nice_length(0.2 * W * self.nm)
            length = max(int(round(length_nm / self.nm)), 4)
            thick = max(H // 170, 2)
            if ov.banner:
                y = H - ov.banner + max((ov.banner - thick) // 2, 1)
            else:
                y = H - max(H // 20, 8) - thick
            ov.scale_bar = (y, max(W // 30, 4), length, thick)
        return ov

    def next_frame(self, t_acq: float | None = None) -> SimFrame:
        """Advance the sample by one frame (except for the first call) and image it."""
        self._events = []
        if self.seq > 0:
            self._step_sample()
        H, W = self.shape
        parts, necks = self._visible()
        absorb, thick, labels = draw_particles(parts, self.shape, necks, fragments_new_ids=False)
        grain, mottle = self._textures()
        optics = self.optics
        hole = None
        if self._hole is not None:
            field, thr, k = self._hole
            Hc, Wc = self.canvas
            oy, ox = (int(round(v)) for v in self.offset)
            crop = _wrap_crop(field, (-oy) % Hc, (-ox) % Wc, H, W)
            mask = 1.0 / (1.0 + np.exp(np.clip((thr - crop) * k, -30, 30)))
            hole = (mask.astype(np.float32), 1.5 if optics.mode == "bf" else 0.2, True)
        dose = self.config.dose * float(self.rng.normal(1.0, 0.01))
        optics.dose = dose
        carbon, illum, hole_mask = support_film(optics, self.shape, grain=grain, mottle=mottle,
                                                hole=hole)
        img = form_image(absorb, thick, carbon, illum, optics, self.rng, hole_mask=hole_mask)
        ov = self._overlays(img)
        valid = burn_overlays(img, labels, ov, np.random.default_rng(self._overlay_seed))
        image = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
        particles = self._measure(labels)
        t = self.t0 + self.seq / max(self.config.fps, 1e-9) if t_acq is None else float(t_acq)
        frame = SimFrame(image=image, labels=labels, particles=particles, t_acq=t,
                         nm_per_px=self.nm, mode=self.config.mode, seq=self.seq, valid=valid,
                         stage_offset_px=(float(self.offset[0]), float(self.offset[1])),
                         events=self._events)
        self.seq += 1
        return frame

    def _measure(self, labels: np.ndarray) -> list[dict[str, Any]]:
        H, W = labels.shape
        flat = labels.ravel()
        n = int(flat.max()) + 1 if flat.size else 1
        nz = np.flatnonzero(flat)
        lab = flat[nz]
        area = np.bincount(lab, minlength=n)
        sy = np.bincount(lab, weights=nz // W, minlength=n)
        sx = np.bincount(lab, weights=nz % W, minlength=n)
        border = np.zeros(n, bool)
        for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            border[np.unique(edge)] = True
        out = []
        for pid in np.nonzero(area[1:])[0] + 1:
            g = self.grains.get(int(pid))
            a = float(area[pid])
            out.append({
                "id": int(pid),
                "centroid_yx_px": [float(sy[pid] / a), float(sx[pid] / a)],
                "equivalent_diameter_nm": float(2.0 * math.sqrt(a / math.pi) * self.nm),
                "area_px": int(a),
                "shape": g.proto.shape if g is not None else "fragment",
                "touches_border": bool(border[pid]),
            })
        return out

    def frames(self, n: int):
        """Yield ``n`` successive frames."""
        for _ in range(n):
            yield self.next_frame()


def _connected(labels: np.ndarray) -> bool:  # used by tests / debugging
    eight = np.ones((3, 3), bool)
    for pid, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None and ndimage.label(labels[sl] == pid, structure=eight)[1] > 1:
            return False
    return True
