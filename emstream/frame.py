"""The value that flows out of every source: one 2-D image with its identity and calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: Where a pixel size came from. ``file`` = the file's own metadata (the reader says which tag in
#: ``Calibration.detail``), ``stream`` = the network header, ``override`` = CLI/config, ``none``.
CalibrationSource = Literal["file", "stream", "override", "none"]


@dataclass(frozen=True)
class Calibration:
    """Real-space pixel size in nm per pixel along y (rows) and x (columns), and its provenance.

    ``nm_per_px`` is ``None`` when the frame is uncalibrated; all measurements are then in px.
    """

    nm_per_px: tuple[float, float] | None = None
    source: CalibrationSource = "none"
    detail: str = ""

    def __post_init__(self) -> None:
        if self.nm_per_px is not None:
            y, x = (float(v) for v in self.nm_per_px)
            if not (math.isfinite(y) and math.isfinite(x) and y > 0 and x > 0):
                raise ValueError(f"pixel size must be finite and > 0, got {self.nm_per_px!r}")
            object.__setattr__(self, "nm_per_px", (y, x))

    @classmethod
    def none(cls, detail: str = "") -> Calibration:
        return cls(None, "none", detail)

    @classmethod
    def override(cls, nm_per_px: float) -> Calibration:
        """The operator's ``--pixel-size``, replacing what the file says."""
        p = float(nm_per_px)
        return cls((p, p), "override", f"--pixel-size {p:g} nm")

    @property
    def calibrated(self) -> bool:
        return self.nm_per_px is not None

    @property
    def unit(self) -> str:
        """Length unit of measurements made with this calibration: ``"nm"`` or ``"px"``."""
        return "nm" if self.calibrated else "px"

    @property
    def unit_per_px(self) -> tuple[float, float]:
        """Size of a pixel (y, x) in :attr:`unit`: the pixel size in nm, or 1 uncalibrated."""
        return self.nm_per_px if self.nm_per_px is not None else (1.0, 1.0)

    @property
    def square(self) -> bool:
        if self.nm_per_px is None:
            return True
        y, x = self.nm_per_px
        return math.isclose(y, x, rel_tol=1e-3)


@dataclass
class Frame:
    """One image from the microscope.

    Attributes
    ----------
    pixels : 2-D numpy array in the detector's native dtype (never rescaled by the source).
    seq : monotonic per session, assigned by the pipeline when the frame enters it (-1 before).
    source_id : file path, ``path#index`` for a slice of a stack, or ``stream/series/index``.
    t_acq : acquisition time (POSIX seconds) from metadata, else the file's mtime or arrival.
    t_arrival : when emstream received the frame (POSIX seconds).
    calibration : pixel size and where it came from.
    metadata : raw, JSON-able metadata from the file or message (vendor tags, header fields).
    """

    pixels: np.ndarray
    source_id: str
    t_acq: float
    t_arrival: float
    calibration: Calibration = field(default_factory=Calibration)
    seq: int = -1
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2:
            raise ValueError(f"a frame is a 2-D image, got shape {self.pixels.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


@dataclass
class Prepared:
    """A frame made ready for segmentation by :mod:`emstream.process.prepare`.

    Attributes
    ----------
    image : float32, robustly normalised (background ~0, unit robust spread), polarity unchanged.
    polarity : ``"dark"`` (bright-field: particles darker than background) or ``"bright"``
        (HAADF / dark-field), detected or declared.
    valid : bool mask, False over info banners / scale bars / padding that must never become
        particles; ``None`` when the whole frame is valid.
    raw : the frame's original pixels (for intensity measurements).
    """

    image: np.ndarray
    polarity: Literal["dark", "bright"]
    raw: np.ndarray
    valid: np.ndarray | None = None
