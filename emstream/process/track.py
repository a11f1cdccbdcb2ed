"""Live particle tracking: drift-corrected linking, track summaries and events (pure).

:class:`Tracker` takes one frame's particle table at a time, in ``seq`` order, and returns a
:class:`TrackStep`: a ``track_id`` per particle, the stage drift, the events that became certain
on this frame and the track summaries to record.

**Linking** is trackpy's streaming linker (:class:`trackpy.linking.Linker`, Crocker–Grier with
subnetwork resolution), chosen over LapTrack because it links one frame at a time as frames
arrive (LapTrack solves a whole movie at once) and has ``memory`` for particles missed in a frame
or two. Particles are linked in a scaled space ``(y/R, x/R, ln(d)/ln(G))`` with a search radius of
1, so a link needs both a short drift-corrected jump (``R`` px, from the median diameter) and a
plausible size change (at most a factor ``G`` per frame): the size gate keeps a nucleus next to a
big particle from taking its identity.

**Ends and events** are decided ``memory + 1`` frames after a track was last seen (it might come
back until then), so they lag live frames by that much but carry the frame they happened on:

- ``coalescence``: the track ended next to a track that, on the next frame, holds about the
  matter of both (projected area, or volume as ``area^1.5`` for particles that round up, within
  ``area_tolerance``); or two or more tracks ended where one began with their summed matter.
  The continuing (or new) track is ``into``; every ended one is ``merged into N``. It is called
  ``confirm_frames`` later if the merged tracks stayed gone (touching particles the segmenter
  joins for a few frames and splits again are not one), had lasted ``nucleation_frames`` frames
  (or been seen in every frame since the session began) and been seen in each of the
  ``min_frames`` frames before it ended (a fragment that flickers in and out of a particle is not
  a particle), and they and the product are clear of the frame edge (cut particles say nothing
  of their area).
  A pair the segmenter never separated (touching particles joined into one outline before their
  neck formed) cannot end two tracks; its coalescence shows as the outline **rounding up**: for
  ``neck_frames`` frames a concave, elongated outline (solidity at most ``NECK_SOLIDITY``,
  aspect ratio at least ``NECK_ASPECT``: two lobes and a neck), then for ``ROUND_FRAMES`` frames
  a convex one (solidity above the neck's highest by ``ROUND_GAIN``), the projected area
  shrinking as a merged particle's does when it rounds up (``ROUND_AREA``: conserved volume puts
  the product at 0.79–1 of the pair's area; a pair the segmenter splits again halves it). An
  outline that rounds up *fully* (solidity at least ``ROUND_SOLIDITY`` in every round frame)
  needs only a looser neck: solidity up to ``NECK_SHALLOW`` (a large particle and a small one),
  any aspect ratio if the neck is deep (two elongated particles side by side), one neck frame
  that breaks it (``NECK_OUTLIERS``: the segmenter cut the pair apart) and up to ``ROUND_GAPS``
  frames missing (joined to a neighbour for a frame); grainy outlines seldom stay that round.
  A rounding seen while a coalescence into the same track is still to confirm waits for it and
  is called if that one is not confirmed. It is dated to the first round frame and called
  ``ROUND_FRAMES - 1`` frames later, with one track, ``into`` itself, and ``merged`` empty (the
  count did not change); it is not called for a track that was the product of a coalescence in
  the ``gap_frames`` before (the same merger finishing).
- ``left_field``: the track ended touching the frame edge (or within the drift of it).
- ``dissolution``: the track ended away from the edge after shrinking (last diameter below
  ``dissolve_ratio`` of its largest).
- ``nucleation``: a track seen for ``nucleation_frames`` frames that began away from the edge,
  after the session's first frame, with a gap (a tenth of its diameter, at least 1 px) to the
  outline of every particle of the frame before, and not as a fragment of one (``split``: a
  neighbour that shrank by about its area at the same frame; segmenters cut particles now and
  then, and such a fragment that joins again is no coalescence either).
- otherwise a track is ``lost``; tracks shorter than ``min_frames`` are ``transient`` (flicker of
  the segmentation) and make no event.

**Gap closing**: a particle that appears where a track was lost less than ``gap_frames`` frames
ago (same place, similar size) continues that track instead of starting one (segmenters miss a
faint particle now and then; without it every miss would read as a new particle and a false
nucleation).

Memory stays flat: a track's diameter history is decimated to at most ``HISTORY`` points, ended
tracks are dropped once summarised (lost ones after ``gap_frames``), and only the last
``memory + 2`` frames are kept.

Note: trackpy numbers its objects with class-level counters; this module never uses those
numbers (each trackpy track object carries the emstream id), so several trackers in one process
keep their ids apart.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import median
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from emstream.process.drift import DriftEstimator, DriftStep

__all__ = ["TrackSettings", "Tracker", "TrackStep", "TrackSummary", "TrackEvent", "TrackState",
           "EVENT_KINDS", "growth_rate"]

#: event kinds the tracker writes (DESIGN.md: the ``events`` table's tracking kinds)
EVENT_KINDS = ("coalescence", "nucleation", "dissolution", "left_field")

#: most (t, diameter) points kept per track for its growth-rate fit
HISTORY = 64
#: a touching pair's outline (module docstring, "rounding up"): solidity at most this and
#: aspect ratio at least ``NECK_ASPECT`` (median over the ``neck_frames``) ...
NECK_SOLIDITY = 0.93
NECK_ASPECT = 1.3
#: ... or, where the outline then rounds up fully (every round frame's solidity at least
#: ``ROUND_SOLIDITY``), solidity at most this (a large particle and a small one make a shallow
#: neck), and any aspect ratio where the neck is deep (two elongated particles side by side)
NECK_SHALLOW = 0.96
ROUND_SOLIDITY = 0.985
#: neck frames that may break the neck (the segmenter cut the pair apart for a frame)
NECK_OUTLIERS = 1
#: frames the rounded outline must hold, each with solidity above the neck's highest by ...
ROUND_FRAMES = 5
ROUND_GAIN = 0.02
#: ... and median area after / before within this range
ROUND_AREA = (0.75, 0.97)
#: frames the outline may be missing within the neck and round frames (the segmenter joined it
#: to a neighbour, or lost it, for a frame)
ROUND_GAPS = 2


@dataclass
class TrackSettings:
    """How particles are linked and when events are called (defaults need no tuning).

    memory : frames a particle may be missed and keep its track.
    search_diameters : largest drift-corrected jump per frame, in median particle diameters of
        the first frame with particles (at least ``min_search_px``; fixed for the session).
    size_change : largest diameter ratio between linked appearances (``G``).
    min_frames : frames a track must last to count (shorter: ``transient``).
    nucleation_frames : frames a new track must last before it is called a nucleation.
    area_tolerance : relative mismatch of areas allowed in a coalescence.
    dissolve_ratio : a track that ends away from the edge below this share of its largest
        diameter dissolved.
    summary_every : frames between summaries of each track still going (a 1/summary_every share
        of the open tracks is summarised on every frame, so the cost is spread evenly).
    confirm_frames : frames a coalescence waits, after its end was decided, for the merged
        tracks to stay gone before it is called.
    gap_frames : a lost track found again (same place, similar size) within this many frames
        keeps its identity (gap closing).
    """

    memory: int = 2
    search_diameters: float = 0.6
    min_search_px: float = 4.0
    size_change: float = 1.6
    min_frames: int = 3
    nucleation_frames: int = 8
    area_tolerance: float = 0.35
    dissolve_ratio: float = 0.75
    summary_every: int = 50
    gap_frames: int = 20
    confirm_frames: int = 4
    neck_frames: int = 5


@dataclass
class TrackSummary:
    """One row of the ``tracks`` table. Lengths in the frame's unit (nm, or px uncalibrated)."""

    track_id: int
    first_seq: int
    last_seq: int
    frames_seen: int
    t_first: float
    t_last: float
    d_start: float
    d_end: float
    growth_rate: float  # unit/s, Theil–Sen slope of the diameter over time (NaN: < 3 points)
    mean_speed: float  # unit/s, drift-corrected path length over time seen (NaN: one frame)
    began: str  # present_at_start | nucleated | entered_field | from_coalescence | split | appeared
    ended: str  # active | merged | left_field | dissolved | lost | transient
    merged_into: int | None = None
    unit: str = "px"


