"""The ledger when SQLite cannot write (issue 21 item 5): a lock held by another process for
longer than the busy timeout, and a full disk. The monitor waits, says why, and loses nothing."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from emstream.frame import Calibration, Frame
from emstream.pipeline import Pipeline
from emstream.process.classical import ClassicalSegmenter
from emstream.sinks.base import Session, Sink
from emstream.sinks.ledger import Ledger


def disks(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = np.full((96, 96), 1000, np.uint16)
    yy, xx = np.mgrid[:96, :96]
    for _ in range(6):
        cy, cx = rng.uniform(12, 84, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = 300
    return img


class Frames:
    def __init__(self, n: int, every_s: float = 0.05):
        self.n, self.every_s = n, every_s

    def frames(self, stop):
        for i in range(self.n):
            if stop.is_set():
                return
            time.sleep(self.every_s)
            now = time.time()
            yield Frame(disks(i), f"mem/{i}", now, now, Calibration((0.5, 0.5), "stream"))

    def describe(self):
        return "test frames"

    def close(self):
        pass


class Alerts(Sink):
    name = "alerts"

    def __init__(self):
        self.alerts, self.events = [], []

    def frame_done(self, record):
        pass

    def alert(self, alert):
        self.alerts.append(alert)

    def event(self, event):
        self.events.append(event)


def run_through(tmp_path, ledger, n, during):
    seen = Alerts()
    p = Pipeline(Frames(n), ClassicalSegmenter(), [ledger, seen],
                 session=Session(tmp_path, "test", "classical"), tracking=False)
    p.start()
    during()
    assert p.join(120)
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    seqs = [r[0] for r in con.execute("SELECT seq FROM frames ORDER BY seq")]
    # every particle row of every frame: as many as the frames' own counts say
    parts = con.execute("SELECT COUNT(*) FROM particles").fetchone()[0] == con.execute(
        "SELECT SUM(count) FROM frames").fetchone()[0]
    con.close()
    return seqs, parts, seen


@pytest.mark.timeout(300)
@pytest.mark.parametrize("busy_s, hold_s", [
    (0.5, 4.0),  # the same story, scaled down
    pytest.param(30.0, 60.0, marks=pytest.mark.slow),  # as reported: 60 s against the default
])
def test_a_lock_held_past_the_busy_timeout_delays_but_loses_nothing(tmp_path, busy_s, hold_s):
    ledger = Ledger(tmp_path, busy_timeout_s=busy_s, flush_s=0.1)
    ledger.max_retry_delay_s = 0.5

    def hold_lock():
        other = sqlite3.connect(tmp_path / "ledger.sqlite", timeout=30, isolation_level=None)
        time.sleep(0.5)
        other.execute("BEGIN EXCLUSIVE")  # another process writing: nobody else may
        time.sleep(hold_s)  # longer than the busy timeout
        other.execute("COMMIT")
        other.close()

    seqs, parts, seen = run_through(tmp_path, ledger, 40 if hold_s < 10 else 400, hold_lock)
    n = 40 if hold_s < 10 else 400
    assert seqs == list(range(n))  # every frame, once
    assert parts
    assert any(a.rule == "ledger unavailable" and a.builtin for a in seen.alerts)
    assert any(e.kind == "ledger_available" for e in seen.events)


@pytest.mark.timeout(180)
def test_a_full_disk_is_waited_out_and_the_batch_written_again(tmp_path):
    ledger = Ledger(tmp_path, flush_s=0.1, batch=8)
    ledger.max_retry_delay_s = 0.5
    pages = ledger._con.execute("PRAGMA page_count").fetchone()[0]

    def fill_disk():
        time.sleep(0.5)
        # the database may not grow: SQLITE_FULL on the next pages (the ledger's own connection;
        # SQLite serialises the calls)
        now = ledger._con.execute("PRAGMA page_count").fetchone()[0]
        ledger._con.execute(f"PRAGMA max_page_count = {now + 1}")
        time.sleep(3.0)
        ledger._con.execute("PRAGMA max_page_count = 1073741823")  # space freed

    seqs, parts, seen = run_through(tmp_path, ledger, 60, fill_disk)
    assert pages > 0
    assert seqs == list(range(60))
    assert parts
    assert any(a.rule == "ledger unavailable" and "full" in a.message for a in seen.alerts)
