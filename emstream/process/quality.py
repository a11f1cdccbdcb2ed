"""Frame state: can this frame be trusted, and if not, why (pure numpy).

Every frame gets the figures below, measured on a copy binned to about 256 px a side (a few ms
at 1024²), and a ``state``:

``ok``, ``beam_off`` (dose below 5 % of the session's, or below 40 % with no structure above
the noise: the detector's offset only), ``underexposed`` (mean counts below 40 % of the
session's: raw counts include the detector offset),
``saturated`` (over 1 % of the valid pixels at the detector's ceiling), ``empty`` (no particles and
almost no structure above the noise: vacuum, a hole), ``out_of_focus`` (the share of signal power
at fine detail fell below 55 % of the session's in-focus frames), ``motion_blur`` (fine detail
lost along one direction only), ``moved`` (the field jumped: a drift step over a fifth of the
frame).

The figures (``quality`` dict):

- ``dose``: mean counts per pixel over the valid area; ``dose_ratio`` to the session's;
- ``saturated_share``: valid pixels at the ceiling (the dtype's maximum for integer frames, or
  the frame's maximum when more than 1 % of the pixels share it; 0 for 8-bit files, which are
  exports whose white is a contrast stretch);
- ``focus``: noise-corrected power spectrum of the binned frame: power in the fine band (0.12–0.3
  cycles/px) over power in the coarse band (0.02–0.08), each minus the white shot-noise floor
  measured at the highest frequencies — so the figure follows the detail the specimen shows, not
  the dose; ``focus_ratio`` to the session's in-focus reference;
- ``anisotropy``: fine-band power of the weakest direction over the strongest (8 sectors), and
  ``blur_deg``: the weak direction (a smear along it); ``structure``: noise-corrected signal
  variance over the noise variance;
- ``drift_step_px``: the drift since the frame before, when the tracker measured it.

Thresholds are relative to the session: the reference is the median of the last ``window``
frames that were ``ok`` (the first ``warmup`` frames only build it, and are judged on the absolute
figures: saturation, structure). A session that starts defocused therefore takes its defocus as
the reference — the state says "changed", which is what the operator needs to know. A ``moved``
frame starts the reference again (a new field has its own detail and density).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import scipy.fft

__all__ = ["STATES", "TRUSTED_STATES", "QUALITY_FIELDS", "QualitySettings", "FrameQuality", "QualityMonitor", "measure_quality"]

STATES = ("ok", "out_of_focus", "motion_blur", "beam_off", "underexposed", "saturated", "empty",
          "moved")

_SIDE = 256

#: states whose measurements statistics and rules use by default (a moved field still measures
#: right: the frame is sharp and exposed; only its place changed)
TRUSTED_STATES = ("ok", "moved")

#: the figures a rule may test as ``frame.<name>`` ranges
QUALITY_FIELDS = ("dose", "dose_ratio", "saturated_share", "focus", "focus_ratio", "anisotropy",
                  "structure", "drift_step_px")


@dataclass
class QualitySettings:
    beam_off_ratio: float = 0.05
    underexposed_ratio: float = 0.4
    saturated_share: float = 0.01
    focus_ratio: float = 0.55
    anisotropy: float = 0.45
    empty_structure: float = 0.05
    moved_fraction: float = 0.2
    window: int = 20
    warmup: int = 3


@dataclass
class FrameQuality:
    state: str
    quality: dict[str, Any] = field(default_factory=dict)


def _binned(image: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The frame binned to at most ``2 * _SIDE`` px a side (fine enough to see defocus: binning
    by 4 would average it away)."""
    h, w = image.shape[:2]
    f = max(1, int(math.ceil(max(h, w) / (2 * _SIDE))))
    hb, wb = h // f, w // f
    img = np.asarray(image)[: hb * f, : wb * f]
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    small = cv2.resize(img, (wb, hb), interpolation=cv2.INTER_AREA).astype(np.float32)
    v = None
    if valid is not None and not bool(valid.all()):
        v = cv2.resize((~valid[: hb * f, : wb * f]).astype(np.uint8) * 255, (wb, hb),
                       interpolation=cv2.INTER_AREA) == 0
    return small, v


