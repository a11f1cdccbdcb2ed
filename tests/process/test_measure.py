"""Measurements against analytic shapes and against scikit-image's regionprops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.measure import label as sk_label
from skimage.measure import regionprops

from emstream.frame import Calibration
from emstream.process.measure import measure
from emstream.results import PARTICLE_COLUMNS


def _rotated_ellipse(shape, cy, cx, a, b, deg):
    """Ellipse with semi-axes a (major) and b, major axis at ``deg`` to x, counter-clockwise on
    screen (y up)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    th = math.radians(deg)
    x, y = xx - cx, -(yy - cy)
    u = x * math.cos(th) + y * math.sin(th)
    v = -x * math.sin(th) + y * math.cos(th)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _rotated_rect(shape, cy, cx, length, width, deg):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    th = math.radians(deg)
    x, y = xx - cx, -(yy - cy)
    u = x * math.cos(th) + y * math.sin(th)
    v = -x * math.sin(th) + y * math.cos(th)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def _one(mask, calibration=None, raw=None, valid=None):
    t = measure(mask.astype(np.int32), raw, calibration, valid)
    assert len(t["label"]) == 1
    return {k: v[0] for k, v in t.items()}


def test_columns_and_dtypes_exact():
    lab = np.zeros((20, 20), np.int32)
    lab[3:8, 4:9] = 7
    t = measure(lab, np.ones((20, 20), np.uint16), Calibration((2.0, 2.0), "file"))
    assert list(t) == list(PARTICLE_COLUMNS)
    for name, (dt, _) in PARTICLE_COLUMNS.items():
        assert t[name].dtype == np.dtype(dt), name
        assert t[name].shape == (1,)
    assert t["label"][0] == 7


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (64, 48)])
def test_empty_image_gives_empty_table_of_right_dtypes(shape):
    t = measure(np.zeros(shape, np.int32), np.zeros(shape, np.float32), Calibration.none())
    assert list(t) == list(PARTICLE_COLUMNS)
    for name, (dt, _) in PARTICLE_COLUMNS.items():
        assert t[name].dtype == np.dtype(dt) and t[name].size == 0


def test_disk():
    r = 30.0
    yy, xx = np.mgrid[:128, :128]
    mask = (yy - 64) ** 2 + (xx - 60) ** 2 <= r * r
    p = _one(mask, Calibration((0.5, 0.5), "file"), raw=np.full((128, 128), 100, np.uint16))
    s = 0.5
    assert p["area_nm2"] == pytest.approx(math.pi * r * r * s * s, rel=0.01)
    assert p["equivalent_diameter_nm"] == pytest.approx(2 * r * s, rel=0.01)
    assert p["axis_major_length_nm"] == pytest.approx(2 * r * s, rel=0.01)
    assert p["axis_minor_length_nm"] == pytest.approx(2 * r * s, rel=0.01)
    # Feret from pixel corners: diameter of the digitised disk + about one pixel
    assert 2 * r * s <= p["feret_diameter_min_nm"] <= p["feret_diameter_max_nm"] <= (2 * r + 1.5) * s
    # regionprops' estimator reads smooth outlines ~5 % long
    assert p["perimeter_nm"] == pytest.approx(2 * math.pi * r * s, rel=0.07)
    assert p["aspect_ratio"] == pytest.approx(1.0, abs=0.01)
    assert p["roundness"] == pytest.approx(1.0, abs=0.02)
    assert p["circularity"] > 0.9
    assert p["solidity"] == 1.0  # a digitised disk is digitally convex
    assert (p["centroid_y_px"], p["centroid_x_px"]) == pytest.approx((64.0, 60.0))
    assert p["intensity_mean"] == 100.0
    assert not p["touches_border"]


@pytest.mark.parametrize("deg", [0.0, 30.0, -60.0, 90.0, 135.0])
def test_rotated_ellipse(deg):
    a, b = 40.0, 15.0
    p = _one(_rotated_ellipse((300, 300), 150, 150, a, b, deg))
    assert p["area_px"] == pytest.approx(math.pi * a * b, rel=0.01)
    assert p["axis_major_length_nm"] == pytest.approx(2 * a, rel=0.01)
    assert p["axis_minor_length_nm"] == pytest.approx(2 * b, rel=0.02)
    assert p["aspect_ratio"] == pytest.approx(a / b, rel=0.02)
    assert p["roundness"] == pytest.approx(b / a, rel=0.02)
    expect = (deg + 90) % 180 - 90
    expect = 90.0 if expect == -90 else expect
    diff = (p["orientation_deg"] - expect + 90) % 180 - 90
    assert abs(diff) < 1.0, (p["orientation_deg"], expect)
    assert -90 < p["orientation_deg"] <= 90
    assert 2 * a <= p["feret_diameter_max_nm"] <= 2 * a + 2
    assert 2 * b <= p["feret_diameter_min_nm"] <= 2 * b + 2
    ramanujan = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    assert p["perimeter_nm"] == pytest.approx(ramanujan, rel=0.07)
    assert p["circularity"] == pytest.approx(4 * math.pi * math.pi * a * b / ramanujan**2, rel=0.1)
    assert p["solidity"] > 0.99


