"""instances_from_maps: markers from the distance map, watershed inside the particle mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from emstream.process.instances import instances_from_maps


def disks(shape, specs):
    """Truth labels and ideal maps (foreground, per-particle normalised distance) for disks."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(specs, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (labels == 0)] = i
    dist = np.zeros(shape, np.float32)
    for i in range(1, len(specs) + 1):
        d = ndi.distance_transform_edt(labels == i)
        if d.max() > 0:
            dist[labels == i] = (d / d.max())[labels == i]
    return labels, (labels > 0).astype(np.float32), dist


def test_two_touching_disks_are_split():
    truth, fg, dist = disks((80, 120), [(40, 40, 20), (40, 78, 19)])
    assert ndi.label(fg > 0.5)[1] == 1  # one blob for a threshold
    out = instances_from_maps(fg, dist)
    assert out.dtype == np.int32 and out.max() == 2
    for k in (1, 2):
        t = truth == k
        best = max(np.logical_and(t, out == j).sum() / np.logical_or(t, out == j).sum()
                   for j in (1, 2))
        assert best > 0.9


def test_empty_maps_give_no_particles():
    z = np.zeros((32, 48), np.float32)
    out = instances_from_maps(z, z)
    assert out.shape == (32, 48) and out.dtype == np.int32 and out.max() == 0


def test_valid_mask_zeroes_banner_pixels():
    truth, fg, dist = disks((64, 64), [(20, 20, 8), (50, 50, 10)])
    valid = np.ones_like(fg, bool)
    valid[40:] = False  # a data bar over the second particle
    out = instances_from_maps(fg, dist, valid=valid)
    assert out[~valid].max() == 0
    assert out.max() == 1


def test_blob_without_marker_still_becomes_a_particle():
    fg = np.zeros((40, 40), np.float32)
    fg[10:14, 10:14] = 1
    sep = np.zeros_like(fg)  # distance map never crosses the marker threshold
    out = instances_from_maps(fg, sep, min_area_px=4)
    assert out.max() == 1 and (out > 0).sum() == 16


def test_min_area_drops_specks_and_renumbers():
    truth, fg, dist = disks((64, 64), [(10, 10, 1.5), (40, 40, 10)])
    out = instances_from_maps(fg, dist, min_area_px=20)
    assert out.max() == 1
    assert out[40, 40] == 1


def test_logit_maps_with_logit_thresholds_give_the_same_labels():
    truth, fg, dist = disks((70, 90), [(30, 30, 14), (30, 56, 13), (60, 70, 6)])
    rng = np.random.default_rng(0)
    p_fg = np.clip(fg * 0.9 + rng.uniform(0, 0.1, fg.shape), 1e-4, 1 - 1e-4).astype(np.float32)
    p_d = np.clip(dist * 0.98 + 0.01, 1e-4, 1 - 1e-4).astype(np.float32)
    a = instances_from_maps(p_fg, p_d)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    b = instances_from_maps(logit(p_fg), logit(p_d), threshold=0.0, marker_threshold=0.0)
    assert np.array_equal(a, b)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        instances_from_maps(np.zeros((4, 4)), np.zeros((4, 5)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(5, 58), st.integers(5, 58), st.integers(2, 9)),
                min_size=0, max_size=6))
def test_labels_lie_inside_foreground_and_are_consecutive(specs):
    truth, fg, dist = disks((64, 64), specs)
    out = instances_from_maps(fg, dist, min_area_px=1)
    assert np.all(fg[out > 0] > 0.5)
    ids = np.unique(out)
    assert np.array_equal(ids, np.arange(ids.size))  # 0..N without gaps
    # numbered in raster order of each particle's first pixel
    first = [np.flatnonzero(out.ravel() == k)[0] for k in ids[1:]]
    assert first == sorted(first)
    # deterministic
    assert np.array_equal(out, instances_from_maps(fg, dist, min_area_px=1))


