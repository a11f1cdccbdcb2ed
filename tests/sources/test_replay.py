"""Replay source: a recorded folder in acquisition order, paced or as fast as possible."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from emstream.frame import Frame
from emstream.sources.replay import ReplaySource

tifffile = pytest.importorskip("tifffile")
def _record(folder, n=4):
    t0 = 1_700_000_000
    for k in range(n):
        p = folder / f"frame_{n - k:03d}.tif"  # names sort opposite to acquisition order
        tifffile.imwrite(p, np.full((8, 8), k, np.uint16))
        os.utime(p, ns=((t0 + k) * 10**9, (t0 + k) * 10**9))
    (folder / "junk.tif").write_bytes(b"junk" * 10)
    os.utime(folder / "junk.tif", ns=((t0 + 10) * 10**9,) * 2)
    (folder / "ignored.tif.tmp").write_bytes(b"")


def test_replay_in_acquisition_order_as_fast_as_possible(tmp_path):
    _record(tmp_path)
    src = ReplaySource(tmp_path, speed=None)
    items = list(src.frames(threading.Event()))
    frames = [i for i in items if isinstance(i, Frame)]
    assert [int(f.pixels[0, 0]) for f in frames] == [0, 1, 2, 3]
    assert [f.metadata["t_acq_original"] for f in frames] == sorted(
        f.metadata["t_acq_original"] for f in frames)
    bad = [i for i in items if not isinstance(i, Frame)]
    assert len(bad) == 1 and bad[0].status == "quarantined" and bad[0].reason
    assert "as fast as possible" in src.describe()


def test_replay_paced_keeps_relative_timing_and_stops(tmp_path):
    _record(tmp_path, n=3)
    src = ReplaySource(tmp_path, speed=4.0)  # 1 s apart in the recording -> 0.25 s
    stop = threading.Event()
    got = []
    for item in src.frames(stop):
        if isinstance(item, Frame):
            got.append(item)
    # replay re-stamps acquisition times on its own clock, in the recorded order and spacing
    gaps = np.diff([f.t_acq for f in got])
    assert len(got) == 3 and np.all(gaps > 0)
    stop.set()
    assert list(ReplaySource(tmp_path, speed=4.0).frames(stop)) == []  # stop is honoured


def test_replay_speed_zero_means_unpaced(tmp_path):
    _record(tmp_path, n=2)
    t = time.time()
    frames = [i for i in ReplaySource(tmp_path, speed=0).frames(threading.Event()) if isinstance(i, Frame)]
    assert len(frames) == 2 and frames[0].t_acq >= t
