"""Values produced by the processing stages and consumed by the sinks.

The particle table is columnar: ``dict[str, np.ndarray]``, one 1-D array per column, all of the
same length (one row per particle). Length columns ending in ``_nm`` (areas ``_nm2``) hold
nanometres when the frame is calibrated and pixels otherwise; ``FrameResult.unit`` says which.
Column names follow scikit-image ``regionprops`` where one exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from emstream.frame import Calibration, Frame

#: Every particle-table column, its dtype and meaning. Measurement code must produce exactly these.
PARTICLE_COLUMNS: dict[str, tuple[str, str]] = {
    "label": ("int32", "instance label in the label image"),
    "centroid_y_px": ("float64", "centroid row, pixels of the input image"),
    "centroid_x_px": ("float64", "centroid column, pixels of the input image"),
    "bbox_min_y_px": ("int32", "bounding box first row (inclusive)"),
    "bbox_min_x_px": ("int32", "bounding box first column (inclusive)"),
    "bbox_max_y_px": ("int32", "bounding box last row + 1 (exclusive)"),
    "bbox_max_x_px": ("int32", "bounding box last column + 1 (exclusive)"),
    "area_px": ("float64", "area in pixels"),
    "area_nm2": ("float64", "area (nm² or px²)"),
    "equivalent_diameter_nm": ("float64", "diameter of the circle of the same area"),
    "perimeter_nm": ("float64", "perimeter (regionprops 'perimeter' estimator)"),
    "feret_diameter_max_nm": ("float64", "largest caliper diameter"),
    "feret_diameter_min_nm": ("float64", "smallest caliper diameter"),
    "axis_major_length_nm": ("float64", "major axis of the ellipse with the same second moments"),
    "axis_minor_length_nm": ("float64", "minor axis of that ellipse"),
    "orientation_deg": ("float64", "major-axis angle to the image x axis, degrees, (-90, 90]"),
    "aspect_ratio": ("float64", "major / minor axis (ImageJ AR)"),
    "roundness": ("float64", "4·A / (π·major²) (ImageJ Round)"),
    "circularity": ("float64", "4π·A / P² (ImageJ Circ.), capped at 1"),
    "solidity": ("float64", "area / convex hull area"),
    "intensity_mean": ("float64", "mean raw pixel value inside the particle"),
    "touches_border": ("bool", "the particle touches the image edge or an invalid (banner) region"),
}

#: ImageJ "Analyze Particles" headers for the CSV export option.
IMAGEJ_HEADERS: dict[str, str] = {
    "area_nm2": "Area",
    "perimeter_nm": "Perim.",
    "feret_diameter_max_nm": "Feret",
    "feret_diameter_min_nm": "MinFeret",
    "axis_major_length_nm": "Major",
    "axis_minor_length_nm": "Minor",
    "orientation_deg": "Angle",
    "aspect_ratio": "AR",
    "roundness": "Round",
    "circularity": "Circ.",
    "solidity": "Solidity",
    "intensity_mean": "Mean",
    "centroid_x_px": "X",
    "centroid_y_px": "Y",
}

ParticleTable = dict[str, np.ndarray]


def empty_particle_table() -> ParticleTable:
    return {name: np.zeros(0, dtype=dt) for name, (dt, _) in PARTICLE_COLUMNS.items()}


@dataclass
class FrameSummary:
    """Frame-level statistics. Diameters are equivalent circular diameters in ``unit``."""

    count: int
    coverage: float  # particle area / valid image area, 0..1
    unit: str  # "nm" or "px"
    mean_diameter: float = float("nan")
    std_diameter: float = float("nan")
    d10: float = float("nan")
    d50: float = float("nan")
    d90: float = float("nan")
    min_diameter: float = float("nan")
    max_diameter: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FrameResult:
    """Everything measured on one frame.

    ``labels`` (int32 instance image) is kept only on request (GUI, snapshots); ``frame`` keeps the
    pixels for display sinks and is dropped by sinks that persist.
    """

    frame: Frame
    particles: ParticleTable
    summary: FrameSummary
    backend: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    valid: np.ndarray | None = None
    t_done: float = field(default_factory=time.time)
    #: the segmenter's confidence in this frame, 0..1 (``None``: the segmenter gives none)
    confidence: float | None = None
    #: the resampling factor the network ran at (learned segmenter; ``None`` otherwise)
    seg_scale: float | None = None
    #: which look of the frame the learned segmenter kept (``"plain"``, or a second look at an
    #: unsure frame: ``"local background"``, ``"coarse x0.5"`` ...); ``None``: it says nothing
    seg_view: str | None = None
    #: why this frame's segmentation is doubtful (``process.confidence``), ``None`` when fine
    seg_flag: str | None = None
    #: each particle's track (``process.track``; ``None``: not tracked), aligned with the rows
    track_ids: np.ndarray | None = None
    #: cumulative stage drift since the session's first frame, px (y, x); ``None``: not tracked
    drift_px: tuple[float, float] | None = None
    #: can the frame be trusted (``process.quality.STATES``), and the figures behind it
    state: str = "ok"
    quality: dict[str, Any] | None = None
    #: do this frame's particles count in the statistics, trends and rules? Set by the pipeline
    #: from its ``trusted_states`` (``--include-states``); ``None``: ``state`` is ok or moved
    trusted: bool | None = None

    @property
    def is_trusted(self) -> bool:
        if self.trusted is not None:
            return self.trusted
        return self.state in ("ok", "moved")  # process.quality.TRUSTED_STATES

    @property
    def seq(self) -> int:
        return self.frame.seq

    @property
    def calibration(self) -> Calibration:
        return self.frame.calibration

    @property
    def unit(self) -> str:
        return self.frame.calibration.unit

    @property
    def drift(self) -> tuple[float, float] | None:
        """:attr:`drift_px` in the frame's unit (nm, or px uncalibrated); ``None``: not tracked."""
        if self.drift_px is None:
            return None
        sy, sx = self.frame.calibration.unit_per_px
        return self.drift_px[0] * sy, self.drift_px[1] * sx

    @property
    def lag_s(self) -> float:
        """Seconds from acquisition to the end of processing."""
        return self.t_done - self.frame.t_acq