@dataclass
class TrackEvent:
    """A tracking event: ``kind`` (:data:`EVENT_KINDS`), the frame ``seq`` it happened on, its
    time, the tracks involved, and figures (``into``, areas, position on the sample)."""

    kind: str
    seq: int
    t: float
    tracks: list[int]
    data: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        ids = ", ".join(f"#{i}" for i in self.tracks)
        if self.kind == "coalescence" and self.data.get("rounded"):
            return (f"frame {self.seq}: track {ids} rounded up: a touching pair seen as one "
                    "particle coalesced")
        if self.kind == "coalescence":
            return f"frame {self.seq}: tracks {ids} coalesced into #{self.data.get('into')}"
        return f"frame {self.seq}: {self.kind.replace('_', ' ')} of track {ids}"


@dataclass
class TrackStep:
    """What :meth:`Tracker.update` says about one frame."""

    track_ids: np.ndarray  # int64, one per particle row (-1: not linked, e.g. no particles)
    drift: DriftStep
    events: list[TrackEvent]
    summaries: list[TrackSummary]


@dataclass
class TrackState:
    """Where a session's tracking stood (from the ledger) so a restart goes on without
    renumbering: the last frame's particles (``track_ids``, ``yx`` image px, ``d`` px), its
    ``seq``, the cumulative ``drift`` then, the next free id and the open tracks' rows."""

    seq: int
    track_ids: np.ndarray
    yx: np.ndarray
    d: np.ndarray
    drift: tuple[float, float]
    next_id: int
    open_tracks: list[TrackSummary] = field(default_factory=list)


