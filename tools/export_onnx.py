"""Export a training checkpoint to the shipped model files and check ONNX Runtime against torch.

Writes, into ``engines/`` (or ``--out-dir``):

- ``<name>.onnx``: opset 17, input ``image`` (N x 1 x H x W float32), output ``maps``
  (N x 2 x H x W logits), dynamic N/H/W (H, W multiples of 16);
- ``<name>.pt``: the plain ``state_dict`` (for the PyTorch backend; loaded with weights_only);
- ``<name>.json``: the facts the segmenter and the model card need (architecture, thresholds,
  normalisation, sha256 and size of the ONNX file, the training config, parity numbers);

then runs ONNX Runtime (CPU) and torch on the same random-disk frames at two sizes and reports the
max |difference| of the logits, and fills the ``export`` section of ``engines/MODEL_CARD.md``.

Usage::

    python tools/export_onnx.py runs/final/last.pt --name unet-s
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emstream.backends.base import file_sha256  # noqa: E402
from emstream.backends.normalize import CLIP, HIGH_PERCENTILE, LOW_PERCENTILE  # noqa: E402
from emstream.backends.unet import OUTPUT_CHANNELS, build_model, count_parameters  # noqa: E402

OPSET = 17


def fill_card_section(card: Path, section: str, text: str) -> None:
    """Replace the text between ``<!-- {section}:begin -->`` and ``<!-- {section}:end -->``."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    body = card.read_text() if card.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in body and end in body:
        body = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, body,
                      flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    card.write_text(body)


def parity(onnx_path: Path, model: torch.nn.Module, sizes=((256, 256), (512, 768))) -> dict:
    import onnxruntime as ort

    from emstream.backends.tensorrt import verification_sample

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = {}
    for h, w in sizes:
        x = verification_sample(max(h, w), model.inputs)[:, :, :h, :w].copy()
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"image": x})[0]
        out[f"{h}x{w}"] = float(np.abs(ref - got).max())
    return out


def export(ckpt: Path, name: str, out_dir: Path, thresholds: dict | None = None) -> dict:
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = json.loads(ck["config"]) if "config" in ck else {}
    arch = cfg.get("arch", "unet-s")
    inputs = int(cfg.get("inputs", 1))
    extra = int(cfg.get("extra_blocks", 0))
    model = build_model(arch, width=cfg.get("width", 16), refine=cfg.get("refine", 4),
                        inputs=inputs, extra=extra)
    model.load_state_dict(ck["model"])
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    x = torch.zeros(1, inputs, 256, 256)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(onnx_path), input_names=["image"],
                          output_names=["maps"], opset_version=OPSET, do_constant_folding=True,
                          dynamo=False,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "maps": {0: "batch", 2: "height", 3: "width"}})
    torch.save(model.state_dict(), out_dir / f"{name}.pt")
    diffs = parity(onnx_path, model)
    info = {
        "name": name,
        "arch": arch,
        "width": cfg.get("width", 16),
        "refine": cfg.get("refine", 4),
        "extra_blocks": extra,
        "parameters": count_parameters(model),
        "opset": OPSET,
        "input": {"name": "image", "shape": ["N", inputs, "H", "W"], "dtype": "float32",
                  "size_multiple": 16,
                  "channels": ["image", "local contrast"][:inputs]},
        "output": {"name": "maps", "channels": list(OUTPUT_CHANNELS), "kind": "logits"},
        "normalization": {"method": "percentile", "low": LOW_PERCENTILE, "high": HIGH_PERCENTILE,
                          "formula": "clip(2*(raw-lo)/(hi-lo)-1, -CLIP, CLIP)", "clip": CLIP},
        "threshold": 0.5,
        "marker_threshold": 0.5,
        "min_area_px": 4,
        "split": "map",
        "sep_sigma": 0.0,
        "onnx_bytes": onnx_path.stat().st_size,
        "sha256": file_sha256(onnx_path),
        "training": {"checkpoint": ckpt.name, "step": int(ck.get("step", 0)), "config": cfg},
        "parity_max_abs_logit_diff": diffs,
    }
    if inputs > 1:
        info["local_contrast_sigma"] = float(cfg.get("local_contrast_sigma", 4.0))
    if thresholds:
        info.update(thresholds)
    (out_dir / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    card = out_dir / "MODEL_CARD.md"
    fill_card_section(card, "export", "\n".join([
        "| file | bytes | sha256 |", "|---|---|---|",
        f"| `{name}.onnx` | {info['onnx_bytes']} | `{info['sha256']}` |",
        f"| `{name}.pt` | {(out_dir / f'{name}.pt').stat().st_size} | "
        f"`{file_sha256(out_dir / f'{name}.pt')}` |",
        "",
        f"Exported from `{ckpt.name}` (step {info['training']['step']}), opset {OPSET}, "
        f"{info['parameters']} parameters. ONNX Runtime (CPU) vs PyTorch, max |Δlogit|: "
        + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items()) + "."]))
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", default="unet-s")
    ap.add_argument("--out-dir", type=Path, default=REPO / "engines")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--marker-threshold", type=float, default=None)
    ap.add_argument("--min-area-px", type=int, default=None)
    ap.add_argument("--split", choices=["map", "shape", "both"], default=None,
                    help="marker source for touching particles (see process/instances.py)")
    ap.add_argument("--sep-sigma", type=float, default=None)
    a = ap.parse_args(argv)
    th = {k: v for k, v in (("threshold", a.threshold), ("marker_threshold", a.marker_threshold),
                            ("min_area_px", a.min_area_px), ("split", a.split),
                            ("sep_sigma", a.sep_sigma)) if v is not None}
    info = export(a.checkpoint, a.name, a.out_dir, th)
    print(json.dumps({k: info[k] for k in ("name", "onnx_bytes", "sha256",
                                           "parity_max_abs_logit_diff")}, indent=2))
    worst = max(info["parity_max_abs_logit_diff"].values())
    if worst > 1e-3:
        print(f"WARNING: ONNX Runtime and torch differ by {worst:.3g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
