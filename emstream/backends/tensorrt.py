"""TensorRT backend: an FP16 engine built from the committed ONNX model, cached per GPU.

Written against NVIDIA's documented TensorRT 10 Python API (``import tensorrt as trt``):

* build: ``trt.Builder(logger)`` -> ``builder.create_network(0)`` (explicit batch is the only
  mode in TensorRT 10) -> ``trt.OnnxParser(network, logger).parse(onnx_bytes)`` ->
  ``builder.create_builder_config()`` with ``set_flag(trt.BuilderFlag.FP16)``,
  ``set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, ...)``, an optimisation profile
  (``builder.create_optimization_profile()``, ``profile.set_shape(name, min, opt, max)``,
  ``config.add_optimization_profile``) and a timing cache (``config.create_timing_cache(bytes)``,
  ``config.set_timing_cache(cache, ignore_mismatch=False)``, saved afterwards with
  ``config.get_timing_cache().serialize()``) -> ``builder.build_serialized_network``.
* load: ``trt.Runtime(logger).deserialize_cuda_engine(plan)`` (None on failure).
* run: ``engine.create_execution_context()``, ``context.set_input_shape``,
  ``context.set_tensor_address`` for every I/O tensor, ``context.execute_async_v3(stream)``.
  Device buffers and the stream are PyTorch CUDA tensors / streams (``torch`` is required next
  to ``tensorrt``).

Plans live in :class:`emstream.backends.cache.PlanCache`, keyed by model sha256, TensorRT version,
GPU name and compute capability, profile and precision. A missing, foreign, stale or corrupt plan
is rebuilt (never silently used), and the reason is logged. After every *build* the engine's
outputs are compared with ONNX Runtime (CPU) on a deterministic sample frame; the plan is kept
only if the particle masks agree (IoU >= :data:`VERIFY_MIN_IOU`) and the mean absolute
difference of the probabilities is <= :data:`VERIFY_MAX_MEAN_ABS` (FP16 tolerance).

Nothing here imports ``tensorrt`` at module import time; everything GPU-specific sits behind the
small :class:`TensorRTRuntime` adapter so that the cache/rebuild/verification logic is tested
with a fake runtime on machines without a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emstream.backends.base import InferenceBackend, ModelFiles, file_sha256, input_channels
from emstream.backends.cache import PlanCache, PlanKey, Profile
from emstream.errors import BackendUnavailable

log = logging.getLogger(__name__)

#: Frame sizes the default profile covers (min 256², opt and max 4096²).
DEFAULT_FRAME_SIZES = ((256, 256), (1024, 1024), (2048, 2048), (4096, 4096))
WORKSPACE_BYTES = 2 << 30
VERIFY_MIN_IOU = 0.98
VERIFY_MAX_MEAN_ABS = 0.02
VERIFY_SIZE = 512


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def compare_outputs(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Agreement of two logit maps (N x 2 x H x W): mask IoU and mean |Δprobability|."""
    ma, mb = a[:, 0] > 0, b[:, 0] > 0
    union = np.logical_or(ma, mb).sum()
    iou = float(np.logical_and(ma, mb).sum() / union) if union else 1.0
    mad = float(np.abs(_sigmoid(a) - _sigmoid(b)).mean())
    return {"mask_iou": iou, "mean_abs_prob": mad}


def verification_sample(size: int = VERIFY_SIZE, channels: int = 1) -> np.ndarray:
    """A deterministic, normalised test frame with disks of several sizes (1 x C x size x size:
    for two-channel models the frame and its local contrast, as the segmenter makes them)."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size), np.float32)
    for _ in range(40):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 30)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = -1.2
    img += rng.normal(0, 0.25, img.shape).astype(np.float32) + 0.6
    img = np.clip(img, -2, 2)
    if channels == 1:
        return img[None, None]
    from emstream.backends.normalize import local_contrast

    return np.stack([img, local_contrast(img, 4.0)])[None]


class TensorRTRuntime:
    """Thin adapter over the real ``tensorrt`` module (and torch for CUDA memory)."""

    def __init__(self):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendUnavailable(
                "TensorRT is not installed (NVIDIA's 'tensorrt' wheels from pypi.nvidia.com or "
                "the TensorRT tarball)") from e
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable("the TensorRT backend needs PyTorch for CUDA buffers") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT is installed but no CUDA GPU is visible")
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.version = str(trt.__version__)
        props = torch.cuda.get_device_properties(0)
        self.gpu = str(props.name)
        self.compute_capability = f"{props.major}.{props.minor}"

    def build(self, onnx_bytes: bytes, profile: Profile, timing_cache: bytes,
              fp16: bool = True) -> tuple[bytes, bytes]:
        """Build a serialized plan; returns ``(plan, updated timing cache)``."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT could not parse the ONNX model: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        cache = config.create_timing_cache(timing_cache or b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        opt_profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        opt_profile.set_shape(name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(opt_profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendUnavailable("TensorRT failed to build the engine (see its log)")
        return bytes(plan), bytes(config.get_timing_cache().serialize())

    def deserialize(self, plan: bytes):
        return self.trt.Runtime(self.logger).deserialize_cuda_engine(plan)

    def runner(self, engine) -> Callable[[np.ndarray], np.ndarray]:
        """A function running ``engine`` on an N x 1 x H x W float32 batch -> logit maps."""
        trt, torch = self.trt, self.torch
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        stream = torch.cuda.Stream()

        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).cuda(non_blocking=True)
            context.set_input_shape(inputs[0], tuple(x.shape))
            context.set_tensor_address(inputs[0], x.data_ptr())
            outs = {}
            for n in outputs:
                shape = tuple(context.get_tensor_shape(n))
                outs[n] = torch.empty(shape, dtype=torch.float32, device="cuda")
                context.set_tensor_address(n, outs[n].data_ptr())
            torch.cuda.current_stream().synchronize()
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            stream.synchronize()
            return outs[outputs[0]].cpu().numpy()

        return run


