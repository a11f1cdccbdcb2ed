"""Measure the live window's cost: one display update, and the display rate reached.

Usage::

    QT_QPA_PLATFORM=offscreen python tools/bench_gui.py [--sizes 2048 4096] [--particles 1000]
        [--seconds 5] [--json OUT.json]

For each frame size it builds a frame with ``--particles`` measured particles (real
``emstream.process.measure``), then

* **prepare** (display thread): uint8 scaling with percentile levels, outline tracing, target
  mask, area-averaged downsampling to screen resolution;
* **GUI update** (GUI thread): ``MonitorWindow.show_result`` of the prepared frame + the paint
  Qt does for it (``processEvents``), median over repeated updates alternating between two
  frames; plus a full repaint of every panel (a worst case);
* **statistics**: the GUI sink's per-frame accounting (9 fixed-bin histograms + a trend point),
  which runs on a pipeline thread;
* **display rate**: a producer thread calls ``GuiSink.frame_done`` at ~100 frames/s (a fast
  pipeline) for ``--seconds``; the number of frames the window actually drew per second (the
  window throttles itself to ≤ 30 Hz).

Measured figures (with the machine and its load) are kept in README.md, "Measured performance",
so they are written down in one place only.

"Capacity" = 1000 / max(prepare, GUI update): what the
two pipelined display stages sustain with a core each; the rate actually reached here is lower
because the benchmark's producer, the display thread and the GUI thread share 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def make_result(shape: int, n: int, seed: int, seq: int):
    from emstream.frame import Calibration, Frame
    from emstream.process.measure import measure
    from emstream.process.stats import summarize
    from emstream.results import FrameResult

    rng = np.random.default_rng(seed)
    labels = np.zeros((shape, shape), np.int32)
    # particles on a jittered grid so that n of them fit without overlap
    side = int(np.ceil(np.sqrt(n)))
    cell = shape / side
    k = 0
    for gy in range(side):
        for gx in range(side):
            if k >= n:
                break
            r = rng.uniform(0.18, 0.38) * cell
            cy = (gy + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            cx = (gx + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            k += 1
            cv2.ellipse(
                labels,
                (int(cx), int(cy)),
                (int(r), int(r * rng.uniform(0.7, 1.0))),
                rng.uniform(0, 180),
                0,
                360,
                k,
                -1,
            )
    img = (2500 - 1400 * (labels > 0) + rng.normal(0, 60, labels.shape)).clip(0, 65535)
    img = img.astype(np.uint16)
    cal = Calibration((0.2, 0.2), "file", "bench")
    t = time.time()
    frame = Frame(img, f"bench/{seq}", t, t, cal, seq)
    particles = measure(labels, img, cal)
    summary = summarize(particles, valid_area_px=labels.size, unit="nm")
    return FrameResult(frame, particles, summary, "bench", {}, labels, None, t)


def bench_size(app, shape: int, n: int, seconds: float) -> dict:
    from emstream.gui.bridge import GuiSink
    from emstream.gui.window import MonitorWindow
    from emstream.results import FrameRecord

    t0 = time.perf_counter()
    results = [make_result(shape, n, seed, seq) for seq, seed in enumerate((1, 2))]
    build_s = time.perf_counter() - t0
    count = len(results[0].particles["label"])

    sink = GuiSink()
    win = MonitorWindow(sink, title="bench")
    win.resize(1680, 1020)
    win.show()
    app.processEvents()

    # -- one update (synchronous) --------------------------------------------------------------
    parts: dict[str, list[float]] = {}
    totals, paints, full, prep = [], [], [], []
    for i in range(14):
        r = results[i % 2]
        t0 = time.perf_counter()
        d = win.prepare(r)  # what the display thread does (numpy/OpenCV, off the GUI thread)
        t1 = time.perf_counter()
        win.show_result(d)
        t2 = time.perf_counter()
        app.processEvents()  # Qt paints what changed (frame view, size histogram)
        t3 = time.perf_counter()
        if i >= 4:  # warm-up
            prep.append((t1 - t0) * 1e3)
            totals.append((t3 - t1) * 1e3)
            paints.append((t3 - t2) * 1e3)
            for k, v in win.frame_view.last_update_ms.items():
                parts.setdefault(k, []).append(v)
            parts.setdefault("show_result", []).append((t2 - t1) * 1e3)
            t4 = time.perf_counter()
            win.repaint()  # everything, trends and status included (a worst case)
            full.append((time.perf_counter() - t4) * 1e3)
    assert win.frame_view.outlines_drawn == count

    # -- statistics accounting on the sink thread ----------------------------------------------
    acc = []
    for i in range(20):
        rec = FrameRecord(1000 + i, "x", "ok", 0.0, result=results[i % 2])
        t0 = time.perf_counter()
        sink.account(rec)
        acc.append((time.perf_counter() - t0) * 1e3)

    # -- display rate under a fast producer ----------------------------------------------------
    stop = threading.Event()
    produced = [0]

    def produce():
        seq = 5000
        while not stop.is_set():
            r = results[seq % 2]
            sink.frame_done(FrameRecord(seq, "x", "ok", 0.0, result=r))
            produced[0] += 1
            seq += 1
            time.sleep(0.01)

    shown0 = win.displayed
    th = threading.Thread(target=produce, daemon=True)
    t0 = time.perf_counter()
    th.start()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.001)
    stop.set()
    th.join()
    elapsed = time.perf_counter() - t0
    displayed = win.displayed - shown0
    win.close()  # also ends the sink's display thread
    win.deleteLater()
    app.processEvents()

    med = statistics.median
    return {
        "shape": [shape, shape],
        "particles": count,
        "build_frame_s": round(build_s, 2),
        "prepare_ms_median": round(med(prep), 1),
        "gui_update_ms_median": round(med(totals), 1),
        "gui_update_ms_p90": round(float(np.percentile(totals, 90)), 1),
        "update_breakdown_ms": {k: round(med(v), 1) for k, v in parts.items()}
        | {"paint": round(med(paints), 1)},
        "full_window_repaint_ms": round(med(full), 1),
        "display_factor": win.frame_view.display_factor(),
        "statistics_ms_per_frame": round(med(acc), 2),
        "producer_fps": round(produced[0] / elapsed, 1),
        "display_hz": round(displayed / elapsed, 1),
        # what the two display stages could sustain if each had a core (they run pipelined)
        "capacity_hz": round(1000.0 / max(med(prep), med(totals)), 1),
        "load_avg_1min": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from emstream.gui.app import application

    app = application()
    out = {
        "platform": app.platformName(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "results": [],
    }
    for s in args.sizes:
        r = bench_size(app, s, args.particles, args.seconds)
        out["results"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
