"""Inference backends (TensorRT, ONNX Runtime, PyTorch): the only place GPU runtimes are imported.

Public entry points (used by the pipeline and the CLI)::

    make_segmenter(kind="auto", backend="auto", device="auto", model=None) -> Segmenter
    backend_report() -> list[dict(name, available, detail)]      # `emstream doctor`
    engine_info(model=None) -> dict                              # `emstream engine info`
    engine_build(model=None, shapes=...) -> Path                 # `emstream engine build`

Automatic choice = the fastest backend that works here, tried in this order:
TensorRT (CUDA, FP16) > ONNX Runtime CUDA > PyTorch CUDA (FP16) > ONNX Runtime CPU > PyTorch CPU.
A backend that cannot start (missing library, no GPU, provider mismatch, plan verification
failure) is skipped and the reason is logged; if none can run, or no model file exists,
``kind="auto"`` falls back to the classical baseline with a logged warning, while
``kind="learned"`` raises :class:`~emstream.errors.BackendUnavailable` listing every reason.

Model files live in the repository's ``engines/`` (``emstream/_engines`` in an installed wheel):
``unet-s.onnx`` (all backends; TensorRT builds from it), ``unet-s.pt`` (PyTorch weights),
``unet-s.json`` (architecture, thresholds, normalisation), ``MODEL_CARD.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from emstream.backends.base import DEFAULT_MODEL, ModelFiles, file_sha256, find_model
from emstream.errors import BackendUnavailable

__all__ = ["make_segmenter", "backend_report", "engine_info", "engine_build", "find_model",
           "AUTO_ORDER"]

log = logging.getLogger(__name__)

#: (backend, device) in order of preference for ``backend="auto"``.
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"),
              ("onnxruntime", "cpu"), ("torch", "cpu"))
BACKENDS = ("tensorrt", "onnxruntime", "torch")


def _create_backend(name: str, device: str, files: ModelFiles, **kwargs: Any):
    if name == "onnxruntime":
        from emstream.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(files.onnx, device)
    if name == "torch":
        from emstream.backends.torch import TorchBackend

        return TorchBackend(files, device)
    if name == "tensorrt":
        if device != "cuda":
            raise BackendUnavailable("TensorRT runs on CUDA GPUs only")
        from emstream.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(files, **kwargs)
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


def candidates(backend: str = "auto", device: str = "auto") -> list[tuple[str, str]]:
    """The (backend, device) pairs ``make_segmenter`` tries, in order."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return [(b, d) for b, d in AUTO_ORDER
            if (backend == "auto" or b == backend) and (device == "auto" or d == device)]


def make_backend(backend: str = "auto", device: str = "auto", model: Any = None, **kwargs: Any):
    """The first backend of :func:`candidates` that starts; raises with every reason if none."""
    files = model if isinstance(model, ModelFiles) else find_model(model)
    cands = candidates(backend, device)
    if not cands:
        raise BackendUnavailable(f"backend {backend!r} cannot run on device {device!r}")
    reasons = []
    for name, dev in cands:
        try:
            b = _create_backend(name, dev, files, **(kwargs if name == "tensorrt" else {}))
        except BackendUnavailable as e:
            reasons.append(f"{name}/{dev}: {e}")
            log.info("backend %s/%s unavailable: %s", name, dev, e)
            continue
        return b, files
    raise BackendUnavailable("no inference backend could start: " + "; ".join(reasons))