def plan_key(files: ModelFiles, runtime: Any, profile: Profile, precision: str = "fp16") -> PlanKey:
    return PlanKey(model=files.label, model_sha256=file_sha256(files.onnx),
                   tensorrt=str(runtime.version), gpu=str(runtime.gpu),
                   compute_capability=str(runtime.compute_capability), profile=profile,
                   precision=precision)


def reference_outputs(files: ModelFiles, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU) outputs, the reference a fresh TensorRT plan is checked against."""
    from emstream.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(files.onnx, "cpu").run(batch)["maps"]


def get_engine(files: ModelFiles, runtime: Any, profile: Profile, cache: PlanCache, *,
               rebuild: bool = False,
               reference: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[Any, dict]:
    """Load the cached engine for this model/GPU/profile, or build, verify and cache one.

    Returns ``(engine, facts)``; ``facts["source"]`` is ``"cache"`` or ``"built"`` and
    ``facts["reason"]`` says why a build happened.
    """
    key = plan_key(files, runtime, profile)
    if not rebuild:
        engine, reason = cache.load(key, runtime.deserialize)
        if engine is not None:
            return engine, {"source": "cache", "plan": str(cache.plan_path(key)), "key": key}
        log.info("TensorRT: building a new plan (%s)", reason)
    else:
        reason = "rebuild requested"
    t0 = time.perf_counter()
    plan, timing = runtime.build(files.onnx.read_bytes(), profile, cache.load_timing_cache(key))
    build_s = time.perf_counter() - t0
    cache.save_timing_cache(key, timing)
    engine = runtime.deserialize(plan)
    if engine is None:
        raise BackendUnavailable("TensorRT could not load the plan it has just built")
    side = min(max(VERIFY_SIZE, profile.min[2], profile.min[3]), profile.max[2], profile.max[3])
    sample = verification_sample(side, profile.min[1])
    ref = (reference or (lambda b: reference_outputs(files, b)))(sample)
    got = runtime.runner(engine)(sample)
    agree = compare_outputs(got, ref)
    if agree["mask_iou"] < VERIFY_MIN_IOU or agree["mean_abs_prob"] > VERIFY_MAX_MEAN_ABS:
        cache.discard(key)
        raise BackendUnavailable(
            f"TensorRT engine disagrees with ONNX Runtime (mask IoU {agree['mask_iou']:.4f} < "
            f"{VERIFY_MIN_IOU} or mean |Δp| {agree['mean_abs_prob']:.4f} > "
            f"{VERIFY_MAX_MEAN_ABS}); not cached")
    path = cache.save(key, plan, {"build_seconds": round(build_s, 1), "verified": agree,
                                  "reason": reason})
    return engine, {"source": "built", "plan": str(path), "reason": reason, "verified": agree,
                    "key": key}


class TensorRTBackend(InferenceBackend):
    """Runs the model through a cached FP16 TensorRT engine (see module docstring).

    Parameters
    ----------
    files : model files (the ONNX is what TensorRT builds from).
    frame_sizes : ``(h, w)`` frame sizes the optimisation profile must cover.
    cache_dir : plan cache directory (default: user cache dir).
    rebuild : ignore a cached plan and build anew.
    runtime : injected adapter (tests); default :class:`TensorRTRuntime`.
    """

    name = "tensorrt"

    def __init__(self, files: ModelFiles, frame_sizes=DEFAULT_FRAME_SIZES,
                 cache_dir: str | Path | None = None, rebuild: bool = False,
                 runtime: Any = None, reference=None):
        self.runtime = runtime if runtime is not None else TensorRTRuntime()
        self.profile = Profile.for_frames(frame_sizes, channels=input_channels(files.info))
        self.max_batch = self.profile.max[0]  # the views of a frame then run one at a time
        self.cache = PlanCache(cache_dir)
        self.engine, self.facts = get_engine(files, self.runtime, self.profile, self.cache,
                                             rebuild=rebuild, reference=reference)
        self._run = self.runtime.runner(self.engine)
        self.device = f"{self.runtime.gpu} fp16"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        _, _, h, w = batch.shape
        p = self.profile
        if h > p.max[2] or w > p.max[3]:
            raise ValueError(f"input {h}x{w} exceeds the engine's profile max {p.max[2:]}")
        ph, pw = max(0, p.min[2] - h), max(0, p.min[3] - w)
        if ph or pw:  # smaller than the profile's minimum: pad, run, crop
            batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        return {"maps": self._run(batch)[:, :, :h, :w]}

    def close(self) -> None:
        self.engine = None
        self._run = None


def tensorrt_available() -> tuple[bool, str]:
    """``(available, why)`` without building anything."""
    try:
        rt = TensorRTRuntime()
    except BackendUnavailable as e:
        return False, str(e)
    return True, f"TensorRT {rt.version} on {rt.gpu} (sm {rt.compute_capability})"
