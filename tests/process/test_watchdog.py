"""Built-in alerts: stall, falling behind, calibration missing/changed, disk nearly full."""

from __future__ import annotations

from emstream.frame import Calibration
from emstream.process.watchdog import Watchdog
from emstream.results import FrameRecord
from tests.process.test_rules_helpers import result


def ok(seq: int, nm: float | None = 0.5) -> FrameRecord:
    r = result(seq, nm_per_px=nm)
    return FrameRecord(
        seq, r.frame.source_id, "ok", float(seq), result=r, calibration=r.calibration
    )


def test_stall_fires_once_per_pause_and_rearms_on_next_frame():
    w = Watchdog(stall_s=10)
    assert w.tick(0.0) == []
    assert w.on_frame(ok(0), 1.0) == []
    assert w.tick(10.9) == []
    (a,) = w.tick(11.0)
    assert a.rule == "stall" and a.builtin and a.seq is None and "last frame 0" in a.message
    assert w.tick(50.0) == []  # one alert per stall
    w.on_frame(ok(1), 51.0)
    assert w.tick(60.0) == []
    assert [x.rule for x in w.tick(61.5)] == ["stall"]


def test_stall_before_the_first_frame():
    w = Watchdog(stall_s=5)
    assert w.tick(100.0) == []
    (a,) = w.tick(105.0)
    assert "since the session started" in a.message


def test_stall_disabled():
    w = Watchdog(stall_s=None)
    w.tick(0)
    assert w.tick(1e6) == []


def test_falling_behind_needs_sustained_lag_and_rearms_after_catching_up():
    w = Watchdog(stall_s=None, behind_s=2.0, behind_queue=10, behind_for_s=3.0)
    assert w.tick(0, {"lag_s": 5.0, "queue_depth": 0}) == []
    assert w.tick(2.9, {"lag_s": 5.0, "queue_depth": 0}) == []
    (a,) = w.tick(3.0, {"lag_s": 5.0, "queue_depth": 0})
    assert a.rule == "falling behind" and "lag 5.0 s" in a.message
    assert w.tick(4.0, {"lag_s": 9.0, "queue_depth": 50}) == []
    # a brief dip does not count as catching up
    assert w.tick(5.0, {"lag_s": 0.1, "queue_depth": 0}) == []
    assert w.tick(6.0, {"lag_s": 9.0, "queue_depth": 0}) == []
    assert w.tick(7.0, {"lag_s": 0.1, "queue_depth": 0}) == []
    assert w.tick(10.0, {"lag_s": 0.1, "queue_depth": 0}) == []  # caught up for 3 s: re-armed

    class Stats:
        lag_s = 0.0
        queue_depth = 11

    assert w.tick(11.0, Stats()) == []
    (b,) = w.tick(14.0, Stats())
    assert "queue depth 11 > 10" in b.message


def test_calibration_missing_and_changed():
    w = Watchdog(stall_s=None)
    assert w.on_frame(ok(0, 0.5), 0) == []
    assert w.on_frame(ok(1, 0.5002), 1) == []  # within tolerance
    (a,) = w.on_frame(ok(2, 0.25), 2)
    assert a.rule == "calibration changed" and a.seq == 2 and "0.5 -> 0.25" in a.message
    (b,) = w.on_frame(ok(3, None), 3)
    assert b.rule == "calibration missing" and b.seq == 3
    assert w.on_frame(ok(4, None), 4) == []  # once
    assert w.on_frame(ok(5, 0.25), 5) == []
    assert [x.rule for x in w.on_frame(ok(6, None), 6)] == ["calibration missing"]


def test_quarantined_records_keep_the_stall_away_but_are_not_calibration_checked():
    w = Watchdog(stall_s=5)
    w.tick(0)
    rec = FrameRecord(
        0, "bad.tif", "quarantined", 0.0, reason="truncated", calibration=Calibration.none()
    )
    assert w.on_frame(rec, 4.0) == []
    assert w.tick(8.0) == []


def test_disk_nearly_full_from_a_value_passed_in():
    gib = 1024**3
    w = Watchdog(stall_s=None, disk_low_bytes=2 * gib, disk_low_fraction=0.05)
    assert w.tick(0, disk_free_bytes=10 * gib, disk_total_bytes=100 * gib) == []
    (a,) = w.tick(1, disk_free_bytes=4 * gib, disk_total_bytes=100 * gib)  # 4 % < 5 %
    assert (
        a.rule == "disk nearly full" and a.severity == "critical" and "4.00 GiB free" in a.message
    )
    assert w.tick(2, disk_free_bytes=3 * gib, disk_total_bytes=100 * gib) == []
    assert w.tick(3, disk_free_bytes=8 * gib, disk_total_bytes=100 * gib) == []  # re-armed (>1.5×)
    assert len(w.tick(4, {"disk_free_bytes": gib})) == 1
