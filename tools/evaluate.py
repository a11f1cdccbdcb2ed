"""Evaluate segmenters: instance precision / recall / F1 and diameter error, plus CPU speed.

Matching: predicted and true particles are matched one-to-one (Hungarian assignment on IoU,
``scipy.optimize.linear_sum_assignment``) and a pair counts as a true positive when its
IoU >= 0.5. Precision = TP / predicted, recall = TP / true, F1 = their harmonic mean, pooled over
all frames of a set. Diameter error = |d_pred - d_true| / d_true of the equivalent-circle
diameters (sqrt(4 A / pi)) of matched pairs; the median is reported.

Sets:

- ``synthetic``: ``training_sample`` at 512² with seeds never used in training (training caches
  use 256² crops and seeds 1-3), i.e. larger frames where the particle-size cap is higher;
- ``synthetic-wide``: the same generator with wider ranges than training: dose thinned to 1/3
  (Poisson thinning, down to ~3 counts/px, below training's 10) and extra blur (sigma 0-1.2 px);
- ``scene``: frames of the time-series microscope (``Microscope(SceneConfig)``), 1024² uint16,
  BF and HAADF, with data bar and scale bar, as the demo streams them (also scored per mode;
  ``--scene-sessions N`` pools N simulated sessions per mode, seeds 77 onwards);
- ``real``: the BF-TEM images (``../shared/data/msa-sintering-train``; binary masks turned into
  instances by 8-connected components). Learned models are scored only on images they did not
  train on (``--real-model ONNX:INDICES``, one per fold).

The synthetic sets are also scored as ``... visible``: the same predictions, with true particles
an observer could not see (detectability index d' < 3, see ``detectability``) ignored, since the
generator's widest settings bury some fields of 4-8 px particles in carbon texture and noise.

Every set is segmented through the production path (``prepare`` -> segmenter), for the learned
model (ONNX Runtime, CPU) and the classical baseline alike. Results go to a JSON file and a
markdown table, which ``--card`` writes into ``engines/MODEL_CARD.md`` (``auto_default`` is
decided on the real image families by ``tools/evaluate_families.py --card``). ``--edges`` adds where
the truth's and each segmenter's outlines sit on the particles' contrast step
(:func:`edge_contrast`), which tells an annotation convention apart from a sizing error.

Usage::

    python tools/evaluate.py --model engines/unet-s.onnx \\
        --real-model /tmp/fold0.onnx:0-9 --real-model /tmp/fold1.onnx:10-19 \\
        --out /tmp/eval.json --card --speed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from make_dataset import VISIBLE_D, detectability  # noqa: E402

IOU_MATCH = 0.5


# ----------------------------------------------------------------------------- metrics
def match_instances(gt: np.ndarray, pred: np.ndarray, iou_min: float = IOU_MATCH):
    """One-to-one matching of instance label images.

    Returns ``(pairs, n_gt, n_pred, gt_areas, pred_areas)`` with ``pairs`` a list of
    ``(gt_id, pred_id, iou)`` with iou >= ``iou_min``; ids are the label values.
    """
    gt = np.asarray(gt, np.int64)
    pred = np.asarray(pred, np.int64)
    g_ids = np.unique(gt)
    g_ids = g_ids[g_ids > 0]
    p_ids = np.unique(pred)
    p_ids = p_ids[p_ids > 0]
    g_area = np.bincount(gt.ravel(), minlength=int(gt.max()) + 1)
    p_area = np.bincount(pred.ravel(), minlength=int(pred.max()) + 1)
    both = (gt > 0) & (pred > 0)
    pairs: list[tuple[int, int, float]] = []
    if both.any() and g_ids.size and p_ids.size:
        code = gt[both] * (int(pred.max()) + 1) + pred[both]
        codes, inter = np.unique(code, return_counts=True)
        gi = codes // (int(pred.max()) + 1)
        pi = codes % (int(pred.max()) + 1)
        iou = inter / (g_area[gi] + p_area[pi] - inter)
        ok = iou >= iou_min
        if ok.any():
            gi, pi, iou = gi[ok], pi[ok], iou[ok]
            gu, gidx = np.unique(gi, return_inverse=True)
            pu, pidx = np.unique(pi, return_inverse=True)
            cost = np.zeros((gu.size, pu.size))
            cost[gidx, pidx] = -iou
            r, c = linear_sum_assignment(cost)
            for a, b in zip(r, c, strict=True):
                if cost[a, b] < 0:
                    pairs.append((int(gu[a]), int(pu[b]), float(-cost[a, b])))
    return pairs, int(g_ids.size), int(p_ids.size), g_area, p_area


class Score:
    """Pooled instance scores over many frames."""

    def __init__(self):
        self.tp = self.n_gt = self.n_pred = 0
        self.rel_err: list[float] = []
        self.frames = 0
        self.frame_f1: list[float] = []

    def add(self, gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> None:
        """Score one frame; ``ignore`` (bool, indexed by true label id) marks true particles that
        count neither way: missing them is no error, and a prediction matched to one, or lying
        mostly (>= 50 % of its pixels) on one, is not a false alarm."""
        pairs, n_gt, n_pred, ga, pa = match_instances(gt, pred)
        if ignore is not None and ignore.any():
            ign = np.zeros(max(int(gt.max()) + 1, ignore.size), bool)
            ign[:ignore.size] = ignore
            ign[0] = False
            matched_ign = {p for g, p, _ in pairs if ign[g]}
            pairs = [t for t in pairs if not ign[t[0]]]
            n_gt -= int(np.count_nonzero(ign[np.unique(gt)]))
            matched = {p for _, p, _ in pairs}
            on_ign = np.bincount(pred[ign[gt]], minlength=len(pa))
            loose = {int(p) for p in np.flatnonzero(on_ign >= 0.5 * pa) if p and p not in matched}
            n_pred -= len(matched_ign | loose)
        self.tp += len(pairs)
        self.n_gt += n_gt
        self.n_pred += n_pred
        self.frames += 1
        if n_gt or n_pred:
            self.frame_f1.append(2 * len(pairs) / (n_gt + n_pred))
        for g, p, _ in pairs:
            dg, dp = np.sqrt(4 * ga[g] / np.pi), np.sqrt(4 * pa[p] / np.pi)
            self.rel_err.append(abs(dp - dg) / dg)

    def result(self) -> dict:
        prec = self.tp / self.n_pred if self.n_pred else 0.0
        rec = self.tp / self.n_gt if self.n_gt else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"frames": self.frames, "true": self.n_gt, "predicted": self.n_pred, "tp": self.tp,
                "precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4),
                "mean_frame_f1": round(float(np.mean(self.frame_f1)), 4) if self.frame_f1 else None,
                "median_rel_diameter_error": round(float(np.median(self.rel_err)), 4)
                if self.rel_err else None}


def edge_contrast(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float] | None:
    """Where outlines sit on the particles' contrast step (either polarity).

    Returns the image's contrast on the last pixel inside the outlines and on the first pixel
    outside them, as fractions of the step from the background (0: pixels 6-10 px outside any
    outline) to the particle cores (1: pixels at least 4 px inside), after a light smoothing
    (Gaussian sigma 0.7 px) against shot noise; ``None`` where the frame has no cores or no
    background. An outline on the geometric edge of a sharply imaged particle reads low (about
    0.3 / 0.1: the step is nearly over at the edge), one drawn on the half-contrast line about
    0.6 / 0.5. This tells an annotation convention apart from a sizing error.
    """
    from scipy import ndimage as ndi

    x = ndi.gaussian_filter(np.asarray(raw[..., 0] if raw.ndim == 3 else raw, np.float64), 0.7)
    inside = np.asarray(labels) > 0
    depth = ndi.distance_transform_edt(inside)
    away = ndi.distance_transform_edt(~inside)
    core, bg = x[depth > 4], x[(away > 6) & (away <= 10)]
    if core.size == 0 or bg.size == 0:
        return None
    lo, hi = float(np.median(bg)), float(np.median(core))
    if hi == lo:
        return None
    last_in = x[inside & (depth <= 1)]
    first_out = x[~inside & (away <= 1)]
    return (float((np.median(last_in) - lo) / (hi - lo)),
            float((np.median(first_out) - lo) / (hi - lo)))


def set_edge_contrast(images, label_images) -> list[float] | None:
    """:func:`edge_contrast` averaged over the frames of a set (frames without a value skipped)."""
    vals = [v for v in (edge_contrast(r, lab) for r, lab in zip(images, label_images, strict=True))
            if v is not None]
    return [round(float(np.mean([v[i] for v in vals])), 3) for i in (0, 1)] if vals else None


# ----------------------------------------------------------------------------- data sets
def synthetic_set(n: int, seed: int, size: int = 512, wide: bool = False):
    """``[(name, raw, labels)]`` from the training generator with held-out seeds."""
    from scipy import ndimage as ndi

    from emstream.sources.simulate.training import training_sample

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, labels, meta = training_sample(rng, size)
        image = np.asarray(image, np.float64)
        if wide:
            bias = float(meta.get("bias", 0.0) or 0.0)
            signal = np.clip(image - bias, 0, None)
            image = rng.binomial(np.round(signal).astype(np.int64), 1 / 3).astype(np.float64)
            image = ndi.gaussian_filter(image, rng.uniform(0, 1.2)) + bias / 3
        out.append((f"{'wide' if wide else 'syn'}-{seed}-{i}",
                    np.clip(image, 0, 65535).astype(np.uint16), np.asarray(labels, np.int32)))
    return out


def scene_set(n_per_mode: int = 3, seed: int = 77, shape=(1024, 1024), sessions: int = 1):
    """Every 10th frame of simulated sessions (one per mode and seed ``seed .. seed+sessions-1``);
    the frames of one session are correlated, so more sessions give a steadier score."""
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    out = []
    for s in range(seed, seed + sessions):
        for mode in ("bf", "haadf"):
            mic = Microscope(SceneConfig(shape=shape, mode=mode, ramp_frames=n_per_mode * 10),
                             seed=s)
            for k in range(n_per_mode * 10):
                f = mic.next_frame()
                if k % 10 == 9:
                    name = f"scene-{mode}-{k}" if sessions == 1 else f"scene-{s}-{mode}-{k}"
                    out.append((name, f.image, np.asarray(f.labels, np.int32)))
    return out


def real_set(indices):
    from make_dataset import load_real

    return [(f"real-{d['index']}", d["raw"], d["labels"]) for d in load_real(indices)]


# ----------------------------------------------------------------------------- runners
def segment_all(segmenter, items, polarity="auto"):
    from emstream.process.prepare import prepare

    preds = []
    for _, raw, _ in items:
        prepared = prepare(raw, polarity=polarity)
        preds.append(np.asarray(segmenter.segment(prepared)))
    return preds


def score(items, preds, min_area_px: int = 0, visible_only: bool = False) -> dict:
    """Pooled scores; ``visible_only`` ignores true particles with d' < ``VISIBLE_D``."""
    s = Score()
    for (_, raw, gt), pred in zip(items, preds, strict=True):
        if min_area_px:
            gt = _drop_small(gt, min_area_px)
            pred = _drop_small(pred, min_area_px)
        s.add(gt, pred, detectability(raw, gt) < VISIBLE_D if visible_only else None)
    return s.result()


