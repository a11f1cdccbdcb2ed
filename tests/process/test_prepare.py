"""prepare(): normalisation, polarity, and the banner / scale-bar mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emstream.frame import Prepared
from emstream.process.prepare import background_level, detect_polarity, find_banner, prepare


def _field(rng, shape=(512, 512), n=40, r=(6, 16), mode="bf", dose=200.0, gradient=0.2):
    """Disks on a noisy film with an illumination gradient; Poisson counts as float32."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    thick = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(*r)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad
        thick[m] = 1.0
        truth[m] = i
    film = 1.0 + gradient * (xx / w - 0.5) + 0.05 * cv2.GaussianBlur(
        rng.standard_normal(shape).astype(np.float32), (0, 0), 1.5
    )
    signal = film * np.exp(-0.8 * thick) if mode == "bf" else film * 0.3 + 1.2 * thick
    signal = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), 1.0)
    return rng.poisson(np.clip(signal, 0, None) * dose).astype(np.float32), truth


def _put_text(img, text, org, scale, value, thickness=1, font=cv2.FONT_HERSHEY_SIMPLEX):
    """cv2.putText for any dtype (OpenCV 5 draws text into 8-bit images only)."""
    mask = np.zeros(img.shape, np.uint8)
    cv2.putText(mask, text, org, font, scale, 255, thickness)
    img[mask > 0] = value
    return img


