"""tools/evaluate.py: one-to-one instance matching, ignored (invisible) truth, detectability."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def sphere_frame(r, blur, polarity, noise=0.0, seed=0):
    """A frame with one sphere of radius ``r`` (mass-thickness contrast, blurred) and its mask."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[0:96, 0:96]
    rho2 = ((yy - 48.3) ** 2 + (xx - 47.6) ** 2) / r**2
    thick = np.sqrt(np.clip(1 - rho2, 0, None))
    img = ndi.gaussian_filter(1000 + polarity * 400 * thick, blur)
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return img, (rho2 < 1).astype(np.int32)


@settings(max_examples=25, deadline=None)
@given(r=st.floats(8, 30), blur=st.floats(0.3, 2.0), polarity=st.sampled_from([-1, 1]))
def test_edge_contrast_orders_outlines_from_tight_to_loose(ev, r, blur, polarity):
    from scipy import ndimage as ndi

    img, truth = sphere_frame(r, blur, polarity)
    tight = ndi.binary_erosion(truth, iterations=2).astype(np.int32)
    loose = ndi.binary_dilation(truth, iterations=2).astype(np.int32)
    e_tight, e_true, e_loose = (ev.edge_contrast(img, m) for m in (tight, truth, loose))
    # an outline drawn further in sits higher on the contrast step, on both of its sides
    assert e_tight[0] > e_true[0] > e_loose[0]
    assert e_tight[1] > e_true[1] > e_loose[1]
    assert all(0 <= v <= 1.05 for e in (e_tight, e_true, e_loose) for v in e)
    # bright-field and HAADF read alike: the step is measured from background to core
    e_inv = ev.edge_contrast(2000 - img, truth)
    assert e_inv == pytest.approx(e_true, abs=1e-9)


def test_edge_contrast_of_a_set_and_of_nothing(ev):
    img, truth = sphere_frame(15, 0.8, -1, noise=5.0)
    assert ev.edge_contrast(img, np.zeros_like(truth)) is None  # no outline, no step
    e = ev.set_edge_contrast([img, img, img], [truth, np.zeros_like(truth), truth])
    assert e == pytest.approx(list(ev.edge_contrast(img, truth)), abs=1e-3)
    assert ev.set_edge_contrast([img], [np.zeros_like(truth)]) is None


@pytest.mark.slow
def test_edges_flag_reports_truth_and_segmenter_outlines(ev, tmp_path):
    out = tmp_path / "eval.json"
    assert ev.main(["--sets", "scene", "--n-scene", "1", "--edges", "--out", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    truth = res["edge_contrast_truth"]
    assert set(truth) == {"scene", "scene bf", "scene haadf"}
    # the simulator's truth is the geometric outline: low on the contrast step
    assert all(0 <= t[1] < t[0] < 0.6 for t in truth.values())
    rows = [r for r in res["rows"] if r["set"] == "scene bf"]
    assert {r["segmenter"].split()[0] for r in rows} == {"learned", "classical"}
    assert all(len(r["result"]["edge_contrast"]) == 2 for r in rows)
    md = out.with_suffix(".md").read_text()
    assert "| scene bf | truth |" in md and "| scene bf | classical |" in md
