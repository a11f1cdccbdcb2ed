"""The learned segmenter's scale policy and per-frame confidence, with a stand-in network.

The stand-in calls a pixel "particle" where the normalised image is bright, so what is tested is
the segmenter's own logic: the coarse pass, the resampling decision, the mirror-view agreement.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emstream.backends.base import InferenceBackend
from emstream.backends.segmenter import (
    SCALE_MAX_D,
    SCALE_MIN_SIDE,
    SCALE_TARGET_D,
    LearnedSegmenter,
    confidence,
)
from emstream.process.prepare import prepare


class Bright(InferenceBackend):
    """Particle logit +8 on bright pixels, -8 elsewhere; distance map from the mask itself.
    ``shift`` moves the answer right by that many px, so a mirror view disagrees."""

    name, device = "fake", "cpu"

    def __init__(self, shift: int = 0):
        self.shift = shift
        self.shapes: list[tuple[int, int]] = []

    def run(self, batch):
        out = np.empty((batch.shape[0], 2) + batch.shape[2:], np.float32)
        for i, img in enumerate(batch[:, 0]):
            self.shapes.append(img.shape)
            fg = (img > 0).astype(np.uint8)
            if self.shift:
                fg = np.roll(fg, self.shift, axis=1)
            d = cv2.distanceTransform(fg, cv2.DIST_L2, 3)
            out[i, 0] = np.where(fg > 0, 8.0, -8.0)
            out[i, 1] = np.where(fg > 0, 8.0 * (d / max(float(d.max()), 1.0)) - 4.0, -8.0)
        return {"maps": out}


def disks(shape, radius, n, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(shape, 100, np.uint16)
    h, w = shape
    for _ in range(n):
        cy, cx = rng.integers(radius, h - radius), rng.integers(radius, w - radius)
        cv2.circle(img, (int(cx), int(cy)), radius, 1000, -1)
    return img


def seg(backend=None, **kw):
    info = {"threshold": 0.5, "marker_threshold": 0.5, "min_area_px": 8, "split": "both",
            "views": 1}
    return LearnedSegmenter(backend or Bright(), info, **kw)


def test_large_particles_are_brought_into_the_networks_size_band():
    img = disks((1024, 1024), 110, 3)  # D = 220 px, far above SCALE_MAX_D
    s = seg(scale="auto")
    labels, info = s.segment_with_info(prepare(img))
    assert info["scale"] == pytest.approx(SCALE_TARGET_D / 220, rel=0.2)
    assert labels.shape == img.shape and 1 <= labels.max() <= 3
    # the network ran on the coarse probe (longer side 256) and then on the resampled frame
    assert max(s.backend.shapes[0]) == 256
    assert max(s.backend.shapes[-1]) < 256


def test_small_particles_keep_their_native_pixels():
    img = disks((1024, 1024), 6, 200)  # D = 12 px: invisible to the coarse probe
    s = seg(scale="auto")
    labels, info = s.segment_with_info(prepare(img))
    assert info["scale"] == 1.0
    assert s.backend.shapes[-1] == (1024, 1024)
    assert labels.max() > 100


def test_the_scale_never_shrinks_a_frame_below_the_minimum_side():
    img = np.full((200, 1024), 100, np.uint16)  # a wide strip of huge particles
    for cx in (150, 500, 850):
        cv2.circle(img, (cx, 100), 95, 1000, -1)
    s = seg(scale="auto")
    f = s.estimate_scale(np.where(img > 500, 1.0, -1.0).astype(np.float32))
    assert f == pytest.approx(SCALE_MIN_SIDE / 200, rel=1e-6)


def test_a_fixed_scale_is_kept_and_medium_particles_are_left_alone():
    img = disks((512, 512), int(SCALE_MAX_D / 2) - 4, 3)
    assert seg(scale="auto").segment_with_info(prepare(img))[1]["scale"] == 1.0
    assert seg(scale=0.5).segment_with_info(prepare(img))[1]["scale"] == 0.5


def test_confidence_is_the_agreement_of_the_mirror_views():
    img = disks((256, 256), 10, 12)
    same = seg(views=2)
    assert same.segment_with_info(prepare(img))[1]["confidence"] == 1.0  # symmetric answer
    shifted = seg(Bright(shift=1), views=2)  # mirrored, the shift points the other way
    c = shifted.segment_with_info(prepare(img))[1]["confidence"]
    assert 0.65 < c < 0.9  # two r = 10 px disks 2 px apart: IoU 0.77


def test_confidence_function():
    assert confidence(np.full((4, 4), -9.0), 0.0, (0, 0)) == 1.0  # nothing anywhere: sure
    assert confidence(np.zeros((4, 4)), 0.0, (30, 40)) == 0.75
    sure = np.full((8, 8), 9.0)
    unsure = np.full((8, 8), 0.1)
    assert confidence(sure, 0.0) > 0.99
    assert confidence(unsure, 0.0) < 0.1
    assert confidence(np.full((8, 8), -9.0), 0.0) == 1.0


def test_a_few_unsure_or_sparse_large_objects_do_not_shrink_the_frame():
    """A thick support under small particles shows up in the probe as a few large objects: too
    few, too small a share of the frame, or found without confidence, it leaves the scale at 1."""
    two = disks((1024, 1024), 150, 2, seed=3)  # two huge objects only
    assert seg(scale="auto").estimate_scale(np.where(two > 500, 1.0, -1.0).astype(np.float32)) == 1.0

    class Unsure(Bright):
        def run(self, batch):
            out = super().run(batch)
            out["maps"][:, 0] *= 0.05  # p ~ 0.6 where it was sure
            return out

    big = disks((1024, 1024), 110, 4)
    img = np.where(big > 500, 1.0, -1.0).astype(np.float32)
    assert seg(scale="auto").estimate_scale(img) < 0.5
    assert seg(Unsure(), scale="auto", threshold=0.5).estimate_scale(img) == 1.0
