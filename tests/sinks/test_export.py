"""export_session: CSV (+ ImageJ headers) and Parquet from the ledger, atomically."""

from __future__ import annotations

import csv
import sqlite3

import pyarrow.parquet as pq
import pytest

from emstream.results import IMAGEJ_HEADERS, PARTICLE_COLUMNS
from emstream.sinks.export import export_session
from tests.sinks.test_report_helpers import build_session


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    d = tmp_path_factory.mktemp("session")
    build_session(d, n_frames=14, target_from=8, shape=(160, 160))
    return d


def _ledger_counts(d):
    con = sqlite3.connect(d / "ledger.sqlite")
    try:
        return {
            t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("particles", "frames", "alerts")
        }
    finally:
        con.close()


def test_exports_match_the_ledger(session):
    files = export_session(session)
    names = sorted(p.name for p in files)
    assert names == sorted(
        [
            "particles.csv",
            "particles.parquet",
            "frames.csv",
            "frames.parquet",
            "alerts.csv",
            "alerts.parquet",
            "trajectories.csv",
            "trajectories.parquet",
            "tracks.csv",
            "tracks.parquet",
            "events.csv",
            "events.parquet",
        ]
    )
    counts = _ledger_counts(session)
    assert counts["particles"] > 100 and counts["alerts"] >= 1
    for table in ("particles", "frames", "alerts"):
        with open(session / "exports" / f"{table}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == counts[table]
        t = pq.read_table(session / "exports" / f"{table}.parquet")
        assert t.num_rows == counts[table]
    parts = pq.read_table(session / "exports" / "particles.parquet")
    assert parts.column_names == ["seq", "unit", "t_acq", "source", "state", *PARTICLE_COLUMNS,
                                  "track_id"]
    con = sqlite3.connect(session / "ledger.sqlite")
    want = dict(con.execute("SELECT seq, state FROM frames"))
    con.close()
    assert [want[s] for s in parts.column("seq").to_pylist()] == parts.column("state").to_pylist()
    traj = pq.read_table(session / "exports" / "trajectories.parquet")
    assert traj.column_names[:4] == ["frame", "particle", "y", "x"]  # as trackpy.link gives
    # this session was written without the pipeline's tracker (tests/test_pipeline_tracking.py
    # checks a tracked one): no particle has a track, so no trajectory rows
    assert set(parts.column("track_id").to_pylist()) == {None} and traj.num_rows == 0
    assert set(parts.column("unit").to_pylist()) == {"nm"}
    assert str(parts.schema.field("touches_border").type) == "bool"
    frames = pq.read_table(session / "exports" / "frames.parquet").to_pydict()
    assert sorted(set(frames["status"])) == ["ok", "quarantined"]  # frame 12 is quarantined
    with open(session / "exports" / "particles.csv", newline="") as fh:
        first = next(csv.DictReader(fh))
    assert float(first["equivalent_diameter_nm"]) > 0
    # nothing half-written left behind
    assert not [p for p in (session / "exports").iterdir() if p.name.endswith(".tmp")]


def test_imagej_headers(session):
    export_session(session, imagej=True)
    with open(session / "exports" / "particles.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        row = next(reader)
    assert header[0] == " " and row[0] == "1"
    for ij in ("Area", "Feret", "MinFeret", "AR", "Round", "Circ.", "Solidity", "Slice"):
        assert ij in header
    assert not set(IMAGEJ_HEADERS) & set(header)


def test_failed_export_keeps_the_previous_file(session, monkeypatch):
    export_session(session)
    before = (session / "exports" / "frames.csv").read_bytes()
    import emstream.sinks.export as ex

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex.pq, "ParquetWriter", boom)
    with pytest.raises(RuntimeError):
        export_session(session)
    assert (session / "exports" / "frames.csv").read_bytes() == before
    assert not [p for p in (session / "exports").iterdir() if p.name.endswith(".tmp")]


def test_missing_ledger(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ledger"):
        export_session(tmp_path)


def test_report_and_exports_are_readable_like_the_ledger(session):
    """mkstemp makes 0600 files: others on the PC could not open them (issue 21 item 18)."""
    import os
    import stat

    from emstream.sinks.report import write_report

    files = [*export_session(session), write_report(session)]
    ledger_mode = stat.S_IMODE(os.stat(session / "ledger.sqlite").st_mode)
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == ledger_mode, f
