"""Deeper models grown from a trained checkpoint (``tools/train.py --extra-blocks``).

New residual blocks start as identities, so fine-tuning starts from what the smaller network
computed; the block count travels through the checkpoint, the ONNX export's sidecar and the
PyTorch backend.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import load_tool

torch = pytest.importorskip("torch")


def _small_and_grown(extra: int):
    from emstream.backends.unet import build_model

    train = load_tool("train")
    torch.manual_seed(3)
    small = build_model("unet-s", inputs=2)
    # trained-looking BatchNorm statistics, so an identity is not a coincidence of zeros
    for m in small.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    small.eval()
    grown = build_model("unet-s", inputs=2, extra=extra)
    grown.load_state_dict(train.grow(small.state_dict(), grown))
    return small, grown.eval(), train


@pytest.mark.parametrize("extra", [1, 2])
def test_grown_network_computes_what_the_small_one_did(extra):
    small, grown, _ = _small_and_grown(extra)
    n_small = sum(p.numel() for p in small.parameters())
    n_grown = sum(p.numel() for p in grown.parameters())
    assert n_grown > n_small
    x = torch.randn(2, 2, 96, 80)
    with torch.no_grad():
        assert float((grown(x) - small(x)).abs().max()) < 1e-5


def test_grown_blocks_learn_once_trained():
    """The identity start is not a dead end: one optimiser step moves the new blocks' output."""
    small, grown, _ = _small_and_grown(1)
    grown.train()
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    x = torch.randn(2, 2, 64, 64)
    grown(x).square().mean().backward()
    assert float(grown.mid[0].bn2.weight.grad.abs().sum()) > 0
    opt.step()
    grown.eval()
    with torch.no_grad():
        assert float((grown(x) - small(x)).abs().max()) > 1e-6


def test_a_checkpoint_that_does_not_fit_is_refused():
    from emstream.backends.unet import build_model

    train = load_tool("train")
    other = build_model("unet-s", width=8, inputs=2).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        train.grow({**other, "stranger.weight": torch.zeros(1)}, build_model("unet-s", inputs=2))


def test_extra_blocks_travel_through_export_and_the_torch_backend(tmp_path):
    from emstream.backends import make_backend

    _, grown, _ = _small_and_grown(2)
    export = load_tool("export_onnx")
    cfg = {"arch": "unet-s", "width": 16, "refine": 4, "inputs": 2, "extra_blocks": 2}
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": grown.state_dict(), "step": 0, "config": json.dumps(cfg)}, ckpt)
    info = export.export(ckpt, "unet-deep", tmp_path)
    assert info["extra_blocks"] == 2
    assert max(info["parity_max_abs_logit_diff"].values()) < 1e-3
    be, files = make_backend("torch", "cpu", str(tmp_path / "unet-deep.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 2, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = grown(torch.from_numpy(x)).numpy()
    assert np.abs(be.run(x)["maps"] - ref).max() < 1e-4
