"""tools/families.py and tools/evaluate_families.py: real-family loaders, weak box labels,
centre-matching detection scores, the auto-default verdict."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .test_train_smoke import load_tool


@pytest.fixture(scope="module")
def fam():
    return load_tool("families")


@pytest.fixture(scope="module")
def ef():
    return load_tool("evaluate_families")


def test_centre_matching_tolerance_is_a_quarter_diameter_at_least_3_px(fam):
    true = np.array([[50.0, 50.0, 40.0], [10.0, 10.0, 4.0]])
    # 9 px off a 40 px particle (tol 10): a hit; 3.5 px off a 4 px particle (tol 3): a miss
    pred = np.array([[59.0, 50.0, 38.0], [10.0, 13.5, 4.0]])
    assert fam.match_centres(true, pred) == [(0, 0)]
    s = fam.DetectionScore()
    s.add(true, pred)
    r = s.result()
    assert (r["tp"], r["true"], r["predicted"]) == (1, 2, 2)
    assert r["f1"] == 0.5 and r["median_rel_diameter_error"] == pytest.approx(0.05)


def test_matching_is_one_to_one(fam):
    true = np.array([[20.0, 20.0, 20.0]])
    pred = np.array([[21.0, 20.0, 20.0], [20.0, 21.0, 20.0]])  # two candidates, one particle
    assert len(fam.match_centres(true, pred)) == 1
    assert fam.match_centres(np.zeros((0, 3)), pred) == []
    assert fam.match_centres(true, np.zeros((0, 3))) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200), st.floats(0, 200), st.floats(3, 60)),
                min_size=0, max_size=25))
def test_a_perfect_prediction_scores_one(fam, rows):
    true = np.array(rows, float).reshape(-1, 3)
    s = fam.DetectionScore()
    s.add(true, true.copy())
    r = s.result()
    assert r["tp"] == len(true)
    if len(true):
        assert r["f1"] == 1.0 and r["median_rel_diameter_error"] == 0.0


def test_boxes_become_inscribed_ellipses_with_an_ignored_rim(fam):
    boxes = np.array([[10.0, 10.0, 50.0, 30.0], [60.0, 60.0, 70.0, 70.0]])  # y0, x0, y1, x1
    labels, ignore = fam.boxes_to_labels(boxes, (100, 100))
    c = fam.centres_of(labels)
    assert len(c) == 2
    # the ellipse's equivalent diameter is sqrt(w*h) of its box
    assert c[0, 2] == pytest.approx(np.sqrt(40 * 20), rel=0.05)
    assert c[1, 2] == pytest.approx(10, rel=0.1)
    assert ignore[10, 10] and not labels[10, 10]  # box corner: unsure, no weight
    assert labels[30, 20] and not ignore[30, 20]  # ellipse core: particle
    assert not ignore[90, 90] and not labels[90, 90]  # outside every box: background
    assert ignore[labels > 0].any()  # the ellipse's rim is unsure too


def test_centres_of_labels(fam):
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 3
    lab[10:12, 14:20] = 7
    c = fam.centres_of(lab)
    assert c[:, :2].tolist() == [[3.5, 3.5], [10.5, 16.5]]
    assert c[0, 2] == pytest.approx(np.sqrt(4 * 16 / np.pi))


def test_the_real_families_load_with_folds(fam, shared_data):
    msa, genc = fam.load("msa"), fam.load("genc")
    assert len(msa) == 20 and {it["fold"] for it in msa} == {0, 1}
    assert sum(it["fold"] == 0 for it in msa) == 10  # images 0-9, as the older fold models
    assert len(genc) == 18 and not genc[0]["has_masks"] and genc[0]["ignore"] is not None
    assert sum(len(it["centres"]) for it in genc) > 3000
    emps = fam.load("emps", folds=(1,))
    assert 150 < len(emps) < 200 and all(it["has_masks"] for it in emps)
    assert all(it["raw"].dtype == np.uint8 and it["raw"].ndim == 2 for it in emps[:5])


def test_auto_default_needs_a_win_on_every_family(ef):
    def row(family, seg, seen, f1):
        return {"family": family, "segmenter": seg, "seen": seen,
                "result": {"detection": {"f1": f1}}}

    rows = [row("msa", "classical", "—", 0.94), row("msa", "learned", "no (held-out fold)", 0.96),
            row("genc", "classical", "—", 0.18), row("genc", "learned", "no (held-out fold)", 0.7)]
    ok, why = ef.auto_default_verdict(rows)
    assert ok and "msa 0.960 vs 0.940" in why
    rows.append(row("emps", "classical", "—", 0.45))
    rows.append(row("emps", "learned", "no (held-out fold)", 0.44))
    ok, why = ef.auto_default_verdict(rows)
    assert not ok and "emps 0.440 vs 0.450" in why
    assert ef.auto_default_verdict([])[0] is False


def test_real_crops_bring_large_particles_into_the_networks_size_band():
    train = load_tool("train")
    md = load_tool("make_dataset")
    fam = load_tool("families")
    labels, ignore = fam.boxes_to_labels(np.array([[100.0, 100.0, 300.0, 300.0]]), (400, 400))
    fg, dist = md.targets(labels)
    item = {"image": np.where(labels > 0, 1.0, -1.0).astype(np.float32), "fg": fg, "dist": dist,
            "ignore": ignore, "median_d": 200.0}
    rng = np.random.default_rng(0)
    lo, hi = train.TRAIN_D_RANGE
    for _ in range(10):
        img, f, d, ign = train.real_crop(rng, item, 96)
        assert img.shape == f.shape == d.shape == ign.shape == (96, 96)
        assert set(np.unique(ign)) <= {0, 1}
        if f.any() and not f[0].any() and not f[-1].any() and not f[:, 0].any() and not f[:, -1].any():
            d_px = np.sqrt(4 * f.sum() / np.pi)  # a whole particle in the crop
            assert 0.6 * lo <= d_px <= 1.5 * hi
