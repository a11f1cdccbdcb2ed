"""The classical segmenter on synthetic disks, touching pairs, both polarities, banners, and
simulator frames with ground truth."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from emstream.frame import Calibration
from emstream.process.classical import ClassicalSegmenter
from emstream.process.measure import measure
from emstream.process.prepare import prepare
from emstream.process.segmenter import Segmenter


def _render(shape, disks, *, mode="bf", dose=200.0, contrast=0.6, blur=1.0, seed=0, gradient=0.15):
    """Poisson image of flat-topped disks ``(cy, cx, r)``; returns image and truth labels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    thick = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(disks, 1):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        thick[m] = 1.0
        truth[m] = i
    film = (1.0 + gradient * (xx / w - 0.5)).astype(np.float32)
    if mode == "bf":
        signal = film * (1.0 - contrast * thick)
    else:
        signal = film * (0.3 + contrast * thick)
    signal = cv2.GaussianBlur(signal, (0, 0), blur)
    return rng.poisson(signal * dose).astype(np.uint16), truth


def _grid_disks(shape, n, r_range, seed):
    """``n`` non-overlapping disks (rejection sampling)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, float, float]] = []
    while len(out) < n:
        r = rng.uniform(*r_range)
        cy, cx = rng.uniform(r + 4, shape[0] - r - 4), rng.uniform(r + 4, shape[1] - r - 4)
        if all(math.hypot(cy - a, cx - b) > r + c + 6 for a, b, c in out):
            out.append((cy, cx, r))
    return out


def _match_by_centroid(table, disks, tol=3.0):
    """For each truth disk, the measured equivalent diameter of the particle at its centre."""
    cy, cx = table["centroid_y_px"], table["centroid_x_px"]
    found = []
    for y, x, r in disks:
        d = np.hypot(cy - y, cx - x)
        if d.size and d.min() <= tol:
            found.append((2 * r, table["equivalent_diameter_nm"][int(np.argmin(d))]))
    return found


def test_is_a_segmenter():
    seg = ClassicalSegmenter()
    assert isinstance(seg, Segmenter)
    assert seg.name == "classical"
    with pytest.raises(ValueError):
        ClassicalSegmenter(smooth_sigma=-1)


@pytest.mark.parametrize("mode", ["bf", "haadf"])
def test_disks_counted_and_sized(mode):
    shape = (512, 512)
    disks = _grid_disks(shape, 25, (6, 18), seed=1)
    img, _ = _render(shape, disks, mode=mode, seed=2)
    p = prepare(img)
    assert p.polarity == ("dark" if mode == "bf" else "bright")
    labels = ClassicalSegmenter().segment(p)
    assert labels.dtype == np.int32 and labels.shape == shape
    table = measure(labels, img, Calibration.none())
    assert len(table["label"]) == pytest.approx(len(disks), abs=1)
    pairs = _match_by_centroid(table, disks)
    assert len(pairs) >= len(disks) - 1
    true_d, got_d = np.array(pairs).T
    # digitised disk of radius r has area ~ π r²: equivalent diameter within ~1.5 px
    assert np.median(np.abs(got_d - true_d)) < 1.5
    assert np.all(np.abs(got_d - true_d) < 4.0)
    # labels are consecutive
    assert set(np.unique(labels)) == set(range(len(table["label"]) + 1))


@pytest.mark.parametrize("mode", ["bf", "haadf"])
def test_low_dose_disks(mode):
    shape = (384, 384)
    disks = _grid_disks(shape, 12, (10, 16), seed=5)
    img, _ = _render(shape, disks, mode=mode, dose=15.0, contrast=0.5, seed=6)
    labels = ClassicalSegmenter().segment(prepare(img))
    table = measure(labels, img, None)
    pairs = _match_by_centroid(table, disks, tol=4.0)
    assert len(pairs) >= len(disks) - 2
    assert len(table["label"]) <= len(disks) + 2
    true_d, got_d = np.array(pairs).T
    assert np.median(np.abs(got_d / true_d - 1)) < 0.12


@pytest.mark.parametrize("gap", [-6.0, -2.0, 0.0])
@pytest.mark.parametrize("mode", ["bf", "haadf"])
def test_touching_disks_are_split(gap, mode):
    r = 18.0
    d = 2 * r + gap  # centre distance: overlapping (neck) to just touching
    disks = [(100.0, 100.0 - d / 2, r), (100.0, 100.0 + d / 2, r)]
    img, truth = _render((200, 200), disks, mode=mode, seed=3)
    labels = ClassicalSegmenter().segment(prepare(img))
    assert labels.max() == 2
    # each truth disk is mostly one label
    for i in (1, 2):
        vals = labels[truth == i]
        vals = vals[vals > 0]
        assert vals.size and np.bincount(vals).max() > 0.85 * (truth == i).sum()


def test_rod_is_not_cut():
    h, w = 200, 300
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(4)
    # a capsule 160 x 24 px at 20 degrees
    th = math.radians(20)
    u = (xx - 150) * math.cos(th) - (yy - 100) * math.sin(th)
    v = (xx - 150) * math.sin(th) + (yy - 100) * math.cos(th)
    rod = (np.abs(v) <= 12) & (np.abs(u) <= 68) | ((np.abs(u) - 68) ** 2 + v**2 <= 144)
    signal = cv2.GaussianBlur((1.0 - 0.5 * rod).astype(np.float32), (0, 0), 1.0)
    img = rng.poisson(signal * 300).astype(np.uint16)
    labels = ClassicalSegmenter().segment(prepare(img))
    assert labels.max() == 1


def test_pure_noise_gives_no_particles():
    rng = np.random.default_rng(8)
    img = rng.poisson(200, (512, 512)).astype(np.uint16)
    labels = ClassicalSegmenter().segment(prepare(img, polarity="dark"))
    assert labels.max() <= 1
    labels = ClassicalSegmenter().segment(prepare(img, polarity="bright"))
    assert labels.max() <= 1


def test_data_bar_and_scale_bar_yield_no_particles_inside():
    shape = (512, 512)
    disks = _grid_disks((440, 512), 20, (8, 14), seed=9)
    img, _ = _render(shape, disks, mode="haadf", seed=10)
    img[450:, :] = 0  # dark data bar with bright text (as bright as the particles)
    mask = np.zeros(shape, np.uint8)
    cv2.putText(mask, "HAADF 300 kV 2.1 Mx", (150, 490), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
    img[mask > 0] = 4000
    img[470:478, 20:120] = 4000  # scale bar in the data bar
    img[400:406, 380:480] = 65535  # and a free-standing one in the image
    p = prepare(img)
    assert p.valid is not None
    labels = ClassicalSegmenter().segment(p)
    assert not labels[~p.valid].any()
    assert not labels[450:].any() and not labels[398:408, 378:482].any()
    table = measure(labels, img, None, p.valid)
    assert len(table["label"]) >= len(disks) - 2


def test_sparse_and_crowded_simulator_frames(artifacts_dir):
    """Precision / recall (IoU > 0.5) and D50 on the simulator's frames at demo settings."""
    from skimage.segmentation import relabel_sequential

    import emstream.sources.simulate.scene as scene

    tp_all = true_all = pred_all = 0
    for mode in ("bf", "haadf"):
        for coverage in (0.03, 0.2):
            for seed in (3, 4):
                cfg = scene.SceneConfig(shape=(512, 512), nm_per_px=0.25, mode=mode,
                                        coverage_start=coverage, coverage_end=coverage)
                f = scene.Microscope(cfg, seed=seed).next_frame()
                p = prepare(f.image)
                assert p.polarity == ("dark" if mode == "bf" else "bright")
                labels = ClassicalSegmenter().segment(p)
                tp, n_true, n_pred = _iou_matches(relabel_sequential(f.labels)[0], labels)
                tp_all, true_all, pred_all = tp_all + tp, true_all + n_true, pred_all + n_pred
                if seed == 3:
                    _save_overlay(artifacts_dir / f"classical_{mode}_{coverage}.png", f.image,
                                  f.labels, labels)
                assert n_pred > 0.4 * n_true
                if coverage > 0.1:  # enough particles for a stable median
                    table = measure(labels, f.image, Calibration((0.25, 0.25), "file"), p.valid)
                    d50_true = np.median([q["equivalent_diameter_nm"] for q in f.particles])
                    d50 = np.median(table["equivalent_diameter_nm"])
                    assert d50 == pytest.approx(d50_true, rel=0.15), (mode, seed)
    assert tp_all / pred_all >= 0.85  # precision
    assert tp_all / true_all >= 0.65  # recall