def _drop_small(labels, min_area):
    area = np.bincount(labels.ravel())
    small = area < min_area
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[small[labels]] = 0
    return out


def learned(model: str, **options):
    """The learned segmenter on ONNX Runtime CPU (``options``: LearnedSegmenter overrides)."""
    from emstream.backends import make_segmenter

    return make_segmenter("learned", backend="onnxruntime", device="cpu", model=model, **options)


def classical():
    from emstream.process.classical import ClassicalSegmenter

    return ClassicalSegmenter()


def speed(model: str, n: int = 12, shape=(1024, 1024)) -> dict:
    """End-to-end CPU time per 1024² uint16 frame: prepare + segment + measure + summarize."""
    from emstream.frame import Calibration
    from emstream.process import measure, prepare, stats
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    seg = learned(model)
    mic = Microscope(SceneConfig(shape=shape, ramp_frames=n), seed=5)
    frames = [mic.next_frame().image for _ in range(n)]
    cal = Calibration((0.5, 0.5), "override")
    stages = {"prepare": [], "segment": [], "measure": [], "total": []}
    for k, img in enumerate(frames):
        t0 = time.perf_counter()
        p = prepare.prepare(img)
        t1 = time.perf_counter()
        labels = seg.segment(p)
        t2 = time.perf_counter()
        parts = measure.measure(labels, img, cal, valid=p.valid)
        stats.summarize(parts, valid_area_px=int(p.valid.sum()) if p.valid is not None
                        else labels.size, unit="nm")
        t3 = time.perf_counter()
        if k == 0:
            continue  # warm-up
        for name, v in (("prepare", t1 - t0), ("segment", t2 - t1), ("measure", t3 - t2),
                        ("total", t3 - t0)):
            stages[name].append(v * 1e3)
    med = {k: round(float(np.median(v)), 1) for k, v in stages.items()}
    best = round(float(np.min(stages["total"])), 1)
    return {"frames": n - 1, "shape": list(shape), "dtype": "uint16", "median_ms": med,
            "best_total_ms": best, "fps_median": round(1e3 / med["total"], 2),
            "fps_best": round(1e3 / best, 2), "backend": seg.name,
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


# ----------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = ["| set | segmenter | frames | true | F1 (pooled) | precision | recall | "
             "mean F1 per frame | median diameter error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        r = row["result"]
        err = r["median_rel_diameter_error"]
        mf1 = r.get("mean_frame_f1")
        lines.append(f"| {row['set']} | {row['segmenter']} | {r['frames']} | {r['true']} | "
                     f"**{r['f1']:.3f}** | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{'—' if mf1 is None else f'{mf1:.3f}'} | "
                     f"{'—' if err is None else f'{100 * err:.1f} %'} |")
    if results.get("edge_contrast_truth"):
        lines += ["", "Where the outlines sit on the contrast step (`edge_contrast`: contrast on the "
                  "last pixel inside / first pixel outside, 0 = background, 1 = particle core):", "",
                  "| set | outline | inside | outside |", "|---|---|---|---|"]
        for set_name, truth in results["edge_contrast_truth"].items():
            found = [("truth", truth)] + [(row["segmenter"], row["result"].get("edge_contrast"))
                                          for row in results["rows"] if row["set"] == set_name]
            for who, e in found:
                if e is not None:
                    lines.append(f"| {set_name} | {who} | {e[0]:.2f} | {e[1]:.2f} |")
    if results.get("speed"):
        s = results["speed"]
        m = s["median_ms"]
        lines += ["", f"Speed ({s['backend']}, {s['shape'][0]}x{s['shape'][1]} {s['dtype']}, "
                  f"{s['frames']} frames, {s['cpus']} CPUs shared, load average "
                  f"{s['load_average'][0]}): median {m['total']} ms/frame end to end = "
                  f"{s['fps_median']} frames/s (best {s['best_total_ms']} ms = {s['fps_best']} "
                  f"frames/s); stages: prepare {m['prepare']} ms, segment {m['segment']} ms, "
                  f"measure+summary {m['measure']} ms."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "engines" / "unet-s.onnx"))
    ap.add_argument("--real-model", action="append", default=[],
                    help="ONNX:INDICES, a fold model and the real images it did NOT train on")
    ap.add_argument("--n-synthetic", type=int, default=40)
    ap.add_argument("--n-scene", type=int, default=3, help="frames per mode")
    ap.add_argument("--scene-sessions", type=int, default=1,
                    help="simulated sessions (seeds 77, 78, ...) per mode in the scene set")
    ap.add_argument("--sets", default="synthetic,synthetic-wide,scene,real")
    ap.add_argument("--no-classical", action="store_true")
    ap.add_argument("--min-area-px", type=int, default=0,
                    help="ignore true and predicted particles smaller than this (0 = none)")
    ap.add_argument("--edges", action="store_true",
                    help="also report where outlines sit on the contrast step (edge_contrast), "
                         "for the truth and every segmenter")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("eval.json"))
    ap.add_argument("--card", action="store_true", help="write the table into engines/MODEL_CARD.md")
    a = ap.parse_args(argv)
    from make_dataset import parse_indices_text

    sets = a.sets.split(",")
    rows = []

    truth_edges: dict[str, list[float] | None] = {}

    def edges(set_name, items, preds, r):
        """Edge contrast of the predictions into ``r``, of the truth into ``truth_edges``."""
        images = [raw for _, raw, _ in items]
        r["edge_contrast"] = set_edge_contrast(images, preds)
        if set_name not in truth_edges:  # the truth once per set, not once per segmenter
            truth_edges[set_name] = set_edge_contrast(images, [gt for _, _, gt in items])

    def run(set_name, items, seg, seg_name):
        t0 = time.perf_counter()
        preds = segment_all(seg, items)
        r = score(items, preds, a.min_area_px)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        if a.edges:
            edges(set_name, items, preds, r)
        rows.append({"set": set_name, "segmenter": seg_name, "result": r})
        print(json.dumps(rows[-1]), flush=True)
        if set_name.startswith("synthetic"):  # the same predictions, invisible truth ignored
            r = score(items, preds, a.min_area_px, visible_only=True)
            rows.append({"set": f"{set_name} visible", "segmenter": seg_name, "result": r})
            print(json.dumps(rows[-1]), flush=True)
        if set_name == "scene":  # bright-field and HAADF apart: they fail differently
            for mode in ("bf", "haadf"):
                pick = [i for i, it in enumerate(items) if f"-{mode}-" in it[0]]
                r = score([items[i] for i in pick], [preds[i] for i in pick], a.min_area_px)
                if a.edges:
                    edges(f"scene {mode}", [items[i] for i in pick], [preds[i] for i in pick], r)
                rows.append({"set": f"scene {mode}", "segmenter": seg_name, "result": r})
                print(json.dumps(rows[-1]), flush=True)
        return preds

    data = {}
    if "synthetic" in sets:
        data["synthetic"] = synthetic_set(a.n_synthetic, seed=1001)
    if "synthetic-wide" in sets:
        data["synthetic-wide"] = synthetic_set(a.n_synthetic, seed=2002, wide=True)
    if "scene" in sets:
        data["scene"] = scene_set(a.n_scene, sessions=a.scene_sessions)
    model_seg = learned(a.model)
    for name, items in data.items():
        run(name, items, model_seg, f"learned {Path(a.model).stem}")
        if not a.no_classical:
            run(name, items, classical(), "classical")
    if "real" in sets:
        all_items, all_preds = [], []
        for spec in a.real_model:
            path, idx = spec.rsplit(":", 1)
            items = real_set(parse_indices_text(idx))
            preds = run(f"real held-out {idx}", items, learned(path), f"learned fold {Path(path).stem}")
            all_items += items
            all_preds += preds
        if all_items:
            r = score(all_items, all_preds, a.min_area_px)
            rows.append({"set": "real held-out (all folds)", "segmenter": "learned (fold models)",
                         "result": r})
            print(json.dumps(rows[-1]), flush=True)
        if not a.no_classical:
            run("real (all 20)", real_set(range(20)), classical(), "classical")
    results = {"rows": rows, "iou_match": IOU_MATCH, "min_area_px": a.min_area_px,
               "model": a.model}
    if a.edges:
        results["edge_contrast_truth"] = truth_edges
    if a.speed:
        results["speed"] = speed(a.model)
        print(json.dumps(results["speed"]), flush=True)
    # whether --segmenter auto picks the model is decided on the real image families
    # (tools/evaluate_families.py --card), not on these sets
    write_results(a.out, results, markdown(results), "accuracy" if a.card else None)
    return 0


def write_results(out: Path, results: dict, md: str, card_section: str | None = None) -> None:
    """``results`` as JSON into ``out``, the markdown table beside it (``.md``) and on stdout,
    and into ``card_section`` of ``engines/MODEL_CARD.md`` when one is named."""
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    if card_section:
        from export_onnx import fill_card_section

        fill_card_section(REPO / "engines" / "MODEL_CARD.md", card_section, md)


if __name__ == "__main__":
    raise SystemExit(main())
