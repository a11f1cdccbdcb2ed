"""Choose the learned segmenter's post-processing on the real image families, without test data.

A fold model is run once on the images it was TRAINED on (``--fold F``: the images of fold F of
every family; the EMPS figures every ``--emps-step``-th), its logit maps are kept, and the
post-processing settings (``threshold``, ``min_score``, ``marker_threshold``; ``--grid`` replaces
or adds a setting's values, e.g. ``--grid marker_dynamics=0,0.08,0.1 --grid sep_sigma=0,2``) are
swept over a grid; the score is the mean over the families of the detection F1 (``tools/families.py``), so
each family weighs the same whatever its number of images. The held-out fold stays untouched for
``tools/evaluate_families.py``.

Usage::

    python tools/tune_families.py runs/foldA.onnx --fold 0 [--write engines/unet-s.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import evaluate_families as ef  # noqa: E402
import families  # noqa: E402

GRID = {"threshold": [0.45, 0.6], "min_score": [None, 0.7, 0.8, 0.9],
        "marker_threshold": [0.5, 0.6]}


def main(argv=None) -> int:
    from emstream.process.prepare import prepare

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a fold model (.onnx with its .json)")
    ap.add_argument("--fold", type=int, required=True, help="the fold the model TRAINED on")
    ap.add_argument("--emps-step", type=int, default=3)
    ap.add_argument("--write", nargs="*", type=Path, default=[], help="sidecars to update")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="sweep these values of a LearnedSegmenter setting (JSON numbers, null)")
    a = ap.parse_args(argv)
    grid = dict(GRID)
    for spec in a.grid:
        key, values = spec.split("=", 1)
        grid[key] = [json.loads(v) for v in values.split(",")]
    seg = ef.learned(a.model)
    data = {}
    for fam in families.FAMILIES:
        items = families.load(fam, (a.fold,))
        if fam == "emps":
            items = items[::a.emps_step]
        if items:
            data[fam] = (items, [(seg.logits(p), p.valid)
                                 for p in (prepare(it["raw"]) for it in items)])
    rows = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values, strict=True))
        for k, v in settings.items():
            setattr(seg, k, v)
        f1 = {fam: ef.score(items, [seg.instances(m, v) for m, v in maps])["detection"]["f1"]
              for fam, (items, maps) in data.items()}
        rows.append({"mean_f1": round(float(np.mean(list(f1.values()))), 4), **settings, "f1": f1})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["mean_f1"])
    print("best:", json.dumps(best))
    for sidecar in a.write:
        info = json.loads(sidecar.read_text())
        info.update({k: best[k] for k in grid})
        info["tuned_on"] = (f"tools/tune_families.py {Path(a.model).name} --fold {a.fold}: mean "
                            f"detection F1 {best['mean_f1']} on the fold model's own training images")
        sidecar.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
