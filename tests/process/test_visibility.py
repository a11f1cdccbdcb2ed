"""emstream.process.visibility: each particle's detectability in the frame, and dropping the
small ones no observer could see (grain blobs a segmenter takes for particles)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emstream.backends.base import InferenceBackend
from emstream.backends.segmenter import LearnedSegmenter
from emstream.process.prepare import prepare
from emstream.process.visibility import contrast_to_noise, drop_faint
from tests.tools.test_train_smoke import load_tool


def _frame(contrasts, radius=4.0, size=192, noise=10.0, seed=0):
    """Flat film with Gaussian noise and dark disks of the given contrasts in a row; labels."""
    rng = np.random.default_rng(seed)
    img = 1000.0 + rng.normal(0, noise, (size, size))
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    step = size // (len(contrasts) + 1)
    for k, c in enumerate(contrasts, 1):
        disk = (yy - size // 2) ** 2 + (xx - k * step) ** 2 <= radius ** 2
        img[disk] -= c
        labels[disk] = k
    return img.astype(np.float32), labels


def test_detectability_follows_the_contrast_and_agrees_with_the_truth_definition():
    img, labels = _frame([3, 8, 20, 60])
    d = contrast_to_noise(img, labels)
    assert np.isnan(d[0]) and np.all(np.diff(d[1:]) > 0)
    ref = load_tool("make_dataset").detectability(img, labels)  # what the truth's d' says
    np.testing.assert_allclose(d[1:], ref[1:], rtol=0.35)
    assert d[1] < 3 < d[3]


@settings(max_examples=25, deadline=None)
@given(gain=st.floats(0.01, 100), offset=st.floats(-1e4, 1e4), seed=st.integers(0, 2**16))
def test_detectability_ignores_gain_and_offset(gain, offset, seed):
    img, labels = _frame([5, 15], seed=seed)
    a = contrast_to_noise(img, labels)
    b = contrast_to_noise(img.astype(np.float64) * gain + offset, labels)
    # d' near 0 (a particle lost in the noise) differs by float rounding alone: an absolute
    # tolerance far below the decision level (3) covers it
    np.testing.assert_allclose(a[1:], b[1:], rtol=5e-3, atol=0.01)


def test_drop_faint_removes_only_small_invisible_particles_and_relabels():
    img, labels = _frame([2, 40, 2])  # faint, plain, faint
    big = np.zeros_like(labels)
    yy, xx = np.mgrid[:192, :192]
    big[(yy - 30) ** 2 + (xx - 96) ** 2 <= 20 ** 2] = 4  # large and faint: never dropped
    labels = labels + big
    img[big > 0] -= 2
    out = drop_faint(labels, img, 3.0)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]  # plain and large kept, 1..n
    assert np.array_equal(out > 0, (labels == 2) | (labels == 4))
    assert drop_faint(labels, img, 0.0) is labels  # nothing below: untouched


def test_unmeasurable_particles_are_kept():
    img, labels = _frame([2])
    valid = labels == 0
    valid[:] = False  # no background anywhere to measure noise or a ring on
    valid[labels > 0] = True
    assert np.isnan(contrast_to_noise(img, labels, valid)[1])
    assert np.array_equal(drop_faint(labels, img, 3.0, valid), labels)


class _Sees(InferenceBackend):
    """A stand-in network that calls the given mask particles, whatever the frame shows."""

    name, device = "fake", "cpu"

    def __init__(self, mask):
        self.mask = mask

    def run(self, batch):
        fg = np.where(self.mask, 8.0, -8.0).astype(np.float32)
        return {"maps": np.stack([fg, fg])[None]}


@pytest.mark.parametrize("min_d", [None, 3.0])
def test_the_learned_segmenter_drops_what_no_observer_could_see_when_asked(min_d):
    img, labels = _frame([60], radius=5, size=256, seed=3)  # one plain particle at x = 128
    yy, xx = np.mgrid[:256, :256]
    grain = (yy - 60) ** 2 + (xx - 60) ** 2 <= 25  # film only: nothing there to see
    seg = LearnedSegmenter(_Sees((labels > 0) | grain),
                           {"threshold": 0.5, "marker_threshold": 0.5,
                            "min_detectability": min_d}, scale=1.0)
    out = seg.segment(prepare(img))
    assert out[128, 128] > 0
    assert (out[60, 60] > 0) == (min_d is None)
    assert out.max() == (2 if min_d is None else 1)
