"""The session ledger's SQLite schema: a public contract (users query ``SESSION/ledger.sqlite``).

Tables
------
session    key/value (JSON) facts about the session: source, backend, config, versions, times.
files      one row per (path, content version) the folder source has seen; drives exactly-once.
frames     one row per frame, exactly one terminal ``status``: ok | quarantined | skipped.
particles  one row per particle of every ``ok`` frame; columns = ``results.PARTICLE_COLUMNS``
           plus ``track_id`` (the particle's track, ``process.track``; NULL: not tracked).
tracks     one row per track: first/last seq, frames seen, diameters at start and end, growth
           rate and mean speed (unit/s), how it began and ended (``process.track``).
alerts     every alert: the frame's ``seq`` and the rule's ``name``.
events     log-worthy happenings: sequence gaps, calibration changes, stalls, restarts, and the
           tracking events ``coalescence``, ``nucleation``, ``dissolution``, ``left_field``
           (``data_json``: ``seq``, ``tracks`` [ids], ``into``, position and size).
"""

from __future__ import annotations

from emstream.results import PARTICLE_COLUMNS

SCHEMA_VERSION = 5

#: Columns added since version 1 (``ALTER TABLE`` on a ledger from an older emstream, so a
#: session recorded before them can be resumed): table -> [(column, type)].
ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "frames": [("confidence", "REAL"), ("seg_scale", "REAL"), ("seg_flag", "TEXT"),
               ("drift_y_px", "REAL"), ("drift_x_px", "REAL"), ("drift_y_nm", "REAL"),
               ("drift_x_nm", "REAL"), ("state", "TEXT"), ("quality_json", "TEXT"),
               ("seg_view", "TEXT")],
    "particles": [("track_id", "INTEGER")],
    "files": [("content_hash", "TEXT")],
}

_SQL_TYPES = {"int32": "INTEGER", "float64": "REAL", "bool": "INTEGER"}

#: Particle columns stored in the ledger, in order (``seq``, the table's columns, ``track_id``).
PARTICLE_DB_COLUMNS: list[str] = ["seq", *PARTICLE_COLUMNS, "track_id"]

#: Columns of the ``tracks`` table, in order (``process.track.TrackSummary`` fields).
TRACK_COLUMNS: list[str] = [
    "track_id", "first_seq", "last_seq", "frames_seen", "t_first", "t_last", "d_start", "d_end",
    "growth_rate", "mean_speed", "began", "ended", "merged_into", "unit",
]

_particle_cols = ",\n  ".join(
    f"{name} {_SQL_TYPES[dt]}{' NOT NULL' if name == 'label' else ''}"
    for name, (dt, _) in PARTICLE_COLUMNS.items()
)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS session (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL              -- JSON
);
CREATE TABLE IF NOT EXISTS files (
  path TEXT NOT NULL,
  version TEXT NOT NULL,           -- content version, "<size>:<mtime_ns>"
  status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'quarantined')),
  reason TEXT,
  frames_done INTEGER NOT NULL DEFAULT 0,   -- slices already turned into frames (growing stacks)
  t_discovered REAL,
  t_terminal REAL,
  content_hash TEXT,               -- size + head and tail digest: a touched file is not new
  PRIMARY KEY (path, version)
);
CREATE TABLE IF NOT EXISTS frames (
  seq INTEGER PRIMARY KEY,
  source TEXT NOT NULL,            -- file path, "path#index" for a stack slice, "stream/series/index"
  status TEXT NOT NULL CHECK (status IN ('ok', 'quarantined', 'skipped')),
  reason TEXT,
  file_version TEXT,               -- files.version for folder frames, NULL for streams
  t_acq REAL,
  t_arrival REAL,
  t_done REAL,
  height INTEGER,
  width INTEGER,
  nm_per_px_y REAL,                -- NULL when uncalibrated
  nm_per_px_x REAL,
  calibration_source TEXT,         -- file | stream | override | none
  calibration_detail TEXT,
  unit TEXT,                       -- nm | px: the unit of every *_nm column of this frame
  count INTEGER,
  coverage REAL,
  mean_diameter REAL,
  d10 REAL,
  d50 REAL,
  d90 REAL,
  backend TEXT,
  timings_json TEXT,               -- per-stage milliseconds
  confidence REAL,                 -- segmentation confidence 0..1 (NULL: the segmenter gives none)
  seg_scale REAL,                  -- resampling factor the network ran at (learned segmenter)
  seg_flag TEXT,                   -- why the segmentation is doubtful (NULL: fine)
  seg_view TEXT,                   -- the learned segmenter's look kept: plain | local background |
                                   -- coarse x0.5 | coarse x0.25 (second looks at unsure frames)
  drift_y_px REAL,                 -- cumulative stage drift since the first frame (y, x; px)
  drift_x_px REAL,
  drift_y_nm REAL,                 -- the same in nm (NULL when uncalibrated)
  drift_x_nm REAL,
  state TEXT,                      -- ok | out_of_focus | motion_blur | beam_off | underexposed |
                                   -- saturated | empty | moved (process.quality); NULL: the
                                   -- frame was not processed (quarantined, skipped)
  quality_json TEXT,               -- the figures behind the state (focus, dose, saturation ...)
  UNIQUE (source, file_version)
);
CREATE TABLE IF NOT EXISTS particles (
  seq INTEGER NOT NULL REFERENCES frames(seq),
  {_particle_cols},
  track_id INTEGER,                -- the particle's track (tracks.track_id); NULL: not tracked
  PRIMARY KEY (seq, label)
);
CREATE TABLE IF NOT EXISTS tracks (
  track_id INTEGER PRIMARY KEY,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  frames_seen INTEGER NOT NULL,
  t_first REAL,
  t_last REAL,
  d_start REAL,                    -- equivalent diameter at its first and last frame (unit)
  d_end REAL,
  growth_rate REAL,                -- d(diameter)/dt, unit/s (Theil-Sen; NULL under 3 frames)
  mean_speed REAL,                 -- drift-corrected path length / time seen, unit/s
  began TEXT,                      -- present_at_start | nucleated | entered_field |
                                   -- from_coalescence | split | appeared
  ended TEXT,                      -- active | merged | left_field | dissolved | lost | transient
  merged_into INTEGER,             -- the track it merged into (ended = merged)
  unit TEXT                        -- nm | px
);
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  seq INTEGER,                     -- triggering frame; NULL for stall / disk alerts
  name TEXT NOT NULL,              -- the rule's name
  severity TEXT NOT NULL,
  t REAL NOT NULL,
  message TEXT,
  particles_json TEXT,             -- matching particle labels
  builtin INTEGER NOT NULL DEFAULT 0,
  snapshot TEXT                    -- snapshot PNG, relative to the session folder
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  t REAL NOT NULL,
  kind TEXT NOT NULL,
  message TEXT,
  data_json TEXT
);
CREATE INDEX IF NOT EXISTS frames_status ON frames(status);
CREATE INDEX IF NOT EXISTS alerts_seq ON alerts(seq);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
"""
