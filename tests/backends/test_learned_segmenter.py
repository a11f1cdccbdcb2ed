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
    assert f1_at_iou50(frame.labels, labels) >= 0.8


def test_frame_larger_than_max_side_is_tiled_without_losing_small_particles(shipped):
    # a 4096-wide frame on the CPU policy (max_side 2048): tiles of 1024 with 64 px margins
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    cfg = SceneConfig(shape=(512, 2560), median_diameter_nm=3.0, nm_per_px=0.5, ramp_frames=2,
                      banner=False, scale_bar=False)
    frame = Microscope(cfg, seed=3).next_frame()
    seg = make_segmenter("learned", backend="onnxruntime", device="cpu", max_side=1024,
                         tile=512, margin=64)
    labels = seg.segment(prepare(frame.image))
    assert f1_at_iou50(frame.labels, labels) >= 0.7
