"""Fixtures for backend tests: a small exported model (random weights) in a temporary engines dir."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    tools = REPO / "tools"
    if str(tools) not in sys.path:
        sys.path.insert(0, str(tools))
    spec = importlib.util.spec_from_file_location(f"_emstream_tool_{name}", tools / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """``unet-s`` with random (seeded) weights exported like the shipped model; returns the .onnx."""
    torch = pytest.importorskip("torch")
    from emstream.backends.unet import build_model

    d = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    model = build_model("unet-s")
    # give BatchNorm non-trivial statistics so both backends must really agree
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = d / "ckpt.pt"
    torch.save({"model": model.state_dict(), "step": 0,
                "config": '{"arch": "unet-s", "width": 16, "refine": 4}'}, ckpt)
    export = load_tool("export_onnx")
    export.export(ckpt, "unet-test", d)
    return d / "unet-test.onnx"
