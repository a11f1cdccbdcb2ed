"""The pipeline with real processing stages, a real ledger and in-memory sources."""

from __future__ import annotations

import threading
import time

import numpy as np

from emstream.frame import Calibration, Frame
from emstream.pipeline import Pipeline, make_segmenter
from emstream.results import Alert, FrameRecord
from emstream.sinks.base import Session, Sink
from emstream.sinks.ledger import Ledger, connect_readonly


def disks_image(seed: int, n: int = 6, size: int = 128) -> np.ndarray:
    """Bright-field style: dark disks on a noisy bright background (uint16)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 3000.0)
    for _ in range(n):
        cy, cx = rng.uniform(15, size - 15, 2)
        r = rng.uniform(4, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1200.0
    img += rng.normal(0, 60, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def make_frame(i: int, cal: Calibration | None = None) -> Frame:
    now = time.time()
    return Frame(disks_image(i), f"mem/{i}", t_acq=now, t_arrival=now,
                 calibration=cal or Calibration((0.5, 0.5), "file", "test"))


class ListSource:
    """Yields prepared items, optionally waiting on a gate after the first one."""

    def __init__(self, items, gate: threading.Event | None = None):
        self.items = list(items)
        self.gate = gate
        self.closed = False

    def frames(self, stop):
        for k, it in enumerate(self.items):
            if stop.is_set():
                return
            yield it
            if k == 0 and self.gate is not None:
                self.gate.wait(10)

    def describe(self):
        return "memory"

    def close(self):
        self.closed = True


class Collect(Sink):
    name = "collect"

    def __init__(self, latest_only=False, delay=0.0):
        self.latest_only = latest_only
        self.records: list[FrameRecord] = []
        self.alerts: list[Alert] = []
        self.delay = delay
        self.opened = self.closed = False

    def open(self, session):
        self.opened = True

    def frame_done(self, record):
        time.sleep(self.delay)
        self.records.append(record)

    def alert(self, alert):
        self.alerts.append(alert)

    def close(self):
        self.closed = True


class Broken(Sink):
    name = "broken"

    def frame_done(self, record):
        raise RuntimeError("sink bug")


def session(tmp_path):
    return Session(tmp_path, "", "", t_start=time.time())


def test_every_frame_terminal_in_seq_order_with_timings(tmp_path):
    led = Ledger(tmp_path)
    col = Collect()
    bad = FrameRecord(-1, "mem/bad", "quarantined", time.time(), reason="unreadable")
    items = [make_frame(0), make_frame(1), bad, make_frame(3)]
    p = Pipeline(ListSource(items), make_segmenter("classical"), [led, Broken(), col],
                 session=session(tmp_path))
    p.run()
    assert [r.seq for r in col.records] == [0, 1, 2, 3]
    assert [r.status for r in col.records] == ["ok", "ok", "quarantined", "ok"]
    assert col.opened and col.closed
    res = col.records[0].result
    assert res.labels is not None and res.labels.shape == (128, 128)
    assert set(res.timings_ms) >= {"read", "prepare", "segment", "measure", "rules", "total"}
    assert res.summary.count == len(res.particles["label"]) > 0
    st = p.stats
    assert (st.frames_in, st.processed, st.quarantined, st.skipped) == (4, 3, 1, 0)
    con = connect_readonly(tmp_path)
    rows = con.execute("SELECT seq, status FROM frames ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [(0, "ok"), (1, "ok"), (2, "quarantined"), (3, "ok")]
    n_particles = con.execute("SELECT COUNT(*) FROM particles").fetchone()[0]
    assert n_particles == sum(r.result.summary.count for r in col.records if r.result)


def test_restart_continues_seq_and_override_calibration(tmp_path):
    Pipeline(ListSource([make_frame(0)]), make_segmenter("classical"), [Ledger(tmp_path)],
             session=session(tmp_path)).run()
    col = Collect()
    p = Pipeline(ListSource([make_frame(1, Calibration.none())]), make_segmenter("classical"),
                 [Ledger(tmp_path), col], session=session(tmp_path), pixel_size_nm=0.25)
    p.run()
    rec = col.records[0]
    assert rec.seq == 1
    assert rec.result.calibration.source == "override"
    assert rec.result.calibration.nm_per_px == (0.25, 0.25)
    con = connect_readonly(tmp_path)
    assert con.execute("SELECT calibration_source FROM frames WHERE seq=1").fetchone()[0] == "override"


class GatedSegmenter:
    """The classical segmenter, but the first call waits until released."""

    def __init__(self):
        self.inner = make_segmenter("classical")
        self.name = "gated-classical"
        self.entered = threading.Event()
        self.release = threading.Event()

    def segment(self, prepared):
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(10)
        return self.inner.segment(prepared)


def test_policy_latest_skips_and_records(tmp_path):
    seg = GatedSegmenter()
    items = [make_frame(i) for i in range(8)]
    col = Collect()
    p = Pipeline(ListSource(items, gate=seg.entered), seg, [Ledger(tmp_path), col],
                 session=session(tmp_path), policy="latest", queue_size=2, workers=1)
    p.start()
    # wait until the reader has pushed everything (source exhausted) then release the worker
    deadline = time.time() + 30
    while p.stats.frames_in < 8 and time.time() < deadline:
        time.sleep(0.02)
    seg.release.set()
    p.join(60)
    st = p.stats
    assert st.frames_in == 8
    assert st.skipped == 8 - 1 - 2  # first one in the worker, two newest wait in the queue
    assert st.processed == 3
    assert sorted(r.seq for r in col.records) == list(range(8))
    skipped = [r for r in col.records if r.status == "skipped"]
    assert all("latest" in r.reason for r in skipped)
    con = connect_readonly(tmp_path)
    assert con.execute("SELECT COUNT(*) FROM frames WHERE status='skipped'").fetchone()[0] == 5


def test_latest_only_sink_gets_newest_and_slow_sink_does_not_lose(tmp_path):
    slow = Collect(delay=0.05)
    newest = Collect(latest_only=True, delay=0.2)
    items = [make_frame(i) for i in range(6)]
    p = Pipeline(ListSource(items), make_segmenter("classical"), [slow, newest],
                 session=session(tmp_path))
    p.run()
    assert [r.seq for r in slow.records] == list(range(6))
    assert newest.records and newest.records[-1].seq == 5
    assert len(newest.records) <= 6


class FailingSegmenter:
    name = "failing"

    def segment(self, prepared):
        raise ValueError("model exploded")


def test_processing_failure_quarantines_frame(tmp_path):
    col = Collect()
    p = Pipeline(ListSource([make_frame(0)]), FailingSegmenter(), [Ledger(tmp_path), col],
                 session=session(tmp_path))
    p.run()
    assert col.records[0].status == "quarantined"
    assert "model exploded" in col.records[0].reason


class CountRule:
    def evaluate(self, result):
        if result.summary.count > 0:
            return [Alert("has particles", "info", result.seq, f"{result.summary.count} particles")]
        return []


class Dog:
    def __init__(self):
        self.frames = 0

    def on_frame(self, record, now):
        self.frames += 1
        return []

    def tick(self, now, stats, **kw):
        return [Alert("tick", "info", None, "tick", builtin=True)] if stats.processed else []


def test_rules_and_watchdog_alerts_reach_ledger(tmp_path):
    col = Collect()
    dog = Dog()
    gate = threading.Event()
    src = ListSource([make_frame(0), make_frame(1)], gate=gate)
    p = Pipeline(src, make_segmenter("classical"), [Ledger(tmp_path), col],
                 session=session(tmp_path), rules=CountRule(), watchdog=dog)
    p.start()
    # hold the source open until a watchdog tick has fired (tick runs once a second)
    deadline = time.time() + 20
    while not any(a.rule == "tick" for a in col.alerts) and time.time() < deadline:
        time.sleep(0.05)
    gate.set()
    p.join(30)
    assert dog.frames == 2
    assert [a.seq for a in col.alerts if a.rule == "has particles"] == [0, 1]
    con = connect_readonly(tmp_path)
    # (unrelated test images are each a "moved" field: that built-in alert is not the subject)
    names = [r[0] for r in con.execute("SELECT name FROM alerts WHERE seq IS NOT NULL AND "
                                       "name != 'field moved' ORDER BY seq")]
    assert names == ["has particles", "has particles"]
    assert con.execute("SELECT COUNT(*) FROM alerts WHERE name='tick'").fetchone()[0] >= 1


def test_wait_idle_returns_when_nothing_in_flight(tmp_path):
    gate = threading.Event()
    p = Pipeline(ListSource([make_frame(0), make_frame(1)], gate=gate), make_segmenter("classical"),
                 [Ledger(tmp_path)], session=session(tmp_path))
    p.start()
    assert p.wait_idle(0.3) is True  # first frame done, source waiting on the gate
    assert p.stats.processed == 1
    gate.set()
    p.join(30)
    assert p.wait_idle(0.3) is False  # finished


class JitterSegmenter:
    """Classical, with a random delay so parallel workers finish out of order."""

    def __init__(self):
        self.inner = make_segmenter("classical")
        self.name = "jitter-classical"
        self.rng = np.random.default_rng(0)
        self.lock = threading.Lock()

    def segment(self, prepared):
        with self.lock:
            delay = float(self.rng.uniform(0, 0.05))
        time.sleep(delay)
        return self.inner.segment(prepared)


class OrderRule:
    """Stateful like the real rule engine: it must see frames in seq order."""

    def __init__(self):
        self.seen = []

    def evaluate(self, result):
        self.seen.append(result.seq)
        return [Alert("every frame", "info", result.seq, "seen")]


def test_parallel_workers_deliver_in_seq_order(tmp_path):
    rule = OrderRule()
    col = Collect()
    items = [make_frame(i) for i in range(12)]
    items.insert(5, FrameRecord(-1, "mem/bad", "quarantined", time.time(), reason="unreadable"))
    p = Pipeline(ListSource(items), JitterSegmenter(), [Ledger(tmp_path), col],
                 session=session(tmp_path), rules=rule, workers=3, queue_size=4)
    p.run()
    assert [r.seq for r in col.records] == list(range(13))
    assert rule.seen == [s for s in range(13) if s != 5]
    assert [a.seq for a in col.alerts if a.rule != "field moved"] == rule.seen
    assert p.stats.processed == 12 and p.stats.quarantined == 1


class CountingSegmenter:
    """Not declared thread-safe: the pipeline must never call it from two workers at once."""

    name = "counting"

    def __init__(self):
        self.inner = make_segmenter("classical")
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def segment(self, prepared):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.02)
        try:
            return self.inner.segment(prepared)
        finally:
            with self.lock:
                self.active -= 1


def test_segmenter_not_thread_safe_is_serialised(tmp_path):
    seg = CountingSegmenter()
    col = Collect()
    p = Pipeline(ListSource([make_frame(i) for i in range(8)]), seg, [col],
                 session=session(tmp_path), workers=3, queue_size=4)
    p.run()
    assert [r.status for r in col.records] == ["ok"] * 8
    assert seg.max_active == 1
    assert col.records[0].result.backend == "counting"


class CollapsingSegmenter:
    """Classical segmentation with a confidence, except frame 5, which it gets badly wrong."""

    name = "collapsing"

    def __init__(self):
        from emstream.process.classical import ClassicalSegmenter

        self.inner = ClassicalSegmenter()
        self.calls = 0

    def segment_with_info(self, prepared):
        k = self.calls
        self.calls += 1
        labels = self.inner.segment(prepared)
        if k == 5:
            return np.zeros_like(labels), {"confidence": 0.31, "scale": 1.0, "view": "plain"}
        view = "local background" if k == 3 else "plain"  # a second look kept on frame 3
        return labels, {"confidence": 0.95, "scale": 1.0, "view": view}

    def segment(self, prepared):
        return self.segment_with_info(prepared)[0]


def test_a_collapsed_low_confidence_frame_is_flagged_alerted_and_recorded(tmp_path):
    col = Collect()
    frames = [Frame(disks_image(i, n=30, size=256), f"mem/{i}", t_acq=time.time(),
                    t_arrival=time.time(), calibration=Calibration((0.5, 0.5), "file", "t"))
              for i in range(8)]
    p = Pipeline(ListSource(frames), CollapsingSegmenter(), [Ledger(tmp_path), col],
                 session=session(tmp_path))
    p.run()
    flagged = [r.seq for r in col.records if r.result.seg_flag]
    assert flagged == [5]
    assert [(a.rule, a.seq) for a in col.alerts if a.rule != "field moved"] == [
        ("segmentation doubtful", 5)]
    assert p.stats.flagged == 1 and "frame 5" in p.stats.last_flag
    con = connect_readonly(tmp_path)
    rows = {r["seq"]: dict(r) for r in con.execute("SELECT * FROM frames")}
    assert rows[5]["count"] == 0 and rows[5]["confidence"] == 0.31
    assert "low confidence 0.31" in rows[5]["seg_flag"] and "count collapsed" in rows[5]["seg_flag"]
    assert rows[4]["seg_flag"] is None and rows[4]["confidence"] == 0.95
    assert con.execute("SELECT builtin FROM alerts WHERE seq=5").fetchone()[0] == 1
    assert rows[3]["seg_view"] == "local background" and rows[4]["seg_view"] == "plain"


def test_tiny_and_failing_frames_are_quarantined_in_one_line(tmp_path, caplog):
    """No traceback for bad input: the file and the reason (issue 21 items 10, 12)."""
    import logging

    now = time.time()
    tiny = [Frame(np.ones(s, np.uint16), f"mem/tiny{s}", now, now) for s in ((1, 1), (2, 2), (3, 7))]
    col = Collect()
    caplog.set_level(logging.INFO)
    p = Pipeline(ListSource([*tiny, make_frame(3)]), FailingSegmenter(), [col],
                 session=Session(tmp_path, "", ""), tracking=False)
    p.run()
    recs = sorted(col.records, key=lambda r: r.seq)
    assert [r.status for r in recs] == ["quarantined"] * 4
    assert "too small" in recs[0].reason and "1x1" in recs[0].reason
    assert recs[3].reason.startswith("processing failed: ")
    assert "Traceback" not in caplog.text
