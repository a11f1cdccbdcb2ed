"""The session ledger: ``SESSION/ledger.sqlite`` (WAL), the record that nothing was lost.

One connection does all writing, guarded by a lock, so the folder source (bookkeeping of the
files it has seen) and the pipeline's ledger-sink thread (frames, particles, alerts, events)
share one writer; other processes may read concurrently thanks to WAL. Writes are batched into
transactions that commit every ``batch`` records or ``flush_s`` seconds, whichever comes first.

Exactly-once: a frame row and the ``files`` row of the file it came from are updated in the same
transaction, so after a crash either both are there or neither is, and a restarted monitor
re-reads exactly what was not recorded (``UNIQUE (source, file_version)`` guards the rest).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from emstream.results import PARTICLE_COLUMNS, Alert, Event, FrameRecord
from emstream.sinks.base import Session, Sink
from emstream.sinks.schema import (
    ADDED_COLUMNS,
    PARTICLE_DB_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    TRACK_COLUMNS,
)

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"

_FRAME_COLS = (
    "seq, source, status, reason, file_version, t_acq, t_arrival, t_done, height, width, "
    "nm_per_px_y, nm_per_px_x, calibration_source, calibration_detail, unit, count, coverage, "
    "mean_diameter, d10, d50, d90, backend, timings_json, confidence, seg_scale, seg_flag, "
    "drift_y_px, drift_x_px, drift_y_nm, drift_x_nm, state, quality_json, seg_view"
)
_TRACK_UPSERT = (
    f"INSERT OR REPLACE INTO tracks ({', '.join(TRACK_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in TRACK_COLUMNS)})"
)
_PARTICLE_INSERT = (
    f"INSERT OR REPLACE INTO particles ({', '.join(PARTICLE_DB_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in PARTICLE_DB_COLUMNS)})"
)


def _num(v: Any) -> float | None:
    """A float for SQLite, ``None`` for NaN/inf (SQLite has no NaN)."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


#: SQLite errors that pass (a lock another process holds, a full disk, an I/O hiccup): retried
_TRANSIENT = ("locked", "busy", "full", "disk i/o", "unable to open", "readonly")


def _transient(exc: sqlite3.OperationalError) -> bool:
    return any(w in str(exc).lower() for w in _TRANSIENT)


def db_text(s: str) -> str:
    """A str SQLite can store and a person can read. File names that are not valid UTF-8
    (written from other systems; Python keeps their odd bytes as lone surrogates) get those
    bytes as ``\\xNN`` escapes: ``a_caf\\xe9.tif``, the same every time, so the exactly-once
    bookkeeping keys stay stable across restarts."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        try:
            return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that did not come from a file name
            return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _clean(params: Any) -> Any:
    if isinstance(params, dict):
        return {k: db_text(v) if isinstance(v, str) else v for k, v in params.items()}
    return tuple(db_text(v) if isinstance(v, str) else v for v in params)


class _TextSafeConnection:
    """The SQLite connection; a str parameter SQLite cannot encode (a file name that is not
    UTF-8 raised ``UnicodeEncodeError`` and stopped the watcher for good) is passed through
    :func:`db_text` and the statement run again. Statements are run as given first: cleaning
    every parameter of every row cost ~2 ms a frame at 1,000 particles for names that are
    almost always fine."""

    def __init__(self, con: sqlite3.Connection):
        self._con = con

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        try:
            return self._con.execute(sql, params)
        except UnicodeEncodeError:  # raised while binding: nothing was executed
            return self._con.execute(sql, _clean(params))

    def executemany(self, sql: str, seq: Any) -> sqlite3.Cursor:
        rows = seq if isinstance(seq, list) else list(seq)
        # rows before a bad one are already written when it fails: undo them, then run clean
        self._con.execute("SAVEPOINT emstream_text")
        try:
            cur = self._con.executemany(sql, rows)
        except UnicodeEncodeError:
            self._con.execute("ROLLBACK TO emstream_text")
            self._con.execute("RELEASE emstream_text")
            return self._con.executemany(sql, [_clean(p) for p in rows])
        self._con.execute("RELEASE emstream_text")
        return cur

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def ledger_path(session_dir: str | Path) -> Path:
    return Path(session_dir) / LEDGER_NAME


def connect_readonly(session_dir: str | Path) -> sqlite3.Connection:
    """A read-only connection to a session's ledger (for reports, views and tests)."""
    p = ledger_path(session_dir).resolve()
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10.0)
    con.row_factory = sqlite3.Row
    return con


