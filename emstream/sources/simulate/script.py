"""Scripted microscope events for the simulator: what goes wrong during a real session.

A script is a comma-separated list of ``effect:first-last`` (frames, inclusive; one frame:
``effect:N``), e.g. ``defocus:40-59,blank:80-84,jump:100,saturate:120-124,empty:140-149,
smear:160-164``. Effects and the frame state they should produce (``process.quality``):

``defocus``  the image blurred (Gaussian, sigma 3 px): ``out_of_focus``
``smear``    a 15 px motion smear along x: ``motion_blur``
``blank``    the beam blanked: detector bias and read noise only: ``beam_off``
``dim``      the dose cut to 15 %: ``underexposed``
``saturate`` the camera saturated: the brightest tenth of the pixels clipped: ``saturated``
``empty``    the stage over a hole: no particles, vacuum: ``empty``
``jump``     the stage jumps by 40 % of the frame (the new field is drawn): ``moved``

:func:`apply` changes the microscope (jumps) and the rendered frame, and returns the state the
frame should be judged; the writers record it in the manifest as ``state``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["EFFECTS", "ScriptEvent", "parse_script", "state_at", "apply"]

#: effect -> the frame state it should produce
EFFECTS = {"defocus": "out_of_focus", "smear": "motion_blur", "blank": "beam_off",
           "dim": "underexposed", "saturate": "saturated", "empty": "empty", "jump": "moved"}


@dataclass(frozen=True)
class ScriptEvent:
    effect: str
    first: int
    last: int


def parse_script(text: str | None) -> list[ScriptEvent]:
    """``"defocus:40-59,jump:100"`` -> events; a clear ``ValueError`` on anything else."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        effect, _, span = part.partition(":")
        effect = effect.strip().lower()
        if effect not in EFFECTS:
            raise ValueError(f"unknown script effect {effect!r} (one of {', '.join(EFFECTS)})")
        a, _, b = span.partition("-")
        try:
            first, last = int(a), int(b) if b else int(a)
        except ValueError as exc:
            raise ValueError(f"script item {part!r}: frames must be N or N-M") from exc
        if first < 0 or last < first:
            raise ValueError(f"script item {part!r}: frames must be N or N-M with N <= M")
        out.append(ScriptEvent(effect, first, last))
    return out


def state_at(events: list[ScriptEvent], k: int) -> str:
    """The state frame ``k`` should get (``ok`` when no event covers it)."""
    for e in events:
        if e.first <= k <= e.last:
            return EFFECTS[e.effect]
    return "ok"


def before_frame(events: list[ScriptEvent], scope, k: int) -> None:
    """Changes to the sample before frame ``k`` is drawn (a stage jump)."""
    for e in events:
        if e.effect == "jump" and e.first == k:
            h, w = scope.shape
            scope.offset += (0.4 * h, 0.4 * w)


def apply(events: list[ScriptEvent], scope, frame, k: int) -> str:
    """Change the rendered ``frame`` (a ``SimFrame``) for the events covering frame ``k``;
    returns the state it should be judged."""
    state = state_at(events, k)
    effect = next((e.effect for e in events if e.first <= k <= e.last), None)
    if effect is None or effect == "jump":
        return state
    cfg = scope.config
    rng = np.random.default_rng(k)
    img = frame.image.astype(np.float32)
    ceiling = float(np.iinfo(np.uint16).max)
    if effect == "defocus":
        img = ndimage.gaussian_filter(img, 3.0)
    elif effect == "smear":
        img = ndimage.uniform_filter1d(img, 15, axis=1)
    elif effect == "blank":
        img = cfg.bias + rng.normal(0, cfg.read_noise, img.shape)
    elif effect == "dim":
        img = cfg.bias + rng.poisson(np.maximum(img - cfg.bias, 0) * 0.15)
    elif effect == "saturate":  # exposure raised until the brightest tenth clips
        img = (img - cfg.bias) * ceiling / max(float(np.percentile(img, 90)) - cfg.bias, 1.0) \
            + cfg.bias
    elif effect == "empty":
        level = float(np.median(img))
        img = rng.poisson(np.full(img.shape, max(level - cfg.bias, 1.0))) + cfg.bias
        frame.particles = []
        frame.labels = np.zeros_like(frame.labels)
    if frame.valid is not None:  # burned-in bars stay as they were
        img = np.where(frame.valid, img, frame.image)
    frame.image = np.clip(np.rint(img), 0, ceiling).astype(np.uint16)
    return state
