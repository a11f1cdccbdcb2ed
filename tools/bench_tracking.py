"""Benchmark live tracking: cost per frame at N particles, and memory over a long session.

Frames are particle tables as the measure stage makes them (``N`` particles drifting with the
stage, diffusing a little on the sample, growing, a few percent missed each frame, nuclei
appearing and particles leaving), plus a textured frame moved by the same drift for the
phase-correlation step, so everything :meth:`Tracker.update` does per frame is timed: drift,
linking (trackpy), track bookkeeping, events, summaries.

Usage::

    python tools/bench_tracking.py --particles 1000 --size 2048 --frames 300
    python tools/bench_tracking.py --particles 1000 --size 1024 --frames 5000 --soak

``--soak`` samples the process's resident memory (psutil) every 250 frames and reports the growth
between the first sample after warm-up and the last. Like the pipeline, the benchmark freezes the
objects alive after the first frames (``emstream/gc_pauses.py``); ``--gc-pauses`` leaves them to
the garbage collector, to see the pauses that avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import machine_info  # noqa: E402

from emstream.gc_pauses import freeze_startup_objects  # noqa: E402
from emstream.pipeline import FREEZE_AFTER_FRAMES  # noqa: E402
from emstream.process.track import Tracker, TrackSettings  # noqa: E402


class Scene:
    """N particles on a sample drifting under the camera (a torus, so the count holds)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.pos = self.rng.uniform(0, size, (n, 2))
        self.d = self.rng.lognormal(np.log(0.35 * size / np.sqrt(n)), 0.25, n)
        self.offset = np.zeros(2)
        self.concave = self.rng.random(n) < 0.3
        self.texture = ndimage.gaussian_filter(self.rng.normal(size=(size, size)), 2).astype(
            np.float32)

    def step(self):
        rng, n = self.rng, len(self.d)
        self.offset += (0.8, 1.4) + rng.normal(0, 0.3, 2)
        self.pos += rng.normal(0, 0.2, self.pos.shape)
        self.d *= 1.0 + rng.normal(0.0005, 0.002, n)
        renew = rng.random(n) < 0.002  # nucleation somewhere else, as many as dissolve
        self.pos[renew] = rng.uniform(0, self.size, (int(renew.sum()), 2))
        self.d[renew] = np.median(self.d) * 0.6
        img_pos = (self.pos + self.offset) % self.size
        seen = rng.random(n) > 0.03
        flip = rng.random(n) < np.where(self.concave, 0.233, 0.1)
        self.concave ^= flip
        area = np.pi * self.d[seen] ** 2 / 4
        m = int(seen.sum())
        table = {"centroid_y_px": img_pos[seen, 0], "centroid_x_px": img_pos[seen, 1],
                 "area_px": area, "touches_border": np.zeros(m, bool),
                 "equivalent_diameter_nm": self.d[seen] * 0.25,
                 # rough outlines (the tracker's rounding-up rule reads them), as the classical
                 # segmenter measures them on grainy bright field: concave in 30 % of the frames,
                 # the state kept from frame to frame with 86 % probability
                 "solidity": np.where(self.concave[seen], rng.uniform(0.86, 0.93, m),
                                      rng.uniform(0.93, 1.0, m)),
                 "aspect_ratio": 1.0 + np.abs(rng.normal(0, 0.3, m))}
        image = np.roll(self.texture, tuple(int(round(v)) for v in self.offset), axis=(0, 1))
        return table, image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--soak", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--neck-frames", type=int, default=TrackSettings().neck_frames,
                    help="the tracker's rounding-up rule (0: off), to see what it costs")
    ap.add_argument("--gc-pauses", action="store_true",
                    help="leave the startup objects to the garbage collector (the pipeline "
                         "freezes them: emstream/gc_pauses.py), to see the pauses it avoids")
    a = ap.parse_args(argv)
    import psutil

    proc = psutil.Process(os.getpid())
    scene = Scene(a.particles, a.size)
    tracker = Tracker(TrackSettings(neck_frames=a.neck_frames))
    times, rss = [], []
    for k in range(a.frames):
        if k == FREEZE_AFTER_FRAMES and not a.gc_pauses:
            freeze_startup_objects()  # as the pipeline does once it has warmed up
        table, image = scene.step()
        t0 = time.perf_counter()
        tracker.update(k, k * 0.5, table, shape=image.shape, unit="nm", unit_per_px=0.25,
                       image=image)
        times.append((time.perf_counter() - t0) * 1e3)
        if a.soak and k % 250 == 0:
            rss.append((k, proc.memory_info().rss / 2**20))
    warm = np.array(times[20:])
    out = {
        "machine": machine_info(),
        "particles": a.particles, "frame_px": a.size, "frames": a.frames,
        "ms_per_frame_median": round(float(np.median(warm)), 2),
        "ms_per_frame_p95": round(float(np.percentile(warm, 95)), 2),
        "ms_per_frame_max": round(float(warm.max()), 2),
        "ms_per_frame_mean": round(float(warm.mean()), 2),
        "startup_objects_frozen": not a.gc_pauses, "neck_frames": a.neck_frames,
        "tracks_open_at_end": len(tracker._tracks),
    }
    if rss:
        after_warmup = [r for k, r in rss if k >= 500] or [rss[-1][1]]
        out["rss_mb_samples"] = [(k, round(r, 1)) for k, r in rss]
        out["rss_growth_mb_after_warmup"] = round(after_warmup[-1] - after_warmup[0], 1)
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