def test_square():
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:40] = True  # 20 x 20 px
    p = _one(mask, Calibration((2.0, 2.0), "override"))
    assert p["area_nm2"] == 400 * 4
    assert p["feret_diameter_min_nm"] == pytest.approx(40.0)
    assert p["feret_diameter_max_nm"] == pytest.approx(40.0 * math.sqrt(2))
    # second moments of a 20 px square: var = 20²/12 -> major = 4*sqrt(400/12) px
    assert p["axis_major_length_nm"] == pytest.approx(2 * 4 * math.sqrt(400 / 12))
    assert p["aspect_ratio"] == pytest.approx(1.0)
    assert p["roundness"] == pytest.approx(4 * 400 / (math.pi * 4 * 16 * 400 / 12 / 4), rel=1e-9)
    assert p["solidity"] == 1.0
    assert p["perimeter_nm"] == pytest.approx(2 * 4 * 19)  # regionprops: centre-line 4·(n-1) px
    assert (p["bbox_min_y_px"], p["bbox_min_x_px"], p["bbox_max_y_px"], p["bbox_max_x_px"]) == (
        10, 20, 30, 40,
    )


@pytest.mark.parametrize("deg", [20.0, 45.0, -70.0])
def test_rotated_rectangle(deg):
    length, width = 80.0, 20.0
    p = _one(_rotated_rect((200, 200), 100, 100, length, width, deg))
    assert p["area_px"] == pytest.approx(length * width, rel=0.03)
    assert p["feret_diameter_max_nm"] == pytest.approx(math.hypot(length, width), abs=2.5)
    assert p["feret_diameter_min_nm"] == pytest.approx(width, abs=2.5)
    assert p["axis_major_length_nm"] == pytest.approx(4 * math.sqrt(length**2 / 12), rel=0.02)
    assert p["axis_minor_length_nm"] == pytest.approx(4 * math.sqrt(width**2 / 12), rel=0.04)
    diff = (p["orientation_deg"] - deg + 90) % 180 - 90
    assert abs(diff) < 1.0
    assert p["solidity"] > 0.97
    # regionprops' estimator reads jagged straight edges up to ~8 % long
    assert p["perimeter_nm"] == pytest.approx(2 * (length + width), rel=0.09)


def test_single_pixel_is_finite():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    p = _one(mask, raw=np.ones((5, 5)))
    assert p["feret_diameter_min_nm"] == pytest.approx(1.0)
    assert p["feret_diameter_max_nm"] == pytest.approx(math.sqrt(2))
    assert p["solidity"] == 1.0 and p["circularity"] == 1.0
    assert p["aspect_ratio"] == pytest.approx(1.0)
    for v in p.values():
        assert np.isfinite(v)


def test_anisotropic_pixels_give_right_nm():
    # a disk of radius 20 nm drawn on pixels 0.5 nm tall and 1.0 nm wide
    sy, sx = 0.5, 1.0
    yy, xx = np.mgrid[:120, :80]
    mask = ((yy - 60) * sy) ** 2 + ((xx - 40) * sx) ** 2 <= 20.0**2
    p = _one(mask, Calibration((sy, sx), "file"))
    assert p["equivalent_diameter_nm"] == pytest.approx(40.0, rel=0.01)
    assert p["axis_major_length_nm"] == pytest.approx(40.0, rel=0.02)
    assert p["axis_minor_length_nm"] == pytest.approx(40.0, rel=0.02)
    assert p["aspect_ratio"] == pytest.approx(1.0, abs=0.03)
    assert 40.0 <= p["feret_diameter_min_nm"] <= p["feret_diameter_max_nm"] <= 42.0
    assert p["perimeter_nm"] == pytest.approx(2 * math.pi * 20, rel=0.1)
    assert p["roundness"] == pytest.approx(1.0, abs=0.03)

    # and a 40 x 10 nm rectangle on those pixels: Feret exact in nm
    mask = np.zeros((120, 80), bool)
    mask[10:30, 20:60] = True  # 20 rows * 0.5 = 10 nm tall, 40 cols * 1 = 40 nm wide
    p = _one(mask, Calibration((sy, sx), "file"))
    assert p["feret_diameter_min_nm"] == pytest.approx(10.0)
    assert p["feret_diameter_max_nm"] == pytest.approx(math.hypot(40, 10))
    assert p["orientation_deg"] == pytest.approx(0.0)
    assert p["area_nm2"] == pytest.approx(400.0)


