"""Stage drift: phase correlation of binned frames refined by particle centres."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from emstream.process import drift as D


def _texture(seed: int = 0, shape=(512, 512)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.5).astype(np.float32)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.3, -7.6), (-20.2, 11.5), (60.0, -40.0)])
def test_phase_shift_finds_the_shift_of_the_content(shift):
    img = _texture()
    moved = ndimage.shift(img, shift, order=3, mode="wrap")
    a, f = D.registration_image(img, side=256)
    b, _ = D.registration_image(moved, side=256)
    got = D.phase_shift(a, b, f)
    assert np.allclose(got, shift, atol=0.6), got


def test_overlays_do_not_pin_the_shift_to_zero():
    """A static data bar would correlate at zero shift; invalid pixels are replaced."""
    img = _texture(1)
    moved = ndimage.shift(img, (5.0, 9.0), order=1, mode="wrap")
    valid = np.ones(img.shape, bool)
    valid[-60:] = False
    for im in (img, moved):
        im[-60:] = 40.0  # a bright static banner
    a, f = D.registration_image(img, valid, side=256)
    b, _ = D.registration_image(moved, valid, side=256)
    assert np.allclose(D.phase_shift(a, b, f), (5.0, 9.0), atol=0.8)


@settings(max_examples=40, deadline=None)
@given(dy=st.floats(-30, 30), dx=st.floats(-30, 30), seed=st.integers(0, 1000))
def test_centres_alone_recover_any_shift_within_range(dy, dx, seed):
    rng = np.random.default_rng(seed)
    prev = rng.uniform(0, 1000, (150, 2))
    cur = prev + (dy, dx) + rng.normal(0, 0.05, prev.shape)
    cur = cur[rng.random(len(cur)) > 0.1]  # some particles are missed
    got = D.shift_from_centres(prev, cur, max_shift_px=45)  # |shift| <= 42.5
    assert got is not None
    assert np.allclose(got, (dy, dx), atol=0.2)


def test_refinement_is_subpixel_and_ignores_movers():
    rng = np.random.default_rng(3)
    prev = rng.uniform(0, 1000, (200, 2))
    d = rng.uniform(8, 20, 200)
    true = np.array([1.37, -0.62])
    cur = prev + true + rng.normal(0, 0.05, prev.shape)
    cur[:20] += rng.normal(0, 3, (20, 2))  # particles that moved on the sample
    got, n = D.refine_with_centres(prev, d, cur, d, (1.0, -1.0), radius=4.0)
    assert n > 150
    assert np.allclose(got, true, atol=0.03)


def test_estimator_accumulates_and_goes_on_after_a_restart():
    rng = np.random.default_rng(4)
    pts = rng.uniform(50, 450, (80, 2))
    d = rng.uniform(6, 12, 80)
    est = D.DriftEstimator()
    first = est.update(np.column_stack([pts, d]))
    assert first.method == "first" and first.total == (0.0, 0.0)
    for k in range(1, 4):
        step = est.update(np.column_stack([pts + (2.0 * k, -1.0 * k), d]))
        assert step.method == "centres"
    assert np.allclose(est.total, (6.0, -3.0), atol=0.05)
    resumed = D.DriftEstimator(total=est.total, prev_centres=np.column_stack([pts + (6, -3), d]))
    step = resumed.update(np.column_stack([pts + (8.0, -4.0), d]))
    assert np.allclose(step.total, (8.0, -4.0), atol=0.05)


def test_no_particles_and_no_image_assume_the_stage_still():
    est = D.DriftEstimator()
    est.update(np.zeros((0, 3)))
    step = est.update(np.zeros((0, 3)))
    assert step.method == "none" and step.total == (0.0, 0.0)
