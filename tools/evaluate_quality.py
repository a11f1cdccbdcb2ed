"""Score frame states (``process.quality``) against scripted simulator sessions.

Three measurements, on 1024² frames of the simulated microscope (``Microscope(SceneConfig)``)
with scripted trouble (``emstream.sources.simulate.script``):

1. **States**: sessions with every kind of event (seeds x BF/HAADF); per state, precision and
   recall of the frames judged in it, a frame counting when its judged state equals the script's
   (events last 2-5 frames; recall is also reported for the first 2 frames of each event).
2. **False out-of-focus**: ``--clean-frames`` in-focus frames spread over both modes and doses
   10, 30, 100, 1000 counts/px; any ``out_of_focus`` is a false alarm.
3. **Does the gate hold D50**: a BF session with 20 % of its frames defocused, segmented by the
   classical baseline; the session D50 from ``ok`` frames and from every frame, against the D50
   of the same segmenter on the in-focus frames only (the truth the gate should reach).

Usage::

    python tools/evaluate_quality.py --out runs/quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emstream.process.quality import STATES, QualityMonitor  # noqa: E402
from emstream.sources.simulate import script  # noqa: E402
from emstream.sources.simulate.scene import Microscope, SceneConfig  # noqa: E402

SCRIPT = ("defocus:10-14,smear:20-23,blank:30-32,dim:40-42,jump:50,saturate:60-62,empty:70-73,"
          "defocus:80-84,jump:90,blank:95-96,smear:105-107,empty:112-114")


def session(mode: str, dose: float, seed: int, n: int, text: str, segmenter=None):
    scope = Microscope(SceneConfig(shape=(1024, 1024), mode=mode, dose=dose, t0=0.0), seed=seed)
    events = script.parse_script(text)
    mon = QualityMonitor()
    rows = []
    prev = None
    for k in range(n):
        script.before_frame(events, scope, k)
        f = scope.next_frame()
        want = script.apply(events, scope, f, k)
        off = np.array(f.stage_offset_px)
        step = None if prev is None else tuple(off - prev)
        prev = off
        d50 = None
        count = len(f.particles)
        if segmenter is not None:
            from emstream.frame import Calibration, Frame
            from emstream.pipeline import process_frame

            res = process_frame(Frame(f.image, f"sim/{k}", f.t_acq, f.t_acq,
                                      Calibration((0.25, 0.25), "file")), segmenter,
                                keep_labels=False)
            count = res.summary.count
            inside = ~res.particles["touches_border"].astype(bool)
            d50 = res.particles["equivalent_diameter_nm"][inside]
        t0 = time.perf_counter()
        got = mon.judge(f.image, f.valid, particles=count, drift_step_px=step)
        rows.append({"k": k, "want": want, "got": got.state,
                     "ms": (time.perf_counter() - t0) * 1e3, "d": d50})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clean-frames", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out: dict = {}
    # 1. states
    rows = []
    for mode in ("bf", "haadf"):
        for seed in a.seeds:
            rows += session(mode, 400.0, seed, 120, SCRIPT)
    per = {}
    for st in STATES:
        tp = sum(r["want"] == st and r["got"] == st for r in rows)
        pred = sum(r["got"] == st for r in rows)
        true = sum(r["want"] == st for r in rows)
        per[st] = {"frames": true, "precision": tp / pred if pred else None,
                   "recall": tp / true if true else None}
    out["states"] = per
    out["judge_ms_median"] = float(np.median([r["ms"] for r in rows]))
    print(json.dumps(per, indent=1), flush=True)
    # 2. false out-of-focus on in-focus frames
    doses = (10.0, 30.0, 100.0, 1000.0)
    each = max(1, a.clean_frames // (2 * len(doses)))
    clean = []
    for mode in ("bf", "haadf"):
        for i, dose in enumerate(doses):
            clean += session(mode, dose, 100 + i, each, "")
    out["clean_frames"] = len(clean)
    out["clean_not_ok"] = {st: sum(r["got"] == st for r in clean) for st in STATES if st != "ok"}
    print(json.dumps({"clean_frames": len(clean), "not_ok": out["clean_not_ok"]}), flush=True)
    # 3. D50 with and without the gate
    from emstream.pipeline import make_segmenter

    seg = make_segmenter("classical")
    n = 100
    text = ",".join(f"defocus:{s}-{s + 4}" for s in range(10, n, 25))  # 20 of 100 frames
    rows = session("bf", 400.0, 7, n, text, seg)
    focus = [r for r in rows if r["want"] == "ok"]
    ok = [r for r in rows if r["got"] in ("ok", "moved")]

    def d50(rs):
        d = np.concatenate([r["d"] for r in rs if r["d"] is not None and len(r["d"])])
        return float(np.median(d))

    truth, gated, ungated = d50(focus), d50(ok), d50(rows)
    out["d50"] = {"in_focus_frames": truth, "ok_frames": gated, "all_frames": ungated,
                  "gated_error": gated / truth - 1, "ungated_error": ungated / truth - 1,
                  "defocused_frames": sum(r["want"] != "ok" for r in rows), "frames": n}
    print(json.dumps(out["d50"], indent=1), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
