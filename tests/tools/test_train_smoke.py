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
