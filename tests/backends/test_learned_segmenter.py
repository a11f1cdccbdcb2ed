"""The shipped learned segmenter on simulated frames (skips where engines/unet-s.onnx is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from emstream.backends import make_segmenter
from emstream.backends.base import find_model
from emstream.errors import BackendUnavailable
from emstream.process.prepare import prepare
from emstream.process.segmenter import Segmenter


@pytest.fixture(scope="module")
def shipped():
    try:
        return find_model()
    except BackendUnavailable as e:
        pytest.skip(str(e))


def f1_at_iou50(gt: np.ndarray, pred: np.ndarray) -> float:
    tp = 0
    n_gt = len(np.unique(gt)) - 1
    n_pred = len(np.unique(pred)) - 1
    for g in np.unique(gt)[1:]:
        m = gt == g
        ids, counts = np.unique(pred[m], return_counts=True)
        for p, c in zip(ids, counts, strict=True):
            if p and c / (m.sum() + (pred == p).sum() - c) >= 0.5:
                tp += 1
                break
    return 2 * tp / (n_gt + n_pred) if n_gt + n_pred else 1.0


@pytest.mark.parametrize("mode", ["bf", "haadf"])
def test_learned_segmenter_finds_particles_on_a_simulated_frame(shipped, mode):
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    mic = Microscope(SceneConfig(shape=(512, 512), mode=mode, ramp_frames=4), seed=11)
    frame = [mic.next_frame() for _ in range(3)][-1]
    seg = make_segmenter("learned", backend="onnxruntime", device="cpu")
    assert isinstance(seg, Segmenter) and seg.name.startswith("unet-s@onnxruntime")
    prepared = prepare(frame.image)
    labels = seg.segment(prepared)
    assert labels.dtype == np.int32 and labels.shape == frame.image.shape
    if prepared.valid is not None:
        assert labels[~prepared.valid].max() == 0  # banner / scale bar never become particles
    n_true = len(np.unique(frame.labels)) - 1
    assert n_true > 5
    assert f1_at_iou50(frame.labels, labels) >= 0.6  # measured 0.73 (BF), 1.0 (HAADF)


def test_tiled_large_frame_gives_the_same_particles_as_one_piece(shipped):
    # the large-frame policy: tiles (here 512 px, 128 px margins, forced by max_side=1024) must
    # find the same particles as running the whole frame at once, small ones included
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    cfg = SceneConfig(shape=(512, 2560), median_diameter_nm=6.0, nm_per_px=0.5, ramp_frames=2,
                      banner=False, scale_bar=False)
    frame = Microscope(cfg, seed=3).next_frame()
    prepared = prepare(frame.image)
    tiled = make_segmenter("learned", backend="onnxruntime", device="cpu", max_side=1024,
                           tile=512, margin=128).segment(prepared)
    whole = make_segmenter("learned", backend="onnxruntime", device="cpu",
                           max_side=4096).segment(prepared)
    assert f1_at_iou50(whole, tiled) >= 0.97
    a, b = tiled > 0, whole > 0
    assert np.logical_and(a, b).sum() / np.logical_or(a, b).sum() >= 0.97


def test_post_processing_settings_come_from_the_sidecar_and_can_be_overridden(shipped):
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    seg = make_segmenter("learned", backend="onnxruntime", device="cpu")
    info = shipped.info
    assert seg.fill_holes_px == int(info.get("fill_holes_px", 0))
    assert seg.min_score == info.get("min_score")
    assert seg.threshold == float(info.get("threshold", 0.5))
    frame = Microscope(SceneConfig(shape=(512, 512), ramp_frames=4), seed=5).next_frame()
    prepared = prepare(frame.image)
    default = seg.segment(prepared)
    # each particle's mean logit; a min_score at their median keeps the more confident half
    logits = seg.logits(prepared)[0]
    n = int(default.max())
    mean_logit = np.bincount(default.ravel(), logits.ravel(), n + 1)[1:] / np.bincount(
        default.ravel(), minlength=n + 1)[1:]
    median_p = float(1 / (1 + np.exp(-np.median(mean_logit))))
    strict = make_segmenter("learned", backend="onnxruntime", device="cpu",
                            min_score=median_p).segment(prepared)
    assert 0.3 * n <= strict.max() <= 0.7 * n  # only the more confident particles stay
    assert np.all(default[strict > 0] > 0)


class _RampBackend:
    """A stand-in network: logits = the image plus a left-to-right ramp (not mirror-symmetric)."""

    name, device = "ramp", "cpu"

    def __init__(self, max_batch=None):
        self.calls, self.max_batch, self.sizes = 0, max_batch, []

    def describe(self):
        return "ramp:cpu"

    def run(self, batch):
        self.calls += 1
        self.sizes.append(len(batch))
        assert self.max_batch is None or len(batch) <= self.max_batch
        x = batch[:, :1].astype(np.float32)
        ramp = np.linspace(-1, 1, x.shape[-1], dtype=np.float32)
        return {"maps": np.concatenate([x + ramp, x], axis=1)}

    def close(self):
        pass


@pytest.mark.parametrize("max_batch", [None, 1, 3])
@pytest.mark.parametrize("views", [1, 2, 4])
def test_mirror_views_are_undone_and_averaged(views, max_batch):
    from emstream.backends.segmenter import LearnedSegmenter

    backend = _RampBackend(max_batch)
    seg = LearnedSegmenter(backend, views=views)
    img = np.random.default_rng(0).normal(size=(40, 56)).astype(np.float32)
    maps = seg.maps(img)
    # the views go through in as few runs as the backend's batch limit allows
    assert sum(backend.sizes) == views and backend.calls == -(-views // (max_batch or views))
    assert maps.shape == (2, 40, 56)
    np.testing.assert_allclose(maps[1], img, atol=1e-6)  # mirrored back before averaging
    ramp = np.linspace(-1, 1, 64, dtype=np.float32)[:56]  # padded to 64 wide, then cropped
    expect = ramp if views == 1 else (ramp + np.linspace(1, -1, 64, dtype=np.float32)[:56]) / 2
    np.testing.assert_allclose(maps[0] - img, np.broadcast_to(expect, img.shape), atol=1e-6)
    with pytest.raises(ValueError):
        LearnedSegmenter(backend, views=3)


class _RecordingBackend:
    """A stand-in network that records what it is shown and answers 'particle' everywhere."""

    name, device = "recording", "cpu"

    def __init__(self):
        self.inputs = []

    def describe(self):
        return "recording:cpu"

    def run(self, batch):
        self.inputs.append(batch[0, 0].copy())
        return {"maps": np.full((1, 2) + batch.shape[2:], 5.0, np.float32)}

    def close(self):
        pass


def test_the_network_never_sees_a_data_bar_and_a_scale_bar_reads_as_background():
    from emstream.backends.segmenter import LearnedSegmenter
    from emstream.frame import Prepared

    rng = np.random.default_rng(1)
    raw = rng.normal(1000, 30, size=(96, 80)).astype(np.float32)
    valid = np.ones(raw.shape, bool)
    valid[80:] = False           # full-width data bar (16 rows)
    valid[60:64, 10:40] = False  # scale bar inside the image
    raw[~valid] = 0.0
    backend = _RecordingBackend()
    seg = LearnedSegmenter(backend, views=1)
    logits = seg.logits(Prepared(image=raw, polarity="dark", raw=raw, valid=valid))
    (shown,) = backend.inputs
    assert shown.shape == (80, 80)  # the bar's rows are cut off, not padded in
    fill = shown[60:64, 10:40]
    assert np.ptp(fill) == 0 and abs(fill[0, 0] - np.median(shown[valid[:80]])) < 0.05
    assert np.all(logits[:, 80:] < -10) and np.all(logits[:, :80] == 5.0)
    assert seg.segment(Prepared(image=raw, polarity="dark", raw=raw, valid=valid))[80:].max() == 0
