"""Score segmenters on the real image families (``tools/families.py``): held-out folds and
leave-one-family-out, the learned model and the classical baseline side by side.

Every image goes through the production path (``prepare`` -> segmenter; the learned model on ONNX
Runtime CPU). Two measures:

- **detection** (every family): particle centres matched one-to-one within max(3 px, 1/4 of the
  true diameter) -- the issue's measure; diameter error |d - d_true| / d_true of matched pairs
  (for the box-labelled family d_true = sqrt(w*h) of the box);
- **masks** (families with outlines): instances matched one-to-one at IoU >= 0.5
  (``evaluate.Score``), diameter error of the equivalent-circle diameters.

Model specs say what each model never saw:

- ``--fold-model ONNX:F``: trained on fold 1-F of every family; scored on fold F of each;
- ``--lofo-model ONNX:FAMILY``: trained without FAMILY; scored on all of it;
- ``--model ONNX``: the shipped model, scored where it is named with ``--seen`` as a sanity row.

``--card`` writes the table into ``engines/MODEL_CARD.md`` (section ``families``) and
``auto_default`` into the model's sidecar: true only where the learned held-out F1 beats the
classical F1 on every family (detection measure), and never below the targets of the
simulation sets recorded by ``tools/evaluate.py`` (kept as they are in the sidecar).

Usage::

    python tools/evaluate_families.py --fold-model runs/a.onnx:1 --fold-model runs/b.onnx:0 \\
        --lofo-model runs/no-emps.onnx:emps --lofo-model runs/no-genc.onnx:genc --out fam.json
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

import families  # noqa: E402
from evaluate import Score, classical, learned, write_results  # noqa: E402


def segment(seg, items) -> list[np.ndarray]:
    """Labels of every item; a learned segmenter's per-image confidence and scale are added to
    the items' ``info`` (keyed by the segmenter's name)."""
    from emstream.process.prepare import prepare

    out = []
    for it in items:
        p = prepare(it["raw"])
        if hasattr(seg, "segment_with_info"):
            labels, info = seg.segment_with_info(p)
            it.setdefault("info", {})[seg.name] = info
        else:
            labels = seg.segment(p)
        out.append(np.asarray(labels))
    return out


def info_summary(items, preds, key: str) -> dict | None:
    """Quantiles of the confidence, the share of images resampled, and whether the confidence
    flag (``process.confidence.CONFIDENCE_LOW``) picks the badly segmented images: the mean
    per-image detection F1 of the flagged images against the others."""
    from emstream.process.confidence import CONFIDENCE_LOW

    pairs = [(it["info"][key], it, p) for it, p in zip(items, preds, strict=True)
             if it.get("info", {}).get(key)]
    if not pairs:
        return None
    conf = np.array([i["confidence"] for i, _, _ in pairs])
    scale = np.array([i["scale"] for i, _, _ in pairs])
    f1 = []
    for _, it, p in pairs:
        d = families.DetectionScore()
        d.add(it["centres"], families.centres_of(p))
        f1.append(d.result()["f1"])
    f1 = np.array(f1)
    low = conf < CONFIDENCE_LOW

    def mean(a):
        return round(float(a.mean()), 3) if a.size else None

    return {"confidence_q10_50_90": [round(float(q), 3) for q in np.quantile(conf, [.1, .5, .9])],
            "flagged": int(low.sum()), "flagged_mean_f1": mean(f1[low]),
            "unflagged_mean_f1": mean(f1[~low]),
            "resampled": round(float(np.mean(scale < 1)), 3),
            "scale_median": round(float(np.median(scale)), 3)}


def score(items, preds) -> dict:
    det = families.DetectionScore()
    masks = Score()
    has_masks = all(it["has_masks"] for it in items)
    for it, pred in zip(items, preds, strict=True):
        det.add(it["centres"], families.centres_of(pred))
        if has_masks:
            masks.add(it["labels"], pred)
    out = {"detection": det.result()}
    if has_masks:
        out["masks"] = masks.result()
    return out


def upscaled(item: dict, factor: float) -> dict:
    """The item seen at ``factor`` times the magnification: image resampled (cubic), labels
    (nearest) and centres scaled."""
    import cv2

    h, w = item["raw"].shape
    size = (round(w * factor), round(h * factor))
    out = dict(item)
    out["raw"] = cv2.resize(item["raw"], size, interpolation=cv2.INTER_CUBIC)
    out["labels"] = cv2.resize(item["labels"], size, interpolation=cv2.INTER_NEAREST)
    c = item["centres"].copy()
    c[:, :2] = (c[:, :2] + 0.5) * factor - 0.5  # pixel centres
    c[:, 2] *= factor
    out["centres"] = c
    out["median_d"] = item["median_d"] * factor
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| family | images | scored by | trained on it? | detection F1 | precision | recall | "
             "diameter error | mask F1 (IoU ≥ 0.5) | mask diameter error |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f} %"

    notes = []
    for r in rows:
        d, m = r["result"]["detection"], r["result"].get("masks")
        inf = r["result"].get("info")
        if inf:
            notes.append(f"| {r['family']} | {r['segmenter']} | "
                         f"{' / '.join(f'{q:.2f}' for q in inf['confidence_q10_50_90'])} | "
                         f"{inf['flagged']} of {r['images']} | {inf['flagged_mean_f1'] or '—'} | "
                         f"{inf['unflagged_mean_f1'] or '—'} | {100 * inf['resampled']:.0f} % |")
        lines.append(
            f"| {r['family']} | {r['images']} | {r['segmenter']} | {r['seen']} | **{d['f1']:.3f}** | "
            f"{d['precision']:.3f} | {d['recall']:.3f} | {pct(d['median_rel_diameter_error'])} | "
            f"{'—' if m is None else format(m['f1'], '.3f')} | "
            f"{'—' if m is None else pct(m['median_rel_diameter_error'])} |")
    if notes:
        lines += ["", "The segmenter's confidence per image, and the scale policy:", "",
                  "| family | scored by | confidence q10 / q50 / q90 | flagged (< 0.7) | mean F1 "
                  "of flagged images | of the others | images resampled |",
                  "|---|---|---|---|---|---|---|", *notes]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="the shipped model (rows marked 'seen')")
    ap.add_argument("--fold-model", action="append", default=[], metavar="ONNX:FOLD")
    ap.add_argument("--lofo-model", action="append", default=[], metavar="ONNX:FAMILY")
    ap.add_argument("--families", default=",".join(families.FAMILIES))
    ap.add_argument("--no-classical", action="store_true")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="LearnedSegmenter option for every learned model (e.g. scale=1)")
    ap.add_argument("--upscale", type=float, default=1.0,
                    help="enlarge every image (and its truth) by this factor: the same particles "
                         "at a higher magnification, on frames large enough for the tiled path")
    ap.add_argument("--limit", type=int, default=0, help="at most this many images a family")
    ap.add_argument("--out", type=Path, default=Path("families.json"))
    ap.add_argument("--card", action="store_true")
    a = ap.parse_args(argv)
    options = {}
    for kv in a.option:
        k, v = kv.split("=", 1)
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    data = {f: families.load(f) for f in a.families.split(",")}
    if a.limit:  # every k-th image, so both folds stay represented
        data = {f: items[::max(1, len(items) // a.limit)][:a.limit] for f, items in data.items()}
    if a.upscale != 1.0:
        data = {f: [upscaled(it, a.upscale) for it in items] for f, items in data.items()}
    data = {f: items for f, items in data.items() if items}
    rows = []

    def run(family, items, seg, name, seen):
        t0 = time.perf_counter()
        preds = segment(seg, items)
        r = score(items, preds)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        r["info"] = info_summary(items, preds, seg.name)
        rows.append({"family": family, "images": len(items), "segmenter": name, "seen": seen,
                     "result": r})
        print(json.dumps(rows[-1]), flush=True)

    for family, items in data.items():
        if not a.no_classical:
            run(family, items, classical(), "classical", "—")
        held = []
        for spec in a.fold_model:
            path, fold = spec.rsplit(":", 1)
            pick = [it for it in items if it["fold"] == int(fold)]
            seg = learned(path, **options)
            held.append((pick, segment(seg, pick)))
            for it in pick:
                it.setdefault("info", {})["held-out"] = it["info"][seg.name]
        if held:
            its = [it for p, _ in held for it in p]
            r = score(its, [q for _, pr in held for q in pr])
            r["info"] = info_summary(its, [q for _, pr in held for q in pr], "held-out")
            rows.append({"family": family, "images": len(its), "segmenter": "learned, fold models",
                         "seen": "no (held-out fold)", "result": r})
            print(json.dumps(rows[-1]), flush=True)
        for spec in a.lofo_model:
            path, fam = spec.rsplit(":", 1)
            if fam == family:
                run(family, items, learned(path, **options), f"learned {Path(path).stem}",
                    "no (family left out)")
        if a.model:
            run(family, items, learned(a.model, **options), f"learned {Path(a.model).stem}",
                "yes")
    results = {"rows": rows, "options": options, "upscale": a.upscale, "limit": a.limit}
    write_results(a.out, results, markdown(rows), "families" if a.card else None)
    if a.card:
        record_auto_default(Path(a.model or REPO / "engines" / "unet-s.onnx").with_suffix(".json"),
                            rows)
    return 0


def auto_default_verdict(rows: list[dict]) -> tuple[bool, str]:
    """Whether the learned model beats classical on every family (held-out fold rows, detection
    F1), and why not."""
    classical_f1 = {r["family"]: r["result"]["detection"]["f1"] for r in rows
                    if r["segmenter"] == "classical"}
    learned_f1 = {r["family"]: r["result"]["detection"]["f1"] for r in rows
                  if r["seen"] == "no (held-out fold)"}
    both = sorted(set(classical_f1) & set(learned_f1))
    if not both:
        return False, "no family was scored by both segmenters"
    worse = [f"{f} {learned_f1[f]:.3f} vs {classical_f1[f]:.3f}" for f in both
             if learned_f1[f] <= classical_f1[f]]
    if worse:
        return False, ("did not beat the classical baseline on every real family (held-out "
                       "detection F1, learned vs classical: " + "; ".join(worse) + ")")
    return True, ("beat the classical baseline on every real family (held-out detection F1: " +
                  "; ".join(f"{f} {learned_f1[f]:.3f} vs {classical_f1[f]:.3f}" for f in both) + ")")


def record_auto_default(sidecar: Path, rows: list[dict]) -> None:
    ok, reason = auto_default_verdict(rows)
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    info["auto_default"] = ok
    info["auto_default_reason"] = reason
    sidecar.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
