"""Score live tracking against the simulator's truth: drift, identity, events.

Simulated sessions (``Microscope(SceneConfig)``: stage drift, ripening, sintering, nucleation;
1024² frames as the demo makes them) are segmented through the production path (``prepare`` ->
segmenter -> ``measure``) and tracked by :class:`emstream.process.track.Tracker` frame by frame,
exactly as the pipeline does. ``--truth-labels`` also tracks the simulator's own instance
labels, which scores the tracker apart from the segmenter.

Scores (stated so they can be checked):

- **drift**: per frame, |measured step - true step| of the stage offset (px); median and 95th
  percentile.
- **IDF1** (Ristani et al. 2016): a detection is the truth particle under its centroid (label
  image); a truth identity is a particle's *visit* to the field (it leaves and, the sample being a
  torus, may come back much later: a tracker cannot know it is the same one). Truth detections:
  particles of >= ``MIN_AREA_PX`` px not touching the frame edge or the data bar; predicted:
  tracked particles not touching them. With ``--visible-only`` a truth particle counts only on
  frames where an observer could see it (detectability d' >= ``VISIBLE_D``, the definition
  ``tools/evaluate.py`` scores synthetic frames with; ``make_dataset.detectability``), and a
  tracked particle whose centroid lies on one it could not see is neither counted for nor
  against; a nucleus then counts from the frame it is first visible (below). Truth visits and
  tracks are matched one-to-one to maximise shared frames (``linear_sum_assignment``); IDF1 =
  2·IDTP / (truth + predicted detections).
- **events**: a truth coalescence counts when both particles were in view, off the edge, on the
  frame before the merge; a truth nucleation when the nucleus was counted (a truth detection,
  above) in >= 3 frames of its visit: nuclei are born below that size, so the event is
  observable from the birth frame to 3 frames after the nucleus is first counted (its frame and
  position are the truth's); a nucleus never counted, or born cut by the frame edge or data bar
  (indistinguishable from one coming into view), is neither required nor held against.
  A tracker event matches an unmatched truth event of its kind within 1.5 diameters (+3 px) and
  within 3 frames; a tracker coalescence that matches only a truth coalescence of particles cut
  by the frame edge or data bar is neither counted for nor against; for coalescence the truth's
  window runs from the frame the neck began (pairs
  sinter over ``coalescence_frames``; a segmenter that joins them at the neck is right) to 3 frames
  after the merge. Events in the last frames, which the tracker cannot have decided when the
  session ends (``memory + confirm_frames + 2`` frames for coalescence, ``nucleation_frames + 1``
  for nucleation), are left out on both sides. Precision = matched / tracker events, recall = matched / truth events.

Usage::

    python tools/evaluate_tracking.py --seeds 1 2 --modes bf haadf --frames 200 \\
        --out runs/tracking.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from make_dataset import VISIBLE_D, detectability  # noqa: E402

from emstream.frame import Calibration, Frame  # noqa: E402
from emstream.process import measure as _measure  # noqa: E402
from emstream.process.track import Tracker, TrackSettings  # noqa: E402
from emstream.sources.simulate.scene import Microscope, SceneConfig  # noqa: E402

MIN_AREA_PX = 20
EVENT_FRAMES = 3


def idf1(pairs: list[tuple[int, int]], n_truth: int, n_pred: int) -> float:
    """IDF1 from (truth identity, predicted identity) co-occurrences of matched detections."""
    if n_truth + n_pred == 0:
        return float("nan")
    if not pairs:
        return 0.0
    t_ids = {t for t, _ in pairs}
    p_ids = {p for _, p in pairs}
    ti = {t: i for i, t in enumerate(sorted(t_ids))}
    pi = {p: i for i, p in enumerate(sorted(p_ids))}
    from scipy.sparse import coo_matrix

    rows = np.fromiter((ti[t] for t, _ in pairs), np.int64, len(pairs))
    cols = np.fromiter((pi[p] for _, p in pairs), np.int64, len(pairs))
    m = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(ti), len(pi))).toarray()
    r, c = linear_sum_assignment(-m)
    idtp = float(m[r, c].sum())
    return 2 * idtp / (n_truth + n_pred)


def match_events(pred: list[dict], truth: list[dict]) -> tuple[int, list[float]]:
    """Greedy one-to-one matching (closest in time first); returns matches and their frame
    offsets from the truth's frame. A truth event's position is its ``y``, ``x``, ``d_px``, or
    where its ``path`` ({frame: (y, x, d_px)}) has the particle on the tracker event's frame."""
    used: set[int] = set()
    offsets = []
    for p in sorted(pred, key=lambda e: e["seq"]):
        best, best_dt = None, None
        for k, t in enumerate(truth):
            if k in used:
                continue
            lo, hi = t.get("window", (t["seq"] - EVENT_FRAMES, t["seq"] + EVENT_FRAMES))
            if not lo <= p["seq"] <= hi:
                continue
            y, x, d = t["path"].get(p["seq"], (math.nan,) * 3) if "path" in t else \
                (t["y"], t["x"], t["d_px"])
            if not math.hypot(p["y"] - y, p["x"] - x) <= 1.5 * d + 3:
                continue
            dt = abs(p["seq"] - t["seq"])
            if best is None or dt < best_dt:
                best, best_dt = k, dt
        if best is not None:
            used.add(best)
            offsets.append(float(p["seq"] - truth[best]["seq"]))
    return len(used), offsets


