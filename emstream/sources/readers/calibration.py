"""Turn per-axis (value, unit) pairs from a file into a :class:`~emstream.frame.Calibration`.

Rules (shared by every reader, so every format behaves the same):

* Each axis is converted on its own with :func:`~emstream.sources.readers.units.length_to_nm`;
  y and x are never averaged. Non-square pixels are kept as they are and reported in the
  returned notes (and logged), because a silent average would bias every Feret diameter.
* A reciprocal-space axis (``1/nm`` ...) means a diffraction pattern and an energy axis a
  spectrum: both raise :class:`~emstream.errors.NotAnImage` with the reason.
* A missing, unit-less, unknown-unit, zero or negative (sentinel) size on either axis leaves the
  frame uncalibrated (``Calibration.none``) with ``detail`` saying why, so the operator sees
  "uncalibrated: pixel size -10 A <= 0" rather than a made-up number.
"""

from __future__ import annotations

import logging
import math

from emstream.errors import NotAnImage
from emstream.frame import Calibration

from .units import axis_kind, length_to_nm

log = logging.getLogger(__name__)

Axis = tuple[object, object]  # (value, unit)


def _fmt(value: object, unit: object) -> str:
    u = unit.decode("latin-1", "replace") if isinstance(unit, bytes) else unit
    return f"{value!s} {u!s}".strip()


def reject_non_image_axis(unit: object, what: str = "axis") -> None:
    """Raise :class:`NotAnImage` when ``unit`` marks reciprocal space, energy or time."""
    kind = axis_kind(unit)
    if kind == "reciprocal":
        raise NotAnImage(f"diffraction pattern: {what} calibrated in reciprocal space ({unit!s}), "
                         "not a real-space image")
    if kind == "energy":
        raise NotAnImage(f"spectrum: {what} calibrated in energy ({unit!s}), not an image")
    if kind == "time":
        raise NotAnImage(f"{what} calibrated in time ({unit!s}): a time series, not an image axis")


def calibration_from_axes(y: Axis, x: Axis, *, detail: str) -> tuple[Calibration, list[str]]:
    """Calibration from the file's y (rows) and x (columns) pixel sizes.

    Parameters
    ----------
    y, x : ``(value, unit)`` as the file writes them (value may be a number or numeric text).
    detail : the tag(s) the values came from, e.g. ``"DM ImageTags Calibrations"``; becomes
        ``Calibration.detail``.

    Returns
    -------
    (calibration, notes) : notes are human-readable warnings (non-square pixels, one axis only,
        sentinel values) for the frame's metadata.

    Raises
    ------
    NotAnImage
        when either axis is reciprocal (diffraction), energy (spectrum) or time.
    """
    reject_non_image_axis(y[1], "y axis")
    reject_non_image_axis(x[1], "x axis")
    ny = length_to_nm(*y)
    nx = length_to_nm(*x)
    notes: list[str] = []
    if ny is None or nx is None:
        bad = [f"{name}={_fmt(*ax)}" for name, ax, nm in (("y", y, ny), ("x", x, nx)) if nm is None]
        why = _why_unusable(y if ny is None else x)
        return Calibration.none(f"{detail}: uncalibrated ({', '.join(bad)}: {why})"), notes
    if not math.isclose(ny, nx, rel_tol=1e-3):
        msg = (f"non-square pixels from {detail}: y={ny:.6g} nm, x={nx:.6g} nm "
               "(kept per axis, not averaged)")
        notes.append(msg)
        log.warning(msg)
    return Calibration((ny, nx), "file", detail), notes


def calibration_from_pixel_size(value: object, unit: object, *, detail: str
                                ) -> tuple[Calibration, list[str]]:
    """Square-pixel shortcut for formats with one pixel size (e.g. a scalar in a header)."""
    return calibration_from_axes((value, unit), (value, unit), detail=detail)


def _why_unusable(axis: Axis) -> str:
    value, unit = axis
    kind = axis_kind(unit)
    if kind in ("none", "unknown"):
        return "no length unit" if kind == "none" else f"unknown unit {unit!r}"
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "not a number"
    if not math.isfinite(v):
        return "not finite"
    if v <= 0:
        return "size <= 0 (uncalibrated sentinel)"
    return "unusable"
