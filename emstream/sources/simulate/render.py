"""The one renderer of the synthetic microscope: particles → projected absorbance → detector counts.

Both the training-data generator (:mod:`.training`) and the time-series microscope (:mod:`.scene`)
draw through these modules, so what the segmenter learns is exactly what the demo shows:

1. :mod:`.particles` — shapes, projected thickness and exact instance truth
   (:func:`draw_particles`, :func:`keep_connected`).
2. :mod:`.optics` — carbon film, illumination, BF/HAADF image formation, blur, noise
   (:func:`support_film`, :func:`form_image`).
3. :mod:`.overlays` — burned-in data bar and scale bar, background in the truth
   (:func:`burn_overlays`).

This module gathers their public names.
"""

from __future__ import annotations

from .optics import (
    POISSON_EXACT_BELOW,
    Optics,
    band_noise,
    form_image,
    periodic_band_noise,
    shot_noise,
    support_film,
)
from .overlays import Overlays, burn_overlays
from .particles import SHAPES, Neck, Particle, draw_particles, keep_connected

__all__ = [
    "SHAPES",
    "Particle",
    "Neck",
    "Optics",
    "Overlays",
    "POISSON_EXACT_BELOW",
    "draw_particles",
    "keep_connected",
    "support_film",
    "form_image",
    "burn_overlays",
    "band_noise",
    "periodic_band_noise",
    "shot_noise",
]