#: A lag below minus this many seconds means the frames' acquisition times are ahead of this
#: computer's clock (microscope PC clock skew, or a simulator faster than its frame rate).
CLOCK_AHEAD_S = 0.5


def clock_ahead(lag_s: Any) -> bool:
    """Is a lag (:attr:`FrameResult.lag_s`) a sign of the acquisition clock running ahead?"""
    return isinstance(lag_s, (int, float)) and lag_s < -CLOCK_AHEAD_S


FrameStatus = Literal["ok", "quarantined", "skipped"]


@dataclass
class FrameRecord:
    """The terminal status of one frame: every frame gets exactly one.

    For ``ok`` frames ``result`` is set; for ``quarantined`` / ``skipped`` ``reason`` says why.
    """

    seq: int
    source_id: str
    status: FrameStatus
    t_arrival: float
    reason: str = ""
    result: FrameResult | None = None
    t_acq: float | None = None
    calibration: Calibration | None = None


Severity = Literal["info", "warning", "critical"]


@dataclass
class Alert:
    """A rule fired (or a built-in watchdog did)."""

    rule: str
    severity: Severity
    seq: int | None  # frame that triggered it; None for stall / disk alerts
    message: str
    t: float = field(default_factory=time.time)
    particle_labels: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    builtin: bool = False
    #: snapshot PNG of the frame with its overlay, relative to the session folder (if requested)
    snapshot: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "seq": self.seq,
            "message": self.message,
            "t": self.t,
            "particle_labels": list(self.particle_labels),
            "actions": list(self.actions),
            "builtin": self.builtin,
            "snapshot": self.snapshot,
        }


@dataclass
class Event:
    """Something worth logging that is not a frame or an alert (gap, calibration change, stall)."""

    kind: str
    message: str
    t: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)
