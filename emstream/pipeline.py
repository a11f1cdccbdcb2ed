"""The pipeline: source → prepare → segment → measure → rules → sinks, concurrently.

Threads and queues::

    reader ──(bounded work queue)──► worker ──► dispatcher: one bounded queue + thread per sink
    (source.frames)                  prepare, segment, measure, summarize, rules

* Backpressure: the work queue is small; when it is full the reader blocks, so a folder source
  stops reading (the folder is the buffer) and a stream source falls behind (policy ``all``) —
  or, with policy ``latest``, the oldest waiting frame is dropped and recorded as ``skipped``.
* Every frame reaches exactly one terminal :class:`FrameRecord` (ok / quarantined / skipped),
  delivered to every sink in ``seq`` order.
* Each sink runs in its own thread with its own bounded queue; a ``latest_only`` sink (the GUI)
  only ever gets the newest record; an exception in a sink is logged and never stops processing.
* Per-stage timings (read, prepare, segment, measure, rules, total; ms) ride on every result.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emstream.frame import Calibration, Frame
from emstream.gc_pauses import freeze_startup_objects, thaw
from emstream.process.confidence import SegmentationCheck
from emstream.process.quality import TRUSTED_STATES, QualityMonitor, StateAlerts, scene_of
from emstream.results import Alert, Event, FrameRecord, FrameResult
from emstream.sinks.base import Session, Sink
from emstream.sources.base import READ_MS_KEY, TrackedRecord, drain_events, file_version_of

log = logging.getLogger(__name__)

_STOP = object()

#: frames smaller than this (px a side) are quarantined: no particle fits, and some numeric
#: steps fail on them
MIN_FRAME_SIDE = 8

#: processed frames after which the objects alive are frozen out of the garbage collector's
#: walks (``gc_pauses``): by then every stage has made what it keeps for the session
FREEZE_AFTER_FRAMES = 5


def make_segmenter(kind: str = "auto", backend: str = "auto", device: str = "auto", model: Any = None):
    """The one place that chooses a segmenter (see :func:`emstream.backends.make_segmenter`).

    Unless ``kind`` is ``"learned"``, a learned segmenter that fails to start falls back to the
    classical baseline with a warning, so a broken GPU install never stops a session.
    """
    from emstream.backends import make_segmenter as _make

    try:
        return _make(kind=kind, backend=backend, device=device, model=model)
    except Exception as exc:
        if kind == "learned":
            raise
        log.warning("learned segmenter unavailable (%s): using the classical baseline", exc)
    from emstream.process.classical import ClassicalSegmenter

    return ClassicalSegmenter()


def frame_problem(frame: Frame) -> str | None:
    """Why a frame cannot be processed at all (``None``: it can)."""
    h, w = frame.pixels.shape[:2]
    if min(h, w) < MIN_FRAME_SIDE:
        return (f"frame of {w}x{h} px is too small to hold particles (at least {MIN_FRAME_SIDE} "
                "px a side)")
    return None


def process_frame(
    frame: Frame,
    segmenter: Any,
    *,
    polarity: str = "auto",
    read_ms: float = 0.0,
    keep_labels: bool = True,
) -> FrameResult:
    """Prepare, segment, measure and summarise one frame (no rules); raises on failure.

    ``timings_ms`` holds ``read`` (given), ``prepare``, ``segment``, ``measure`` and ``total``.
    """
    from emstream.process import measure as _measure
    from emstream.process import prepare as _prepare
    from emstream.process import stats as _stats

    timings: dict[str, float] = {"read": float(read_ms)}
    t0 = time.perf_counter()
    prepared = _prepare.prepare(frame.pixels, polarity=polarity)
    t1 = time.perf_counter()
    timings["prepare"] = (t1 - t0) * 1e3
    labels, info = _segment_with_info(segmenter, prepared)
    t2 = time.perf_counter()
    timings["segment"] = (t2 - t1) * 1e3
    particles = _measure.measure(labels, frame.pixels, frame.calibration, valid=prepared.valid)
    valid_area = int(prepared.valid.sum()) if prepared.valid is not None else int(labels.size)
    summary = _stats.summarize(particles, valid_area_px=valid_area, unit=frame.calibration.unit)
    t3 = time.perf_counter()
    timings["measure"] = (t3 - t2) * 1e3
    timings["total"] = (t3 - t0) * 1e3 + float(read_ms)
    return FrameResult(
        frame=frame,
        particles=particles,
        summary=summary,
        backend=getattr(segmenter, "name", "?"),
        timings_ms=timings,
        labels=labels if keep_labels else None,
        valid=prepared.valid,
        confidence=info.get("confidence"),
        seg_scale=info.get("scale"),
        seg_view=info.get("view"),
    )


def frame_record(frame: Frame, segmenter: Any, *, polarity: str = "auto", read_ms: float = 0.0,
                 keep_labels: bool = True) -> FrameRecord:
    """One frame through prepare, segment and measure into its terminal record; never raises.
    A frame that cannot be processed is quarantined with one line saying why (the traceback goes
    to the debug log: an operator gets the file and the reason, not a stack). The pipeline's
    workers and the scale-out workers (``emstream reprocess``) both call this."""

    def quarantined(reason: str) -> FrameRecord:
        log.warning("quarantined frame %s (%s): %s", frame.seq, frame.source_id, reason)
        return TrackedRecord(seq=frame.seq, source_id=frame.source_id, status="quarantined",
                             t_arrival=frame.t_arrival, reason=reason, t_acq=frame.t_acq,
                             calibration=frame.calibration, file_version=file_version_of(frame))

    reason = frame_problem(frame)
    if reason:
        return quarantined(reason)
    try:
        result = process_frame(frame, segmenter, polarity=polarity, read_ms=read_ms,
                               keep_labels=keep_labels)
    except Exception as exc:
        log.debug("processing frame %s failed", frame.seq, exc_info=True)
        return quarantined(f"processing failed: {type(exc).__name__}: {exc}")
    return TrackedRecord(seq=frame.seq, source_id=frame.source_id, status="ok",
                         t_arrival=frame.t_arrival, result=result, t_acq=frame.t_acq,
                         calibration=frame.calibration, file_version=file_version_of(frame))


class _Serialized:
    """One ``segment`` call at a time (GPU runtimes such as a TensorRT execution context are
    not thread-safe); prepare and measure still run in parallel workers."""

    def __init__(self, segmenter: Any):
        self.inner = segmenter
        self.name = getattr(segmenter, "name", type(segmenter).__name__)
        self._lock = threading.Lock()

    def segment(self, prepared: Any) -> Any:
        with self._lock:
            return self.inner.segment(prepared)

    def segment_with_info(self, prepared: Any) -> tuple[Any, dict]:
        with self._lock:
            return _segment_with_info(self.inner, prepared)


def _segment_with_info(segmenter: Any, prepared: Any) -> tuple[Any, dict]:
    """Labels and what the segmenter says of the frame (``confidence``, ``scale``; ``{}`` for a
    segmenter that says nothing, such as the classical baseline)."""
    if hasattr(segmenter, "segment_with_info"):
        return segmenter.segment_with_info(prepared)
    return segmenter.segment(prepared), {}


def _thread_safe(segmenter: Any) -> bool:
    """A segmenter may say ``thread_safe = True``; the classical baseline is (pure numpy/scipy)."""
    flag = getattr(segmenter, "thread_safe", None)
    if flag is not None:
        return bool(flag)
    return getattr(segmenter, "name", "") == "classical"


@dataclass
class PipelineStats:
    """A snapshot for the terminal view and the GUI status bar."""

    frames_in: int = 0
    processed: int = 0
    quarantined: int = 0
    skipped: int = 0
    fps: float = 0.0
    lag_s: float = float("nan")
    queue_depth: int = 0
    backend: str = ""
    source: str = ""
    particles: int = 0
    d50: float = float("nan")
    unit: str = "px"
    alerts: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: the last frame's segmentation confidence (NaN: the segmenter gives none)
    confidence: float = float("nan")
    #: frames whose segmentation was flagged as doubtful (``process.confidence``)
    flagged: int = 0
    #: the last flag's reason
    last_flag: str = ""
    running: bool = False
    t_last_frame: float | None = None
    #: cumulative stage drift of the last frame (y, x) in ``unit``; ``None``: not tracked
    drift: tuple[float, float] | None = None
    #: tracking events so far, by kind
    track_events: dict[str, int] = field(default_factory=dict)
    #: frames left out of the statistics (``process.quality``: out of focus, beam off ...)
    not_ok: int = 0
    #: the last such frame and its state
    last_state: str = ""

    @property
    def terminal(self) -> int:
        return self.processed + self.quarantined + self.skipped


class _SinkRunner:
    """One sink, one thread, one bounded queue."""

    def __init__(self, sink: Sink, maxsize: int = 16):
        self.sink = sink
        self.latest_only = bool(getattr(sink, "latest_only", False))
        self.q: queue.Queue = queue.Queue(maxsize=1 if self.latest_only else maxsize)
        self.thread = threading.Thread(
            target=self._run, name=f"sink-{getattr(sink, 'name', 'sink')}", daemon=True
        )
        self.errors = 0
        self.dropped = 0

    def _call(self, method: str, arg: Any = None) -> None:
        fn = getattr(self.sink, method, None)
        if fn is None:
            return
        try:
            fn() if arg is None else fn(arg)
        except Exception:
            self.errors += 1
            if self.errors <= 5 or self.errors % 100 == 0:
                log.exception("sink %s failed in %s (error #%d)", self.sink.name, method, self.errors)

    def _run(self) -> None:
        while True:
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                self._call("flush")
                continue
            if item is _STOP:
                self._call("flush")
                self._call("close")
                return
            method, arg = item
            self._call(method, arg)

    def put(self, method: str, arg: Any) -> None:
        if self.latest_only and method == "frame_done":
            while True:
                try:
                    self.q.put_nowait((method, arg))
                    return
                except queue.Full:
                    try:
                        self.q.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        # Alerts and events must reach even latest-only sinks: wait a little for room.
        while self.thread.is_alive():
            try:
                self.q.put((method, arg), timeout=0.5)
                return
            except queue.Full:
                if self.latest_only:
                    try:
                        self.q.get_nowait()
                    except queue.Empty:
                        pass
                continue
        self.dropped += 1

    def stop(self) -> None:
        if self.thread.is_alive():
            self.q.put(_STOP)


class Pipeline:
    """Runs a source through processing into sinks.

    Parameters
    ----------
    source : a :class:`~emstream.sources.base.Source`.
    segmenter : a :class:`~emstream.process.segmenter.Segmenter`.
    sinks : consumers of records, alerts and events (each gets its own thread).
    session : what the sinks learn on ``open``.
    rules : an object with ``evaluate(result) -> list[Alert]`` (``RuleEngine``), or one with
        ``.engine`` and ``maybe_reload()`` (``RulesFile``); ``None`` for no rules.
    watchdog : an object with ``on_frame(record, now)`` and ``tick(now, stats)`` returning alerts.
    policy : ``"all"`` (never drop; fall behind) or ``"latest"`` (skip the oldest waiting frame).
    pixel_size_nm : overrides every frame's calibration (source ``"override"``).
    first_seq : seq of the first frame; default: the ledger's next seq (restart resumes).
    queue_size : frames waiting for a worker.
    workers : frames processed in parallel (prepare/segment/measure release the GIL for much of
        their work). Results are handed to rules and sinks strictly in ``seq`` order whatever
        the number of workers. ``None``: 1 on machines with up to 4 cores, else up to 4.
    tracking : link particles into tracks, measure the stage drift and call tracking events
        (:mod:`emstream.process.track`) in ``seq`` order; ``True`` for the default settings, a
        ``TrackSettings`` to tune, ``False`` to switch it off. A sink with ``tracking_state()``
        (the ledger) lets a restarted session go on with its tracks.
    """

    def __init__(
        self,
        source: Any,
        segmenter: Any,
        sinks: Sequence[Sink],
        *,
        session: Session,
        rules: Any = None,
        watchdog: Any = None,
        policy: str = "all",
        pixel_size_nm: float | None = None,
        first_seq: int | None = None,
        queue_size: int = 2,
        keep_labels: bool = True,
        polarity: str = "auto",
        workers: int | None = None,
        tracking: Any = True,
        trusted_states: Sequence[str] = TRUSTED_STATES,
    ):
        if policy not in ("all", "latest"):
            raise ValueError(f"policy must be 'all' or 'latest', got {policy!r}")
        self.source = source
        self.segmenter = segmenter
        self.sinks = list(sinks)
        self.session = session
        self.rules = rules
        self.watchdog = watchdog
        self._seg_check = SegmentationCheck()
        self.trusted_states = tuple(trusted_states)
        self.policy = policy
        self.polarity = polarity
        self.keep_labels = keep_labels
        self.override: Calibration | None = None
        if pixel_size_nm is not None:
            self.override = Calibration.override(pixel_size_nm)
        if first_seq is None:
            first_seq = 0
            for s in self.sinks:
                fn = getattr(s, "next_seq", None)
                if fn is not None:
                    first_seq = max(first_seq, int(fn()))
        self._seq = first_seq
        if workers is None:
            cores = os.cpu_count() or 1
            workers = 1 if cores <= 4 else min(4, cores // 2)
        self.workers = max(1, int(workers))
        self._segmenter = (segmenter if self.workers == 1 or _thread_safe(segmenter)
                           else _Serialized(segmenter))
        self._work: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        # ordered hand-off: results wait here until every earlier seq is out
        self._order_lock = threading.Lock()
        self._next_out = first_seq
        self._out_of_order: dict[int, FrameRecord] = {}
        self._workers_left = self.workers
        self._skip_lock = threading.Lock()
        self._stop = threading.Event()
        self._runners = [_SinkRunner(s) for s in self.sinks]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stats = PipelineStats(
            backend=getattr(segmenter, "name", type(segmenter).__name__),
            source=source.describe() if hasattr(source, "describe") else str(source),
        )
        self._done_times: deque[float] = deque(maxlen=64)
        self._in_flight = 0
        self._last_activity = time.monotonic()
        self._source_done = threading.Event()
        self._finished = threading.Event()
        self._frozen = False  # the startup objects frozen (gc_pauses), thawed at the end
        self._started = False
        self._listeners: list[Callable[[FrameRecord], None]] = []
        self.error: BaseException | None = None
        self._tracking = tracking
        self._sink_trouble: set[str] = set()
        self._quality: Any = None
        self._state_alerts: Any = None
        self._last_drift: tuple[float, float] | None = None
        self._tracker: Any = None
        self._track_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Pipeline:
        if self._started:
            return self
        self._started = True
        self.session.backend = self.session.backend or self._stats.backend
        self.session.source = self.session.source or self._stats.source
        if not self.session.t_start:
            self.session.t_start = time.time()
        for r in self._runners:
            r.thread.start()
            r.put("open", self.session)
        self._stats.running = True
        stages = [("reader", self._read_loop), ("monitor", self._monitor_loop)]
        stages += [(f"worker-{k}", self._work_loop) for k in range(self.workers)]
        for name, target in stages:
            t = threading.Thread(target=target, name=f"emstream-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Ask every stage to finish: frames already read are still processed and recorded."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the pipeline has finished and every sink is closed. True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for r in self._runners:
            r.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._finished.is_set() and not any(r.thread.is_alive() for r in self._runners)

    def run(self) -> None:
        """Start and block until the source is exhausted (or :meth:`stop`)."""
        self.start()
        self.join()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def add_listener(self, fn: Callable[[FrameRecord], None]) -> None:
        """Call ``fn(record)`` in the worker thread for every terminal record (cheap callables only)."""
        self._listeners.append(fn)

    @property
    def stats(self) -> PipelineStats:
        with self._lock:
            s = PipelineStats(**{k: getattr(self._stats, k) for k in self._stats.__dataclass_fields__})
            s.timings_ms = dict(self._stats.timings_ms)
            s.track_events = dict(self._stats.track_events)
        now = time.monotonic()
        recent = [t for t in self._done_times if now - t <= 10.0]
        if len(recent) >= 2:
            span = max(now - recent[0], 1e-6)
            s.fps = (len(recent) - 1) / span if now - recent[-1] < 5.0 else 0.0
        s.queue_depth = self._work.qsize()
        return s

    def idle_for(self) -> float:
        """Seconds since the last frame entered or left, 0 while anything is in flight."""
        with self._lock:
            if self._in_flight > 0:
                return 0.0
            last = self._last_activity
        if getattr(self.source, "busy", False):
            return 0.0
        return time.monotonic() - last

    def wait_idle(self, seconds: float, *, poll: float = 0.2) -> bool:
        """Block until no frame has come for ``seconds`` and every frame read is terminal.

        Returns True when idle, False if the pipeline finished (source exhausted) first.
        """
        while not self._finished.is_set():
            if self.idle_for() >= seconds:
                return True
            time.sleep(poll)
        return False

    # ------------------------------------------------------------------ stages
    def _next_seq(self) -> int:
        with self._lock:
            s = self._seq
            self._seq += 1
            return s

    def _read_loop(self) -> None:
        it = None
        try:
            it = iter(self.source.frames(self._stop))
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                read_ms = (time.perf_counter() - t0) * 1e3
                with self._lock:
                    self._in_flight += 1
                    self._last_activity = time.monotonic()
                    self._stats.frames_in += 1
                    self._stats.t_last_frame = time.time()
                if isinstance(item, Frame):
                    own = item.metadata.pop(READ_MS_KEY, None)
                    if isinstance(own, int | float):
                        read_ms = float(own)
                    item.seq = self._next_seq()
                    if self.override is not None:
                        item.calibration = self.override
                elif isinstance(item, FrameRecord):
                    item.seq = self._next_seq()
                    if item.result is not None:  # processed elsewhere (emstream reprocess)
                        item.result.frame.seq = item.seq
                self._enqueue((item, read_ms))
        except Exception as exc:
            self.error = exc
            log.exception("source %s failed", self._stats.source)
        finally:
            self._source_done.set()
            for _ in range(self.workers):
                self._work.put(_STOP)
            if it is not None and hasattr(it, "close"):
                try:
                    it.close()
                except Exception:  # noqa: BLE001
                    pass
            try:
                self.source.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the source failed")

    def _enqueue(self, entry: tuple[Any, float]) -> None:
        item = entry[0]
        if self.policy == "latest" and isinstance(item, Frame):
            with self._skip_lock:
                while True:
                    try:
                        self._work.put_nowait(entry)
                        return
                    except queue.Full:
                        try:
                            old, _ = self._work.get_nowait()
                        except queue.Empty:
                            continue
                        if isinstance(old, Frame):
                            self._skip(old, "policy latest: a newer frame arrived")
                        else:  # keep records; there is always room for them eventually
                            self._work.put(( old, 0.0))
                            self._work.put(entry)
                            return
        while True:
            try:
                self._work.put(entry, timeout=0.5)
                return
            except queue.Full:
                if self._stop.is_set() and not self._worker_alive():
                    return

    def _worker_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads if t.name.startswith("emstream-worker"))

    def _skip(self, frame: Frame, reason: str) -> None:
        rec = TrackedRecord(
            seq=frame.seq,
            source_id=frame.source_id,
            status="skipped",
            t_arrival=frame.t_arrival,
            reason=reason,
            t_acq=frame.t_acq,
            calibration=frame.calibration,
            file_version=file_version_of(frame),
        )
        self._deliver(rec)

    def _work_loop(self) -> None:
        try:
            while True:
                entry = self._work.get()
                if entry is _STOP:
                    break
                item, read_ms = entry
                if isinstance(item, FrameRecord):
                    self._deliver(item)
                    continue
                self._deliver(self._process(item, read_ms))
        except Exception as exc:  # pragma: no cover - _process never raises
            self.error = exc
            log.exception("worker failed")
        finally:
            with self._order_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self._stop.set()
                with self._order_lock:
                    # anything left behind a seq that never came (stopped mid-hand-off)
                    for seq in sorted(self._out_of_order):
                        self._finish(self._out_of_order.pop(seq))
                self._close_sinks()

    def _deliver(self, record: FrameRecord) -> None:
        """Hand records on in ``seq`` order (workers finish out of order)."""
        with self._order_lock:
            if record.seq < self._next_out:  # not expected (e.g. seq assigned outside): pass on
                self._finish(record)
                return
            self._out_of_order[record.seq] = record
            while self._next_out in self._out_of_order:
                self._finish(self._out_of_order.pop(self._next_out))
                self._next_out += 1

    def _process(self, frame: Frame, read_ms: float) -> FrameRecord:
        return frame_record(frame, self._segmenter, polarity=self.polarity, read_ms=read_ms,
                            keep_labels=self.keep_labels)

    def _rule_engine(self) -> Any:
        r = self.rules
        if r is None:
            return None
        if hasattr(r, "maybe_reload"):
            try:
                r.maybe_reload()
            except Exception:  # noqa: BLE001 - a bad edit keeps the old rules
                log.exception("reloading rules failed")
            return getattr(r, "engine", None)
        return r

    def _evaluate_rules(self, result: FrameResult) -> list[Alert]:
        engine = self._rule_engine()
        if engine is None:
            return []
        try:
            return list(engine.evaluate(result))
        except Exception:
            log.exception("rule evaluation failed on frame %s", result.seq)
            return []

    def _finish(self, record: FrameRecord) -> None:
        """Rules (in seq order), count, notify, and hand the record and its alerts to every sink."""
        alerts: list[Alert] = []
        res = record.result
        track_events, summaries = [], []
        if res is not None and record.status == "ok":
            # tracking (drift) and the frame's state first: rules look at both
            if self._tracking is not False:
                track_events, summaries = self._track(res)
            alerts += self._judge_frame(res)
            t3 = time.perf_counter()
            if res.is_trusted:  # a dark or defocused frame is said once, by its state
                alerts += list(self._seg_check.check(res, time.time()))
            alerts += self._evaluate_rules(res)
            if self._tracking is not False:
                alerts += self._evaluate_track_rules(res, track_events, summaries)
            res.timings_ms["rules"] = (time.perf_counter() - t3) * 1e3
            res.timings_ms["total"] = res.timings_ms.get("total", 0.0) + res.timings_ms["rules"]
            res.t_done = time.time()
        if self.watchdog is not None:
            try:
                alerts += list(self.watchdog.on_frame(record, time.time()))
            except Exception:
                log.exception("watchdog failed")
        with self._lock:
            st = self._stats
            if record.status == "ok":
                st.processed += 1
                res = record.result
                if res is not None:
                    st.lag_s = res.lag_s
                    st.particles = int(res.summary.count)
                    st.d50 = float(res.summary.d50)
                    st.unit = res.unit
                    st.timings_ms = dict(res.timings_ms)
                    st.backend = res.backend
                    st.confidence = (float("nan") if res.confidence is None
                                     else float(res.confidence))
                    if res.drift is not None:
                        st.drift = res.drift
                    for ev in track_events:
                        st.track_events[ev.kind] = st.track_events.get(ev.kind, 0) + 1
                    if not res.is_trusted:
                        st.not_ok += 1
                        st.last_state = f"frame {res.seq}: {res.state.replace('_', ' ')}"
                    if res.seg_flag:
                        st.flagged += 1
                        st.last_flag = f"frame {res.seq}: {res.seg_flag}"
            elif record.status == "quarantined":
                st.quarantined += 1
            else:
                st.skipped += 1
            st.alerts += len(alerts)
            self._in_flight = max(0, self._in_flight - 1)
            self._last_activity = time.monotonic()
            self._done_times.append(time.monotonic())
        for r in self._runners:
            r.put("frame_done", record)
        for ev in track_events:
            self._send_event(ev)
        if summaries:
            for r in self._runners:
                r.put("tracks", summaries)
        for a in alerts:
            self._send_alert(a)
        for ev in drain_events(self.source):
            self._send_event(ev)
        for fn in self._listeners:
            try:
                fn(record)
            except Exception:  # noqa: BLE001
                log.exception("listener failed")
        if not self._frozen and self._stats.processed >= FREEZE_AFTER_FRAMES:
            # every stage has warmed up (lazy imports, the network's first runs, the window's
            # first draws): keep what is alive now out of the collector's walks (gc_pauses)
            self._frozen = True
            freeze_startup_objects()

    # ------------------------------------------------------------------ frame state
    def _judge_frame(self, res: FrameResult) -> list[Alert]:
        """The frame's state (``process.quality``), in seq order, and the built-in alerts."""
        try:
            t0 = time.perf_counter()
            if self._quality is None:
                self._quality, self._state_alerts = QualityMonitor(), StateAlerts()
            step = None
            if res.drift_px is not None and self._last_drift is not None:
                step = (res.drift_px[0] - self._last_drift[0], res.drift_px[1] - self._last_drift[1])
            self._last_drift = res.drift_px
            fq = self._quality.judge(res.frame.pixels, res.valid, particles=res.summary.count,
                                     drift_step_px=step)
            res.state, res.quality = fq.state, fq.quality
            res.trusted = fq.state in self.trusted_states
            res.quality["scene"] = scene_of(res.particles, res.summary.coverage)
            res.timings_ms["quality"] = (time.perf_counter() - t0) * 1e3
            res.timings_ms["total"] = res.timings_ms.get("total", 0.0) + res.timings_ms["quality"]
            return self._state_alerts.check(res.seq, res.state, res.quality, res.frame.t_acq)
        except Exception:
            log.exception("frame state failed on frame %s", res.seq)
            return []

    # ------------------------------------------------------------------ tracking
    def _new_tracker(self, resume: bool) -> Any:
        from emstream.process.track import Tracker, TrackSettings

        settings = self._tracking if isinstance(self._tracking, TrackSettings) else None
        state = None
        if resume:
            for s in self.sinks:
                fn = getattr(s, "tracking_state", None)
                if fn is not None:
                    try:
                        state = fn()
                    except Exception:  # noqa: BLE001 - a fresh start is better than none
                        log.exception("tracking state not read: tracks start afresh")
                    break
        elif self._tracker is not None:  # new geometry: go on numbering
            from emstream.process.track import TrackState

            state = TrackState(seq=-1, track_ids=np.zeros(0, np.int64), yx=np.zeros((0, 2)),
                               d=np.zeros(0), drift=self._tracker.drift.total,
                               next_id=self._tracker.next_id)
        return Tracker(settings, state)

    def _track(self, res: FrameResult) -> tuple[list[Event], list[Any]]:
        """Track one frame (in ``seq`` order); fills ``res.track_ids`` and ``res.drift_px``."""
        summaries: list[Any] = []
        try:
            t0 = time.perf_counter()
            shape = tuple(res.frame.pixels.shape)
            if self._tracker is None:
                self._tracker = self._new_tracker(resume=True)
            elif shape != self._track_shape:  # another detector size: positions do not carry
                summaries += self._tracker.finish(ended="lost")
                self._tracker = self._new_tracker(resume=False)
            self._track_shape = shape
            upp = float(np.mean(res.frame.calibration.unit_per_px))
            step = self._tracker.update(res.seq, res.frame.t_acq, res.particles, shape=shape[:2],
                                        unit=res.unit, unit_per_px=upp, image=res.frame.pixels,
                                        valid=res.valid)
            res.track_ids = step.track_ids
            res.drift_px = step.drift.total
            summaries += step.summaries
            res.timings_ms["track"] = (time.perf_counter() - t0) * 1e3
            res.timings_ms["total"] = res.timings_ms.get("total", 0.0) + res.timings_ms["track"]
        except Exception:
            log.exception("tracking failed on frame %s", res.seq)
            return [], summaries
        events = [Event(e.kind, e.message(), t=e.t,
                        data={"seq": e.seq, "tracks": e.tracks, "unit": res.unit, **e.data})
                  for e in step.events]
        return events, summaries

    def _evaluate_track_rules(self, res: FrameResult, events: list[Event],
                              summaries: list[Any]) -> list[Alert]:
        engine = self._rule_engine()
        fn = getattr(engine, "evaluate_tracks", None)
        if fn is None:
            return []
        try:
            return list(fn(res, events, summaries))
        except Exception:
            log.exception("track rule evaluation failed on frame %s", res.seq)
            return []

    def _send_alert(self, alert: Alert) -> None:
        # the actions sink writes the operator's alert line (and alerts.log); once is enough
        log.debug("alert [%s] %s", alert.severity, alert.message)
        for r in self._runners:
            r.put("alert", alert)

    def _send_event(self, event: Event) -> None:
        for r in self._runners:
            r.put("event", event)

    def _monitor_loop(self) -> None:
        """Once a second: watchdog tick (stall, falling behind) and source events."""
        disk: dict[str, int] = {}
        last_disk = 0.0
        while not self._finished.wait(1.0):
            self._check_sink_trouble()
            if self.watchdog is not None:
                if time.monotonic() - last_disk > 10.0:
                    last_disk = time.monotonic()
                    try:
                        du = shutil.disk_usage(self.session.session_dir)
                        disk = {"disk_free_bytes": du.free, "disk_total_bytes": du.total}
                    except OSError:
                        disk = {}
                try:
                    for a in self.watchdog.tick(time.time(), self.stats, **disk):
                        with self._lock:
                            self._stats.alerts += 1
                        self._send_alert(a)
                except Exception:
                    log.exception("watchdog tick failed")
            for ev in drain_events(self.source):
                self._send_event(ev)

    def _check_sink_trouble(self) -> None:
        """A sink that cannot do its job (the ledger locked or on a full disk: ``trouble``)
        raises a built-in critical alert once, and an event when it recovers."""
        for sink in self.sinks:
            trouble = getattr(sink, "trouble", None)
            name = getattr(sink, "name", type(sink).__name__)
            if trouble and name not in self._sink_trouble:
                self._sink_trouble.add(name)
                with self._lock:
                    self._stats.alerts += 1
                self._send_alert(Alert(f"{name} unavailable", "critical", None, str(trouble),
                                       builtin=True,
                                       actions=["banner", "sound", "log", "publish"]))
            elif not trouble and name in self._sink_trouble:
                self._sink_trouble.discard(name)
                self._send_event(Event(f"{name}_available", f"the {name} can be written again"))

    def _close_sinks(self) -> None:
        self._check_sink_trouble()  # a recovery seen only now is still said
        for ev in drain_events(self.source):
            self._send_event(ev)
        src_stats = getattr(self.source, "stats", None)
        as_dict = getattr(src_stats, "as_dict", None)
        data = as_dict() if callable(as_dict) else src_stats if isinstance(src_stats, dict) else None
        if data is not None:
            try:
                self._send_event(Event("source_stats", f"{self._stats.source}: {data}", data=dict(data)))
            except Exception:  # noqa: BLE001
                log.exception("source statistics not recorded")
        if self._tracker is not None:
            try:
                rows = self._tracker.finish()
            except Exception:  # noqa: BLE001
                log.exception("track summaries not recorded")
                rows = []
            if rows:
                for r in self._runners:
                    r.put("tracks", rows)
        for r in self._runners:
            r.stop()
        with self._lock:
            self._stats.running = False
        if self._frozen:
            thaw()
        self._finished.set()
