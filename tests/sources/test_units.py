"""Unit normalisation: the table, the oddities vendors write, and properties that always hold."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emstream.errors import NotAnImage
from emstream.sources.readers.calibration import calibration_from_axes
from emstream.sources.readers.units import axis_kind, length_to_nm

LENGTHS = {
    "m": 1e9, "cm": 1e7, "mm": 1e6, "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3,
    "microns": 1e3, "micrometer": 1e3, "nm": 1.0, "n_m": 1.0, "NM": 1.0, " nm ": 1.0,
    "[nm]": 1.0, "Å": 0.1, "\u212b": 0.1, "A": 0.1, "angstrom": 0.1, "Ang": 0.1, "pm": 1e-3,
    b"nm": 1.0,
}


@pytest.mark.parametrize(("unit", "factor"), list(LENGTHS.items()))
def test_length_units(unit, factor):
    assert length_to_nm(2.5, unit) == pytest.approx(2.5 * factor, rel=1e-12)


@pytest.mark.parametrize("unit", ["1/nm", "1 / nm", "nm^-1", "1/Å", "1/m", "m-1", "/nm", "per nm"])
def test_reciprocal_is_not_a_length(unit):
    assert axis_kind(unit) == "reciprocal"
    assert length_to_nm(0.17, unit) is None


@pytest.mark.parametrize(("unit", "kind"), [("eV", "energy"), ("keV", "energy"), ("s", "time"),
                                            ("ms", "time"), ("", "none"), ("px", "none"),
                                            ("pixel", "none"), ("[]", "none"), ("furlong", "unknown"),
                                            (None, "unknown"), (3, "unknown")])
def test_non_lengths(unit, kind):
    assert axis_kind(unit) == kind
    assert length_to_nm(1.0, unit) is None


@pytest.mark.parametrize("value", [0, 0.0, -10, -1e-9, math.nan, math.inf, -math.inf, "abc",
                                   None, True, "nan", [1.0]])
def test_bad_values_are_uncalibrated(value):
    assert length_to_nm(value, "nm") is None


def test_numeric_text_values():
    assert length_to_nm("3.1388370544495519e-09", "m") == pytest.approx(3.138837054449552)


finite_pos = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(v=finite_pos)
def test_round_trip_and_scale_consistency(v):
    nm = length_to_nm(v, "nm")
    assert nm == v
    assert length_to_nm(nm / 1e9, "m") == pytest.approx(v, rel=1e-12)
    assert length_to_nm(v, "µm") == pytest.approx(1000 * length_to_nm(v, "nm"), rel=1e-12)
    assert length_to_nm(v, "Å") == pytest.approx(length_to_nm(v, "nm") / 10, rel=1e-12)
    assert length_to_nm(v, "pm") == pytest.approx(length_to_nm(v, "Å") / 100, rel=1e-12)
    assert length_to_nm(-v, "nm") is None


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.floats(), st.integers(), st.text(max_size=12), st.none(), st.binary(max_size=8)),
       unit=st.one_of(st.text(max_size=16), st.binary(max_size=16), st.none(), st.integers()))
def test_never_crashes_and_only_returns_positive_finite(value, unit):
    out = length_to_nm(value, unit)
    assert out is None or (isinstance(out, float) and math.isfinite(out) and out > 0)


@settings(max_examples=100, deadline=None)
@given(y=finite_pos, x=finite_pos)
def test_calibration_keeps_axes_separate(y, x):
    y, x = y % 1000 + 1e-3, x % 1000 + 1e-3
    cal, notes = calibration_from_axes((y, "nm"), (x, "Å"), detail="test")
    assert cal.source == "file" and cal.detail == "test"
    assert cal.nm_per_px == (pytest.approx(y), pytest.approx(x / 10))
    assert bool(notes) == (not math.isclose(y, x / 10, rel_tol=1e-3))


def test_calibration_sentinels_and_non_image_axes():
    cal, _ = calibration_from_axes((-10, "Å"), (-10, "Å"), detail="MRC")
    assert not cal.calibrated and cal.source == "none" and "<= 0" in cal.detail
    cal, _ = calibration_from_axes((1.0, "nm"), (1.0, ""), detail="half")
    assert not cal.calibrated  # one good axis is not enough; never guess the other
    with pytest.raises(NotAnImage, match="reciprocal"):
        calibration_from_axes((0.17, "1/nm"), (0.17, "1/nm"), detail="DM")
    with pytest.raises(NotAnImage, match="energy"):
        calibration_from_axes((1.0, ""), (0.1, "eV"), detail="DM")