def _bottom_bar(img, height, value, text_value, rng):
    out = img.copy()
    h, w = out.shape
    out[h - height:, :] = value
    _put_text(out, "HV 200 kV  mag 50kx  WD 5.1 mm", (int(w * 0.3), h - height // 3),
              height / 40.0, text_value)
    return out


def _scale_bar(img, y, x, length, thick, value, text="50 nm"):
    out = img.copy()
    out[y:y + thick, x:x + length] = value
    _put_text(out, text, (x + length // 4, y - 2 * thick), 0.5, value)
    return out


# ---------------------------------------------------------------------------------------------
# normalisation and polarity


def test_normalisation_background_zero_unit_spread():
    rng = np.random.default_rng(0)
    img = rng.normal(1000, 50, (300, 400)).astype(np.float32)
    p = prepare(img)
    assert isinstance(p, Prepared) and p.image.dtype == np.float32
    assert p.raw is img and p.valid is None
    assert abs(float(np.median(p.image))) < 0.1
    mad = 1.4826 * np.median(np.abs(p.image - np.median(p.image)))
    assert mad == pytest.approx(1.0, abs=0.1)


def test_background_level_ignores_particles():
    rng = np.random.default_rng(1)
    bg = rng.normal(500, 10, 60_000)
    particles = rng.normal(300, 10, 40_000)  # 40 % coverage
    level, lo, hi = background_level(np.concatenate([bg, particles]))
    assert level == pytest.approx(500, abs=5)
    assert hi == pytest.approx(10, rel=0.25)


@pytest.mark.parametrize("mode,expect", [("bf", "dark"), ("haadf", "bright")])
@pytest.mark.parametrize("n,dose", [(60, 200.0), (15, 30.0), (250, 500.0)])
def test_polarity_synthetic(mode, expect, n, dose):
    rng = np.random.default_rng(n)
    img, _ = _field(rng, n=n, mode=mode, dose=dose)
    assert detect_polarity(img) == expect
    assert prepare(img).polarity == expect
    assert prepare(img, polarity="bright" if expect == "dark" else "dark").polarity != expect


def test_polarity_declared_and_bad_value():
    img = np.random.default_rng(0).normal(100, 5, (64, 64))
    assert prepare(img, polarity="bright").polarity == "bright"
    with pytest.raises(ValueError):
        prepare(img, polarity="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prepare(np.zeros((0, 4)))


def test_polarity_on_simulator_training_frames():
    import emstream.sources.simulate.training as training
    rng = np.random.default_rng(11)
    right = total = 0
    # until 60 frames count (how many draws that takes varies with the host's floating point:
    # the generator's own choices depend on what it rendered); measured: 56-57 of 60 right
    for _ in range(400):
        if total == 60:
            break
        img, labels, meta = training.training_sample(rng, 256)
        if meta["coverage"] < 0.02 or meta["support"]:
            # nearly empty frames: polarity hardly matters and is not defined well; on a thick
            # support the support, not the particles, sets the frame's look
            continue
        total += 1
        right += prepare(img).polarity == meta["polarity"]
    assert total == 60
    assert right / total >= 0.85


def test_polarity_real_bright_field(shared_data):
    images = sorted((shared_data / "msa-sintering-train" / "images").glob("*.png"))
    if not images:
        pytest.skip("msa-sintering-train images absent")
    for f in images:
        im = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        im = im[..., 0] if im.ndim == 3 else im
        p = prepare(im)
        assert p.polarity == "dark", f.name
        assert p.valid is None, f.name  # no banner in these
        assert prepare(255 - im).polarity == "bright", f.name


# ---------------------------------------------------------------------------------------------
# banners, scale bars, text


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8])
@pytest.mark.parametrize("dark_bar", [True, False])
def test_data_bar_is_masked(dtype, dark_bar):
    rng = np.random.default_rng(2)
    img, _ = _field(rng, shape=(480, 640))
    if dtype == np.uint8:
        img = np.clip(img / img.max() * 230 + 10, 0, 255)
    img = img.astype(dtype)
    lo, hi = (0, 255) if dtype == np.uint8 else (0, 60000)
    bar = 40
    marked = _bottom_bar(img, bar, lo if dark_bar else hi, hi if dark_bar else lo, rng)
    valid = find_banner(marked)
    assert valid is not None
    assert not valid[-bar:].any()  # nothing of the bar is valid
    assert valid[: -bar - 8].all()  # the image above it is (beyond the margin)
    p = prepare(marked)
    assert np.all(p.image[-bar:] == 0)
    assert find_banner(img) is None


def test_top_bar_is_masked():
    rng = np.random.default_rng(3)
    img, _ = _field(rng, shape=(400, 400))
    img[:30] = 0
    _put_text(img, "Sample 7  T = 450 C", (10, 20), 1.2, 5000.0, font=cv2.FONT_HERSHEY_PLAIN)
    valid = find_banner(img)
    assert valid is not None and not valid[:30].any() and valid[40:].all()


@pytest.mark.parametrize("value", [0.0, 65535.0])
def test_scale_bar_and_label_are_masked(value):
    rng = np.random.default_rng(4)
    img, _ = _field(rng, shape=(512, 512))
    marked = _scale_bar(img, 470, 360, 110, 5, value)
    drawn = marked != img
    valid = find_banner(marked)
    assert valid is not None
    assert not (valid & drawn).any()  # no bar or text pixel is valid
    assert valid.mean() > 0.95  # and only a small area is masked
    assert find_banner(img) is None


def test_white_data_bar_and_white_scale_bar_elsewhere():
    rng = np.random.default_rng(12)
    img = rng.poisson(500, (512, 512)).astype(np.uint16)
    img[-80:] = 65535  # a big white data bar ...
    img[300:306, 100:220] = 65535  # ... does not make the same white "common" for a scale bar
    valid = find_banner(img)
    assert valid is not None
    assert not valid[-80:].any() and not valid[300:306, 100:220].any()
    assert valid[:290].all()


def test_label_box_with_bar_and_text():
    rng = np.random.default_rng(5)
    img, _ = _field(rng, shape=(512, 512))
    img[440:500, 20:180] = 0.0
    img[480:486, 35:165] = 9000.0
    _put_text(img, "100 nm", (60, 468), 0.6, 9000.0)
    valid = find_banner(img)
    assert valid is not None
    assert not valid[440:500, 20:180].any()
    assert valid.mean() > 0.95


def test_particles_rods_saturation_and_hole_edges_are_not_banners():
    rng = np.random.default_rng(6)
    h = w = 512
    yy, xx = np.mgrid[:h, :w]
    base = rng.poisson(800, (h, w)).astype(np.float64)
    # saturated bright particles (clipped at the detector maximum) incl. an axis-aligned rod
    base[(yy - 100) ** 2 + (xx - 100) ** 2 < 30**2] = 65535
    base[300:312, 100:260] = 65535  # a saturated rod, rounded below to be rod-like
    base[(yy - 400) ** 2 + (xx - 420) ** 2 < 12**2] = 65535
    # a vacuum hole with a curved edge crossing the bottom right
    hole = (yy - 700) ** 2 + (xx - 700) ** 2 < 330**2
    base[hole] = rng.poisson(3000, int(hole.sum()))
    img = base.astype(np.uint16)
    valid = find_banner(img)
    if valid is not None:
        # the saturated rod is a solid one-valued rectangle: it may be masked, nothing else
        assert (~valid)[:280].sum() == 0 and (~valid)[330:].sum() == 0


def test_simulator_overlays_never_leak():
    import emstream.sources.simulate.training as training
    rng = np.random.default_rng(21)
    with_overlay = 0
    for _ in range(40):
        img, labels, meta = training.training_sample(rng, 256)
        valid = find_banner(img)
        truth = np.zeros(img.shape, bool)
        if meta["banner_rows"]:
            truth[meta["banner_rows"][0]:] = True
        if meta["scale_bar"]:
            y0, y1, x0, x1 = meta["scale_bar"]
            truth[y0:y1, x0:x1] = True
        if truth.any():
            with_overlay += 1
            assert valid is not None
            assert not (valid & truth).any()
            # particles are not masked wholesale (only where they touch an overlay's margin)
            part = labels > 0
            assert (part & ~valid).sum() <= 0.05 * max(part.sum(), 1) + 400
        else:
            assert valid is None
    assert with_overlay >= 10


def test_large_frame_is_searched_strided():
    rng = np.random.default_rng(7)
    img = rng.poisson(300, (2304, 2304)).astype(np.uint16)
    img[-120:] = 0
    _put_text(img, "EHT = 10 kV", (900, 2304 - 50), 2.0, 65535, thickness=3)
    img[300:320, 1800:2200] = 65535
    valid = find_banner(img)
    assert valid is not None
    assert not valid[-120:].any() and not valid[300:320, 1800:2200].any()
    assert valid[:250].all()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(16, 300), st.integers(16, 300)),
    dose=st.floats(20.0, 5000.0),
    dtype=st.sampled_from([np.uint16, np.float32, np.int32, np.float64]),
)
def test_noise_frames_have_no_banner(seed, shape, dose, dtype):
    """Detector frames (Poisson noise, a gradient, blobs) never look like annotations."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    signal = dose * (1 + 0.3 * xx / shape[1]) * (1 - 0.5 * ((yy - shape[0] / 2) ** 2
                                                            + (xx - shape[1] / 3) ** 2 < 100))
    img = rng.poisson(signal).astype(dtype)
    assert find_banner(img) is None
    p = prepare(img)
    assert p.valid is None and np.isfinite(p.image).all()


@pytest.mark.parametrize("dose", [0.02, 0.3, 2.0])
def test_sparse_counting_frames(dose):
    """Electron-counting frames of a few counts per pixel: no banner, (almost) no particles in
    pure noise. Below ~1 count/px the noise is too skewed for the classical detector to stay
    silent (a known limit: sum such frames first), so only the banner is checked there."""
    from emstream.process.classical import ClassicalSegmenter

    for seed in range(3):
        img = np.random.default_rng(seed).poisson(dose, (512, 512)).astype(np.uint16)
        assert find_banner(img) is None
        p = prepare(img)
        assert np.isfinite(p.image).all()
        if dose != 0.3:
            assert ClassicalSegmenter().segment(p).max() <= 4