def run_session(seed: int, mode: str, frames: int, segmenter, settings: TrackSettings,
                use_truth: bool, size: int, detail: bool = False,
                visible_only: bool = False) -> dict:
    cfg = SceneConfig(shape=(size, size), mode=mode, t0=0.0)
    scope = Microscope(cfg, seed=seed)
    tracker = Tracker(settings)
    drift_err, pairs, n_truth, n_pred = [], [], 0, 0
    visit: dict[int, int] = {}
    prev_visible: set[int] = set()
    totals: dict[int, tuple[float, float]] = {}
    truth_events: list[dict] = []
    pred_events: list[dict] = []
    first_seen: dict[tuple[int, int], list] = {}
    nucleus_path: dict[tuple[int, int], dict[int, tuple[float, float, float]]] = {}
    prev_offset = None
    prev_truth: dict[int, dict] = {}
    track_ms = []
    labels_at: dict[int, np.ndarray | None] = {}
    from emstream.pipeline import process_frame

    for k in range(frames):
        sim = scope.next_frame()
        cal = Calibration((cfg.nm_per_px, cfg.nm_per_px), "file")
        if use_truth:
            labels = sim.labels
            particles = _measure.measure(labels, sim.image, cal, valid=sim.valid)
            valid = sim.valid
        else:
            frame = Frame(pixels=sim.image, source_id=f"sim/{k}", t_acq=sim.t_acq,
                          t_arrival=sim.t_acq, calibration=cal, seq=k)
            res = process_frame(frame, segmenter, keep_labels=False)
            particles, valid = res.particles, res.valid
        t0 = time.perf_counter()
        step = tracker.update(k, sim.t_acq, particles, shape=sim.image.shape, unit="nm",
                              unit_per_px=cfg.nm_per_px, image=sim.image, valid=valid)
        track_ms.append((time.perf_counter() - t0) * 1e3)
        totals[k] = step.drift.total
        if prev_offset is not None:
            true = np.subtract(sim.stage_offset_px, prev_offset)
            drift_err.append(float(np.hypot(*(np.array(step.drift.step) - true))))
        prev_offset = sim.stage_offset_px
        # truth visits; a particle touching the frame edge or the data bar is not fully in view
        truth = {p["id"]: p for p in sim.particles}
        if sim.valid is not None:
            for pid in np.unique(sim.labels[ndimage.binary_dilation(~sim.valid, iterations=2)]):
                if int(pid) in truth:
                    truth[int(pid)] = {**truth[int(pid)], "touches_border": True}
        for pid in truth:
            if pid not in prev_visible:
                visit[pid] = visit.get(pid, -1) + 1
        prev_visible = set(truth)
        counted = {pid for pid, p in truth.items()
                   if p["area_px"] >= MIN_AREA_PX and not p["touches_border"]}
        unseen: set[int] = set()  # in view but below what an observer can see
        if visible_only:
            d = detectability(sim.image, sim.labels)
            unseen = {pid for pid in counted if pid >= len(d) or d[pid] < VISIBLE_D}
            counted -= unseen
        n_truth += len(counted)
        for pid in counted:
            first_seen.setdefault((pid, visit[pid]), []).append(k)
        # predicted detections -> truth under the centroid
        cy = np.clip(np.rint(particles["centroid_y_px"]).astype(int), 0, sim.labels.shape[0] - 1)
        cx = np.clip(np.rint(particles["centroid_x_px"]).astype(int), 0, sim.labels.shape[1] - 1)
        under = sim.labels[cy, cx]
        keep = ~particles["touches_border"].astype(bool)
        if unseen:
            keep &= ~np.isin(under, list(unseen))
        n_pred += int(keep.sum())
        taken: set[int] = set()
        for tid, pid in zip(step.track_ids[keep].tolist(), under[keep].tolist(), strict=True):
            if pid in counted and pid not in taken:
                taken.add(pid)
                pairs.append(((pid, visit[pid]), tid))
        # truth events in view
        for ev in sim.events:
            if ev["kind"] == "coalescence":
                a, b = ev["ids"]
                pa, pb = prev_truth.get(a), prev_truth.get(b)
                if pa is None or pb is None:
                    continue
                at = truth.get(ev["into"], pa)
                truth_events.append({
                    "kind": "coalescence", "seq": k, "y": at["centroid_yx_px"][0],
                    "x": at["centroid_yx_px"][1], "window": (ev["start_seq"], k + EVENT_FRAMES),
                    "d_px": 2 * math.sqrt(max(pa["area_px"], pb["area_px"]) / math.pi),
                    # cut by the edge or the data bar: neither required nor counted against
                    "ignore": pa["touches_border"] or pb["touches_border"]})
            elif ev["kind"] == "nucleation" and ev["id"] in truth:
                p = truth[ev["id"]]
                truth_events.append({"kind": "nucleation", "seq": k, "id": ev["id"],
                                     "visit": visit[ev["id"]], "edge": p["touches_border"],
                                     "y": p["centroid_yx_px"][0], "x": p["centroid_yx_px"][1],
                                     "d_px": 2 * math.sqrt(p["area_px"] / math.pi)})
        for ev in sim.events:  # nuclei: where they are until counted (image px, this frame)
            if ev["kind"] == "nucleation" and ev["id"] in truth:
                nucleus_path[(ev["id"], visit[ev["id"]])] = {}
        for key, path in nucleus_path.items():
            p = truth.get(key[0])
            seen = first_seen.get(key, [])
            if p is not None and visit[key[0]] == key[1] and (not seen or k <= seen[0] + EVENT_FRAMES):
                path[k] = (p["centroid_yx_px"][0], p["centroid_yx_px"][1],
                           2 * math.sqrt(p["area_px"] / math.pi))
        prev_truth = truth
        labels_at[k] = sim.labels if detail else None
        if detail and k - 40 in labels_at:  # events are called up to ~memory + 8 frames late
            del labels_at[k - 40]
        for ev in step.events:
            dy, dx = totals.get(ev.seq, step.drift.total)
            if detail and ev.seq in labels_at:  # what the truth has there: old particle or none
                lab = labels_at[ev.seq]
                yy = int(np.clip(round(ev.data["y_px"] + dy), 0, lab.shape[0] - 1))
                xx = int(np.clip(round(ev.data["x_px"] + dx), 0, lab.shape[1] - 1))
                pid = int(lab[yy, xx])
                key = (pid, visit.get(pid, 0))
                seen = first_seen.get(key, [])
                ev.data["truth_id"] = pid
                ev.data["truth_age"] = ev.seq - seen[0] if seen else None
            pred_events.append({"kind": ev.kind, "seq": ev.seq, "y": ev.data["y_px"] + dy,
                                "x": ev.data["x_px"] + dx, "tracks": ev.tracks,
                                "truth_id": ev.data.get("truth_id"),
                                "truth_age": ev.data.get("truth_age")})
    # nucleation truth: a nucleus is born below what can be seen and counted; the event is
    # observable from birth until 3 frames after it is first counted (>= MIN_AREA_PX, off the
    # edge; counted >= 3 frames in that visit). Nuclei never counted are left out on both sides.
    nuc, nuc_ignored = [], []
    for e in truth_events:
        if e["kind"] != "nucleation":
            continue
        key = (e["id"], e["visit"])
        seen = first_seen.get(key, [])
        if len(seen) >= 3 and not e["edge"]:  # born at the edge: as if it came into view
            y, x, d = nucleus_path[key][seen[0]]  # where it was first counted
            nuc.append({**e, "seq": seen[0], "born": e["seq"], "y": y, "x": x, "d_px": d,
                        "window": (e["seq"], seen[0] + EVENT_FRAMES), "path": nucleus_path[key]})
        else:
            nuc_ignored.append({**e, "window": (e["seq"], frames), "path": nucleus_path[key]})
    coal = [e for e in truth_events if e["kind"] == "coalescence" and not e.get("ignore")]
    coal_ignored = [e for e in truth_events if e["kind"] == "coalescence" and e.get("ignore")]
    # events too close to the end cannot be decided yet: a coalescence is called memory + 1 +
    # confirm_frames frames after it, a nucleation nucleation_frames after
    last = {"coalescence": frames - settings.memory - settings.confirm_frames - 2,
            "nucleation": frames - settings.nucleation_frames - 1}
    out = {"seed": seed, "mode": mode, "frames": frames,
           "drift_err_px_median": float(np.median(drift_err)),
           "drift_err_px_p95": float(np.percentile(drift_err, 95)),
           "idf1": idf1(pairs, n_truth, n_pred), "truth_detections": n_truth,
           "predicted_detections": n_pred,
           "track_ms_median": float(np.median(track_ms)),
           "particles_per_frame": n_pred / max(frames, 1)}
    for kind, truth_k, ignored in (("coalescence", coal, coal_ignored),
                                   ("nucleation", nuc, nuc_ignored)):
        truth_k = [e for e in truth_k if e["seq"] <= last[kind]]
        pred_k = [e for e in pred_events if e["kind"] == kind and e["seq"] <= last[kind]]
        # tracker events on what truth leaves out (cut by the edge, never counted): dropped
        pred_k = [p for p in pred_k if match_events([p], ignored)[0] == 0
                  or match_events([p], truth_k)[0] == 1]
        m, offsets = match_events(pred_k, truth_k)
        out[kind] = {"truth": len(truth_k), "found": len(pred_k), "matched": m,
                     "precision": m / len(pred_k) if pred_k else float("nan"),
                     "recall": m / len(truth_k) if truth_k else float("nan"),
                     "median_frame_offset": float(np.median(offsets)) if offsets else None}
        if detail:
            out[kind]["detail"] = {"truth": truth_k, "found": pred_k}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["bf", "haadf"])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--segmenter", default="classical", help="classical | learned | auto")
    ap.add_argument("--truth-labels", action="store_true",
                    help="track the simulator's labels (the tracker alone)")
    ap.add_argument("--detail", action="store_true", help="list every event in the JSON")
    ap.add_argument("--visible-only", action="store_true",
                    help="score only truth particles an observer could see (d' >= VISIBLE_D)")
    ap.add_argument("--neck-frames", type=int, default=TrackSettings().neck_frames,
                    help="the tracker's rounding-up coalescence rule (0: off)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from emstream.pipeline import make_segmenter

    seg = None if a.truth_labels else make_segmenter(a.segmenter)
    rows = []
    for mode in a.modes:
        for seed in a.seeds:
            t0 = time.time()
            r = run_session(seed, mode, a.frames, seg, TrackSettings(neck_frames=a.neck_frames),
                            a.truth_labels, a.size, a.detail, a.visible_only)
            r["visible_only"] = a.visible_only
            r["segmenter"] = "truth labels" if a.truth_labels else getattr(seg, "name", "?")
            r["seconds"] = round(time.time() - t0, 1)
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("coalescence",
                                                                     "nucleation")}
                             | {k: {kk: vv for kk, vv in r[k].items() if kk != "detail"}
                                for k in ("coalescence", "nucleation")}), flush=True)

    def pooled(kind: str, key: str) -> float:
        m = sum(r[kind]["matched"] for r in rows)
        d = sum(r[kind]["found" if key == "precision" else "truth"] for r in rows)
        return m / d if d else float("nan")

    summary = {
        "sessions": len(rows),
        "drift_err_px_median": float(np.median([r["drift_err_px_median"] for r in rows])),
        "idf1_min": min(r["idf1"] for r in rows),
        "idf1_mean": float(np.mean([r["idf1"] for r in rows])),
        **{f"{k}_{m}": pooled(k, m) for k in ("coalescence", "nucleation")
           for m in ("precision", "recall")},
    }
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"summary": summary, "sessions": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