def _save_overlay(path, image, truth, pred):
    """Frame with truth outlines (green) and classical outlines (red), for people to look at."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    gray = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    k = np.ones((3, 3), np.uint8)
    for lab, colour in ((truth, (0, 200, 0)), (pred, (0, 0, 255))):
        edge = cv2.morphologyEx((lab > 0).astype(np.uint8), cv2.MORPH_GRADIENT, k) > 0
        out[edge] = colour
    cv2.imwrite(str(path), out)


def _iou_matches(truth, pred):
    ng, npr = int(truth.max()), int(pred.max())
    if ng == 0 or npr == 0:
        return 0, ng, npr
    inter = np.bincount((truth.astype(np.int64) * (npr + 1) + pred).ravel(),
                        minlength=(ng + 1) * (npr + 1)).reshape(ng + 1, npr + 1)
    a_t, a_p = inter.sum(1), inter.sum(0)
    iou = inter / (a_t[:, None] + a_p[None, :] - inter + 1e-9)
    iou[0], iou[:, 0] = 0, 0
    return int((iou.max(1) > 0.5).sum()), ng, npr


def _on_support(seed=0):
    """HAADF-like: small bright particles on a large, lobed (zigzag), bright, textured support."""
    import cv2

    rng = np.random.default_rng(seed)
    support = np.zeros((512, 512), np.uint8)
    pts = np.array([[40, 60], [200, 420], [300, 90], [470, 450]], np.int32)
    cv2.polylines(support, [pts], False, 1, thickness=90)
    texture = cv2.GaussianBlur(rng.standard_normal((512, 512)), (0, 0), 3) * 3
    img = 100.0 + 400.0 * support * (1 + 0.15 * texture)
    truth = []
    ys, xs = np.nonzero(support)
    for k in rng.choice(ys.size, 60, replace=False):
        cy, cx = ys[k], xs[k]
        if all((cy - a) ** 2 + (cx - b) ** 2 > 20 ** 2 for a, b in truth):
            truth.append((cy, cx))
            img[(np.arange(512)[:, None] - cy) ** 2 + (np.arange(512)[None] - cx) ** 2 <= 25] += 250
    img = rng.poisson(np.clip(img, 0, None)).astype(np.uint16)
    return img, np.array(truth)


def test_particles_on_a_bright_support_are_found_against_their_surroundings():
    img, truth = _on_support()
    prepared = prepare(img, polarity="bright")

    def found(seg):
        lab = seg.segment(prepared)
        ids = np.unique(lab)[1:]
        area = np.bincount(lab.ravel())
        # a hit: the particle's centre lies in an object of about its size (r = 5 px: 80 px²)
        hits = sum(1 for cy, cx in truth if lab[cy, cx] > 0 and 30 < area[lab[cy, cx]] < 300)
        return hits, ids.size

    film_hits, _ = found(ClassicalSegmenter(background="film"))
    auto = ClassicalSegmenter()  # background="auto"
    auto_hits, n_auto = found(auto)
    assert auto.last_background == "local"
    assert film_hits <= 0.3 * len(truth)  # the support swallows them: one huge object
    assert auto_hits >= 0.8 * len(truth) and n_auto <= 1.5 * len(truth)


def test_large_convex_particles_keep_the_film_background():
    import cv2

    img = np.full((512, 512), 100.0)
    for cy, cx in ((130, 130), (130, 380), (380, 250)):
        cv2.circle(img, (cx, cy), 100, 600, -1)
    img = np.random.default_rng(1).poisson(img).astype(np.uint16)
    seg = ClassicalSegmenter()
    lab = seg.segment(prepare(img, polarity="bright"))
    assert seg.last_background == "film" and np.unique(lab).size - 1 == 3


def test_background_mode_is_checked():
    with pytest.raises(ValueError):
        ClassicalSegmenter(background="tophat")
