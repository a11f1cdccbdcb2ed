"""ONNX Runtime backend (CPU everywhere; CUDA where onnxruntime-gpu and a GPU are present).

The provider asked for must be the one that runs: ONNX Runtime silently falls back to the CPU
when a CUDA provider cannot be created, so after creating the session we compare
``session.get_providers()[0]`` with the request and raise :class:`BackendUnavailable` if they
differ (a "CUDA" backend that is really the CPU would be reported wrongly everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emstream.backends.base import InferenceBackend
from emstream.errors import BackendUnavailable

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendUnavailable(f"onnxruntime is not installed ({e})") from e
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_ort().get_available_providers())
    except BackendUnavailable:
        return []


def provider_for(device: str) -> str:
    """``"cpu"`` -> CPU provider, ``"cuda"`` -> CUDA provider."""
    if device == "cpu":
        return CPU
    if device == "cuda":
        return CUDA
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def check_provider(asked: str, running: list[str]) -> None:
    """Raise :class:`BackendUnavailable` unless ``asked`` is the provider actually running."""
    if not running or running[0] != asked:
        raise BackendUnavailable(
            f"onnxruntime was asked for {asked} but runs {running[0] if running else 'nothing'}"
            f" (available: {', '.join(available_providers()) or 'none'})")


class OnnxRuntimeBackend(InferenceBackend):
    """Runs an ONNX model with ONNX Runtime on ``device`` ``"cpu"`` or ``"cuda"``.

    Parameters
    ----------
    onnx_path : the model file.
    device : ``"cpu"`` or ``"cuda"``.
    threads : intra-op threads on the CPU (default: ``EMSTREAM_ORT_THREADS`` or all cores).
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None):
        ort = _ort()
        provider = provider_for(device)
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime has no {provider} here (available: "
                f"{', '.join(ort.get_available_providers())}); "
                + ("install onnxruntime-gpu and a CUDA runtime" if provider == CUDA else ""))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("EMSTREAM_ORT_THREADS", "0") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        providers = [provider] if provider == CPU else [provider, CPU]
        try:
            self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        except Exception as e:  # ORT raises its own exception types
            raise BackendUnavailable(f"onnxruntime could not load {onnx_path}: {e}") from e
        check_provider(provider, self.session.get_providers())
        self.provider = provider
        self.device = provider
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outs, strict=True))

    def close(self) -> None:
        self.session = None
