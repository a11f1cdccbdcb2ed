"""Choose the learned segmenter's post-processing settings on *tuning* data only.

The network runs once per tuning image (its logit maps are kept); then the settings read from
the model's ``.json`` sidecar -- ``threshold``, ``split``, ``marker_threshold``, ``sep_sigma``,
``min_area_px``, ``fill_holes_px``, ``min_score`` -- are improved one at a time (coordinate
ascent over a grid, repeated until nothing changes) to maximise the mean over the tuning sets
of the pooled instance F1 (one-to-one matching at IoU >= 0.5, as ``tools/evaluate.py``). With
``--views 1 2`` the search runs once per number of test-time mirror views (``views``) and keeps
the best; each view costs one more network pass per frame, so check the speed afterwards.

Tuning sets, all disjoint from the test sets of ``tools/evaluate.py`` (seeds 1001, 2002, 77 and
each fold's held-out real images):

- ``real``: each fold model on the real images it *trained* on (``--model ONNX:INDICES``);
- ``synthetic``: ``training_sample`` frames at 512² made with seed 99;
- ``scene``: time-series microscope frames (BF and HAADF, 1024²) made with seed 99.

With several fold models the same settings are scored on all of them (one sidecar setting must
serve every fold). ``--write SIDECAR...`` stores the chosen values in the given sidecars.

Usage::

    python tools/tune.py --model runs/f0.onnx:10-19 --model runs/f1.onnx:0-9 \\
        --write engines/unet-s.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from evaluate import Score, learned, real_set, scene_set, synthetic_set  # noqa: E402

GRID = {
    "threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "split": ["both", "shape", "map"],
    "marker_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "sep_sigma": [0.0, 1.0, 1.5, 2.0, 3.0],
    "min_area_px": [8, 12, 16],  # <= 16 px: the 4 px (12.6 px²) particles of the domain stay
    "fill_holes_px": [0, 16, 64, 256],
    "min_score": [None, 0.6, 0.7, 0.8, 0.9],
}
KEYS = tuple(GRID)


def cached_maps(seg, items) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``[(logits, valid)]``: the segmenter's network maps for every item (production path)."""
    from emstream.process.prepare import prepare

    out = []
    for _, raw, _ in items:
        prepared = prepare(raw, polarity="auto")
        out.append((seg.logits(prepared), prepared.valid))
    return out


def objective(segs, cases, settings: dict) -> tuple[float, dict]:
    """Mean over sets of the pooled F1 with ``settings`` applied to every cached case."""
    scores: dict[str, Score] = {}
    for seg in segs:
        for k, v in settings.items():
            setattr(seg, k, v)
    for set_name, seg_index, (logits, valid), gt in cases:
        pred = segs[seg_index].instances(logits, valid)
        scores.setdefault(set_name, Score()).add(gt, pred)
    f1 = {k: s.result()["f1"] for k, s in scores.items()}
    return float(np.mean(list(f1.values()))), f1


def ascend(segs, cases, passes: int):
    """Coordinate ascent over ``GRID`` from the segmenters' current settings."""
    settings = {k: getattr(segs[0], k) for k in KEYS}
    best, parts = objective(segs, cases, settings)
    history = [{"settings": dict(settings), "score": best, "f1": parts}]
    print(f"start {settings} -> {best:.4f} {parts}", flush=True)
    for _ in range(passes):
        changed = False
        for key in KEYS:
            for value in GRID[key]:
                if value == settings[key]:
                    continue
                trial = {**settings, key: value}
                score, parts = objective(segs, cases, trial)
                history.append({"settings": trial, "score": score, "f1": parts})
                if score > best + 1e-4:
                    best, settings, changed = score, trial, True
                    print(f"{key}={value} -> {best:.4f} {parts}", flush=True)
        if not changed:
            break
    return best, settings, history


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True,
                    help="ONNX[:INDICES], a model and the real images it trained on")
    ap.add_argument("--n-synthetic", type=int, default=24)
    ap.add_argument("--n-scene", type=int, default=2, help="frames per mode")
    ap.add_argument("--sets", default="real,synthetic,scene")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--views", type=int, nargs="*", default=[1],
                    help="test-time mirror views to try (each costs one network pass per frame)")
    ap.add_argument("--write", nargs="*", type=Path, default=[], help="sidecar .json files")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the search history")
    a = ap.parse_args(argv)
    from make_dataset import parse_indices_text

    sets = a.sets.split(",")
    common = []
    if "synthetic" in sets:
        common += [("synthetic", it) for it in synthetic_set(a.n_synthetic, seed=99)]
    if "scene" in sets:
        common += [("scene", it) for it in scene_set(a.n_scene, seed=99)]
    overall = None
    for views in a.views:
        segs, cases = [], []
        t0 = time.perf_counter()
        for i, spec in enumerate(a.model):
            path, _, idx = spec.partition(":")
            items = list(common)
            if idx and "real" in sets:
                items += [("real", it) for it in real_set(parse_indices_text(idx))]
            seg = learned(path)
            seg.views = views
            maps = cached_maps(seg, [it for _, it in items])
            segs.append(seg)
            cases += [(name, i, m, it[2]) for (name, it), m in zip(items, maps, strict=True)]
        print(f"views {views}: maps of {len(cases)} images in {time.perf_counter() - t0:.0f} s",
              flush=True)
        best, settings, history = ascend(segs, cases, a.passes)
        print(f"views {views}: {json.dumps(settings)} score {best:.4f}", flush=True)
        if overall is None or best > overall[0] + 1e-4:
            overall = (best, {**settings, "views": views}, history)
    best, settings, history = overall
    print("chosen:", json.dumps(settings), f"score {best:.4f}", flush=True)
    if a.out:
        a.out.write_text(json.dumps({"models": a.model, "chosen": settings, "score": best,
                                     "history": history}, indent=1))
    for sidecar in a.write:
        info = json.loads(sidecar.read_text())
        info.update(settings)
        info["tuned_on"] = ("tools/tune.py: fold models on their own training images, "
                            "synthetic and scene frames of seed 99")
        sidecar.write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {sidecar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
