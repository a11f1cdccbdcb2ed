"""What every inference backend looks like, and where the committed model files are found."""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emstream.errors import BackendUnavailable

#: Base name of the shipped model: ``engines/unet-s.onnx`` (+ ``unet-s.pt`` weights for torch,
#: ``unet-s.json`` with the facts the segmenter needs, ``MODEL_CARD.md`` for people).
DEFAULT_MODEL = "unet-s"


class InferenceBackend(abc.ABC):
    """Runs the segmentation network on a batch.

    Attributes
    ----------
    name : ``"onnxruntime"``, ``"torch"`` or ``"tensorrt"``.
    device : what actually runs it, e.g. ``"CPUExecutionProvider"``, ``"cuda:0 (NVIDIA H100)"``.
    max_batch : the largest N one :meth:`run` accepts (None = any; a TensorRT engine's
        optimisation profile fixes it).
    """

    name: str = "?"
    device: str = "?"
    max_batch: int | None = None

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run on ``batch`` (float32, N x 1 x H x W, H and W multiples of 16).

        Returns ``{"maps": float32 N x 2 x H x W logits}`` (channel 0 particle, channel 1
        normalised distance; see :mod:`emstream.backends.unet`).
        """

    def describe(self) -> str:
        return f"{self.name}:{self.device}"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (sessions, engines, GPU memory)."""


@dataclass(frozen=True)
class ModelFiles:
    """The files of one model: ``onnx`` (always), ``weights`` (.pt, optional), ``info`` (.json)."""

    onnx: Path
    weights: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.info.get("arch", DEFAULT_MODEL))

    @property
    def label(self) -> str:
        return self.onnx.stem


def input_channels(info: dict) -> int:
    """Input channels of a model from its sidecar (``input.shape`` N x C x H x W; 1 if absent):
    1 = the normalised image, 2 = and its local contrast."""
    return int((info.get("input") or {}).get("shape", [None, 1])[1])


def engines_dirs() -> list[Path]:
    """Where model files are looked for: the repository's ``engines/`` (source checkout) and
    ``emstream/_engines`` (installed wheel, which maps ``engines/`` there)."""
    pkg = Path(__file__).resolve().parents[1]
    return [pkg.parent / "engines", pkg / "_engines"]


def find_model(model: str | Path | None = None) -> ModelFiles:
    """Locate a model: ``None`` = the shipped default, a name (``"unet-s"``) or a path to .onnx.

    Raises
    ------
    BackendUnavailable
        when no such ONNX file exists (the message lists where it looked).
    """
    if model is not None and (Path(model).suffix == ".onnx" or Path(model).exists()):
        onnx = Path(model)
        if not onnx.is_file():
            raise BackendUnavailable(f"model file {onnx} does not exist")
    else:
        stem = str(model) if model else DEFAULT_MODEL
        cands = [d / f"{stem}.onnx" for d in engines_dirs()]
        onnx = next((c for c in cands if c.is_file()), None)
        if onnx is None:
            raise BackendUnavailable(
                f"no model {stem!r}: looked for " + ", ".join(str(c) for c in cands))
    weights = onnx.with_suffix(".pt")
    info_path = onnx.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return ModelFiles(onnx=onnx, weights=weights if weights.is_file() else None, info=info)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
