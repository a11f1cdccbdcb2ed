"""Benchmark ``emstream reprocess``: frames/s with 1 and 2 workers of the embedded cluster and on
real ``dask scheduler`` + ``dask worker`` processes (same files, same run), and the ceiling of the
client's sequential stage (drift, tracking, frame state, rules and the one ledger writer), fed
records that are already processed.

Usage::

    python tools/bench_reprocess.py --frames 48 --size 1024 --out runs/bench_reprocess.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import machine_info  # noqa: E402

from emstream.pipeline import Pipeline, make_segmenter  # noqa: E402
from emstream.scaleout.source import ClusterSource, connect, recipe_for  # noqa: E402
from emstream.sinks.base import Session  # noqa: E402
from emstream.sinks.ledger import Ledger  # noqa: E402
from emstream.sources.simulate.scene import SceneConfig  # noqa: E402
from emstream.sources.simulate.writers import write_session  # noqa: E402


def run_once(frames: Path, out: Path, segmenter, *, scheduler=None, workers=1, threads=1):
    """Seconds to reprocess ``frames`` into a fresh session (cluster start-up timed apart)."""
    t0 = time.perf_counter()
    client, cluster = connect(scheduler, workers=workers, dashboard=False)
    client.wait_for_workers(workers, timeout=120)
    t_start = time.perf_counter() - t0
    ledger = Ledger(out)
    src = ClusterSource([frames], ledger, client=client, cluster=cluster,
                        recipe=recipe_for(segmenter, "auto", threads))
    src.start_workers()  # the model reaches every worker before the clock starts
    records: list = []
    p = Pipeline(src, segmenter, [ledger], session=Session(out, "bench", segmenter.name))
    p.add_listener(records.append)
    t1 = time.perf_counter()
    p.run()
    dt = time.perf_counter() - t1
    n = len(records)
    return {"frames": n, "seconds": round(dt, 2), "frames_per_s": round(n / dt, 2),
            "cluster_start_s": round(t_start, 2)}


def sequential_ceiling(records: list, out: Path, segmenter, repeat: int) -> dict:
    """Frames/s of the client's sequential stage alone (no segmentation): drift, tracking,
    frame state, rules and the ledger, fed ``repeat`` copies of already processed records."""

    class Replayed:
        def frames(self, stop):
            for k in range(repeat):
                r = copy.copy(records[k % len(records)])
                r.result = copy.copy(r.result)
                r.result.frame = copy.copy(r.result.frame)
                r.source_id = f"{r.source_id}@{k}"
                r.file_version = None
                yield r

        def describe(self):
            return "replayed records"

        def close(self):
            pass

    ledger = Ledger(out)
    p = Pipeline(Replayed(), segmenter, [ledger], session=Session(out, "bench", "records"))
    t0 = time.perf_counter()
    p.run()
    dt = time.perf_counter() - t0
    return {"frames": repeat, "seconds": round(dt, 2), "frames_per_s": round(repeat / dt, 1)}


def ledger_ceiling(records: list, out: Path, repeat: int) -> dict:
    """Frames/s the ledger alone absorbs (frame rows and particle rows, committed)."""
    ledger = Ledger(out)
    ledger.open(Session(out, "bench", "records"))
    t0 = time.perf_counter()
    for k in range(repeat):
        r = copy.copy(records[k % len(records)])
        r.seq, r.source_id, r.file_version = k, f"{r.source_id}@{k}", None
        ledger.frame_done(r)
    ledger.close()
    dt = time.perf_counter() - t0
    n_particles = sum(int(records[k % len(records)].result.summary.count) for k in range(repeat))
    return {"frames": repeat, "particles": n_particles, "seconds": round(dt, 2),
            "frames_per_s": round(repeat / dt, 1)}


def real_cluster(tmp: Path, workers: int):
    sched_file = tmp / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    while not (sched_file.exists() and sched_file.stat().st_size):
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    env = dict(os.environ, EMSTREAM_ORT_THREADS="1")
    for k in range(workers):
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address,
                                       "--nthreads", "1", "--no-dashboard", "--name", f"w{k}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env, start_new_session=True))
    return address, procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--segmenter", default="auto")
    ap.add_argument("--repeat", type=int, default=400, help="records through the sequential stage")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    seg = make_segmenter(kind=a.segmenter)
    with tempfile.TemporaryDirectory(prefix="bench-reprocess-") as tmp:
        tmp = Path(tmp)
        frames = tmp / "frames"
        write_session(frames, frames=a.frames, fps=1000, seed=1, modes=("whole",),
                      config=SceneConfig(shape=(a.size, a.size), fps=1000))
        result = {"machine": machine_info(), "segmenter": seg.name, "frame_size": a.size,
                  "files": len(list(frames.glob("*.tif")))}
        for w in (1, 2):
            result[f"embedded_{w}_workers"] = run_once(frames, tmp / f"s{w}", seg, workers=w)
            print(w, result[f"embedded_{w}_workers"], flush=True)
        address, procs = real_cluster(tmp, 2)
        try:
            result["dask_scheduler_2_workers"] = run_once(frames, tmp / "sc", seg,
                                                          scheduler=address, workers=2)
            print("cluster", result["dask_scheduler_2_workers"], flush=True)
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)
        # records already processed (labels dropped, pixels kept, as workers return them)
        recs: list = []
        from emstream.scaleout.plan import plan_sources
        from emstream.scaleout.worker import process_task

        for task in plan_sources([frames])[0][:16]:
            recs += process_task(task, segmenter=seg)
        result["sequential_stage_ceiling"] = sequential_ceiling(recs, tmp / "seq", seg, a.repeat)
        print("ceiling", result["sequential_stage_ceiling"], flush=True)
        result["ledger_ceiling"] = ledger_ceiling(recs, tmp / "led", a.repeat)
        print("ledger", result["ledger_ceiling"], flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
