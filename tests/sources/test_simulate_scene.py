"""Time-series microscope: truth matches the image, sizes, drift, growth, coalescence, nucleation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from emstream.sources.simulate.scene import Microscope, SceneConfig

EIGHT = np.ones((3, 3), bool)


def _still(**kw) -> SceneConfig:
    """A sample that only moves when asked."""
    base = dict(shape=(256, 256), nm_per_px=0.5, drift_nm_per_frame=(0.0, 0.0),
                drift_jitter_nm=0.0, growth_nm_per_frame=0.0, ostwald_nm_per_frame=0.0,
                coalescence_prob=0.0, nucleation_per_frame=0.0, coverage_end=0.0,
                ramp_frames=1, banner=False, scale_bar=False)
    base.update(kw)
    return SceneConfig(**base)


def _by_id(frame) -> dict[int, dict]:
    return {p["id"]: p for p in frame.particles}


@pytest.mark.parametrize("mode", ["bf", "haadf"])
def test_frame_types_and_truth_consistency(mode):
    m = Microscope(SceneConfig(shape=(320, 288), mode=mode, nm_per_px=0.4), seed=1)
    f = m.next_frame()
    assert f.image.dtype == np.uint16 and f.image.shape == (320, 288)
    assert f.labels.dtype == np.int32 and f.labels.shape == (320, 288)
    assert f.mode == mode and f.nm_per_px == 0.4
    ids = sorted(np.unique(f.labels[f.labels > 0]).tolist())
    assert ids == sorted(p["id"] for p in f.particles)
    for p in f.particles:
        area = int(np.count_nonzero(f.labels == p["id"]))
        assert p["area_px"] == area
        assert p["equivalent_diameter_nm"] == pytest.approx(2 * math.sqrt(area / math.pi) * 0.4)
        cy, cx = ndimage.center_of_mass(f.labels == p["id"])
        assert p["centroid_yx_px"] == pytest.approx([cy, cx], abs=1e-6)
        assert p["shape"] in ("round", "ellipse", "polygon", "triangle", "rod")
    # every instance is one connected region
    for pid, sl in enumerate(ndimage.find_objects(f.labels), start=1):
        if sl is not None:
            assert ndimage.label(f.labels[sl] == pid, structure=EIGHT)[1] == 1


def test_reproducible_from_seed():
    a = Microscope(SceneConfig(shape=(128, 128)), seed=4)
    b = Microscope(SceneConfig(shape=(128, 128)), seed=4)
    for _ in range(3):
        fa, fb = a.next_frame(t_acq=1.0), b.next_frame(t_acq=1.0)
        assert np.array_equal(fa.image, fb.image) and np.array_equal(fa.labels, fb.labels)


@pytest.mark.parametrize("mode,sign", [("bf", -1.0), ("haadf", 1.0)])
def test_particles_differ_from_their_local_ring(mode, sign):
    m = Microscope(SceneConfig(shape=(384, 384), mode=mode, nm_per_px=0.25,
                               coverage_start=0.15), seed=2)
    f = m.next_frame()
    img = f.image.astype(np.float32)
    fg = f.labels > 0
    checked = right = 0
    for p in f.particles:
        if p["touches_border"] or p["area_px"] < 40:
            continue
        mask = f.labels == p["id"]
        ring = (ndimage.binary_dilation(mask, EIGHT, iterations=6)
                & ~ndimage.binary_dilation(mask, EIGHT, iterations=2) & ~fg)
        if ring.sum() < 20:
            continue
        checked += 1
        right += sign * (np.median(img[mask]) - np.median(img[ring])) > 0
    assert checked >= 10
    assert right == checked


def test_sizes_follow_the_configured_lognormal():
    cfg = _still(shape=(512, 512), nm_per_px=0.5, median_diameter_nm=6.0, size_sigma=0.25,
                 coverage_start=0.08, shapes={"round": 1.0}, touching_fraction=0.0)
    f = Microscope(cfg, seed=3).next_frame()
    d = np.array([p["equivalent_diameter_nm"] for p in f.particles if not p["touches_border"]])
    assert d.size > 60
    assert np.median(d) == pytest.approx(6.0, rel=0.12)
    assert np.std(np.log(d)) == pytest.approx(0.25, abs=0.07)


def test_stage_drift_moves_every_particle_by_the_drift():
    cfg = _still(drift_nm_per_frame=(0.5, -1.0), coverage_start=0.05)
    m = Microscope(cfg, seed=5)
    f0 = m.next_frame()
    for _ in range(9):
        f9 = m.next_frame()
    a, b = _by_id(f0), _by_id(f9)
    shifts = [np.subtract(b[i]["centroid_yx_px"], a[i]["centroid_yx_px"])
              for i in a.keys() & b.keys()
              if not a[i]["touches_border"] and not b[i]["touches_border"]]
    assert len(shifts) >= 5
    med = np.median(np.array(shifts), axis=0)
    # 9 steps of (0.5, -1.0) nm at 0.5 nm/px = (9, -18) px
    assert med == pytest.approx([9.0, -18.0], abs=0.6)
    assert f9.stage_offset_px == pytest.approx((9.0, -18.0))


def test_growth_makes_particles_bigger():
    # supply on: target coverage well above the sample's (no catch-up nucleation: ramp of 1)
    cfg = _still(growth_nm_per_frame=0.1, coverage_start=0.04)
    cfg.coverage_end = 0.5
    m = Microscope(cfg, seed=6)
    f0 = m.next_frame()
    for _ in range(10):
        f10 = m.next_frame()
    a, b = _by_id(f0), _by_id(f10)
    both = [i for i in a.keys() & b.keys()
            if not a[i]["touches_border"] and not b[i]["touches_border"]]
    assert len(both) >= 5
    growth = np.median([b[i]["equivalent_diameter_nm"] - a[i]["equivalent_diameter_nm"]
                        for i in both])
    assert growth == pytest.approx(2 * 10 * 0.1, abs=0.5)  # diameter grows by 2 x radius growth


def test_growth_stops_when_the_supply_runs_out():
    cfg = _still(growth_nm_per_frame=0.1, coverage_start=0.2)  # target = 0.2, already there
    m = Microscope(cfg, seed=6)
    cov = [sum(math.pi * g.r**2 for g in m.grains.values()) for _ in range(1)]
    for _ in range(60):
        m.next_frame()
    cov.append(sum(math.pi * g.r**2 for g in m.grains.values()))
    Hc, Wc = m.canvas
    assert cov[-1] / (Hc * Wc) <= 0.3 + 1e-6


def test_ostwald_ripening_shrinks_small_and_grows_large():
    cfg = _still(ostwald_nm_per_frame=0.05, coverage_start=0.06, size_sigma=0.4)
    m = Microscope(cfg, seed=7)
    f0 = m.next_frame()
    for _ in range(8):
        f8 = m.next_frame()
    a, b = _by_id(f0), _by_id(f8)
    both = [i for i in a.keys() & b.keys()
            if not a[i]["touches_border"] and not b[i]["touches_border"]]
    d0 = np.array([a[i]["equivalent_diameter_nm"] for i in both])
    dd = np.array([b[i]["equivalent_diameter_nm"] for i in both]) - d0
    big, small = d0 > np.percentile(d0, 75), d0 < np.percentile(d0, 25)
    assert np.median(dd[big]) > 0 > np.median(dd[small])


def test_touching_pairs_coalesce_into_one_particle():
    cfg = _still(coalescence_prob=1.0, coalescence_frames=3, touching_fraction=0.6,
                 coverage_start=0.1)
    m = Microscope(cfg, seed=8)
    f0 = m.next_frame()
    frames = [m.next_frame() for _ in range(6)]
    gone = set(_by_id(f0)) - set(_by_id(frames[-1]))
    assert len(gone) >= 2
    assert len(m.grains) < len(_by_id(f0)) + 50  # nothing created
    # a merged particle holds the volume of both: area grows by more than 30 % for some
    a, b = _by_id(f0), _by_id(frames[-1])
    grew = [i for i in a.keys() & b.keys()
            if not a[i]["touches_border"] and not b[i]["touches_border"]
            and b[i]["area_px"] > 1.3 * a[i]["area_px"]]
    assert grew


def test_nucleation_adds_new_ids():
    cfg = _still(nucleation_per_frame=5.0, coverage_start=0.02)
    m = Microscope(cfg, seed=9)
    f0 = m.next_frame()
    first_max = max(_by_id(f0))
    for _ in range(5):
        f = m.next_frame()
    assert max(m.grains) > first_max + 10
    assert any(i > first_max for i in _by_id(f))


def test_coverage_ramps_from_sparse_to_crowded():
    cfg = SceneConfig(shape=(256, 256), coverage_start=0.02, coverage_end=0.3, ramp_frames=20,
                      nucleation_per_frame=0.0, banner=False, scale_bar=False)
    m = Microscope(cfg, seed=10)
    cov = [float((m.next_frame().labels > 0).mean()) for _ in range(40)]
    assert cov[0] < 0.06
    assert cov[-1] > 3 * cov[0]


def test_banner_and_scale_bar_are_never_labelled():
    cfg = SceneConfig(shape=(256, 256), coverage_start=0.4, coverage_end=0.4, banner=True,
                      scale_bar=True)
    m = Microscope(cfg, seed=11)
    for _ in range(3):
        f = m.next_frame()
        assert f.valid is not None and (~f.valid).sum() > 256 * 10
        assert not f.labels[~f.valid].any()
        bottom = f.image[-5:, :]
        assert bottom.std() < 0.5 * f.image[:100].std() or np.unique(bottom).size <= 2
    cfg.banner = False
    f = Microscope(cfg, seed=11).next_frame()
    assert (~f.valid).sum() > 0 and not f.labels[~f.valid].any()


def test_t_acq_spacing_follows_fps():
    m = Microscope(SceneConfig(shape=(64, 64), fps=4.0, t0=100.0), seed=0)
    ts = [m.next_frame().t_acq for _ in range(3)]
    assert ts == pytest.approx([100.0, 100.25, 100.5])


def test_sample_frames_look_like_tem(artifacts_dir):
    """Save BF / HAADF frames and training samples with truth outlines for people to look at."""
    cv2 = pytest.importorskip("cv2")
    from skimage.segmentation import find_boundaries

    from emstream.sources.simulate.training import training_sample

    def gray(img):
        lo, hi = np.percentile(img, [0.5, 99.5])
        return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    def outlined(img, lab):
        rgb = np.dstack([gray(img)] * 3)
        rgb[find_boundaries(lab, mode="inner")] = (0, 80, 255)  # BGR orange-red
        return rgb

    written = []
    for mode in ("bf", "haadf"):
        m = Microscope(SceneConfig(shape=(512, 512), mode=mode, ramp_frames=30), seed=21)
        first = m.next_frame()
        for _ in range(29):
            last = m.next_frame()
        for tag, f in (("first", first), ("frame30", last)):
            path = artifacts_dir / f"simulate_{mode}_{tag}.png"
            cv2.imwrite(str(path), np.concatenate(
                [np.dstack([gray(f.image.astype(np.float32))] * 3),
                 outlined(f.image.astype(np.float32), f.labels)], axis=1))
            written.append(path)
    rng = np.random.default_rng(2024)
    tiles = [outlined(*training_sample(rng, 256)[:2]) for _ in range(12)]
    montage = np.concatenate([np.concatenate(tiles[i:i + 4], axis=1) for i in (0, 4, 8)], axis=0)
    path = artifacts_dir / "simulate_training_samples.png"
    cv2.imwrite(str(path), montage)
    written.append(path)
    for p in written:
        assert p.stat().st_size > 10_000


def test_holey_carbon_holes_stay_empty_while_the_sample_drifts():
    cfg = SceneConfig(shape=(256, 256), hole=True, coverage_start=0.1, coverage_end=0.3,
                      ramp_frames=20, nucleation_per_frame=3.0, drift_nm_per_frame=(2.0, 3.0),
                      banner=False, scale_bar=False)
    m = Microscope(cfg, seed=12)
    for _ in range(40):  # drift > one torus period: everything has wrapped around
        f = m.next_frame()
    assert m.offset[1] > max(m.canvas) and len(m.grains) > 20  # wrapped around the torus
    assert not any(m._in_hole(g.sy, g.sx) for g in m.grains.values())
    assert f.image.shape == (256, 256)


def test_in_process_source_yields_calibrated_frames_with_truth():
    import threading

    from emstream.sources.base import Source
    from emstream.sources.simulate.source import SimulatedSource

    src = SimulatedSource(SceneConfig(shape=(96, 96), nm_per_px=0.3), seed=1, frames=4)
    assert isinstance(src, Source)
    frames = list(src.frames(threading.Event()))
    assert len(frames) == 4
    for f in frames:
        assert f.pixels.dtype == np.uint16 and f.calibration.nm_per_px == (0.3, 0.3)
        ids = sorted(p["id"] for p in f.metadata["truth"]["particles"])
        lab = src.truth[f.source_id]
        assert ids == sorted(np.unique(lab[lab > 0]).tolist())
    assert "simulate" in src.describe()
    stop = threading.Event()
    stop.set()
    assert list(SimulatedSource(seed=2, frames=None).frames(stop)) == []