def test_shape_split_separates_touching_disks_without_a_distance_map():
    truth, fg, _ = disks((80, 120), [(40, 40, 20), (40, 78, 19)])
    flat = np.where(fg > 0, 0.6, 0.0).astype(np.float32)  # an uninformative separation map
    assert instances_from_maps(fg, flat).max() == 1
    assert instances_from_maps(fg, flat, split="shape").max() == 2
    assert instances_from_maps(fg, flat, split="both", marker_threshold=0.7).max() == 2
    with pytest.raises(ValueError):
        instances_from_maps(fg, flat, split="magic")


def test_small_enclosed_holes_are_filled_large_ones_and_open_bays_are_not():
    _, fg, dist = disks((80, 80), [(40, 40, 25)])
    fg[38:41, 38:41] = 0  # 9 px speck inside the particle
    fg[10:20, 36:44] = 0  # a bay open to the outside (crosses the rim at y = 15)
    dist[fg == 0] = 0
    kept = instances_from_maps(fg, dist, split="shape")
    assert kept.max() == 1 and kept[39, 39] == 0
    filled = instances_from_maps(fg, dist, split="shape", fill_holes_px=9)
    assert filled[39, 39] == 1 and filled[16, 40] == 0
    assert instances_from_maps(fg, dist, split="shape", fill_holes_px=8)[39, 39] == 0


def test_unsure_particles_are_dropped_by_their_mean_foreground():
    _, fg, dist = disks((60, 120), [(30, 30, 12), (30, 90, 12)])
    fg[:, 60:] *= 0.6  # the right particle barely passes the 0.5 threshold
    both = instances_from_maps(fg, dist)
    assert both.max() == 2
    sure = instances_from_maps(fg, dist, min_mean=0.8)
    assert sure.max() == 1 and sure[30, 30] == 1 and sure[30, 90] == 0
    # the same decision in logit space (as the learned segmenter passes its maps)
    logit = np.log(np.clip(fg, 1e-6, 1 - 1e-6) / np.clip(1 - fg, 1e-6, 1))
    same = instances_from_maps(logit, dist, threshold=0.0, min_mean=float(np.log(0.8 / 0.2)))
    assert np.array_equal(same, sure)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([4, 8]), st.floats(0.2, 0.8))
def test_label_blobs_equals_scipy_labelling(seed, connectivity, density):
    from emstream.process.instances import label_blobs

    mask = np.random.default_rng(seed).random((23, 31)) < density
    ours, n = label_blobs(mask, connectivity)
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    ref, n_ref = ndi.label(mask, structure=structure)
    assert n == n_ref and ours.dtype == np.int32
    # the same partition of the pixels (ids may be numbered differently)
    pairs = np.unique(np.stack([ours[mask], ref[mask]]), axis=1)
    assert pairs.shape[1] == n and (ours[~mask] == 0).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 0.9), st.integers(1, 12),
       st.sampled_from([(23, 31), (90, 120)]))
def test_fill_small_holes_equals_a_scipy_reference(seed, density, max_area, shape):
    """Few holes (filled box by box) and many (one lookup over the frame) alike."""
    from emstream.process.instances import fill_small_holes

    mask = np.random.default_rng(seed).random(shape) < density
    holes, n = ndi.label(~mask)  # 4-connected
    ref = mask.copy()
    border = set(np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])))
    for k in range(1, n + 1):
        region = holes == k
        if k not in border and region.sum() <= max_area:
            ref |= region
    assert np.array_equal(fill_small_holes(mask, max_area), ref)


def _close_packed(rows=16, cols=18, r=5.0):
    """A close-packed (hexagonal) layer of touching disks whose foreground is one blob, gaps
    included, as the network paints a monolayer of spheres; the distance map peaks once per
    disk."""
    specs = [(14 + i * r * 1.75, 14 + j * 2 * r + (r if i % 2 else 0), r)
             for i in range(rows) for j in range(cols)]
    shape = (int(28 + rows * r * 1.75), int(28 + (cols + 1) * 2 * r))
    truth, _, dist = disks(shape, specs)
    hull = ndi.binary_closing(truth > 0, np.ones((5, 5), bool), iterations=2)
    return truth, hull.astype(np.float32), dist, len(specs)


