"""Backends: parity of every available backend, provider assertion, automatic choice, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emstream import backends
from emstream.backends import base as backends_base
from emstream.backends.onnxruntime import CPU, CUDA, OnnxRuntimeBackend, check_provider
from emstream.backends.segmenter import LearnedSegmenter, tile_starts
from emstream.backends.tensorrt import verification_sample
from emstream.errors import BackendUnavailable
from emstream.frame import Prepared


def available_backends(model):
    """Every backend that can start here (TensorRT/CUDA ones only on GPU machines)."""
    out = []
    for name, dev in backends.AUTO_ORDER:
        try:
            be, _ = backends.make_backend(name, dev, model)
        except BackendUnavailable:
            continue
        out.append(be)
    return out


def test_every_available_backend_gives_the_same_masks(random_model):
    bes = available_backends(random_model)
    names = [b.describe() for b in bes]
    assert any(n.startswith("onnxruntime:CPU") for n in names)  # always available
    x = verification_sample(256)
    ref = bes[0].run(x)["maps"]
    assert ref.shape == (1, 2, 256, 256)
    for b in bes[1:]:
        got = b.run(x)["maps"]
        for ch in (0, 1):
            ma, mb = ref[0, ch] > 0, got[0, ch] > 0
            union = np.logical_or(ma, mb).sum()
            iou = np.logical_and(ma, mb).sum() / union if union else 1.0
            # stated tolerance: masks IoU >= 0.99 (FP16 backends), logits within 1e-3 in FP32
            assert iou >= 0.99, (b.describe(), ch, iou)
        if "fp16" not in b.device:
            assert np.abs(got - ref).max() < 1e-3


def test_segmenters_on_two_backends_give_the_same_labels(random_model):
    bes = available_backends(random_model)
    rng = np.random.default_rng(3)
    raw = rng.poisson(200, (200, 300)).astype(np.uint16)
    prepared = Prepared(image=raw.astype(np.float32), polarity="dark", raw=raw)
    labels = [LearnedSegmenter(b, {"threshold": 0.5}).segment(prepared) for b in bes]
    for lab in labels[1:]:
        a, b = labels[0] > 0, lab > 0
        union = np.logical_or(a, b).sum()
        assert union == 0 or np.logical_and(a, b).sum() / union >= 0.99


def test_provider_assertion_rejects_a_silent_fallback():
    check_provider(CPU, [CPU])
    with pytest.raises(BackendUnavailable, match="asked for CUDAExecutionProvider"):
        check_provider(CUDA, [CPU])
    with pytest.raises(BackendUnavailable):
        check_provider(CPU, [])


def test_cuda_provider_is_refused_where_absent(random_model):
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(random_model, "cuda")


def test_cpu_session_reports_the_provider_it_runs(random_model):
    be = OnnxRuntimeBackend(random_model, "cpu")
    assert be.session.get_providers()[0] == CPU
    assert be.describe() == "onnxruntime:CPUExecutionProvider"


def test_candidates_follow_the_documented_order():
    assert backends.candidates() == list(backends.AUTO_ORDER)
    assert backends.candidates("auto", "cpu") == [("onnxruntime", "cpu"), ("torch", "cpu")]
    assert backends.candidates("torch") == [("torch", "cuda"), ("torch", "cpu")]
    assert backends.candidates("tensorrt", "cpu") == []
    with pytest.raises(ValueError):
        backends.candidates("caffe")


def test_auto_backend_on_cpu_machine_is_onnxruntime_cpu(random_model):
    be, files = backends.make_backend("auto", "auto", random_model)
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("GPU machine: auto picks a CUDA backend")
    except ImportError:
        pass
    assert be.describe() == "onnxruntime:CPUExecutionProvider"
    assert files.info["arch"] == "unet-s"


def test_learned_kind_raises_with_reasons_when_no_model(tmp_path, monkeypatch):
    monkeypatch.setattr(backends_base, "engines_dirs", lambda: [tmp_path])
    with pytest.raises(BackendUnavailable, match="no model"):
        backends.make_segmenter("learned")


def test_auto_kind_falls_back_to_classical_with_a_warning(tmp_path, monkeypatch, caplog):
    import emstream.process.classical  # noqa: F401
    monkeypatch.setattr(backends_base, "engines_dirs", lambda: [tmp_path])
    with caplog.at_level("WARNING"):
        seg = backends.make_segmenter("auto")
    assert seg.name == "classical"
    assert "classical" in caplog.text


def test_installed_wheel_layout_is_found(tmp_path, monkeypatch, random_model):
    wheel_engines = tmp_path / "_engines"
    wheel_engines.mkdir()
    for suffix in (".onnx", ".pt", ".json"):
        src = random_model.with_suffix(suffix)
        (wheel_engines / f"unet-s{suffix}").write_bytes(src.read_bytes())
    monkeypatch.setattr(backends_base, "engines_dirs", lambda: [tmp_path / "missing", wheel_engines])
    files = backends_base.find_model()
    assert files.onnx == wheel_engines / "unet-s.onnx"
    assert files.weights is not None and files.info["arch"] == "unet-s"


def test_backend_report_lists_every_runtime_with_a_reason():
    rows = backends.backend_report()
    names = " ".join(r["name"] for r in rows)
    for key in ("onnxruntime (CPU)", "torch", "tensorrt"):
        assert key in names
    for r in rows:
        assert set(r) == {"name", "available", "detail"} and r["detail"]
    ort_cpu = next(r for r in rows if r["name"] == "onnxruntime (CPU)")
    assert ort_cpu["available"] is True


def test_engine_info_describes_the_model(random_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSTREAM_CACHE_DIR", str(tmp_path))
    info = backends.engine_info(random_model)
    sidecar = json.loads(random_model.with_suffix(".json").read_text())
    assert info["sha256"] == sidecar["sha256"]
    assert info["bytes"] == random_model.stat().st_size
    assert info["plans"] == []
    assert "available" in info["tensorrt"]


def test_engine_build_explains_why_it_cannot_run_here(random_model):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        backends.engine_build(random_model)


def test_tiles_cover_the_frame_with_overlap():
    assert tile_starts(1000, 1024, 64) == [0]
    s = tile_starts(4096, 1024, 64)
    assert s[0] == 0 and s[-1] == 4096 - 1024
    assert all(b - a <= 1024 - 128 for a, b in zip(s, s[1:], strict=False))


def test_tiled_maps_match_whole_frame_maps_in_the_interior(random_model):
    be = OnnxRuntimeBackend(random_model, "cpu")
    img = verification_sample(512)[0, 0]
    img = np.concatenate([img, img[:, ::-1]], axis=1)[:, :900]  # 512 x 900, not a multiple of 16
    whole = LearnedSegmenter(be, max_side=4096).maps(img)
    tiled = LearnedSegmenter(be, max_side=256, tile=256, margin=48).maps(img)
    assert whole.shape == tiled.shape == (2, 512, 900)
    agree = ((whole[0] > 0) == (tiled[0] > 0)).mean()
    assert agree > 0.99


@pytest.mark.parametrize("auto_default, expected", [(False, "classical"), (True, "unet-s@")])
def test_auto_kind_follows_the_models_recorded_evaluation(tmp_path, monkeypatch, random_model,
                                                          auto_default, expected):
    """``auto`` runs the shipped model only when its evaluation beat the classical baseline."""
    import json

    for suffix in (".onnx", ".pt", ".json"):
        (tmp_path / f"unet-s{suffix}").write_bytes(random_model.with_suffix(suffix).read_bytes())
    info = json.loads((tmp_path / "unet-s.json").read_text())
    info["auto_default"] = auto_default
    (tmp_path / "unet-s.json").write_text(json.dumps(info))
    monkeypatch.setattr(backends_base, "engines_dirs", lambda: [tmp_path])
    seg = backends.make_segmenter("auto", backend="onnxruntime")
    assert seg.name.startswith(expected)
    assert backends.make_segmenter("learned", backend="onnxruntime").name.startswith("unet-s@")


def test_the_shipped_model_records_its_auto_default():
    files = backends_base.find_model()
    assert isinstance(files.info.get("auto_default"), bool)
    assert files.info.get("auto_default_reason")
