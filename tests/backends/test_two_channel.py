"""Two-channel models: the normalised frame and its local contrast as the network's input.

Training (tools/train.py), export (tools/export_onnx.py), ONNX Runtime, PyTorch, the TensorRT
profile and the segmenter must all agree on what the second channel is and where it is made
(on the whole frame at network resolution, before tiling).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from emstream.backends.base import input_channels
from emstream.backends.cache import Profile
from emstream.backends.normalize import local_contrast, normalize_image
from emstream.backends.segmenter import LearnedSegmenter
from emstream.backends.tensorrt import verification_sample

from .conftest import load_tool


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory):
    """A random one-channel model widened to two channels as training does, then exported."""
    torch = pytest.importorskip("torch")
    from emstream.backends.unet import build_model

    train = load_tool("train")
    export = load_tool("export_onnx")
    d = tmp_path_factory.mktemp("engines2")
    torch.manual_seed(1)
    one = build_model("unet-s").eval()
    two = build_model("unet-s", inputs=2).eval()
    two.load_state_dict(train.widen_inputs(one.state_dict(), two))
    cfg = {"arch": "unet-s", "width": 16, "refine": 4, "inputs": 2, "local_contrast_sigma": 3.0}
    ckpt = d / "ckpt.pt"
    torch.save({"model": two.state_dict(), "step": 0, "config": json.dumps(cfg)}, ckpt)
    export.export(ckpt, "unet-two", d)
    return d / "unet-two.onnx", one, two


def test_widening_keeps_what_the_one_channel_network_computed(two_channel_model):
    """New input channels start at zero weight: the widened network gives the old one's maps
    whatever the second channel holds, so fine-tuning starts from the shipped model."""
    import torch

    _, one, two = two_channel_model
    x = torch.from_numpy(verification_sample(64))
    noise = torch.randn_like(x)
    with torch.no_grad():
        ref = one(x)
        got = two(torch.cat([x, noise], dim=1))
    assert got.shape == ref.shape == (1, 2, 64, 64)
    assert float((got - ref).abs().max()) < 1e-5


def test_local_contrast_flattens_a_bright_support():
    """A faint particle on a bright, sloping support: in the image channel the slope takes the
    range; in the local-contrast channel the particle stands out of a flat field."""
    yy, xx = np.mgrid[0:128, 0:128]
    support = 3.0 * xx / 128.0
    particle = 0.3 * (((yy - 64) ** 2 + (xx - 64) ** 2) < 16)
    x = normalize_image(support + particle)
    c = local_contrast(x, 4.0)
    assert c.dtype == np.float32 and c.shape == x.shape
    inside, far = c[62:67, 62:67].mean(), np.median(c[:, :40])
    assert inside - far > 1.0  # at full range
    assert x[64, 64] - x[64, 56] < 0.4  # squashed in the image channel


def test_sidecar_backends_and_profile_know_the_channels(two_channel_model):
    onnx, _, two = two_channel_model
    info = json.loads(onnx.with_suffix(".json").read_text())
    assert info["input"]["shape"] == ["N", 2, "H", "W"]
    assert info["input"]["channels"] == ["image", "local contrast"]
    assert info["local_contrast_sigma"] == 3.0
    assert input_channels(info) == 2 and input_channels({}) == 1
    assert max(info["parity_max_abs_logit_diff"].values()) < 1e-3
    p = Profile.for_frames([(256, 256), (1024, 1024)], channels=2)
    assert p.min[1] == p.opt[1] == p.max[1] == 2
    assert verification_sample(64, 2).shape == (1, 2, 64, 64)


class _Recorder:
    """Wraps a backend and keeps the input shapes it was given."""

    def __init__(self, be):
        self.be, self.shapes = be, []
        self.device, self.name, self.max_batch = be.device, be.name, None

    def run(self, batch):
        self.shapes.append(batch.shape)
        return self.be.run(batch)

    def describe(self):
        return self.be.describe()


def test_segmenter_feeds_two_channels_made_on_the_whole_frame(two_channel_model):
    """Both backends get N x 2 x H x W; the local contrast is made once on the frame (at the
    network's resolution), so tiled maps agree with whole-frame maps in the interior."""
    from emstream.backends.onnxruntime import OnnxRuntimeBackend
    from emstream.backends.torch import TorchBackend

    onnx, _, _ = two_channel_model
    info = json.loads(onnx.with_suffix(".json").read_text())
    rec = _Recorder(OnnxRuntimeBackend(onnx, "cpu"))
    img = verification_sample(512)[0, 0]
    img = np.concatenate([img, img[:, ::-1]], axis=1)[:, :900]
    seg = LearnedSegmenter(rec, info, max_side=4096, scale=1.0)
    assert seg.inputs == 2 and seg.local_contrast_sigma == 3.0
    whole = seg.maps(img)
    assert rec.shapes and all(s[1] == 2 for s in rec.shapes)
    tiled = LearnedSegmenter(rec, info, max_side=256, tile=256, margin=48, scale=1.0).maps(img)
    assert ((whole[0] > 0) == (tiled[0] > 0)).mean() > 0.99

    from emstream.backends.base import find_model

    torch_seg = LearnedSegmenter(TorchBackend(find_model(onnx), "cpu"), info, scale=1.0)
    assert np.abs(torch_seg.maps(img) - whole).max() < 1e-3


def test_one_channel_sidecars_still_run_one_channel(random_model):
    from emstream.backends.onnxruntime import OnnxRuntimeBackend

    info = json.loads(random_model.with_suffix(".json").read_text())
    rec = _Recorder(OnnxRuntimeBackend(random_model, "cpu"))
    LearnedSegmenter(rec, info, scale=1.0).maps(verification_sample(128)[0, 0])
    assert all(s[1] == 1 for s in rec.shapes)


@pytest.mark.parametrize("shape", [(160, 160), (300, 517), (1100, 700)])
def test_local_contrast_is_the_normalised_difference_training_uses(shape):
    """The fused run-time computation equals normalize_image(x - blur), whatever the size
    (the percentile subsample is the same)."""
    import cv2

    x = normalize_image(np.random.default_rng(3).gamma(2.0, size=shape).astype(np.float32))
    ref = normalize_image(x - cv2.GaussianBlur(x, (0, 0), 4.0))
    assert np.abs(local_contrast(x, 4.0) - ref).max() < 1e-5
    assert not local_contrast(np.zeros(shape, np.float32), 4.0).any()
