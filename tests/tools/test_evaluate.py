"""tools/evaluate.py: one-to-one instance matching, ignored (invisible) truth, detectability."""

from __future__ import annotations

import numpy as np
import pytest

from .test_train_smoke import load_tool


@pytest.fixture(scope="module")
def ev():
    return load_tool("evaluate")


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def test_matching_is_one_to_one_at_iou_half(ev):
    gt = np.zeros((60, 120), np.int32)
    gt[disk(gt.shape, 30, 30, 12)] = 1
    gt[disk(gt.shape, 30, 90, 12)] = 2
    pred = np.zeros_like(gt)
    pred[disk(gt.shape, 30, 31, 12)] = 5  # good match of 1
    pred[disk(gt.shape, 30, 90, 6)] = 7  # IoU 0.25 with 2: no match
    s = ev.Score()
    s.add(gt, pred)
    r = s.result()
    assert (r["tp"], r["true"], r["predicted"]) == (1, 2, 2)
    assert r["f1"] == pytest.approx(0.5)


def test_ignored_truth_counts_neither_way(ev):
    gt = np.zeros((60, 180), np.int32)
    for k, cx in enumerate((30, 90, 150), start=1):
        gt[disk(gt.shape, 30, cx, 12)] = k
    pred = np.zeros_like(gt)
    pred[disk(gt.shape, 30, 30, 12)] = 1  # hit on a counted particle
    pred[disk(gt.shape, 30, 90, 12)] = 2  # hit on an ignored particle
    pred[disk(gt.shape, 30, 150, 5)] = 3  # too small to match, but lies on an ignored particle
    ignore = np.array([False, False, True, True])
    s = ev.Score()
    s.add(gt, pred, ignore)
    r = s.result()
    assert (r["tp"], r["true"], r["predicted"]) == (1, 1, 1) and r["f1"] == 1.0
    s = ev.Score()
    s.add(gt, pred)  # without ignoring: particle 3 missed, prediction 3 a false alarm
    assert (s.tp, s.n_gt, s.n_pred) == (2, 3, 3)


def test_detectability_grows_with_contrast_and_separates_visible_from_buried(ev):
    rng = np.random.default_rng(0)
    labels = np.zeros((256, 256), np.int32)
    centres = [(y, x) for y in range(32, 256, 64) for x in range(32, 256, 64)]
    for k, (y, x) in enumerate(centres, start=1):
        labels[disk(labels.shape, y, x, 6)] = k
    d = {}
    for contrast in (0.05, 0.3, 1.5):
        img = 100 + rng.normal(0, 10, labels.shape) - 10 * contrast * (labels > 0)
        d[contrast] = np.median(ev.detectability(img, labels)[1:])
    assert d[0.05] < 1 < ev.VISIBLE_D < d[1.5]
    assert d[0.05] < d[0.3] < d[1.5]
    assert ev.detectability(np.ones((8, 8)), np.zeros((8, 8), np.int32)).shape == (1,)


def test_scene_set_pools_distinct_sessions_per_mode(ev):
    one = ev.scene_set(1, shape=(128, 128))
    two = ev.scene_set(1, shape=(128, 128), sessions=2)
    assert [n for n, _, _ in one] == ["scene-bf-9", "scene-haadf-9"]
    assert [n for n, _, _ in two] == ["scene-77-bf-9", "scene-77-haadf-9",
                                      "scene-78-bf-9", "scene-78-haadf-9"]
    assert np.array_equal(one[0][1], two[0][1])  # session 77 is the single-session set
    assert not np.array_equal(two[0][1], two[2][1])
