"""Length units as microscopes write them, normalised to nanometres.

Vendor files spell units in many ways: ``m`` (TIA, Velox, FEI), ``µm`` / ``micron`` (ImageJ,
DigitalMicrograph), ``A`` / ``Å`` (MRC, DigitalMicrograph), ``n_m`` (Berkeley EMD) ... Only
real-space *lengths* become a pixel size. Reciprocal lengths (diffraction: ``1/nm``, ``nm^-1``),
energies (spectra: ``eV``), times, pixels and anything unknown return ``None``, and so does a
value that is not a finite number > 0 (``-10 Å`` is Direct Electron's "uncalibrated" sentinel).

Rules, in order (see :func:`axis_kind`):

1. The unit is normalised: surrounding whitespace and brackets dropped, the micro sign and the
   Greek mu read as ``u``, underscores, inner spaces and dots removed, case folded except that a
   bare upper-case ``A`` is an Ångström (DigitalMicrograph's spelling) and ``Å`` is kept.
2. Anything with ``1/``, ``/`` at the start, ``^-1``, ``-1`` or ``per`` is reciprocal.
3. Energy (``eV``, ``keV``, ``meV``) and time units are spectral / temporal axes.
4. Only names in the length table are lengths.
"""

from __future__ import annotations

import math
import re
from typing import Literal

AxisKind = Literal["length", "reciprocal", "energy", "time", "none", "unknown"]

#: nm per unit, keyed by the normalised unit name.
_LENGTH_NM: dict[str, float] = {
    "km": 1e12,
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "metres": 1e9,
    "cm": 1e7,
    "centimeter": 1e7,
    "centimetre": 1e7,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "micrometre": 1e3,
    "micrometres": 1e3,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "nanometres": 1.0,
    "å": 0.1,
    "a": 0.1,
    "ang": 0.1,
    "angs": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "ångström": 0.1,
    "ångströms": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
}

_ENERGY = {"ev", "kev", "mev", "gev", "electronvolt", "electronvolts"}
_TIME = {"s", "sec", "secs", "second", "seconds", "ms", "us", "ns", "ps", "fs", "min", "h", "hr"}
_NONE = {"", "px", "pix", "pixel", "pixels", "none", "unknown", "undefined", "na", "n/a", "a.u.",
         "au", "arb", "arbitrary", "counts", "number", "index", "frame", "frames"}

_BRACKETS = "[](){}<>'\"`"


def normalise_unit(unit: object) -> str | None:
    """Normalised spelling of ``unit`` (see module docstring), or ``None`` if it is not text."""
    if isinstance(unit, bytes):
        try:
            unit = unit.decode("utf-8")
        except UnicodeDecodeError:
            unit = unit.decode("latin-1")
    if not isinstance(unit, str):
        return None
    u = unit.strip().strip(_BRACKETS).strip()
    u = u.replace("\u00b5", "u").replace("\u03bc", "u")  # micro sign, Greek mu
    u = u.replace("\u212b", "\u00c5")  # ANGSTROM SIGN -> LATIN CAPITAL A WITH RING
    if u == "A":
        return "a"
    u = re.sub(r"[\s_.\x00]+", "", u)
    return u.casefold()


def axis_kind(unit: object) -> AxisKind:
    """What an axis with this unit measures: a real-space ``length``, a ``reciprocal`` length
    (diffraction), an ``energy`` (spectrum), ``time``, ``none`` (pixels / no unit) or ``unknown``."""
    u = normalise_unit(unit)
    if u is None:
        return "unknown"
    if u in _NONE:
        return "none"
    if u.startswith(("1/", "/")) or "^-1" in u or u.endswith("-1") or u.startswith("per") \
            or "⁻¹" in u or u.startswith("inv"):
        return "reciprocal"
    if u in _LENGTH_NM:
        return "length"
    if u in _ENERGY:
        return "energy"
    if u in _TIME:
        return "time"
    return "unknown"


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return v


def length_to_nm(value: object, unit: object) -> float | None:
    """``value`` in ``unit`` expressed in nanometres, or ``None``.

    ``None`` when the unit is not a real-space length (reciprocal, energy, time, pixels,
    unknown) or when the value is not a finite number > 0 (zero, negative sentinels, NaN, inf).

    Examples
    --------
    >>> length_to_nm(2.0, "Å")
    0.2
    >>> length_to_nm(0.0122465, "n_m")
    0.0122465
    >>> length_to_nm(0.17, "1/nm") is None
    True
    """
    v = _as_float(value)
    if v is None or not math.isfinite(v) or v <= 0:
        return None
    if axis_kind(unit) != "length":
        return None
    factor = _LENGTH_NM[normalise_unit(unit)]  # type: ignore[index]
    nm = v * factor
    if not math.isfinite(nm) or nm <= 0:
        return None
    return nm
