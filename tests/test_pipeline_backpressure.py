"""Backpressure: with a burst of files on disk, frames are read only as the pipeline has room."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from emstream.pipeline import Pipeline, make_segmenter
from emstream.sinks.base import Session, Sink
from emstream.sinks.ledger import Ledger, connect_readonly
from emstream.sources.folder import FolderSource

tifffile = pytest.importorskip("tifffile")
class SlowSegmenter:
    """The classical segmenter, slowed down so the burst waits on disk."""

    def __init__(self):
        self.inner = make_segmenter("classical")
        self.name = "slow-classical"

    def segment(self, prepared):
        time.sleep(0.02)
        return self.inner.segment(prepared)


class InFlight(Sink):
    """Samples how many frames have been read but are not terminal yet, at every record."""

    name = "in-flight"

    def __init__(self, source):
        self.source = source
        self.done = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def frame_done(self, record):
        with self.lock:
            self.done += 1
            self.max_in_flight = max(self.max_in_flight, self.source.stats["frames_read"] - self.done)


def test_burst_stays_on_disk(tmp_path):
    acq = tmp_path / "acq"
    acq.mkdir()
    rng = np.random.default_rng(0)
    n = 60
    for k in range(n):  # the burst: everything is already there when the monitor starts
        tifffile.imwrite(acq / f"f{k:03d}.tif", rng.integers(1000, 3000, (64, 64), dtype=np.uint16))
    ses = tmp_path / "ses"
    led = Ledger(ses)
    src = FolderSource(acq, led, poll_s=0.05, min_age_s=0.0)
    probe = InFlight(src)
    queue_size = 2
    p = Pipeline(src, SlowSegmenter(), [led, probe], session=Session(ses, "", "", t_start=time.time()),
                 queue_size=queue_size)
    p.start()
    assert p.wait_idle(1.0)
    p.stop()
    p.join(30)
    assert probe.done == n
    # read but not finished: one per worker, the queue, one held by the reader, one being
    # handed to the sinks -- never the burst
    assert probe.max_in_flight <= queue_size + p.workers + 2
    con = connect_readonly(ses)
    assert con.execute("SELECT COUNT(*) FROM frames WHERE status='ok'").fetchone()[0] == n
