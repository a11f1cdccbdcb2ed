"""Track trails, IDs and size histories for the live window (``process.track`` output).

:class:`TrackHistory` keeps, per track, its last ``trail`` positions on the sample (drift taken
out) and its last ``sizes`` diameters, fed in frame order from the pipeline's listener thread;
tracks not seen for ``forget_frames`` frames are dropped, so memory stays bounded however long the
session. :func:`trail_paths` turns one frame's tracks into two ``QPainterPath`` value types
(trails and ID labels) on the display thread; the GUI thread only hands them to path items.

Trails are drawn where the particle was *on the sample*, put back into the current frame with the
current drift: a still particle has no trail however much the stage drifts, and a moving one
shows how it moved.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6 import QtGui

from emstream.results import FrameResult

__all__ = ["TrackHistory", "trail_paths", "MAX_LABELS"]

#: at most this many ID labels are drawn on a frame (text for thousands of particles is clutter)
MAX_LABELS = 150


class TrackHistory:
    """Bounded recent history of every live track; thread-safe."""

    def __init__(self, trail: int = 20, sizes: int = 600, forget_frames: int = 100) -> None:
        self.trail, self.sizes, self.forget = int(trail), int(sizes), int(forget_frames)
        self._lock = threading.Lock()
        self._pos: dict[int, deque] = {}  # track -> (seq, y_sample, x_sample)
        self._size: dict[int, deque] = {}  # track -> (t_acq, diameter in unit)
        self._last: dict[int, int] = {}  # track -> last seq seen
        self.unit = ""
        self._frames = 0

    def add(self, result: FrameResult) -> None:
        ids = result.track_ids
        if ids is None or result.drift_px is None:
            return
        p = result.particles
        dy, dx = result.drift_px
        ys = np.asarray(p["centroid_y_px"], float) - dy
        xs = np.asarray(p["centroid_x_px"], float) - dx
        ds = np.asarray(p["equivalent_diameter_nm"], float)
        seq, t = result.seq, result.frame.t_acq
        with self._lock:
            self.unit = result.unit
            for tid, y, x, d in zip(np.asarray(ids).tolist(), ys.tolist(), xs.tolist(),
                                    ds.tolist(), strict=True):
                if tid < 0:
                    continue
                if tid not in self._pos:
                    self._pos[tid] = deque(maxlen=self.trail)
                    self._size[tid] = deque(maxlen=self.sizes)
                self._pos[tid].append((seq, y, x))
                self._size[tid].append((t, d))
                self._last[tid] = seq
            self._frames += 1
            if self._frames % 25 == 0:
                for tid in [k for k, s in self._last.items() if s < seq - self.forget]:
                    del self._pos[tid], self._size[tid], self._last[tid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pos)

    def sizes_of(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(t_acq, diameter)`` of a track's recent appearances (empty if unknown)."""
        with self._lock:
            pts = list(self._size.get(int(track_id), ()))
        a = np.array(pts, float).reshape(-1, 2)
        return a[:, 0], a[:, 1]

    def trails_for(self, ids: np.ndarray, upto_seq: int) -> list[np.ndarray]:
        """Sample positions ``(N, 2)`` (y, x) of each track up to ``upto_seq``."""
        out = []
        with self._lock:
            for tid in np.asarray(ids).tolist():
                pts = [(y, x) for s, y, x in self._pos.get(tid, ()) if s <= upto_seq]
                out.append(np.array(pts, float).reshape(-1, 2))
        return out


def trail_paths(result: FrameResult, history: TrackHistory) -> tuple[QtGui.QPainterPath,
                                                                       QtGui.QPainterPath]:
    """(trails, ID labels) of ``result``'s tracks as paths in image coordinates."""
    trails, labels = QtGui.QPainterPath(), QtGui.QPainterPath()
    ids = result.track_ids
    if ids is None or result.drift_px is None or not len(ids):
        return trails, labels
    dy, dx = result.drift_px
    xs, ys, conn = [], [], []
    for pts in history.trails_for(ids, result.seq):
        if len(pts) < 2:
            continue
        ys.append(pts[:, 0] + dy)
        xs.append(pts[:, 1] + dx)
        c = np.ones(len(pts), bool)
        c[-1] = False
        conn.append(c)
    if xs:
        trails = pg.arrayToQPath(np.concatenate(xs), np.concatenate(ys),
                                 connect=np.concatenate(conn))
    p = result.particles
    if len(ids) <= MAX_LABELS:
        font = QtGui.QFont()
        font.setPixelSize(max(8, int(min(result.frame.shape) / 90)))
        r = np.sqrt(np.asarray(p["area_px"], float) / np.pi)
        for tid, y, x, rr in zip(np.asarray(ids).tolist(), p["centroid_y_px"].tolist(),
                                 p["centroid_x_px"].tolist(), r.tolist(), strict=True):
            if tid >= 0:
                labels.addText(x + 0.75 * rr, y - 0.75 * rr, font, str(tid))
    return trails, labels