def growth_rate(t: np.ndarray, d: np.ndarray) -> float:
    """Theil–Sen slope of ``d`` against ``t`` (robust to a few missegmented frames); NaN for
    fewer than 3 points or no time span."""
    t = np.asarray(t, float)
    d = np.asarray(d, float)
    if len(t) < 3 or float(np.ptp(t)) <= 0:
        return float("nan")
    if len(t) > 64:  # Theil-Sen is O(n^2): 64 points spread over the track are plenty
        pick = np.linspace(0, len(t) - 1, 64).round().astype(int)
        t, d = t[pick], d[pick]
    # the median of the pairwise slopes (as scipy.stats.theilslopes, which also computes
    # confidence intervals and costs ~0.6 ms a call: 14 ms a frame at 1,000 tracks)
    i, j = _pairs(len(t))
    dt = t[j] - t[i]
    ok = dt > 0
    return float(np.median((d[j] - d[i])[ok] / dt[ok])) if ok.any() else float("nan")


@lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of ``n`` points (cached: building them was half of a growth fit)."""
    return np.triu_indices(n, 1)


class _Track:
    __slots__ = ("id", "first_seq", "last_seq", "t_first", "t_last", "n", "d_first", "d_last",
                 "d_max", "began", "ended", "into", "hist_t", "hist_d", "path", "y", "x",
                 "touch", "near_gap", "split_from", "unit", "run", "outline", "neck_seq",
                 "merged_at")

    def __init__(self, tid: int, seq: int, t: float, began: str, unit: str):
        self.id, self.first_seq, self.last_seq = tid, seq, seq
        self.t_first = self.t_last = t
        self.n = 0
        self.d_first = self.d_last = self.d_max = float("nan")
        self.began, self.ended, self.into = began, "active", None
        self.hist_t: list[float] = []
        self.hist_d: list[float] = []
        self.path = 0.0
        self.y = self.x = float("nan")
        self.touch = False
        self.near_gap = float("inf")  # px between it and the nearest particle of the frame before
        self.split_from: int | None = None  # a fragment that broke off this track at birth
        self.unit = unit
        self.run = 0  # frames seen in a row up to last_seq
        # (seq, t, area px, solidity, aspect ratio, touches edge) of the last frames seen, for
        # the rounding-up rule, from a concave outline (frame neck_seq) to ROUND_FRAMES +
        # ROUND_GAPS frames after it;
        # None otherwise, or where the particle table has no shape columns
        self.outline: deque | None = None
        self.neck_seq = 0
        self.merged_at = -(10**9)  # frame of the last coalescence into this track

    def add(self, seq: int, t: float, y: float, x: float, d: float, touch: bool,
            unit_per_px: float) -> None:
        if self.n:
            self.path += math.hypot(y - self.y, x - self.x) * unit_per_px
        else:
            self.d_first = d
        self.run = self.run + 1 if self.n and seq == self.last_seq + 1 else 1
        self.n += 1
        self.last_seq, self.t_last = seq, t
        self.y, self.x, self.d_last, self.touch = y, x, d, touch
        self.d_max = d if not self.d_max >= d else self.d_max
        self.hist_t.append(t)
        self.hist_d.append(d)
        if len(self.hist_t) > HISTORY:  # keep every other point: uniform in time, bounded
            self.hist_t = self.hist_t[::2]
            self.hist_d = self.hist_d[::2]

    def summary(self) -> TrackSummary:
        span = self.t_last - self.t_first
        return TrackSummary(
            track_id=self.id, first_seq=self.first_seq, last_seq=self.last_seq,
            frames_seen=self.n, t_first=self.t_first, t_last=self.t_last,
            d_start=self.d_first, d_end=self.d_last,
            growth_rate=growth_rate(np.array(self.hist_t), np.array(self.hist_d)),
            mean_speed=self.path / span if span > 0 else float("nan"),
            began=self.began, ended=self.ended, merged_into=self.into, unit=self.unit)


@dataclass
class _Seen:
    """One frame as the event logic needs it (drift-corrected positions)."""

    seq: int
    t: float
    ids: np.ndarray
    y: np.ndarray
    x: np.ndarray
    area: np.ndarray  # px²
    d: np.ndarray  # px
    touch: np.ndarray
    shape: tuple[int, int]
    drift: tuple[float, float]

    def edge_distance(self, y: float, x: float) -> float:
        """px from the frame edge of the sample position (y, x) in this frame."""
        yi, xi = y + self.drift[0], x + self.drift[1]
        h, w = self.shape
        return min(yi, xi, h - 1 - yi, w - 1 - xi)


class Tracker:
    """Links each frame's particles to the tracks so far. Call :meth:`update` in ``seq`` order
    and :meth:`finish` at the end of the session (summaries of the tracks still going)."""

    def __init__(self, settings: TrackSettings | None = None, state: TrackState | None = None):
        self.settings = s = settings or TrackSettings()
        self._linker = None
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._recent: deque[_Seen] = deque(maxlen=s.memory + 2)
        self._first_seq: int | None = None
        self._frames = 0
        self._search_px = s.min_search_px
        self._seed: TrackState | None = state
        self._lost: dict[int, _Track] = {}  # lost / merged tracks that may be found again
        self._pending: list[tuple[int, TrackEvent, list[_Track]]] = []  # coalescences to confirm
        self._held: list[TrackEvent] = []  # roundings waiting for a pending coalescence
        self.drift = DriftEstimator()
        if state is not None:
            self._next_id = max(int(state.next_id), 1)
            self._first_seq = -1  # not a session start: nothing is "present at start"
            self.drift = DriftEstimator(total=state.drift, prev_centres=np.column_stack(
                [state.yx.reshape(-1, 2), state.d.reshape(-1)]) if len(state.d) else None)
            for row in state.open_tracks:
                tr = _Track(row.track_id, row.first_seq, row.t_first, row.began, row.unit)
                tr.n, tr.last_seq, tr.t_last = row.frames_seen, row.last_seq, row.t_last
                tr.d_first, tr.d_last, tr.d_max = row.d_start, row.d_end, max(row.d_start,
                                                                               row.d_end)
                tr.hist_t, tr.hist_d = [row.t_first, row.t_last], [row.d_start, row.d_end]
                self._tracks[tr.id] = tr

    # ------------------------------------------------------------------ linking
    def _scaled(self, y: np.ndarray, x: np.ndarray, d: np.ndarray) -> np.ndarray:
        s = self.settings
        return np.column_stack([y / self._search_px, x / self._search_px,
                                np.log(np.maximum(d, 0.5)) / math.log(s.size_change)])

    def _link(self, seq: int, coords: np.ndarray) -> list[Any]:
        """trackpy track objects, one per particle row."""
        from trackpy.linking.linking import Linker

        if self._linker is None:
            self._linker = Linker(1.0, memory=self.settings.memory, link_strategy="recursive",
                                  adaptive_stop=0.3)
            seed = self._seed
            if seed is None:
                self._linker.init_level(coords, seq)
            else:
                # a restart: the ledger's last frame, whose tracks have ids, comes first
                self._linker.init_level(self._scaled(seed.yx[:, 0] - seed.drift[0],
                                                     seed.yx[:, 1] - seed.drift[1], seed.d),
                                        seed.seq)
                for p, tid in zip(self._linker.hash.points, seed.track_ids.tolist(), strict=True):
                    p.track.eid = int(tid)
                self._linker.next_level(coords, seq)
        else:
            self._linker.next_level(coords, seq)
        return [p.track for p in self._linker.hash.points]

    # ------------------------------------------------------------------ frames
    def update(self, seq: int, t: float, particles: dict[str, np.ndarray], *,
               shape: tuple[int, int], unit: str = "px", unit_per_px: float = 1.0,
               image: np.ndarray | None = None, valid: np.ndarray | None = None) -> TrackStep:
        """Track one frame's particles (a :data:`results.PARTICLE_COLUMNS` table).

        ``unit`` / ``unit_per_px``: the table's length unit and its size of a pixel (1 for px).
        ``image`` / ``valid``: the frame, for the drift (without it the drift comes from the
        particle centres).
        """
        s = self.settings
        y_img = np.asarray(particles.get("centroid_y_px", np.zeros(0)), float)
        x_img = np.asarray(particles.get("centroid_x_px", np.zeros(0)), float)
        area = np.asarray(particles.get("area_px", np.zeros(0)), float)
        touch = np.asarray(particles.get("touches_border", np.zeros(0, bool)), bool)
        d_px = 2.0 * np.sqrt(np.maximum(area, 0.0) / math.pi)
        n = len(y_img)
        shape_cols = s.neck_frames > 0 and "solidity" in particles and "aspect_ratio" in particles
        if shape_cols:
            nb = s.neck_frames
            keep_after = ROUND_FRAMES + ROUND_GAPS  # frames an outline is kept after a neck
            solidity = np.asarray(particles["solidity"], float).tolist()
            aspect = np.asarray(particles["aspect_ratio"], float).tolist()
            area_l = area.tolist()
        rounded: list[_Track] = []
        # particles cut by the frame edge move their centroids as they slide out: not for drift
        inside = ~touch
        drift = self.drift.update(np.column_stack([y_img[inside], x_img[inside], d_px[inside]]),
                                  image, valid)
        y = y_img - drift.total[0]
        x = x_img - drift.total[1]
        if self._first_seq is None:
            self._first_seq = seq
        if n and self._linker is None:
            # fixed for the session: the linker keeps earlier frames in these scaled units
            med = float(np.median(d_px if self._seed is None else self._seed.d))
            self._search_px = max(s.min_search_px, s.search_diameters * med)
        ids = np.full(n, -1, dtype=np.int64)
        if self._seed is not None and not len(self._seed.d):
            self._seed = None
        prev = self._recent[-1] if self._recent else None
        born: list[tuple[int, _Track]] = []
        if n:
            objs = self._link(seq, self._scaled(y, x, d_px))
            tracks = self._tracks
            # Python floats: element access and arithmetic on them are ~5x cheaper than on
            # numpy scalars, and this loop runs once per particle
            rows = zip(y.tolist(), x.tolist(), (d_px * unit_per_px).tolist(), touch.tolist(),
                       strict=True)
            for i, (obj, (yi, xi, di, ti)) in enumerate(zip(objs, rows, strict=True)):
                tid = getattr(obj, "eid", None)
                if tid is None:
                    tid = self._refound(seq, yi, xi, di)
                    if tid is not None:
                        obj.eid = tid
                tr = tracks.get(tid) if tid is not None else None
                if tr is None:
                    if tid is None:
                        tid = self._next_id
                        self._next_id += 1
                        obj.eid = tid
                    tr = _Track(tid, seq, t, "present_at_start" if seq == self._first_seq
                                else "appeared", unit)
                    tracks[tid] = tr
                    born.append((i, tr))
                tr.add(seq, t, yi, xi, di, ti, unit_per_px)
                ids[i] = tid
                if shape_cols:  # outlines kept only around a neck: most are never concave
                    sol = solidity[i]
                    if sol <= NECK_SOLIDITY or sol <= NECK_SHALLOW and aspect[i] >= NECK_ASPECT:
                        if tr.outline is None:
                            tr.outline = deque(maxlen=nb + ROUND_FRAMES)
                        tr.neck_seq = seq
                    elif tr.outline is not None and seq - tr.neck_seq > keep_after:
                        tr.outline = None
                    o = tr.outline
                    if o is not None:
                        o.append((seq, t, area_l[i], sol, aspect[i], ti))
                        # the cheapest of _rounds_up's tests first, inline: the first and
                        # the last round frame round enough, fully or above a deep neck
                        if len(o) == o.maxlen:
                            r, neck = o[nb][3], o[nb - 1][3]
                            if sol < r:
                                r = sol
                            if (r >= ROUND_SOLIDITY or neck <= NECK_SOLIDITY and
                                    r >= neck + ROUND_GAIN) and self._rounds_up(tr):
                                rounded.append(tr)
            self._seed = None  # the linker holds the restart's last frame now
        if born and prev is not None and len(prev.ids):
            self._births(born, prev, ids, y, x, area, d_px)
        seen = _Seen(seq, t, ids, y, x, area, d_px, touch, tuple(shape), drift.total)
        self._recent.append(seen)
        self._frames += 1
        events = self._decide(seq, seen, unit_per_px)
        for tr in rounded:
            if seq - tr.merged_at > s.gap_frames:
                ev = self._rounding_event(tr, unit_per_px)
                # a coalescence into this track still to confirm may be the same merger: the
                # rounding waits for it, and is called only if it is not confirmed
                (self._held if self._awaits(tr.id) else events).append(ev)
        summaries = []
        for tid in [k for k, tr in self._tracks.items() if tr.ended != "active"]:
            tr = self._tracks.pop(tid)
            summaries.append(tr.summary())
            if tr.ended in ("lost", "merged"):  # may be found again (gap closing)
                self._lost[tid] = tr
        for tid in [k for k, tr in self._lost.items() if tr.last_seq < seq - s.gap_frames]:
            del self._lost[tid]
        if s.summary_every:  # the open tracks in turn, 1/summary_every of them a frame
            k = self._frames % s.summary_every
            summaries += [tr.summary() for tid, tr in self._tracks.items()
                          if tid % s.summary_every == k]
        return TrackStep(track_ids=ids, drift=drift, events=events, summaries=summaries)

    @property
    def next_id(self) -> int:
        return self._next_id

    def finish(self, ended: str = "active") -> list[TrackSummary]:
        """Summaries of every track still going (``ended = "active"``: a restart goes on with
        them); ``ended="lost"`` closes them for good (the field of view changed)."""
        rows = []
        for tr in self._tracks.values():
            if tr.ended == "active":
                tr.ended = ended
            rows.append(tr.summary())
        if ended != "active":
            self._tracks.clear()
        return rows

    def _births(self, born: list[tuple[int, _Track]], prev: _Seen, ids: np.ndarray,
                y: np.ndarray, x: np.ndarray, area: np.ndarray, d_px: np.ndarray) -> None:
        """How far each new track is from the particles of the frame before (``near_gap``, px
        between outlines), and whether it broke off one of them (``split_from``: that particle
        goes on, smaller by about the newcomer's area, as when a segmenter cuts a particle in
        two for a few frames)."""
        tree = cKDTree(np.column_stack([prev.y, prev.x]))
        k = min(6, len(prev.ids))
        now_area = {int(t): float(a) for t, a in zip(ids.tolist(), area.tolist(), strict=True)}
        rows = np.array([i for i, _ in born])
        dist, nearest = tree.query(np.column_stack([y[rows], x[rows]]), k=k)
        dist, nearest = dist.reshape(len(rows), k), nearest.reshape(len(rows), k)
        gaps_all = dist - prev.d[nearest] / 2 - d_px[rows, None] / 2
        for (i, tr), gaps, j in zip(born, gaps_all, nearest, strict=True):
            tr.near_gap = float(gaps.min())
            for g, jj in sorted(zip(gaps.tolist(), j.tolist(), strict=True)):
                if g > 2.0:
                    break
                parent = int(prev.ids[jj])
                before, after = float(prev.area[jj]), now_area.get(parent)
                if after is not None and after < 0.85 * before and \
                        after + area[i] >= 0.6 * before:
                    tr.split_from = parent
                    break

    def _refound(self, seq: int, y: float, x: float, d: float) -> int | None:
        """Gap closing: a particle that appears where a track was lost (not seen for more than
        ``memory`` frames, at most ``gap_frames`` ago), within the search radius and of a
        similar size, is that track found again (a segmenter that misses a particle for a few
        frames would otherwise make it a new track, and a false nucleation)."""
        s = self.settings
        best, best_dist = None, self._search_px
        for tr in (*self._lost.values(), *self._tracks.values()):
            if tr.ended not in ("active", "lost", "merged") or not seq - s.gap_frames <= tr.last_seq < \
                    seq - s.memory or tr.n < s.min_frames:
                continue
            ratio = d / max(tr.d_last, 1e-9)
            dist = math.hypot(y - tr.y, x - tr.x)
            if 1 / s.size_change < ratio < s.size_change and dist <= best_dist:
                best, best_dist = tr, dist
        if best is None:
            return None
        if best.id in self._lost:  # its summary said lost / merged: it goes on
            best.ended, best.into = "active", None
            self._tracks[best.id] = self._lost.pop(best.id)
        return best.id

    # ------------------------------------------------------------------ ends and events
    def _frame(self, seq: int) -> _Seen | None:
        for f in self._recent:
            if f.seq == seq:
                return f
        return None

    def _decide(self, seq: int, now: _Seen, unit_per_px: float) -> list[TrackEvent]:
        s = self.settings
        events: list[TrackEvent] = self._confirm_merges(seq)
        # births confirmed this frame: nucleation?
        for tr in self._tracks.values():
            if tr.n == s.nucleation_frames and tr.last_seq == seq and tr.began == "appeared":
                self._classify_birth(tr, now, events, unit_per_px)
        # tracks last seen memory + 1 frames ago have ended
        gone_seq = seq - s.memory - 1
        ended = [tr for tr in self._tracks.values() if tr.ended == "active" and
                 tr.last_seq <= gone_seq]
        if not ended:
            return events
        merges: dict[int, list[_Track]] = {}
        for tr in ended:
            kind, into = self._classify_end(tr)
            tr.ended = kind
            if kind == "merged" and into is not None:
                merges.setdefault(into, []).append(tr)
            elif kind == "left_field" and tr.n >= s.min_frames:
                events.append(TrackEvent("left_field", tr.last_seq + 1, tr.t_last, [tr.id],
                                         self._where(tr, unit_per_px)))
            elif kind == "dissolved":
                events.append(TrackEvent("dissolution", tr.last_seq + 1, tr.t_last, [tr.id],
                                         {**self._where(tr, unit_per_px), "d_max": tr.d_max}))
        for into, parts in merges.items():
            for tr in parts:
                tr.into = into
            after = self._frame(parts[0].last_seq + 1)
            product = self._tracks.get(into)
            ids = [tr.id for tr in parts]
            continuing = product is not None and product.first_seq <= parts[0].last_seq
            data = {"into": into, "merged": ids, **self._where(parts[0], unit_per_px)}
            if after is not None:
                k = np.flatnonzero(after.ids == into)
                if k.size:
                    data["area_after_px"] = float(after.area[k[0]])
            ev = TrackEvent("coalescence", parts[0].last_seq + 1,
                            after.t if after is not None else parts[0].t_last,
                            ([into] if continuing else []) + ids, data)
            self._pending.append((seq + s.confirm_frames, ev, parts))
        return events

    def _confirm_merges(self, seq: int) -> list[TrackEvent]:  # noqa: C901
        """Coalescences whose merged tracks stayed gone ``confirm_frames`` frames (a pair the
        segmenter joined for a few frames and then split again is not one)."""
        s = self.settings
        out, keep = [], []
        for due, ev, parts in self._pending:
            if due > seq:
                keep.append((due, ev, parts))
                continue
            into = ev.data["into"]
            product = self._tracks.get(into) or self._lost.get(into)
            # a fragment the segmenter cut off and joins again is no coalescence
            gone = [tr.id for tr in parts if tr.ended == "merged" and tr.split_from != into
                    and not (product is not None and product.split_from == tr.id)
                    and (tr.n >= s.nucleation_frames or tr.n == tr.run and
                         tr.began == "present_at_start") and tr.run >= s.min_frames
                    and not tr.touch]
            if product is None or product.touch:  # cut by the edge: areas say nothing
                gone = []
            if not gone:
                continue
            ev.tracks = [t for t in ev.tracks if t == into or t in gone]
            ev.data["merged"] = gone
            out.append(ev)
            product = self._tracks.get(into)
            if product is not None:
                product.merged_at = ev.seq
            if product is not None and into not in ev.tracks and product.began == "appeared":
                product.began = "from_coalescence"
        self._pending = keep
        held, self._held = self._held, []
        for ev in held:
            into = ev.data["into"]
            if self._awaits(into):
                self._held.append(ev)
            elif not any(e.data["into"] == into for e in out):
                out.append(ev)
        return out

    def _awaits(self, into: int) -> bool:
        """Is a coalescence into this track still to confirm?"""
        return any(ev.data["into"] == into for _, ev, _ in self._pending)

    def _rounds_up(self, tr: _Track) -> bool:
        """Has this track's outline just rounded up after ``neck_frames`` frames of a neck
        (module docstring)? Called for the frames after a concave outline; cheap tests first."""
        o, nb = list(tr.outline), self.settings.neck_frames
        if len(o) < nb + ROUND_FRAMES:
            return False
        # the area first: outlines that do not shrink, most of them, fail here
        ratio = median([p[2] for p in o[nb:]]) / median([p[2] for p in o[:nb]])
        if not ROUND_AREA[0] <= ratio <= ROUND_AREA[1]:
            return False
        span = o[-1][0] - o[0][0] - (nb + ROUND_FRAMES - 1)  # frames missing in between
        round_min = min([p[3] for p in o[nb:]])
        neck = sorted([p[3] for p in o[:nb]])
        full = round_min >= ROUND_SOLIDITY  # rounded up fully: a looser neck will do
        if full:
            top, limit, gaps = neck[-1 - min(NECK_OUTLIERS, nb - 1)], NECK_SHALLOW, ROUND_GAPS
        else:
            top, limit, gaps = neck[-1], NECK_SOLIDITY, 0
        if span > gaps or top > limit or round_min < top + ROUND_GAIN or any([p[5] for p in o]):
            return False
        # an elongated outline, unless a deep neck rounded up fully
        return full and top <= NECK_SOLIDITY or median([p[4] for p in o[:nb]]) >= NECK_ASPECT

    def _rounding_event(self, tr: _Track, unit_per_px: float) -> TrackEvent:
        o = list(tr.outline)
        nb = self.settings.neck_frames
        tr.merged_at = o[nb][0]
        return TrackEvent("coalescence", o[nb][0], o[nb][1], [tr.id], {
            "into": tr.id, "merged": [], "rounded": True,
            "area_before_px": float(median(p[2] for p in o[:nb])),
            "area_after_px": float(median(p[2] for p in o[nb:])),
            **self._where(tr, unit_per_px)})

    def _where(self, tr: _Track, unit_per_px: float) -> dict[str, Any]:
        return {"y_px": round(tr.y, 2), "x_px": round(tr.x, 2), "d": tr.d_last,
                "unit_per_px": unit_per_px}

    def _classify_birth(self, tr: _Track, now: _Seen, events: list, unit_per_px: float) -> None:
        born = self._frame(tr.first_seq) or now
        d_px = tr.d_first / unit_per_px if unit_per_px else tr.d_first
        if born.edge_distance(tr.y, tr.x) < d_px / 2 + 3 or tr.touch:
            tr.began = "entered_field"
        elif tr.split_from is not None:
            tr.began = "split"
        elif tr.near_gap > max(0.1 * d_px, 1.0):
            tr.began = "nucleated"
            events.append(TrackEvent("nucleation", tr.first_seq, tr.t_first, [tr.id],
                                     self._where(tr, unit_per_px)))

    def _classify_end(self, tr: _Track) -> tuple[str, int | None]:
        s = self.settings
        if tr.n < s.min_frames:
            return "transient", None
        last = self._frame(tr.last_seq)
        after = self._frame(tr.last_seq + 1)
        if last is not None:
            k = np.flatnonzero(last.ids == tr.id)
            r = float(last.d[k[0]]) / 2 if k.size else 0.0
            step = 0.0
            if after is not None:
                step = math.hypot(after.drift[0] - last.drift[0], after.drift[1] - last.drift[1])
            if tr.touch or last.edge_distance(tr.y, tr.x) < r + 2 + 2 * step:
                return "left_field", None
            if after is not None and k.size:
                into = self._merge_partner(tr, last, after, int(k[0]))
                if into is not None:
                    return "merged", into
        if tr.d_last < s.dissolve_ratio * tr.d_max:
            return "dissolved", None
        return "lost", None

    def _merge_partner(self, tr: _Track, last: _Seen, after: _Seen, k: int) -> int | None:
        """The track that on the next frame holds this one's matter next to where it was:
        its projected area (flat particles) or its volume (``area^1.5``: particles that round up
        after merging) is about the sum of the merged ones'."""
        s = self.settings
        if not len(after.ids):
            return None
        a_end = float(last.area[k])
        r_end = float(last.d[k]) / 2
        dist = np.hypot(after.y - tr.y, after.x - tr.x)
        best, best_err = None, s.area_tolerance

        def mismatch(product: float, parts: np.ndarray) -> float:
            by_area = abs(product - parts.sum()) / parts.sum()
            v = parts**1.5
            by_volume = abs(product**1.5 - v.sum()) / v.sum()
            return min(by_area, by_volume)

        for j in np.flatnonzero(dist <= r_end + after.d / 2 * 1.3 + 2):
            other = int(after.ids[j])
            if other == tr.id or other < 0:
                continue
            a_after = float(after.area[j])
            kk = np.flatnonzero(last.ids == other)
            if kk.size:  # it went on: did it gain this one's matter?
                a_before = float(last.area[kk[0]])
                if a_after**1.5 < a_before**1.5 + 0.5 * a_end**1.5:
                    continue
                err = mismatch(a_after, np.array([a_before, a_end]))
            else:  # it began there: it holds the matter of everything that ended around it
                near = np.hypot(last.y - after.y[j], last.x - after.x[j]) <= after.d[j] / 2 + \
                    last.d / 2 + 2
                gone = near & ~np.isin(last.ids, after.ids)
                if gone.sum() < 2:
                    continue
                err = mismatch(a_after, last.area[gone])
            if err <= best_err:
                best, best_err = other, err
        return best
