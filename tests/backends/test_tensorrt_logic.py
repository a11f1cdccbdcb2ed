"""TensorRT plan cache, rebuild-on-failure and verification, with a fake runtime (no GPU here).

The fake stands in for :class:`emstream.backends.tensorrt.TensorRTRuntime`: ``build`` returns
plan bytes derived from the ONNX bytes and profile, ``deserialize`` accepts only plans it built,
``runner`` returns ONNX Runtime's outputs (optionally perturbed) so verification is exercised.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from emstream.backends.base import find_model
from emstream.backends.cache import PlanCache, PlanKey, Profile
from emstream.backends.onnxruntime import OnnxRuntimeBackend
from emstream.backends.tensorrt import (
    TensorRTBackend,
    compare_outputs,
    get_engine,
    plan_key,
    tensorrt_available,
)
from emstream.errors import BackendUnavailable


class FakeEngine:
    def __init__(self, plan: bytes):
        self.plan = plan


class FakeRuntime:
    version = "10.9.0"
    gpu = "NVIDIA FakeGPU"
    compute_capability = "9.0"

    def __init__(self, onnx_path, perturb: float = 0.0):
        self.builds = 0
        self.timing_in: list[bytes] = []
        self.deserialize_calls = 0
        self.ort = OnnxRuntimeBackend(onnx_path, "cpu")
        self.perturb = perturb
        self.runs: list[tuple[int, ...]] = []

    def build(self, onnx_bytes, profile, timing_cache, fp16=True):
        self.builds += 1
        self.timing_in.append(timing_cache)
        plan = b"PLAN" + json.dumps(profile.as_lists()).encode() + onnx_bytes[:64]
        return plan, timing_cache + b"T"

    def deserialize(self, plan):
        self.deserialize_calls += 1
        return FakeEngine(plan) if plan.startswith(b"PLAN") else None

    def runner(self, engine):
        def run(batch):
            self.runs.append(batch.shape)
            out = self.ort.run(batch)["maps"]
            return out + self.perturb

        return run


@pytest.fixture()
def files(random_model):
    return find_model(random_model)


PROFILE = Profile.for_frames([(256, 256), (512, 512)])


def test_profile_covers_the_frame_sizes_padded_to_16():
    p = Profile.for_frames([(1000, 1000), (256, 300), (4096, 4096)])
    assert p.min == (1, 1, 256, 304)
    assert p.opt == p.max == (1, 1, 4096, 4096)
    with pytest.raises(ValueError):
        Profile((1, 1, 512, 512), (1, 1, 256, 256), (1, 1, 1024, 1024))


def test_plan_key_changes_with_every_ingredient(files):
    rt = FakeRuntime(files.onnx)
    k = plan_key(files, rt, PROFILE)
    variants = [
        PlanKey(k.model, "0" * 64, k.tensorrt, k.gpu, k.compute_capability, k.profile),
        PlanKey(k.model, k.model_sha256, "10.10.0", k.gpu, k.compute_capability, k.profile),
        PlanKey(k.model, k.model_sha256, k.tensorrt, "NVIDIA RTX 4090", k.compute_capability,
                k.profile),
        PlanKey(k.model, k.model_sha256, k.tensorrt, k.gpu, "8.9", k.profile),
        PlanKey(k.model, k.model_sha256, k.tensorrt, k.gpu, k.compute_capability,
                Profile.for_frames([(256, 256), (1024, 1024)])),
        PlanKey(k.model, k.model_sha256, k.tensorrt, k.gpu, k.compute_capability, k.profile,
                "fp32"),
    ]
    digests = {k.digest} | {v.digest for v in variants}
    assert len(digests) == len(variants) + 1
    assert k.model_sha256 == json.loads(files.onnx.with_suffix(".json").read_text())["sha256"]


def test_first_use_builds_verifies_and_caches_then_reuses(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    engine, facts = get_engine(files, rt, PROFILE, cache)
    assert facts["source"] == "built" and facts["reason"] == "no cached plan"
    assert facts["verified"]["mask_iou"] == 1.0
    key = plan_key(files, rt, PROFILE)
    side = json.loads(cache.sidecar_path(key).read_text())
    assert side["key"] == key.as_dict() and side["verified"]["mask_iou"] == 1.0
    assert cache.timing_cache_path(key).read_bytes() == b"T"  # timing cache persisted
    engine2, facts2 = get_engine(files, rt, PROFILE, cache)
    assert facts2["source"] == "cache" and rt.builds == 1
    assert engine2.plan == engine.plan


def test_timing_cache_is_fed_back_into_the_next_build(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    get_engine(files, rt, PROFILE, cache)
    get_engine(files, rt, PROFILE, cache, rebuild=True)
    assert rt.timing_in == [b"", b"T"]


def test_corrupt_plan_is_rebuilt_never_used(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    get_engine(files, rt, PROFILE, cache)
    key = plan_key(files, rt, PROFILE)
    cache.plan_path(key).write_bytes(b"garbage")  # size/hash no longer match the sidecar
    _, facts = get_engine(files, rt, PROFILE, cache)
    assert facts["source"] == "built" and "does not match its sidecar" in facts["reason"]
    assert rt.builds == 2


def test_plan_the_runtime_refuses_is_rebuilt(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    key = plan_key(files, rt, PROFILE)
    cache.save(key, b"NOTAPLAN")  # consistent sidecar, but undeserialisable
    _, facts = get_engine(files, rt, PROFILE, cache)
    assert facts["source"] == "built" and "failed to deserialize" in facts["reason"]


def test_runtime_exception_while_loading_is_a_rebuild_reason(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    get_engine(files, rt, PROFILE, cache)

    def boom(plan):
        raise RuntimeError("serialization version mismatch")

    engine, reason = cache.load(plan_key(files, rt, PROFILE), boom)
    assert engine is None and "serialization version mismatch" in reason


def test_foreign_plan_with_other_sidecar_is_rebuilt(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    get_engine(files, rt, PROFILE, cache)
    key = plan_key(files, rt, PROFILE)
    side = json.loads(cache.sidecar_path(key).read_text())
    side["key"]["gpu"] = "NVIDIA OtherGPU"  # e.g. a cache directory copied from another PC
    cache.sidecar_path(key).write_text(json.dumps(side))
    _, facts = get_engine(files, rt, PROFILE, cache)
    assert facts["source"] == "built" and "another gpu" in facts["reason"]


def test_missing_sidecar_is_rebuilt(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    get_engine(files, rt, PROFILE, cache)
    key = plan_key(files, rt, PROFILE)
    cache.sidecar_path(key).unlink()
    _, facts = get_engine(files, rt, PROFILE, cache)
    assert facts["source"] == "built" and "no sidecar" in facts["reason"]


def test_engine_that_disagrees_with_onnxruntime_is_refused_and_not_cached(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx, perturb=5.0)  # every logit shifted: masks differ
    with pytest.raises(BackendUnavailable, match="disagrees with ONNX Runtime"):
        get_engine(files, rt, PROFILE, cache)
    key = plan_key(files, rt, PROFILE)
    assert not cache.plan_path(key).exists() and not cache.sidecar_path(key).exists()


def test_backend_pads_frames_below_the_profile_minimum(files, tmp_path):
    rt = FakeRuntime(files.onnx)
    be = TensorRTBackend(files, frame_sizes=[(256, 256), (512, 512)], cache_dir=tmp_path,
                         runtime=rt)
    out = be.run(np.zeros((1, 1, 128, 160), np.float32))["maps"]
    assert out.shape == (1, 2, 128, 160)
    assert rt.runs[-1] == (1, 1, 256, 256)
    with pytest.raises(ValueError, match="exceeds"):
        be.run(np.zeros((1, 1, 1024, 512), np.float32))
    assert be.describe() == "tensorrt:NVIDIA FakeGPU fp16"
    assert be.max_batch == 1  # the profile's N: the segmenter then runs views one at a time


def test_compare_outputs_reports_iou_and_probability_difference():
    a = np.zeros((1, 2, 8, 8), np.float32) - 5
    a[0, 0, :4] = 5
    b = a.copy()
    assert compare_outputs(a, b) == {"mask_iou": 1.0, "mean_abs_prob": 0.0}
    b[0, 0, :2] = -5
    assert compare_outputs(a, b)["mask_iou"] == pytest.approx(0.5)


def test_cache_entries_list_built_plans(files, tmp_path):
    cache = PlanCache(tmp_path)
    rt = FakeRuntime(files.onnx)
    get_engine(files, rt, PROFILE, cache)
    entries = cache.entries(files.label)
    assert len(entries) == 1 and entries[0]["key"]["gpu"] == "NVIDIA FakeGPU"
    assert cache.entries("other-model") == []


def test_availability_message_names_what_is_missing():
    ok, detail = tensorrt_available()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert not ok and "TensorRT is not installed" in detail
