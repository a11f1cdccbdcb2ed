"""The session ledger: WAL, one terminal status per frame, exactly-once bookkeeping, restart."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from emstream.frame import Calibration, Frame
from emstream.results import PARTICLE_COLUMNS, Alert, Event, FrameResult, FrameSummary
from emstream.sinks.base import Session
from emstream.sinks.ledger import Ledger, connect_readonly
from emstream.sources.base import TrackedRecord


def _particles(n: int) -> dict[str, np.ndarray]:
    t = {}
    for name, (dt, _) in PARTICLE_COLUMNS.items():
        t[name] = np.arange(1, n + 1).astype(dt) if name == "label" else np.linspace(1, 2, n).astype(dt)
    t["equivalent_diameter_nm"][0:1] = np.nan  # NaN must be stored as NULL, not crash
    return t


def _ok(seq: int, source: str, version: str | None, n: int = 3) -> TrackedRecord:
    frame = Frame(np.zeros((8, 9), np.uint16), source, t_acq=100.0 + seq, t_arrival=101.0 + seq,
                  calibration=Calibration((0.5, 0.5), "file", "test tag"), seq=seq)
    res = FrameResult(frame, _particles(n), FrameSummary(n, 0.1, "nm", d50=3.0), "classical",
                      timings_ms={"prepare": 1.0, "total": 2.0})
    return TrackedRecord(seq, source, "ok", frame.t_arrival, result=res, t_acq=frame.t_acq,
                         calibration=frame.calibration, file_version=version)


def _session(tmp_path):
    return Session(tmp_path, "folder x", "classical", config={"a": 1}, versions={"v": "1"},
                   t_start=time.time())


def test_wal_mode_and_rows(tmp_path):
    led = Ledger(tmp_path)
    led.open(_session(tmp_path))
    assert led.journal_mode == "wal"
    led.file_pending("/d/a.tif", "10:1")
    led.file_expect("/d/a.tif", "10:1", 1)
    led.frame_done(_ok(0, "/d/a.tif", "10:1", n=4))
    led.frame_done(TrackedRecord(1, "/d/bad.tif", "quarantined", time.time(), reason="truncated",
                                 file_version="5:2"))
    led.alert(Alert("large", "warning", 0, "two large particles", particle_labels=[1, 2]))
    led.event(Event("gap", "3 missing"))
    led.close()

    con = connect_readonly(tmp_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = {r["source"]: dict(r) for r in con.execute("SELECT * FROM frames")}
    assert rows["/d/a.tif"]["status"] == "ok" and rows["/d/a.tif"]["count"] == 4
    assert rows["/d/a.tif"]["nm_per_px_x"] == 0.5 and rows["/d/a.tif"]["calibration_source"] == "file"
    assert rows["/d/bad.tif"]["status"] == "quarantined" and rows["/d/bad.tif"]["reason"] == "truncated"
    parts = con.execute("SELECT * FROM particles WHERE seq=0 ORDER BY label").fetchall()
    assert len(parts) == 4 and parts[0]["equivalent_diameter_nm"] is None
    assert con.execute("SELECT status FROM files WHERE path='/d/a.tif'").fetchone()[0] == "done"
    a = con.execute("SELECT seq, name FROM alerts").fetchone()
    assert tuple(a) == (0, "large")
    assert con.execute("SELECT COUNT(*) FROM events WHERE kind='gap'").fetchone()[0] == 1


def test_one_terminal_status_per_frame_and_no_duplicate(tmp_path):
    led = Ledger(tmp_path)
    led.frame_done(_ok(0, "/d/a.tif", "10:1"))
    led.frame_done(_ok(1, "/d/a.tif", "10:1"))  # same file version again: refused
    led.frame_done(_ok(2, "/d/a.tif", "11:2"))  # new content version: a new frame
    led.close()
    con = connect_readonly(tmp_path)
    assert con.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 2
    with pytest.raises(sqlite3.IntegrityError):
        c2 = sqlite3.connect(tmp_path / "ledger.sqlite")
        c2.execute("INSERT INTO frames (seq, source, status) VALUES (5, 'x', 'done')")


def test_restart_resumes_seq_and_bookkeeping(tmp_path):
    led = Ledger(tmp_path)
    led.file_pending("/d/s.mrc", "100:1")
    led.file_expect("/d/s.mrc", "100:1", 3)
    for k in range(2):
        led.frame_done(_ok(k, f"/d/s.mrc#{k}", "100:1"))
    led.close()  # "crash" with the stack half recorded
    led = Ledger(tmp_path)
    assert led.next_seq() == 2
    assert led.next_slice("/d/s.mrc") == 2
    assert led.file_state("/d/s.mrc", "100:1") == ("pending", 2)
    assert "/d/s.mrc" not in led.terminal_versions()
    # the stack grew: the new version supersedes the old pending one
    led.file_pending("/d/s.mrc", "150:2")
    assert led.file_state("/d/s.mrc", "100:1")[0] == "done"
    led.file_expect("/d/s.mrc", "150:2", 3)
    led.frame_done(_ok(2, "/d/s.mrc#2", "150:2"))
    assert led.file_state("/d/s.mrc", "150:2") == ("done", 3)
    assert led.counts() == {"ok": 3, "quarantined": 0, "skipped": 0}
    led.close()


def test_concurrent_reader_sees_committed_rows(tmp_path):
    led = Ledger(tmp_path, batch=1000, flush_s=1000)
    stop = threading.Event()
    seen: list[int] = []

    def reader():
        while not stop.is_set():
            con = connect_readonly(tmp_path)
            seen.append(con.execute("SELECT COUNT(*) FROM frames").fetchone()[0])
            con.close()
            time.sleep(0.01)

    t = threading.Thread(target=reader)
    t.start()
    for k in range(50):
        led.frame_done(_ok(k, f"/d/f{k}.tif", "1:1", n=1))
    led.flush()
    time.sleep(0.1)
    stop.set()
    t.join()
    led.close()
    assert seen and max(seen) == 50
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))  # only committed batches appear


def test_stack_version_with_nothing_new_is_done(tmp_path):
    """A stack version holding only slices already recorded (found after a restart) closes at once."""
    led = Ledger(tmp_path)
    led.file_pending("/d/s.mrc", "100:1")
    led.file_expect("/d/s.mrc", "100:1", 2, stack=True)
    for k in range(2):
        led.frame_done(_ok(k, f"/d/s.mrc#{k}", "100:1"))
    led.close()
    led = Ledger(tmp_path)
    led.file_pending("/d/s.mrc", "100:2")  # the header rewritten: same two slices
    led.file_expect("/d/s.mrc", "100:2", 2, stack=True)
    assert led.file_state("/d/s.mrc", "100:2")[0] == "done"
    # a plain multi-frame file's new version does not count the old version's frames
    led.file_pending("/d/m.tif", "5:1")
    led.frame_done(_ok(2, "/d/m.tif", "5:1"))
    led.file_pending("/d/m.tif", "6:2")
    led.file_expect("/d/m.tif", "6:2", 1)
    assert led.file_state("/d/m.tif", "6:2")[0] == "pending"
    led.close()


def test_stack_slice_in_flight_completes_the_newer_version(tmp_path):
    """Slices read from one version but recorded after the stack changed finish the new version."""
    led = Ledger(tmp_path)
    led.file_pending("/d/s.mrc", "100:1")
    led.file_expect("/d/s.mrc", "100:1", 2, stack=True)
    led.file_pending("/d/s.mrc", "100:2")  # touched while both slices were still in the pipeline
    led.file_expect("/d/s.mrc", "100:2", 2, stack=True)
    assert led.file_state("/d/s.mrc", "100:2")[0] == "pending"
    led.frame_done(_ok(0, "/d/s.mrc#0", "100:1"))
    assert led.file_state("/d/s.mrc", "100:2")[0] == "pending"
    led.frame_done(_ok(1, "/d/s.mrc#1", "100:1"))
    assert led.file_state("/d/s.mrc", "100:2")[0] == "done"
    assert "/d/s.mrc" in led.terminal_versions()
    led.close()


def test_segmentation_confidence_scale_and_flag_are_recorded(tmp_path):
    led = Ledger(tmp_path)
    led.open(_session(tmp_path))
    rec = _ok(0, "/d/a.tif", "10:1")
    rec.result.confidence, rec.result.seg_scale = 0.42, 0.5
    rec.result.seg_flag = "low confidence 0.42 < 0.70"
    led.frame_done(rec)
    led.frame_done(_ok(1, "/d/b.tif", "10:1"))  # classical: no confidence, no flag
    led.close()
    con = connect_readonly(tmp_path)
    rows = {r["seq"]: dict(r) for r in con.execute("SELECT * FROM frames")}
    assert rows[0]["confidence"] == 0.42 and rows[0]["seg_scale"] == 0.5
    assert rows[0]["seg_flag"].startswith("low confidence")
    assert rows[1]["confidence"] is None and rows[1]["seg_flag"] is None


def test_a_ledger_from_before_the_confidence_columns_is_upgraded_on_resume(tmp_path):
    # schema version 1 had no confidence / seg_scale / seg_flag: resuming such a session adds them
    from emstream.sinks.ledger import LEDGER_NAME
    from emstream.sinks.schema import SCHEMA

    old = SCHEMA.replace("  confidence REAL,", "").replace("  seg_scale REAL,", "")
    old = "\n".join(line for line in old.splitlines() if "seg_flag" not in line)
    con = sqlite3.connect(tmp_path / LEDGER_NAME)
    con.executescript(old)
    con.execute("INSERT INTO frames (seq, source, status) VALUES (0, 'old.tif', 'ok')")
    con.commit()
    con.close()
    led = Ledger(tmp_path)
    led.open(_session(tmp_path))
    rec = _ok(1, "/d/new.tif", "1:1")
    rec.result.confidence = 0.9
    led.frame_done(rec)
    led.close()
    con = connect_readonly(tmp_path)
    rows = {r["seq"]: dict(r) for r in con.execute("SELECT * FROM frames")}
    assert rows[0]["source"] == "old.tif" and rows[0]["confidence"] is None
    assert rows[1]["confidence"] == 0.9


def test_recorded_sources_is_an_index_lookup(tmp_path):
    """The per-file lookup must not scan the frames table (cost would grow with the session)."""
    led = Ledger(tmp_path)
    con = led._con
    plan = " ".join(str(r[-1]) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT source, file_version FROM frames WHERE source = ? "
        "UNION ALL SELECT source, file_version FROM frames WHERE source >= ? AND source < ?",
        ("a", "a#", "a$")))
    assert "SCAN frames" not in plan and "USING" in plan, plan
    # and it finds a file and its slices, not its neighbours
    rows = [(0, "/d/a.mrc", "v1"), (1, "/d/a.mrc#0", "v1"), (2, "/d/a.mrc#1", "v2"),
            (3, "/d/a.mrc2", "v1"), (4, "/d/a.mrc#", None), (5, "/d/b_%.tif", "v1")]
    con.executemany("INSERT INTO frames (seq, source, status, file_version) VALUES (?, ?, 'ok', ?)",
                    rows)
    got = led.recorded_sources("/d/a.mrc")
    assert got == {"/d/a.mrc": {"v1"}, "/d/a.mrc#0": {"v1"}, "/d/a.mrc#1": {"v2"},
                   "/d/a.mrc#": {None}}
    assert led.recorded_sources("/d/b_%.tif") == {"/d/b_%.tif": {"v1"}}
    assert led.recorded_sources("/d/b_x.tif") == {}
    led.close()
