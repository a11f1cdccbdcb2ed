"""CSV and Parquet exports of a session, read from its ledger (``emstream report SESSION``).

Written to ``SESSION/exports/``, each file atomically (temp file in the same folder, then
``os.replace``), so a reader never sees half a file and a crash leaves the previous export:

``particles.csv`` / ``particles.parquet``
    one row per particle of every processed frame: ``seq``, ``unit`` (nm or px: the unit of the
    frame's ``*_nm`` columns), ``t_acq``, ``source``, ``state`` (the frame's state: filter on it
    to keep the trusted frames, as the report does), then every column of
    :data:`emstream.results.PARTICLE_COLUMNS`. With ``imagej=True`` the CSV follows ImageJ's
    *Analyze Particles* results table instead: a leading blank-named row number column, the
    ImageJ names (``Area``, ``Feret``, ``MinFeret``, ``AR``, ``Round``, ``Circ.``, ``Solidity`` ...
    from :data:`emstream.results.IMAGEJ_HEADERS`) and ``Slice`` = frame ``seq``.
    A ``track_id`` column (the particle's track) follows, on sessions that were tracked.
``trajectories.csv`` / ``trajectories.parquet``
    the tracked particles as trackpy users expect them (``trackpy.link`` output): ``frame``
    (= ``seq``), ``particle`` (= ``track_id``), ``x``, ``y`` (image px), ``size`` (equivalent
    diameter in ``unit``), ``unit``, ``t_acq``, and ``x_sample`` / ``y_sample``: the position
    with the stage drift taken out (px), which is what was linked.
``tracks.csv`` / ``tracks.parquet``, ``events.csv`` / ``events.parquet``
    the ``tracks`` table (one row per track) and the ``events`` table (tracking events, gaps,
    restarts...).
``frames.csv`` / ``frames.parquet``
    the ledger's ``frames`` table (every frame, its terminal status and reason, summary, timings,
    drift).
``alerts.csv`` / ``alerts.parquet``
    the ``alerts`` table.

The ledger is opened read-only, so exporting a live session is safe.
"""

from __future__ import annotations

import csv
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from emstream.results import IMAGEJ_HEADERS, PARTICLE_COLUMNS
from emstream.sinks.base import replace_atomically

__all__ = ["EXPORT_DIR", "connect_ledger_readonly", "export_session"]

EXPORT_DIR = "exports"
LEDGER = "ledger.sqlite"
_BATCH = 50_000

_ARROW = {"int32": pa.int32(), "float64": pa.float64(), "bool": pa.bool_()}


