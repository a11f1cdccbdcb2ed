"""Throughput of the processing path on this machine: frames/s and per-stage milliseconds.

Usage::

    python tools/bench.py                      # 1024² and 2048² uint16, classical (+ learned if available)
    python tools/bench.py --sizes 1024 --frames 20 --segmenter classical --json bench.json

For each frame size and segmenter it reports

* per-stage medians (prepare, segment, measure, total) from :func:`emstream.pipeline.process_frame`
  run frame after frame in one thread, and
* end-to-end frames/s through the real :class:`~emstream.pipeline.Pipeline` (reader, worker and
  ledger threads, SQLite ledger in a temporary session) fed from memory, with the garbage
  collector's pauses during that run (count of full collections, longest and summed pause),

with the machine (CPU model, cores, RAM) printed first. Frames come from the simulator when it
is installed (bright-field scene, ~15 % coverage: ~500 particles at 1024²), else from a simple
disk field.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from emstream.frame import Calibration, Frame


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except (ImportError, OSError, AttributeError):  # no load average on Windows
        pass
    return info


def make_frames(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    from emstream.sources.simulate.scene import Microscope, SceneConfig

    # a moderately crowded bright-field field: ~15 % coverage of ~20 px particles
    cfg = SceneConfig(shape=(size, size), coverage_start=0.15, coverage_end=0.15,
                      median_diameter_nm=5.0)
    mic = Microscope(cfg, seed=seed)
    return [np.asarray(mic.next_frame().image, dtype=np.uint16) for _ in range(n)]


def _frame(pixels: np.ndarray, k: int) -> Frame:
    now = time.time()
    return Frame(pixels, f"bench/{k}", t_acq=now, t_arrival=now,
                 calibration=Calibration((0.5, 0.5), "file", "bench"))


def bench_stages(images: list[np.ndarray], segmenter: Any, warmup: int = 1) -> dict[str, float]:
    from emstream.pipeline import process_frame

    for k in range(warmup):
        process_frame(_frame(images[k % len(images)], k), segmenter, keep_labels=False)
    per: dict[str, list[float]] = {}
    counts = []
    for k, img in enumerate(images):
        res = process_frame(_frame(img, k), segmenter, keep_labels=False)
        counts.append(res.summary.count)
        for key, v in res.timings_ms.items():
            per.setdefault(key, []).append(v)
    out = {f"{k}_ms": round(statistics.median(v), 1) for k, v in per.items() if k != "read"}
    out["particles_median"] = float(statistics.median(counts))
    out["stage_fps"] = round(1000.0 / out["total_ms"], 2) if out.get("total_ms") else 0.0
    return out


class _MemorySource:
    def __init__(self, images: list[np.ndarray]):
        self.images = images

    def frames(self, stop: threading.Event):
        for k, img in enumerate(self.images):
            if stop.is_set():
                return
            yield _frame(img, k)

    def describe(self) -> str:
        return "memory"

    def close(self) -> None:
        pass


class GcPauses:
    """Pauses of CPython's cyclic garbage collector while in the ``with`` block (they hold the
    interpreter lock: the pipeline and the window stop for their length)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, ms)
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._t0) * 1e3))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, float]:
        full = [ms for g, ms in self.pauses if g == 2]
        return {"gc_full_collections": len(full),
                "gc_pause_max_ms": round(max((ms for _, ms in self.pauses), default=0.0), 1),
                "gc_pause_total_ms": round(sum(ms for _, ms in self.pauses), 1)}


def bench_pipeline(images: list[np.ndarray], segmenter: Any, workers: int | None = None) -> dict[str, float]:
    from emstream.pipeline import Pipeline
    from emstream.sinks.base import Session
    from emstream.sinks.ledger import Ledger

    with tempfile.TemporaryDirectory(prefix="emstream-bench-") as d:
        p = Pipeline(_MemorySource(images), segmenter, [Ledger(d)],
                     session=Session(Path(d), "memory", segmenter.name, t_start=time.time()),
                     workers=workers, queue_size=4)
        with GcPauses() as gcp:
            t0 = time.perf_counter()
            p.run()
            dt = time.perf_counter() - t0
        st = p.stats
    return {"e2e_fps": round(st.processed / dt, 2), "e2e_frames": st.processed,
            "e2e_seconds": round(dt, 2), "workers": p.workers, **gcp.summary()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--frames", type=int, default=10, help="frames per size and segmenter")
    ap.add_argument("--segmenter", nargs="+", default=["classical", "learned"],
                    choices=["classical", "learned"])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=None, help="pipeline workers (default: by cores)")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    from emstream.pipeline import make_segmenter

    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    for kind in args.segmenter:
        try:
            seg = make_segmenter(kind=kind, backend=args.backend, device=args.device)
        except Exception as exc:  # noqa: BLE001
            print(f"{kind}: unavailable ({exc})")
            continue
        for size in args.sizes:
            images = make_frames(size, args.frames)
            row = {"segmenter": seg.name, "size": size, "frames": args.frames}
            row.update(bench_stages(images, seg))
            if not args.no_pipeline:
                row.update(bench_pipeline(images, seg, args.workers))
            rows.append(row)
            print(json.dumps(row))
    hdr = f"{'segmenter':<36}{'size':>6}{'prep':>8}{'seg':>8}{'meas':>8}{'total':>8}{'fps':>8}{'e2e fps':>9}"
    print("\n" + hdr)
    for r in rows:
        print(f"{r['segmenter'][:35]:<36}{r['size']:>6}{r.get('prepare_ms', 0):>8.1f}"
              f"{r.get('segment_ms', 0):>8.1f}{r.get('measure_ms', 0):>8.1f}{r.get('total_ms', 0):>8.1f}"
              f"{r.get('stage_fps', 0):>8.2f}{r.get('e2e_fps', float('nan')):>9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