def _power(small: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    """Mean power spectrum (fft-shifted) of up to four ``_SIDE``² tiles covering the frame: the
    whole field counts, not only its middle (a sparse HAADF field varies tile to tile)."""
    img = small.copy()
    if v is not None and v.any():
        img[~v] = float(img[v].mean())
    h, w = img.shape
    th, tw = min(h, _SIDE), min(w, _SIDE)
    ys = sorted({0, h - th}) if h >= 2 * th else [(h - th) // 2]
    xs = sorted({0, w - tw}) if w >= 2 * tw else [(w - tw) // 2]
    win = np.outer(np.hanning(th), np.hanning(tw)).astype(np.float32)
    acc = np.zeros((th, tw), np.float64)
    for y in ys:
        for x in xs:
            tile = img[y:y + th, x:x + tw]
            spec = scipy.fft.fft2((tile - tile.mean()) * win)  # float32 in: complex64, fast
            acc += spec.real.astype(np.float64) ** 2 + spec.imag.astype(np.float64) ** 2
    return np.fft.fftshift(acc / (len(ys) * len(xs)))


@functools.lru_cache(maxsize=8)
def _bands(h: int, w: int) -> tuple[np.ndarray, ...]:
    """Flat indices of the spectrum's bands for an ``h`` x ``w`` (fft-shifted) power map: the
    noise floor, coarse, fine, the eight fine sectors, and everything but the centre."""
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    r = np.hypot(fy, fx).ravel()
    theta = (np.degrees(np.arctan2(fy, fx)) % 180.0).ravel()
    fine = (r >= 0.12) & (r < 0.3)
    sectors = tuple(np.flatnonzero(fine & (theta >= 22.5 * k) & (theta < 22.5 * (k + 1)))
                    for k in range(8))
    return (np.flatnonzero((r > 0.42) & (r < 0.5)), np.flatnonzero((r >= 0.02) & (r < 0.08)),
            np.flatnonzero(fine), *sectors, np.flatnonzero(r > 0.01))


def _spectrum_figures(small: np.ndarray, v: np.ndarray | None) -> dict[str, float]:
    p = _power(small, v)
    floor_i, coarse_i, fine_i, *sector_i, rest_i = _bands(*p.shape)
    p = p.ravel()
    floor = float(np.median(p[floor_i])) if floor_i.size else 0.0
    coarse = float(np.mean(p[coarse_i])) - floor
    fine = float(np.mean(p[fine_i])) - floor
    sectors = [max(float(np.mean(p[i])) - floor, 0.0) if i.size else 0.0 for i in sector_i]
    smax = max(sectors)
    k_min = int(np.argmin(sectors))
    total = float(np.mean(p[rest_i]))
    return {
        "focus": max(fine, 0.0) / max(coarse, 1e-12),
        "anisotropy": min(sectors) / smax if smax > 0 else 1.0,
        # the sharpest direction's fine detail (a smear keeps it, defocus loses it too)
        "sharpest": smax / max(coarse, 1e-12),
        # power is lost across the smear: the weak sector's frequencies point across it
        "blur_deg": (22.5 * k_min + 11.25 + 90.0) % 180.0,
        "structure": max(total - floor, 0.0) / max(floor, 1e-12),
    }


def measure_quality(image: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Any]:
    """The frame's figures (see the module docstring), without any judgement."""
    img = np.asarray(image)
    n_valid = int(valid.sum()) if valid is not None and valid.shape == img.shape else img.size
    # (burned-in bars are never at the detector's ceiling: the whole frame is counted, no copy)
    if img.dtype == np.uint8:
        # an 8-bit file is an export (PNG, JPEG, a figure): its white is the contrast stretch,
        # not the detector's ceiling
        share = 0.0
    elif np.issubdtype(img.dtype, np.integer):
        share = float(np.count_nonzero(img >= np.iinfo(img.dtype).max)) / max(n_valid, 1)
    else:
        top = float(img.max()) if img.size else 0.0
        share = float(np.count_nonzero(img >= top)) / max(n_valid, 1)
        share = share if share > 0.01 else 0.0
    small, v = _binned(img, valid)
    dose = float(small[v].mean()) if v is not None and v.any() else float(small.mean())
    out: dict[str, Any] = {"dose": round(dose, 3), "saturated_share": round(share, 5)}
    out.update({k: round(v_, 5) for k, v_ in _spectrum_figures(small, v).items()})
    return out


class QualityMonitor:
    """Judges frames against the session's own recent good frames; :meth:`judge` in order."""

    def __init__(self, settings: QualitySettings | None = None):
        self.settings = s = settings or QualitySettings()
        self._dose: deque[float] = deque(maxlen=s.window)
        self._focus: deque[float] = deque(maxlen=s.window)
        self._aniso: deque[float] = deque(maxlen=s.window)
        self._structure: deque[float] = deque(maxlen=s.window)
        self._sharpest: deque[float] = deque(maxlen=s.window)

    def judge(self, image: np.ndarray, valid: np.ndarray | None = None, *, particles: int = -1,
              drift_step_px: tuple[float, float] | None = None) -> FrameQuality:
        """The frame's state and figures; ``particles``: how many were segmented (-1: not
        known), ``drift_step_px``: the stage drift since the frame before (tracker)."""
        s = self.settings
        q = measure_quality(image, valid)
        ready = len(self._dose) >= s.warmup
        ref = {k: float(np.median(d)) for k, d in (("dose", self._dose), ("focus", self._focus),
                                                    ("anisotropy", self._aniso),
                                                    ("structure", self._structure),
                                                    ("sharpest", self._sharpest)) if d}
        if ready:
            q["dose_ratio"] = round(q["dose"] / max(ref["dose"], 1e-9), 4)
            q["focus_ratio"] = round(q["focus"] / max(ref["focus"], 1e-12), 4)
        if drift_step_px is not None:
            q["drift_step_px"] = round(math.hypot(*drift_step_px), 3)
        h, w = np.asarray(image).shape[:2]
        smeared = ready and (q["anisotropy"] < s.anisotropy * max(ref.get("anisotropy", 1.0), 1e-9)
                             and q["sharpest"] >= 0.5 * ref.get("sharpest", 0.0))
        state = "ok"
        if q["saturated_share"] > s.saturated_share:
            state = "saturated"
        elif ready and (q["dose_ratio"] < s.beam_off_ratio or (
                q["dose_ratio"] < s.underexposed_ratio and q["structure"] < s.empty_structure
                * max(ref.get("structure", 1.0), 1e-9))):
            state = "beam_off"  # dark, or dim and flat (the detector's offset and noise only)
        elif ready and q["dose_ratio"] < s.underexposed_ratio:
            state = "underexposed"
        elif particles == 0 and q["structure"] < s.empty_structure * max(
                ref.get("structure", 1.0), 1e-9):
            state = "empty"
        elif drift_step_px is not None and (
                math.hypot(*drift_step_px) > s.moved_fraction * min(h, w)):
            state = "moved"
        elif ready and smeared:
            state = "motion_blur"  # detail lost along one direction, kept across it
        elif ready and q["focus_ratio"] < s.focus_ratio:
            state = "out_of_focus"  # detail lost all round
        if state == "moved":  # a new field: its own reference, built again from here
            for d in (self._dose, self._focus, self._aniso, self._structure, self._sharpest):
                d.clear()
        if state in ("ok", "moved"):
            self._dose.append(q["dose"])
            self._focus.append(q["focus"])
            self._aniso.append(q["anisotropy"])
            self._structure.append(q["structure"])
            self._sharpest.append(q["sharpest"])
        return FrameQuality(state, q)


#: built-in alerts on frame states: (state, consecutive frames, rule name, severity)
STATE_ALERTS = (
    ("out_of_focus", 3, "focus lost", "warning"),
    ("motion_blur", 3, "frames smeared", "warning"),
    ("beam_off", 2, "beam off", "warning"),
    ("saturated", 3, "camera saturated", "warning"),
    ("moved", 1, "field moved", "info"),
    ("empty", 3, "empty field", "info"),
)


class StateAlerts:
    """Built-in alerts when frames stop being trustworthy: once per run of a state (``N``
    consecutive frames in it, :data:`STATE_ALERTS`), armed again by an ``ok`` frame."""

    def __init__(self) -> None:
        self._run: dict[str, int] = {}
        self._fired: set[str] = set()

    def check(self, seq: int, state: str, quality: dict[str, Any], t: float) -> list[Any]:
        from emstream.results import Alert

        if state == "ok":
            self._run.clear()
            self._fired.clear()
            return []
        self._run = {state: self._run.get(state, 0) + 1}
        out = []
        for st, n, name, severity in STATE_ALERTS:
            if st == state and self._run[st] >= n and st not in self._fired:
                self._fired.add(st)
                figures = ", ".join(f"{k} {v:.3g}" for k, v in quality.items()
                                    if k in ("focus_ratio", "dose_ratio", "saturated_share",
                                             "anisotropy", "drift_step_px")
                                    and isinstance(v, (int, float)))
                out.append(Alert(name, severity, seq,  # type: ignore[arg-type]
                                 f"{name}: {n} frame{'s' if n > 1 else ''} {st.replace('_', ' ')} "
                                 f"(frame {seq}{'; ' + figures if figures else ''}); statistics "
                                 "leave such frames out", t=t, builtin=True,
                                 actions=["banner", "log", "publish"]))
        return out


#: what a frame shows, from the measured morphology of what was segmented
SCENES = ("particles", "rods", "film", "aggregates", "none")


def scene_of(particles: dict[str, np.ndarray], coverage: float) -> str:
    """``particles`` (separable particles: sizes mean something), ``rods`` (most of the area in
    objects longer than 3x their width: wires, rods — their "diameter" is not a size),
    ``film`` (one connected object covers most of the field: a continuous film or support),
    ``aggregates`` (most of the area in large, ragged objects, solidity < 0.7: clusters that do
    not split into particles) or ``none`` (nothing segmented). From the particle table of the
    frame and its coverage (0..1)."""
    area = np.asarray(particles.get("area_px", np.zeros(0)), float)
    if area.size == 0 or area.sum() <= 0:
        return "none"
    total = float(area.sum())
    if coverage > 0.5 and float(area.max()) > 0.6 * total:
        return "film"
    ar = np.asarray(particles.get("aspect_ratio", np.ones(area.size)), float)
    if float(area[np.nan_to_num(ar, nan=1.0) > 3.0].sum()) > 0.5 * total:
        return "rods"
    sol = np.asarray(particles.get("solidity", np.ones(area.size)), float)
    big = area > 10 * float(np.median(area))
    if area.size >= 2 and float(area[big & (np.nan_to_num(sol, nan=1.0) < 0.7)].sum()) > \
            0.5 * total:
        return "aggregates"
    return "particles"