def test_uncalibrated_is_pixels():
    mask = np.zeros((30, 30), bool)
    mask[5:15, 5:15] = True
    p = _one(mask, Calibration.none())
    assert p["area_nm2"] == p["area_px"] == 100


def test_touches_border_edge_and_banner():
    lab = np.zeros((50, 60), np.int32)
    lab[0:5, 10:15] = 1  # top edge
    lab[20:25, 20:25] = 2  # free
    lab[40:45, 30:35] = 3  # next to the banner
    lab[20:25, 55:60] = 4  # right edge
    valid = np.ones_like(lab, bool)
    valid[45:, :] = False
    t = measure(lab, None, None, valid)
    assert t["touches_border"].tolist() == [True, False, True, True]
    t = measure(lab, None, None, None)
    assert t["touches_border"].tolist() == [True, False, False, True]


def test_non_consecutive_labels_and_big_label_values():
    lab = np.zeros((40, 40), np.int64)
    lab[2:6, 2:6] = 5
    lab[10:20, 10:12] = 70_000  # beyond uint16
    lab[30:33, 30:33] = 3
    t = measure(lab, None, None)
    assert t["label"].tolist() == [3, 5, 70_000]
    assert t["area_px"].tolist() == [9, 16, 20]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int64, np.uint64])
def test_label_dtypes(dtype):
    lab = np.zeros((20, 20), dtype)
    lab[2:5, 2:5] = 3
    lab[10:15, 10:12] = 7
    t = measure(lab, None, None)
    assert t["label"].tolist() == [3, 7] and t["area_px"].tolist() == [9, 10]
    if np.iinfo(dtype).max > 2**31:
        lab[0, 0] = np.iinfo(dtype).max
        with pytest.raises(ValueError):
            measure(lab, None, None)
    with pytest.raises(ValueError):
        measure(lab.astype(np.float32), None, None)


def _regionprops_check(lab, raw):
    t = measure(lab, raw, None)
    props = regionprops(lab, raw)
    assert t["label"].tolist() == [p.label for p in props]
    for k, p in enumerate(props):
        assert t["area_px"][k] == p.area
        assert (t["centroid_y_px"][k], t["centroid_x_px"][k]) == pytest.approx(p.centroid)
        assert (
            t["bbox_min_y_px"][k], t["bbox_min_x_px"][k], t["bbox_max_y_px"][k], t["bbox_max_x_px"][k]
        ) == p.bbox
        assert t["perimeter_nm"][k] == pytest.approx(p.perimeter, abs=1e-9)
        assert t["intensity_mean"][k] == pytest.approx(p.intensity_mean)
        assert t["equivalent_diameter_nm"][k] == pytest.approx(p.equivalent_diameter_area)
        # documented: area covariance = regionprops' pixel-centre covariance + 1/12 px²
        assert t["axis_major_length_nm"][k] ** 2 == pytest.approx(
            p.axis_major_length**2 + 16 / 12, abs=1e-6
        )
        assert t["axis_minor_length_nm"][k] ** 2 == pytest.approx(
            p.axis_minor_length**2 + 16 / 12, abs=1e-6
        )
        if p.axis_major_length - p.axis_minor_length > 0.5:
            # regionprops: angle of the major axis to the row axis; ours: to x, y up
            diff = (t["orientation_deg"][k] - (math.degrees(p.orientation) - 90) + 90) % 180 - 90
            assert abs(diff) < 1e-6
        # corner hull vs regionprops' contour of its hull image: within ~1 px
        assert t["feret_diameter_max_nm"][k] == pytest.approx(p.feret_diameter_max, abs=1.5)
        # digital hull of pixel centres is inside regionprops' corner-based hull image
        assert t["solidity"][k] >= p.solidity - 1e-9
        assert 0 < t["solidity"][k] <= 1


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.2, 0.7),
    size=st.tuples(st.integers(8, 70), st.integers(8, 70)),
)
def test_agrees_with_regionprops_on_random_label_images(seed, density, size):
    rng = np.random.default_rng(seed)
    blobs = ndi.gaussian_filter(rng.random(size), 1.5)
    mask = blobs > np.quantile(blobs, 1 - density)
    lab = sk_label(mask, connectivity=1).astype(np.int32)
    # also adjacent particles with different labels (as after a watershed split)
    bands = np.broadcast_to(np.arange(lab.shape[1])[None, :] // 9 * 1000, lab.shape)
    lab[lab > 0] += bands[lab > 0]
    raw = rng.integers(0, 4000, size).astype(np.uint16)
    _regionprops_check(lab, raw)


def test_agrees_with_regionprops_on_touching_particles():
    rng = np.random.default_rng(3)
    lab = np.zeros((100, 100), np.int32)
    yy, xx = np.mgrid[:100, :100]
    for i, (cy, cx, r) in enumerate([(30, 30, 15), (30, 55, 14), (60, 40, 18), (80, 80, 10)], 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    _regionprops_check(lab, rng.random((100, 100)))
