"""Training tools smoke test: a tiny cache, two training steps, resume, export, parity (no real training)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def load_tool(name: str):
    tools = REPO / "tools"
    if str(tools) not in sys.path:
        sys.path.insert(0, str(tools))
    spec = importlib.util.spec_from_file_location(f"_emstream_tool_{name}", tools / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cache_train_resume_export(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tqdm")
    md = load_tool("make_dataset")
    train = load_tool("train")
    export = load_tool("export_onnx")

    cache = md.build_cache(tmp_path / "cache", n=3, seed=5, size=64, generator="fallback")
    data = md.load_cache(cache)
    assert data["image"].shape == (3, 64, 64) and data["dist"].max() <= 255
    assert json.loads((cache / "meta.json").read_text())["generator"].endswith("fallback_sample")

    cfg = dict(train.DEFAULTS, synthetic=[str(cache)], val=str(cache), size=64, batch=2, steps=2,
               log_every=1, val_every=2, ckpt_every=1, threads=1, warmup=1)
    run = tmp_path / "run"
    ckpt = train.train(cfg, run)
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["step"] for r in rows] == ["1", "2"] and rows[-1]["val_iou"] != ""
    assert json.loads((run / "config.json").read_text())["seed"] == cfg["seed"]

    train.train(cfg, run, resume=True, overrides={"steps": 3})  # continues at step 2
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"]

    # `train.py --out RUN --resume` passes only the defaults: the saved architecture must win
    wide = tmp_path / "wide"
    train.train(dict(cfg, width=cfg["width"] + 8, inputs=2), wide)
    train.train(dict(train.DEFAULTS), wide, resume=True, overrides={"steps": 3})
    saved = json.loads((wide / "config.json").read_text())
    assert (saved["width"], saved["inputs"], saved["steps"]) == (cfg["width"] + 8, 2, 3)
    assert [r["step"] for r in csv.DictReader(open(wide / "log.csv"))] == ["1", "2", "3"]

    info = export.export(ckpt, "smoke", tmp_path / "engines")
    assert info["onnx_bytes"] < 5_000_000
    assert max(info["parity_max_abs_logit_diff"].values()) < 1e-3
    card = (tmp_path / "engines" / "MODEL_CARD.md").read_text()
    assert info["sha256"] in card


def test_distance_target_is_one_at_each_particle_centre():
    md = load_tool("make_dataset")
    labels = np.zeros((40, 60), np.int32)
    labels[5:16, 5:16] = 1
    labels[20:35, 30:55] = 2
    d = md.distance_target(labels)
    assert d[labels == 0].max() == 0
    for k in (1, 2):
        assert d[labels == k].max() == pytest.approx(1.0)
        assert d[labels == k].min() > 0


def test_index_ranges_parse():
    md = load_tool("make_dataset")
    assert md.parse_indices_text("0-2,5") == [0, 1, 2, 5]
    assert md.parse_indices_text("") == []


def test_invisible_particles_carry_no_weight_in_the_loss():
    torch = pytest.importorskip("torch")
    train = load_tool("train")
    g = torch.Generator().manual_seed(0)
    fg = (torch.rand(2, 1, 32, 32, generator=g) > 0.7).float()
    dist = fg * torch.rand(2, 1, 32, 32, generator=g)
    weight = torch.ones_like(fg)
    weight[:, :, 8:16, 8:16] = 0  # an invisible particle's pixels
    logits = torch.randn(2, 2, 32, 32, generator=g)
    other = logits.clone()
    other[:, :, 8:16, 8:16] = torch.randn(2, 2, 8, 8, generator=g) * 5
    a, _ = train.loss_fn(logits, fg, dist, weight)
    b, _ = train.loss_fn(other, fg, dist, weight)
    assert torch.allclose(a, b)
    c, _ = train.loss_fn(other, fg, dist)  # without the mask every pixel counts
    assert not torch.allclose(a, c)


def test_visibility_mask_marks_buried_particles_only():
    md = load_tool("make_dataset")
    rng = np.random.default_rng(1)
    labels = np.zeros((128, 128), np.int32)
    yy, xx = np.mgrid[0:128, 0:128]
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 < 64] = 1
    labels[(yy - 90) ** 2 + (xx - 90) ** 2 < 64] = 2
    img = 100 + rng.normal(0, 5, labels.shape)
    img[labels == 1] -= 40  # plainly visible
    img[labels == 2] -= 0.5  # buried in the noise
    inv = md.invisible_mask(img, labels)
    assert inv.dtype == np.uint8
    assert inv[labels == 1].max() == 0 and inv[labels == 2].min() == 1 and inv[labels == 0].max() == 0


def test_visibility_threshold_is_a_parameter_recorded_in_the_cache(tmp_path):
    md = load_tool("make_dataset")
    rng = np.random.default_rng(2)
    labels = np.zeros((96, 96), np.int32)
    yy, xx = np.mgrid[0:96, 0:96]
    labels[(yy - 48) ** 2 + (xx - 48) ** 2 < 100] = 1
    img = 100 + rng.normal(0, 5, labels.shape)
    img[labels == 1] -= 4  # faint: d' between the two thresholds below
    d = md.detectability(img, labels)[1]
    lo, hi = d / 2, d * 2
    assert md.invisible_mask(img, labels, below=hi)[labels == 1].min() == 1
    assert md.invisible_mask(img, labels, below=lo).max() == 0
    out = md.build_cache(tmp_path / "c", n=2, seed=0, size=64, ignore_below=1.5)
    assert json.loads((out / "meta.json").read_text())["ignore_below"] == 1.5


def test_contact_mask_marks_the_neck_between_touching_particles_only():
    md = load_tool("make_dataset")
    labels = np.zeros((20, 30), np.int32)
    labels[4:12, 2:10] = 1
    labels[4:12, 10:18] = 2  # touches 1 along column 9|10
    labels[4:12, 22:28] = 3  # alone
    c = md.contact_mask(labels)
    assert c.dtype == np.uint8
    assert c[4:12, 8:12].min() == 1  # two pixels either side of the shared edge
    assert c[:, :8].max() == 0 and c[:, 12:].max() == 0  # nowhere else, not on lone particle 3
    assert c[labels == 0].max() == 0


def test_contacts_weigh_more_in_the_distance_loss():
    torch = pytest.importorskip("torch")
    train = load_tool("train")
    g = torch.Generator().manual_seed(1)
    fg = torch.ones(1, 1, 16, 16)
    dist = torch.rand(1, 1, 16, 16, generator=g)
    contact = torch.zeros_like(fg)
    contact[:, :, :, 7:9] = 1
    logits = torch.randn(1, 2, 16, 16, generator=g)
    wrong_neck = logits.clone()
    wrong_neck[:, 1:, :, 7:9] += 4  # the same error, at the neck
    base, _ = train.loss_fn(logits, fg, dist, None, contact, 0.0)
    plain, _ = train.loss_fn(wrong_neck, fg, dist, None, contact, 0.0)
    weighted, _ = train.loss_fn(wrong_neck, fg, dist, None, contact, 4.0)
    base4, _ = train.loss_fn(logits, fg, dist, None, contact, 4.0)
    assert float(weighted - base4) > 2 * float(plain - base)


def test_a_masked_bar_is_filled_with_the_background_level_as_at_inference():
    md = load_tool("make_dataset")

    def sampler(rng, size):
        img = np.full((size, size), 1000.0) + rng.normal(0, 20, (size, size))
        img[-8:] = 0.0  # a black data bar
        return img, np.zeros((size, size), np.int32), {"banner_rows": [size - 8, size]}

    kinds = set()
    for k in range(12):
        image = md.make_sample(sampler, np.random.default_rng(k), 64)[0].astype(np.float32)
        bar, rest = image[-8:], image[:-8]
        assert bar.std() == 0
        if abs(float(bar[0, 0]) - float(np.median(rest))) < 0.01:
            kinds.add("masked: background level")  # not 0, which has an edge of its own
        else:
            assert bar[0, 0] < rest.min()  # unmasked: the black bar is just darker than all
            kinds.add("unmasked")
    assert len(kinds) == 2
    old = [md.make_sample(sampler, np.random.default_rng(k), 64, bar_fill="zero")[0]
           for k in range(12)]
    assert {float(o[-1, 0]) for o in old} >= {0.0}  # unet-s v3's caches, reproducible


def test_scene_caches_take_a_bright_field_fraction_recorded_in_meta(tmp_path):
    """--bf-fraction sets the scene generator's mode mix; 0.5 keeps the old random stream."""
    pytest.importorskip("tqdm")
    md = load_tool("make_dataset")
    modes = {f: [md.scene_sample(np.random.default_rng(k), 64, bf_fraction=f)[2]["mode"]
                 for k in range(12)] for f in (0.0, 0.5, 1.0)}
    assert set(modes[0.0]) == {"haadf"} and set(modes[1.0]) == {"bf"}
    old = [md.scene_sample(np.random.default_rng(k), 64)[2]["mode"] for k in range(12)]
    assert modes[0.5] == old and set(old) == {"bf", "haadf"}
    out = md.build_cache(tmp_path / "bf", n=2, seed=0, size=64, generator="scene", bf_fraction=1.0)
    assert json.loads((out / "meta.json").read_text())["bf_fraction"] == 1.0
    with pytest.raises(ValueError):
        md.build_cache(tmp_path / "x", n=1, seed=0, size=64, generator="scene", bf_fraction=2)


def test_scene_pixel_size_range_is_drawn_and_recorded(tmp_path):
    pytest.importorskip("tqdm")
    md = load_tool("make_dataset")
    a = md.scene_sample(np.random.default_rng(3), 64)
    b = md.scene_sample(np.random.default_rng(3), 64, nm_per_px=(0.5, 0.5))
    assert np.array_equal(a[0], b[0])  # a single value draws nothing: old caches reproduce
    c = md.scene_sample(np.random.default_rng(3), 64, nm_per_px=(0.2, 0.3))
    assert a[2]["nm_per_px"] == 0.5 and 0.2 <= c[2]["nm_per_px"] <= 0.3
    out = md.build_cache(tmp_path / "px", n=2, seed=0, size=64, generator="scene",
                         nm_per_px=(0.2, 0.5))
    assert json.loads((out / "meta.json").read_text())["nm_per_px"] == [0.2, 0.5]
    with pytest.raises(ValueError):
        md.build_cache(tmp_path / "x", n=1, seed=0, size=64, generator="scene", nm_per_px=(0.5, 0.2))