def connect_ledger_readonly(session_dir: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection to ``SESSION/ledger.sqlite`` (raises FileNotFoundError if absent)."""
    path = Path(session_dir) / LEDGER
    if not path.is_file():
        raise FileNotFoundError(f"no ledger in {session_dir}: {path} does not exist")
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    con.row_factory = sqlite3.Row
    return con


class _AtomicFile:
    """A temp file beside ``path`` that replaces it on success and vanishes on failure."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            replace_atomically(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _table_columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return v


def _write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[Any]]) -> Path:
    with _AtomicFile(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for row in rows:
                w.writerow([_cell(v) for v in row])
    return path


def _write_parquet(
    path: Path, names: Sequence[str], types: Sequence[pa.DataType], cursor: sqlite3.Cursor
) -> Path:
    schema = pa.schema([pa.field(n, t) for n, t in zip(names, types, strict=True)])
    with _AtomicFile(path) as tmp:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer:
            wrote = False
            while True:
                rows = cursor.fetchmany(_BATCH)
                if not rows and wrote:
                    break
                cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
                arrays = []
                for col, t in zip(cols, types, strict=True):
                    vals = list(col)
                    if t == pa.bool_():
                        vals = [None if v is None else bool(v) for v in vals]
                    arrays.append(pa.array(vals, type=t))
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                wrote = True
                if not rows:
                    break
    return path


def _sql_type(con: sqlite3.Connection, table: str) -> dict[str, pa.DataType]:
    out: dict[str, pa.DataType] = {}
    for r in con.execute(f"PRAGMA table_info({table})"):
        decl = (r[2] or "").upper()
        out[r[1]] = pa.int64() if "INT" in decl else pa.float64() if "REAL" in decl else pa.string()
    return out


def _particles_query(tracked: bool = False) -> tuple[str, list[str], list[pa.DataType]]:
    names = ["seq", "unit", "t_acq", "source", "state", *PARTICLE_COLUMNS]
    types = [pa.int64(), pa.string(), pa.float64(), pa.string(), pa.string()] + [
        _ARROW[dt] for dt, _ in PARTICLE_COLUMNS.values()
    ]
    cols = ", ".join(f"p.{c}" for c in PARTICLE_COLUMNS)
    if tracked:
        names.append("track_id")
        types.append(pa.int64())
        cols += ", p.track_id"
    sql = (
        f"SELECT p.seq, f.unit, f.t_acq, f.source, f.state, {cols} FROM particles p "
        "LEFT JOIN frames f ON f.seq = p.seq ORDER BY p.seq, p.label"
    )
    return sql, names, types


_TRAJECTORY_NAMES = ["frame", "particle", "y", "x", "size", "unit", "t_acq", "y_sample", "x_sample"]
_TRAJECTORY_TYPES = [pa.int64(), pa.int64(), pa.float64(), pa.float64(), pa.float64(),
                     pa.string(), pa.float64(), pa.float64(), pa.float64()]
_TRAJECTORY_SQL = (
    "SELECT p.seq, p.track_id, p.centroid_y_px, p.centroid_x_px, p.equivalent_diameter_nm, "
    "f.unit, f.t_acq, p.centroid_y_px - COALESCE(f.drift_y_px, 0), "
    "p.centroid_x_px - COALESCE(f.drift_x_px, 0) FROM particles p JOIN frames f ON f.seq = p.seq "
    "WHERE p.track_id IS NOT NULL ORDER BY p.seq, p.track_id"
)


def export_session(session_dir: str | os.PathLike[str], *, imagej: bool = False) -> list[Path]:
    """Write the session's CSV and Parquet exports; returns the files written.

    Parameters
    ----------
    session_dir : the session folder (with ``ledger.sqlite``).
    imagej : write ``particles.csv`` with ImageJ *Analyze Particles* column headers.
    """
    session_dir = Path(session_dir)
    out = session_dir / EXPORT_DIR
    written: list[Path] = []
    with closing(connect_ledger_readonly(session_dir)) as con:
        # particles
        tracked = "track_id" in _table_columns(con, "particles")
        sql, names, types = _particles_query(tracked)
        if imagej:
            header = [" ", "Slice", "Unit", *[IMAGEJ_HEADERS.get(c, c) for c in PARTICLE_COLUMNS]]

            def ij_rows() -> Iterator[list[Any]]:
                for i, r in enumerate(con.execute(sql), start=1):
                    yield [i, r[0], r[1], *list(r)[5:]]

            written.append(_write_csv(out / "particles.csv", header, ij_rows()))
        else:
            written.append(
                _write_csv(out / "particles.csv", names, (tuple(r) for r in con.execute(sql)))
            )
        written.append(_write_parquet(out / "particles.parquet", names, types, con.execute(sql)))

        if tracked:
            written.append(_write_csv(out / "trajectories.csv", _TRAJECTORY_NAMES,
                                      (tuple(r) for r in con.execute(_TRAJECTORY_SQL))))
            written.append(_write_parquet(out / "trajectories.parquet", _TRAJECTORY_NAMES,
                                          _TRAJECTORY_TYPES, con.execute(_TRAJECTORY_SQL)))

        # the other ledger tables as they are
        for table, order in (("frames", "seq"), ("alerts", "id"), ("tracks", "track_id"),
                             ("events", "id")):
            cols = _table_columns(con, table)
            if not cols:  # a ledger from before the table existed
                continue
            typemap = _sql_type(con, table)
            q = f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}"
            written.append(
                _write_csv(out / f"{table}.csv", cols, (tuple(r) for r in con.execute(q)))
            )
            written.append(
                _write_parquet(
                    out / f"{table}.parquet", cols, [typemap[c] for c in cols], con.execute(q)
                )
            )
    return written