def test_h_maxima_markers_split_a_close_packed_layer_that_thresholds_see_as_one():
    truth, fg, dist, n = _close_packed()
    assert ndi.label(fg > 0.5)[1] == 1
    # the shape distance of the whole layer is one hill: threshold markers merge the interior
    merged = instances_from_maps(fg, dist, split="both")
    assert merged.max() < 0.85 * n
    out = instances_from_maps(fg, dist, split="both", marker_dynamics=0.1)
    assert out.max() == n
    # one label per disk, each on its own disk
    for k in range(1, n + 1):
        ids, counts = np.unique(out[truth == k], return_counts=True)
        assert ids[np.argmax(counts)] > 0 and counts.max() > 0.8 * (truth == k).sum()
    assert len({int(np.bincount(out[truth == k]).argmax()) for k in range(1, n + 1)}) == n


def test_h_maxima_markers_ignore_shallow_dips_and_low_rims():
    # an elongated particle: its distance map has a flat ridge along its axis
    fg = np.zeros((48, 96), np.float32)
    fg[9:39, 18:78] = 1
    ridge = ndi.distance_transform_edt(fg > 0)
    ridge = (ridge / ridge.max()).astype(np.float32)
    _, xx = np.mgrid[0:48, 0:96]

    def dipped(depth):
        return np.where(fg > 0, ridge - depth * np.exp(-((xx - 48) / 3.0) ** 2), 0).astype(
            np.float32)

    # a shallow dip (0.05) across the ridge: two threshold markers, one particle
    assert instances_from_maps(fg, dipped(0.05), marker_threshold=0.97).max() == 2
    assert instances_from_maps(fg, dipped(0.05), marker_threshold=0.97,
                               marker_dynamics=0.1).max() == 1
    # a deep one (0.3) is a neck
    assert instances_from_maps(fg, dipped(0.3), marker_threshold=0.97,
                               marker_dynamics=0.1).max() == 2
    # peaks below MARKER_FLOOR are no markers
    assert instances_from_maps(fg, 0.15 * dipped(0.3), marker_threshold=0.1,
                               marker_dynamics=0.01).max() == 1
    # a touching pair is still split, as by threshold markers
    truth, fg, dist = disks((80, 120), [(40, 40, 20), (40, 78, 19)])
    for split in ("map", "both"):
        assert instances_from_maps(fg, dist, split=split, marker_dynamics=0.1).max() == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(5, 58), st.integers(5, 58), st.integers(2, 9)),
                min_size=0, max_size=8), st.sampled_from([0.05, 0.1, 0.3]))
def test_h_maxima_labels_lie_inside_foreground_and_split_only(specs, h):
    truth, fg, dist = disks((64, 64), specs)
    plain = instances_from_maps(fg, dist, min_area_px=1, split="both")
    out = instances_from_maps(fg, dist, min_area_px=1, split="both", marker_dynamics=h)
    assert np.array_equal(out > 0, plain > 0)  # the same particle pixels, only split otherwise
    ids = np.unique(out)
    assert np.array_equal(ids, np.arange(ids.size))
    assert np.array_equal(out, instances_from_maps(fg, dist, min_area_px=1, split="both",
                                                   marker_dynamics=h))


def test_h_maxima_smoothing_follows_the_particle_size():
    from emstream.process.instances import _h_maxima_markers, _smooth

    # two overlapping 8 px particles: a 2 px blur fills their neck, 1/16 of their size does not
    truth, fg, dist = disks((32, 40), [(16, 14, 4), (16, 21, 4)])
    region = fg > 0
    assert _h_maxima_markers(_smooth(dist, 2.0), region, 0.08).max() == 1
    assert instances_from_maps(fg, dist, split="both", marker_dynamics=0.08, sep_sigma=2.0,
                               min_area_px=1).max() == 2
    # a close-packed layer is still split with the same cap
    truth, fg, dist, n = _close_packed()
    for h in (0.08, 0.15):  # (0.15: the shipped setting)
        assert instances_from_maps(fg, dist, split="both", marker_dynamics=h,
                                   sep_sigma=2.0).max() == n