def make_segmenter(kind: str = "auto", backend: str = "auto", device: str = "auto",
                   model: Any = None, **segmenter_options: Any):
    """Build the segmenter the pipeline runs.

    Parameters
    ----------
    kind : ``"auto"`` (the learned model if it can run here and its sidecar does not say
        ``"auto_default": false`` — set when its evaluation did not beat the classical baseline —
        else classical), ``"learned"`` (raise if it cannot run) or ``"classical"``.
    backend : ``"auto"``, ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    model : model name in ``engines/`` or path to an ``.onnx`` (default: the shipped one).
    segmenter_options : passed to :class:`~emstream.backends.segmenter.LearnedSegmenter`
        (``tile``, ``margin``, ``max_side``, ``scale``, thresholds).
    """
    if kind not in ("auto", "learned", "classical"):
        raise ValueError(f"kind must be 'auto', 'learned' or 'classical', got {kind!r}")
    if kind == "classical":
        from emstream.process.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    if kind == "auto" and model is None:
        # The shipped model's sidecar records whether its evaluation beat the classical
        # baseline; "auto" gives the operator the better-measured segmenter.
        try:
            files = find_model()
        except BackendUnavailable:
            files = None
        if files is not None and files.info.get("auto_default") is False:
            from emstream.process.classical import ClassicalSegmenter

            log.info("segmenter: classical (%s: %s; --segmenter learned runs it anyway)",
                     files.label, files.info.get("auto_default_reason", "not the auto default"))
            return ClassicalSegmenter()
    try:
        be, files = make_backend(backend, device, model)
    except BackendUnavailable as e:
        if kind == "learned":
            raise
        log.warning("learned segmenter unavailable (%s); using the classical baseline", e)
        from emstream.process.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    from emstream.backends.segmenter import LearnedSegmenter

    seg = LearnedSegmenter(be, files.info, **segmenter_options)
    log.info("segmenter: %s (model %s)", seg.name, files.onnx)
    return seg


def backend_report() -> list[dict[str, Any]]:
    """What can run here and why not (cheap: no session is created, nothing is built)."""
    rows: list[dict[str, Any]] = []
    try:
        files = find_model()
        rows.append({"name": f"model {files.label}", "available": True,
                     "detail": f"{files.onnx} ({files.onnx.stat().st_size / 1e6:.2f} MB"
                               f"{', torch weights' if files.weights else ', no .pt weights'})"})
    except BackendUnavailable as e:
        rows.append({"name": f"model {DEFAULT_MODEL}", "available": False, "detail": str(e)})
    try:
        import onnxruntime as ort

        provs = ort.get_available_providers()
        rows.append({"name": "onnxruntime (CPU)", "available": "CPUExecutionProvider" in provs,
                     "detail": f"onnxruntime {ort.__version__}"})
        cuda = "CUDAExecutionProvider" in provs
        rows.append({"name": "onnxruntime (CUDA)", "available": cuda,
                     "detail": f"providers: {', '.join(provs)}" + (
                         "" if cuda else " (install onnxruntime-gpu for CUDA)")})
    except ImportError as e:
        rows.append({"name": "onnxruntime", "available": False, "detail": str(e)})
    try:
        import torch

        rows.append({"name": "torch (CPU)", "available": True, "detail": f"torch {torch.__version__}"})
        from emstream.backends.torch import cuda_available

        ok, detail = cuda_available()
        rows.append({"name": "torch (CUDA, FP16)", "available": ok, "detail": detail})
    except ImportError:
        rows.append({"name": "torch", "available": False,
                     "detail": "PyTorch not installed (pip install 'emstream[torch]')"})
    from emstream.backends.tensorrt import tensorrt_available

    ok, detail = tensorrt_available()
    rows.append({"name": "tensorrt (CUDA, FP16)", "available": ok, "detail": detail})
    return rows


def engine_info(model: Any = None) -> dict[str, Any]:
    """Model file, hash, sidecar facts, TensorRT availability and cached plans."""
    from emstream.backends.cache import PlanCache
    from emstream.backends.tensorrt import tensorrt_available

    files = find_model(model)
    ok, detail = tensorrt_available()
    cache = PlanCache()
    return {
        "model": files.label,
        "onnx": str(files.onnx),
        "bytes": files.onnx.stat().st_size,
        "sha256": file_sha256(files.onnx),
        "weights": str(files.weights) if files.weights else None,
        "info": files.info,
        "tensorrt": {"available": ok, "detail": detail},
        "plan_cache": str(cache.dir),
        "plans": cache.entries(files.label),
    }


def engine_build(model: Any = None, shapes=None, *, rebuild: bool = False) -> Path:
    """Build (or find up to date in the cache) the TensorRT plan for this GPU; returns its path.

    ``shapes``: the ``(h, w)`` frame sizes in use (default 256² … 4096²). Raises
    :class:`BackendUnavailable` where TensorRT or a GPU is missing.
    """
    from emstream.backends.tensorrt import DEFAULT_FRAME_SIZES, TensorRTBackend

    files = find_model(model)
    be = TensorRTBackend(files, frame_sizes=shapes or DEFAULT_FRAME_SIZES, rebuild=rebuild)
    return Path(be.facts["plan"])