class Ledger(Sink):
    """SQLite session record; a :class:`Sink` and the folder source's bookkeeping.

    Parameters
    ----------
    session_dir : folder of the session; ``ledger.sqlite`` is created (or reopened) in it.
    batch : commit after this many frame records.
    flush_s : commit at least this often while records arrive (and on :meth:`flush`).
    """

    name = "ledger"
    latest_only = False

    def __init__(self, session_dir: str | Path, *, batch: int = 32, flush_s: float = 0.5,
                 busy_timeout_s: float = 30.0):
        self.session_dir = Path(session_dir)
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.path = ledger_path(self.session_dir)
        self.batch = int(batch)
        self.flush_s = float(flush_s)
        self._lock = threading.RLock()
        self._con = _TextSafeConnection(sqlite3.connect(
            str(self.path), timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
        ))
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute("PRAGMA foreign_keys=OFF")
        self._con.executescript(SCHEMA)
        self._add_missing_columns()
        self._in_tx = False
        self._tx_log: list[tuple[str, Any, bool]] = []
        self._force_commit = False
        #: why the ledger cannot be written now (locked, disk full), ``None`` when it can
        self.trouble: str | None = None
        self._trouble_since: float | None = None
        self._give_up_at: float | None = None  # set by close(): retry for a while, then stop
        self.max_retry_delay_s = 5.0
        self.close_retry_s = 60.0
        self._uncommitted = 0
        self._last_commit = time.monotonic()
        # (path, version) -> total frames expected from that content version
        self._expected: dict[tuple[str, str], int] = {}
        self._slices_recorded: dict[str, int] = {}  # stack path -> slices recorded (cached)
        self._closed = False
        self.set_fact("schema_version", SCHEMA_VERSION, commit=True)

    def _add_missing_columns(self) -> None:
        """Bring a ledger written by an older emstream up to this schema (resume keeps working)."""
        for table, columns in ADDED_COLUMNS.items():
            have = {r[1] for r in self._con.execute(f"PRAGMA table_info({table})")}
            for name, sql_type in columns:
                if name not in have:
                    self._con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")

    # ---------------------------------------------------------------- transactions
    # Writes are batched into one transaction. Every write statement of the open transaction is
    # kept (``_tx_log``) so that, when SQLite rolls the transaction back by itself (disk full, an
    # I/O error), the records in it are written again instead of lost; every public write runs
    # inside a savepoint, so a write that fails half-way is undone and retried whole. A database
    # that stays locked or full is retried with back-off (``trouble`` says why) while the
    # pipeline waits: frames stay in the watched folder or the stream's buffers until it clears.
    def _begin(self) -> None:
        if not self._in_tx:
            self._con.execute("BEGIN")
            self._in_tx = True
            for sql, params, many in self._tx_log:  # replay what a rollback took away
                (self._con.executemany if many else self._con.execute)(sql, params)

    def _w(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """One write statement inside the transaction, remembered for replay."""
        cur = self._con.execute(sql, params)
        self._tx_log.append((sql, params, False))
        return cur

    def _wm(self, sql: str, rows: list[Any]) -> sqlite3.Cursor:
        cur = self._con.executemany(sql, rows)
        self._tx_log.append((sql, rows, True))
        return cur

    def _maybe_commit(self, force: bool = False) -> None:
        if force:
            self._force_commit = True

    def _commit_due(self) -> None:
        self._retry(self._commit_now)

    def _commit_now(self) -> None:
        if not self._tx_log and not self._in_tx:
            return
        if not (self._force_commit or self._uncommitted >= self.batch
                or time.monotonic() - self._last_commit >= self.flush_s):
            return
        self._begin()  # replays the batch if a failure rolled it back
        self._con.execute("COMMIT")
        self._in_tx = False
        self._tx_log.clear()
        self._uncommitted = 0
        self._force_commit = False
        self._last_commit = time.monotonic()

    def _retry(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` until SQLite lets it through (locked, full, I/O trouble), with back-off."""
        delay = 0.25
        while True:
            with self._lock:  # held per attempt, not while waiting: readers go on meanwhile
                try:
                    out = fn(*args, **kwargs)
                    failed = None
                except sqlite3.OperationalError as exc:
                    if not _transient(exc) or self._closed or (
                            self._give_up_at is not None and time.monotonic() > self._give_up_at):
                        raise
                    self._in_tx = bool(self._con.in_transaction)
                    failed = exc
            if failed is not None:
                if self.trouble is None:
                    self.trouble = f"ledger unavailable: {failed} (retrying; frames wait)"
                    self._trouble_since = time.time()
                    log.error("%s: %s", self.path, self.trouble)
                time.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay_s)
                continue
            if self.trouble is not None:
                log.warning("%s: ledger available again after %.0f s", self.path,
                            time.time() - (self._trouble_since or time.time()))
                self.trouble = None
            return out

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A public write: ``fn`` (statements via :meth:`_w`) in a savepoint, retried whole."""

        def attempt() -> Any:
            self._begin()
            mark = len(self._tx_log)
            self._con.execute("SAVEPOINT emstream_write")
            try:
                out = fn(*args, **kwargs)
            except BaseException:
                del self._tx_log[mark:]
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK TO emstream_write")
                    self._con.execute("RELEASE emstream_write")
                else:
                    self._in_tx = False
                raise
            self._con.execute("RELEASE emstream_write")
            return out

        out = self._retry(attempt)
        self._commit_due()
        return out

    def flush(self) -> None:
        """Commit whatever is pending (the pipeline calls this when the sink is idle)."""
        if not self._closed and (self._in_tx or self._tx_log):
            self._force_commit = True
            self._commit_due()

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return str(self._con.execute("PRAGMA journal_mode").fetchone()[0])

    # ---------------------------------------------------------------- session facts
    def set_fact(self, key: str, value: Any, *, commit: bool = False) -> None:
        """Store one JSON-able session fact (``session`` table)."""
        def op() -> None:
            self._w("INSERT OR REPLACE INTO session (key, value) VALUES (?, ?)",
                    (key, json.dumps(value, default=str)))
            self._uncommitted += 1
            self._maybe_commit(force=commit)

        self._write(op)

    def facts(self) -> dict[str, Any]:
        with self._lock:
            rows = self._con.execute("SELECT key, value FROM session").fetchall()
        return {k: json.loads(v) for k, v in rows}

    # ---------------------------------------------------------------- Sink API
    def open(self, session: Session) -> None:
        starts = self.facts().get("starts", [])
        starts = list(starts) + [session.t_start or time.time()]
        with self._lock:
            self.set_fact("source", session.source)
            self.set_fact("backend", session.backend)
            self.set_fact("config", session.config)
            self.set_fact("versions", session.versions)
            if "t_start" not in self.facts():
                self.set_fact("t_start", starts[0])
            self.set_fact("starts", starts)
            self.set_fact("session_dir", str(session.session_dir), commit=True)
        if len(starts) > 1:
            self.event(Event("restart", f"session resumed (start #{len(starts)})"))
            self.flush()

    def frame_done(self, record: FrameRecord) -> None:
        file_version = getattr(record, "file_version", None)
        res = record.result
        cal = record.calibration
        height = width = None
        summary = None
        backend = None
        timings = None
        t_done = time.time()
        unit = None
        if res is not None:
            cal = res.frame.calibration
            height, width = res.frame.shape
            summary = res.summary
            backend = res.backend
            timings = json.dumps({k: round(float(v), 3) for k, v in res.timings_ms.items()})
            t_done = res.t_done
            unit = res.unit
            if file_version is None:
                file_version = res.frame.metadata.get("file_version")
        if cal is not None and unit is None:
            unit = cal.unit
        drift = res.drift_px if res is not None else None
        nm = cal.nm_per_px if cal is not None and cal.nm_per_px else None
        row = (
            record.seq,
            record.source_id,
            record.status,
            record.reason or None,
            file_version,
            _num(record.t_acq if record.t_acq is not None else (res.frame.t_acq if res else None)),
            _num(record.t_arrival),
            t_done,
            height,
            width,
            _num(cal.nm_per_px[0]) if cal is not None and cal.nm_per_px else None,
            _num(cal.nm_per_px[1]) if cal is not None and cal.nm_per_px else None,
            cal.source if cal is not None else None,
            cal.detail if cal is not None else None,
            unit,
            summary.count if summary else None,
            _num(summary.coverage) if summary else None,
            _num(summary.mean_diameter) if summary else None,
            _num(summary.d10) if summary else None,
            _num(summary.d50) if summary else None,
            _num(summary.d90) if summary else None,
            backend,
            timings,
            _num(res.confidence) if res is not None else None,
            _num(res.seg_scale) if res is not None else None,
            res.seg_flag if res is not None else None,
            _num(drift[0]) if drift else None,
            _num(drift[1]) if drift else None,
            _num(drift[0] * nm[0]) if drift and nm else None,
            _num(drift[1] * nm[1]) if drift and nm else None,
            res.state if res is not None else None,
            json.dumps(res.quality) if res is not None and res.quality is not None else None,
            res.seg_view if res is not None else None,
        )
        def op() -> None:
            self._w(f"INSERT INTO frames ({_FRAME_COLS}) VALUES ({', '.join('?' * len(row))})",
                    row)
            if res is not None and record.status == "ok":
                self._insert_particles(record.seq, res.particles, res.track_ids)
            if file_version is not None:
                self._file_progress(record, file_version)
            self._uncommitted += 1

        if self._closed:
            log.warning("ledger closed; frame %s not recorded", record.seq)
            return
        try:
            self._write(op)
        except sqlite3.IntegrityError as exc:
            # Same (source, file_version) already recorded: a duplicate must never appear.
            log.error("frame %s (%s) not recorded twice: %s", record.seq, record.source_id, exc)

    def _insert_particles(self, seq: int, particles: dict[str, np.ndarray],
                          track_ids: np.ndarray | None = None) -> None:
        n = len(particles["label"]) if "label" in particles else 0
        if n == 0:
            return
        cols = []
        for name, (dt, _) in PARTICLE_COLUMNS.items():
            a = np.asarray(particles[name])
            if dt == "float64":
                a = a.astype(np.float64)
                vals = a.tolist()
                bad = np.flatnonzero(~np.isfinite(a))
                for i in bad.tolist():  # SQLite has no NaN: NULL
                    vals[i] = None
                cols.append(vals)
            elif dt == "bool":
                cols.append([int(v) for v in a.astype(bool).tolist()])
            else:
                cols.append(a.astype(np.int64).tolist())
        tracks = ([None] * n if track_ids is None or len(track_ids) != n
                  else [int(t) if t >= 0 else None for t in np.asarray(track_ids).tolist()])
        cols.append(tracks)
        rows = [(seq, *vals) for vals in zip(*cols, strict=True)]
        self._wm(_PARTICLE_INSERT, rows)

    def _file_progress(self, record: FrameRecord, version: str) -> None:
        path, _, idx = record.source_id.partition("#")
        if record.status == "quarantined" and not idx:
            self._w(
                "UPDATE files SET status='quarantined', reason=?, t_terminal=? "
                "WHERE path=? AND version=?",
                (record.reason, time.time(), path, version),
            )
            return
        k = int(idx) + 1 if idx.isdigit() else 1
        self._w(
            "UPDATE files SET frames_done = MAX(frames_done, ?) WHERE path=? AND version=?",
            (k, path, version),
        )
        # a stack's slices are numbered across its versions and recorded in order, so slice k
        # completes any version of the path that holds k slices, not only the one it came from
        if idx:
            self._slices_recorded[path] = max(self._slices_recorded.get(path, 0), k)
        waiting = [(path, version)] if not idx else [pv for pv in self._expected if pv[0] == path]
        for pv in waiting:
            expected = self._expected.get(pv)
            if expected is not None and k >= expected:
                self._w(
                    "UPDATE files SET status='done', t_terminal=? "
                    "WHERE path=? AND version=? AND status='pending'",
                    (time.time(), *pv),
                )
                self._expected.pop(pv, None)

    def alert(self, alert: Alert) -> None:
        if self._closed:
            return

        def op() -> None:
            self._w(
                "INSERT INTO alerts (seq, name, severity, t, message, particles_json, builtin, "
                "snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.seq,
                    alert.rule,
                    alert.severity,
                    alert.t,
                    alert.message,
                    json.dumps([int(x) for x in alert.particle_labels]),
                    int(alert.builtin),
                    getattr(alert, "snapshot", None),
                ),
            )
            self._uncommitted += 1
            self._maybe_commit(force=True)

        self._write(op)

    def event(self, event: Event) -> None:
        if self._closed:
            return

        def op() -> None:
            self._w(
                "INSERT INTO events (t, kind, message, data_json) VALUES (?, ?, ?, ?)",
                (event.t, event.kind, event.message, json.dumps(event.data, default=str)),
            )
            self._uncommitted += 1
            self._maybe_commit()

        self._write(op)

    def tracks(self, rows: list[Any]) -> None:
        """Record track summaries (``process.track.TrackSummary``); a later row of the same
        track replaces the earlier one."""
        if not rows:
            return
        if self._closed:
            return

        def op() -> None:
            self._wm(_TRACK_UPSERT, [
                tuple(_num(v) if isinstance(v, float) else v for v in
                      (getattr(r, c) for c in TRACK_COLUMNS)) for r in rows])
            self._uncommitted += 1
            self._maybe_commit()

        self._write(op)

    def tracking_state(self) -> Any:
        """Where tracking stood (``process.track.TrackState``) so a restarted monitor goes on
        without renumbering; ``None`` when nothing was tracked."""
        from emstream.process.track import TrackState, TrackSummary

        with self._lock:
            top = self._con.execute(
                "SELECT MAX(m) FROM (SELECT MAX(track_id) AS m FROM particles "
                "UNION ALL SELECT MAX(track_id) FROM tracks)").fetchone()[0]
            if top is None:
                return None
            row = self._con.execute(
                "SELECT seq, drift_y_px, drift_x_px FROM frames WHERE status='ok' "
                "AND drift_y_px IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
            parts = [] if row is None else self._con.execute(
                "SELECT track_id, centroid_y_px, centroid_x_px, area_px FROM particles "
                "WHERE seq=? AND track_id IS NOT NULL", (row[0],)).fetchall()
            open_rows = self._con.execute(
                f"SELECT {', '.join(TRACK_COLUMNS)} FROM tracks WHERE ended='active'").fetchall()
        a = np.array(parts, dtype=float).reshape(-1, 4)
        return TrackState(
            seq=int(row[0]) if row else -1,
            track_ids=a[:, 0].astype(np.int64), yx=a[:, 1:3],
            d=2.0 * np.sqrt(np.maximum(a[:, 3], 0.0) / math.pi),
            drift=(float(row[1]), float(row[2])) if row else (0.0, 0.0),
            next_id=int(top) + 1,
            open_tracks=[TrackSummary(**{c: (float("nan") if v is None and c in (
                "growth_rate", "mean_speed", "d_start", "d_end") else v)
                for c, v in zip(TRACK_COLUMNS, r, strict=True)}) for r in open_rows])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            # a database still locked or full: keep trying for a while, then give up (logged)
            self._give_up_at = time.monotonic() + self.close_retry_s
            try:
                self.set_fact("t_stop", time.time(), commit=True)
            except sqlite3.Error as exc:
                log.error("%s: the last records could not be written: %s", self.path, exc)
            try:
                self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:  # pragma: no cover - a reader holding the WAL is fine
                pass
            self._con.close()
            self._closed = True

    # ---------------------------------------------------------------- folder bookkeeping
    def file_state(self, path: str, version: str) -> tuple[str, int] | None:
        """``(status, frames_done)`` of one content version of a file, or ``None`` if unseen."""
        with self._lock:
            row = self._con.execute(
                "SELECT status, frames_done FROM files WHERE path=? AND version=?", (path, version)
            ).fetchone()
        return (row[0], int(row[1])) if row else None

    def file_finished(self, path: str, version: str) -> bool:
        """Did this content version of a file reach the end (done or quarantined)?"""
        state = self.file_state(path, version)
        return state is not None and state[0] in ("done", "quarantined")

    def version_with_content(self, path: str, content_hash: str) -> str | None:
        """A finished version of ``path`` whose content had this digest (``None``: none)."""
        with self._lock:
            row = self._con.execute(
                "SELECT version FROM files WHERE path=? AND content_hash=? "
                "AND status IN ('done', 'quarantined') LIMIT 1", (path, content_hash)).fetchone()
        return row[0] if row else None

    def file_unchanged(self, path: str, version: str, content_hash: str, reason: str) -> None:
        """Record a version whose content was already processed (``touch``, a copy that kept
        the bytes) as done without a frame."""
        now = time.time()
        def op() -> None:
            self._w(
                "INSERT OR IGNORE INTO files (path, version, status, reason, t_discovered, "
                "t_terminal, content_hash) VALUES (?, ?, 'done', ?, ?, ?, ?)",
                (path, version, reason, now, now, content_hash))
            self._uncommitted += 1
            self._maybe_commit()

        self._write(op)

    def file_pending(self, path: str, version: str, *, t_discovered: float | None = None,
                     content_hash: str | None = None) -> None:
        """Record a complete, not yet processed content version (idempotent).

        Older ``pending`` versions of the same path (a growing stack) are closed as ``done``:
        the slices they held are either recorded or will be read from the new version.
        """
        now = time.time()
        def op() -> None:
            self._w(
                "INSERT OR IGNORE INTO files (path, version, status, t_discovered) "
                "VALUES (?, ?, 'pending', ?)",
                (path, version, t_discovered or now),
            )
            if content_hash is not None:
                self._w("UPDATE files SET content_hash=? WHERE path=? AND version=?",
                                  (content_hash, path, version))
            self._w(
                "UPDATE files SET status='done', reason=?, t_terminal=? "
                "WHERE path=? AND version<>? AND status='pending'",
                (f"superseded by {version}", now, path, version),
            )
            self._uncommitted += 1
            self._maybe_commit()

        self._write(op)

    def file_expect(self, path: str, version: str, total_frames: int, *, stack: bool = False) -> None:
        """The version holds ``total_frames`` frames; it becomes ``done`` once all are recorded.

        For a ``stack`` the slices recorded from its earlier versions count too: a version that
        only rewrote the header, or that was found after a restart with every slice already
        recorded, holds nothing new and is done at once.
        """
        with self._lock:
            row = self._con.execute(
                "SELECT frames_done FROM files WHERE path=? AND version=?", (path, version)
            ).fetchone()
            done = int(row[0]) if row else 0
            if stack:
                if path not in self._slices_recorded:  # one query per stack, then kept up to date
                    self._slices_recorded[path] = self.next_slice(path)
                done = max(done, self._slices_recorded[path])
            if done < total_frames:
                self._expected[(path, version)] = total_frames
                return

        def op() -> None:
            self._w("UPDATE files SET status='done', frames_done=MAX(frames_done, ?), "
                    "t_terminal=? WHERE path=? AND version=? AND status='pending'",
                    (total_frames, time.time(), path, version))
            self._uncommitted += 1

        self._write(op)

    def file_quarantined_version(self, path: str, version: str, reason: str) -> None:
        """Mark a version quarantined directly (used when no frame row is written for it)."""
        def op() -> None:
            self._w(
                "INSERT OR IGNORE INTO files (path, version, status, t_discovered) "
                "VALUES (?, ?, 'pending', ?)",
                (path, version, time.time()),
            )
            self._w(
                "UPDATE files SET status='quarantined', reason=?, t_terminal=? "
                "WHERE path=? AND version=?",
                (reason, time.time(), path, version),
            )
            self._uncommitted += 1
            self._maybe_commit()

        self._write(op)

    def terminal_versions(self) -> dict[str, set[str]]:
        """Every path's content versions that are finished (``done`` or ``quarantined``)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT path, version FROM files WHERE status IN ('done', 'quarantined')"
            ).fetchall()
        out: dict[str, set[str]] = {}
        for p, v in rows:
            out.setdefault(p, set()).add(v)
        return out

    def recorded_sources(self, path: str) -> dict[str, set[str | None]]:
        """Frames already recorded for a file: ``{source_id: {file_version, ...}}``."""
        # ``path`` itself, and its slices ``path#0``, ``path#1`` ... as a range ('#' < '$'), so
        # both are index lookups on UNIQUE (source, file_version): the cost does not grow with
        # the session (a LIKE or an OR here scanned the whole table: 110 ms a file at 864k rows)
        with self._lock:
            rows = self._con.execute(
                "SELECT source, file_version FROM frames WHERE source = ? "
                "UNION ALL SELECT source, file_version FROM frames WHERE source >= ? AND source < ?",
                (path, path + "#", path + "$"),
            ).fetchall()
        out: dict[str, set[str | None]] = {}
        stored = db_text(path)
        for s, v in rows:  # keys as the caller named the file (its name may have been escaped)
            out.setdefault(path + s[len(stored):], set()).add(v)
        return out

    def next_slice(self, path: str) -> int:
        """Index of the first slice of a stack not yet recorded (0 when none is)."""
        best = -1
        for src in self.recorded_sources(path):
            _, _, idx = src.partition("#")
            if idx.isdigit():
                best = max(best, int(idx))
        return best + 1

    def stream_positions(self, endpoint: str) -> dict[str, int]:
        """The last sequence number recorded for each series received on ``endpoint`` (frame
        sources are ``endpoint/series/seq``): a restarted listener goes on from there."""
        prefix = db_text(endpoint) + "/"
        with self._lock:
            rows = self._con.execute(
                "SELECT source FROM frames WHERE source >= ? AND source < ?",
                (prefix, prefix[:-1] + "0")).fetchall()  # '0' follows '/'
        out: dict[str, int] = {}
        for (src,) in rows:
            series, _, k = src[len(prefix):].rpartition("/")
            if series and k.isdigit() and "rejected" != series:
                out[series] = max(out.get(series, -1), int(k))
        return out

    def next_seq(self) -> int:
        """The seq the next frame gets: one past the largest recorded (restart resumes)."""
        with self._lock:
            row = self._con.execute("SELECT MAX(seq) FROM frames").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def counts(self) -> dict[str, int]:
        """Frames per terminal status."""
        with self._lock:
            rows = self._con.execute("SELECT status, COUNT(*) FROM frames GROUP BY status").fetchall()
        out = {"ok": 0, "quarantined": 0, "skipped": 0}
        out.update({s: int(n) for s, n in rows})
        return out
