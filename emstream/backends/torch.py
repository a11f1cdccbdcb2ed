"""PyTorch backend (CPU, or CUDA with FP16 autocast).

Weights come from the ``.pt`` file shipped beside the ``.onnx`` (``engines/unet-s.pt``: a plain
``state_dict`` of :class:`emstream.backends.unet.UNetS`, loaded with ``weights_only=True``, so
nothing is unpickled beyond tensors). The architecture and its width are read from the model's
``.json`` sidecar. The ONNX file and the ``.pt`` are exported from the same checkpoint by
``tools/export_onnx.py``, and the backend parity test compares their outputs.
"""

from __future__ import annotations

import numpy as np

from emstream.backends.base import InferenceBackend, ModelFiles, input_channels
from emstream.errors import BackendUnavailable


def _torch():
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable("PyTorch is not installed (pip install 'emstream[torch]')") from e
    return torch


def cuda_available() -> tuple[bool, str]:
    """``(available, detail)`` for torch CUDA."""
    try:
        torch = _torch()
    except BackendUnavailable as e:
        return False, str(e)
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device"
    return True, f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"


class TorchBackend(InferenceBackend):
    """Runs the network in PyTorch on ``device`` ``"cpu"`` or ``"cuda"`` (FP16 autocast there).

    Parameters
    ----------
    files : the model's files (needs ``weights``).
    device : ``"cpu"`` or ``"cuda"``.
    fp16 : use FP16 autocast (default: on CUDA only).
    threads : CPU threads (default: leave torch's setting).
    """

    name = "torch"

    def __init__(self, files: ModelFiles, device: str = "cpu", fp16: bool | None = None,
                 threads: int | None = None):
        torch = _torch()
        from emstream.backends.unet import build_model

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            ok, detail = cuda_available()
            if not ok:
                raise BackendUnavailable(detail)
        if files.weights is None:
            raise BackendUnavailable(f"no PyTorch weights (.pt) beside {files.onnx}")
        if threads:
            torch.set_num_threads(threads)
        info = files.info
        model = build_model(info.get("arch", "unet-s"), width=info.get("width", 16),
                            refine=info.get("refine", 4), inputs=input_channels(info),
                            extra=int(info.get("extra_blocks", 0)))
        state = torch.load(files.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self._torch = torch
        self.model = model.eval().to(device)
        self.dev = torch.device(device)
        self.fp16 = (device == "cuda") if fp16 is None else bool(fp16)
        self.device = (f"cuda:0 ({torch.cuda.get_device_name(0)})" if device == "cuda" else "cpu")
        if self.fp16:
            self.device += " fp16"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.dev)
        with torch.inference_mode():
            if self.fp16:
                with torch.autocast(device_type=self.dev.type, dtype=torch.float16):
                    y = self.model(x)
            else:
                y = self.model(x)
        return {"maps": y.float().cpu().numpy()}

    def close(self) -> None:
        self.model = None
