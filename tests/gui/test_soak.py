"""Soak: 2,000+ frames through the real pipeline into ledger + window; memory stays bounded."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import numpy as np
import pytest
from gui_sim_frames import draw_scene

pytestmark = [pytest.mark.gui, pytest.mark.slow]

import emstream.pipeline as pipeline_mod  # noqa: E402

psutil = pytest.importorskip("psutil")

N_FRAMES = 2_000


class SyntheticStream:
    """Fresh arrays for every frame (a leak of frames would show up in RSS)."""

    def __init__(self, n: int, truth: dict):
        self.n = n
        self.truth = truth
        self.rng = np.random.default_rng(99)

    def frames(self, stop):
        from emstream.frame import Calibration, Frame

        cal = Calibration((0.5, 0.5), "stream", "soak")
        t0 = time.time()
        for i in range(self.n):
            if stop.is_set():
                return
            k = int(self.rng.integers(8, 20))
            img, labels = draw_scene(self.rng, (128, 128), k, "bf", (3.0, 8.0), touching=1)
            self.truth[id(img)] = labels
            yield Frame(img, f"soak/{i}", t0 + 0.1 * i, time.time(), cal)

    def describe(self) -> str:
        return "synthetic soak stream"

    def close(self) -> None:
        pass


class TruthSegmenter:
    name = "ground-truth"

    def __init__(self, truth: dict):
        self.truth = truth

    def segment(self, prepared):
        return self.truth.pop(id(prepared.raw))


def test_soak_memory_is_bounded(tmp_path, artifacts_dir):
    from emstream.gui.app import run_monitor_window
    from emstream.sinks.base import Session
    from emstream.sinks.ledger import Ledger

    proc = psutil.Process()
    samples: list[tuple[int, float]] = []
    box: dict = {}
    truth: dict = {}
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.wait(0.25):
            p = box.get("pipeline")
            done = p.stats.processed if p is not None else 0
            samples.append((done, proc.memory_info().rss / 2**20))

    def start(sinks):
        p = pipeline_mod.Pipeline(
            SyntheticStream(N_FRAMES, truth),
            TruthSegmenter(truth),
            [Ledger(tmp_path), *sinks],
            session=Session(tmp_path, "", ""),
        )
        box["pipeline"] = p
        return p.start()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    run_monitor_window(
        start,
        stats=lambda: box["pipeline"].stats,
        screenshot=artifacts_dir / "gui_soak_end.png",
        exit_when="finished",
        on_window=lambda w: box.setdefault("window", w),
    )
    elapsed = time.monotonic() - t0
    stop_sampling.set()
    sampler.join(2)
    p, win = box["pipeline"], box["window"]
    assert p.join(30)
    con = sqlite3.connect(f"file:{tmp_path / 'ledger.sqlite'}?mode=ro", uri=True)
    # the window sizes particles of trusted frames (state ok / moved), not cut by the edge
    n_particles = con.execute(
        "SELECT COUNT(*) FROM particles p JOIN frames f ON f.seq = p.seq WHERE "
        "p.touches_border = 0 AND f.state IN ('ok', 'moved')").fetchone()[0]
    n_ok = con.execute("SELECT COUNT(*) FROM frames WHERE status='ok'").fetchone()[0]
    con.close()

    assert n_ok == N_FRAMES
    counts = win.statistics.counts()
    assert counts["frames_ok"] == N_FRAMES
    assert counts["particles"] == n_particles
    assert len(win.ring) <= 20

    # memory: after the first quarter (caches, Qt, SQLite warm) the RSS stays flat
    warm = [rss for done, rss in samples if done >= N_FRAMES // 4]
    assert len(warm) >= 4
    base, peak, end = warm[0], max(warm), warm[-1]
    report = {
        "frames": N_FRAMES,
        "seconds": round(elapsed, 1),
        "displayed": win.displayed,
        "rss_mb_at_quarter": round(base, 1),
        "rss_mb_peak_after_quarter": round(peak, 1),
        "rss_mb_end": round(end, 1),
        "rss_growth_mb": round(peak - base, 1),
        "samples": [(d, round(r, 1)) for d, r in samples[:: max(1, len(samples) // 40)]],
    }
    (artifacts_dir / "gui_soak.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    # a leak of one frame's arrays (~100 kB) per frame would add ~150 MB over 1,500 frames
    assert peak - base < 40.0, report
