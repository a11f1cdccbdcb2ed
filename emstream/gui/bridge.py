"""The GUI sink: the only door between the pipeline's threads and the Qt GUI thread.

The pipeline calls :class:`GuiSink` from the sink's own thread. The sink never touches a widget:
it updates the session statistics (cheap, fixed bins) and puts the result in a one-slot mailbox.
A display thread takes the newest result from the mailbox, prepares it for drawing (uint8
scaling, outlines, target mask: numpy/OpenCV, no Qt) and wakes the GUI thread with a queued Qt
signal; the window pulls the prepared frame at most ~30 times a second. The display thread
prepares the next frame only once the window has taken the previous one, so no frame is prepared
and then thrown away, and a minimised window costs nothing. A fast pipeline never waits for the
display and the display never builds up a backlog (python-microscope's "newest frame only"
rule); frames that arrive while one is being prepared or drawn are simply skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from PySide6 import QtCore

from emstream.gui.outlines import DisplayFrame
from emstream.gui.qt_compat import guard_emit_refcount_bug
from emstream.gui.session_stats import SessionStatistics
from emstream.results import Alert, Event, FrameRecord, FrameResult
from emstream.sinks.base import Session, Sink

log = logging.getLogger(__name__)

guard_emit_refcount_bug()

__all__ = ["GuiSink", "GuiSignals"]


class GuiSignals(QtCore.QObject):
    """Signals the GUI sink emits; created on (and living in) the GUI thread."""

    #: A newer result is waiting in the mailbox (coalesced: at most one pending at a time).
    resultReady = QtCore.Signal()
    alertRaised = QtCore.Signal(object)  # Alert
    eventLogged = QtCore.Signal(object)  # Event
    recordSeen = QtCore.Signal(object)  # FrameRecord that is quarantined / skipped (no pixels)
    sessionOpened = QtCore.Signal(object)  # Session
    sessionClosed = QtCore.Signal()


class GuiSink(Sink):
    """Sink that feeds the live window.

    Parameters
    ----------
    statistics : SessionStatistics, optional
        Accumulator for the session histograms and trends (a fresh one by default).

    Notes
    -----
    Construct it on the GUI thread (its signal object lives there). ``latest_only`` tells the
    pipeline it may drop older results for this sink, so the session statistics are fed by
    :meth:`account`, which ``run_monitor_window`` also registers as a pipeline listener
    (every terminal record, in order) when the pipeline handle offers ``add_listener``.
    """

    name = "gui"
    latest_only = True

    def __init__(self, statistics: SessionStatistics | None = None) -> None:
        self.signals = GuiSignals()
        self.statistics = statistics or SessionStatistics()
        self.session: Session | None = None
        self.received = 0
        self.prepared = 0
        self.closed = False
        self._cond = threading.Condition()
        self._pending: FrameResult | None = None  # newest result not yet prepared
        self._ready: DisplayFrame | FrameResult | None = None  # newest prepared, not yet taken
        self._notified = False
        self._paused = False
        self._stopping = False
        self._prepare: Callable[[FrameResult], DisplayFrame] | None = None
        self._worker: threading.Thread | None = None

    def set_preparer(self, prepare: Callable[[FrameResult], DisplayFrame]) -> None:
        """Prepare results on a display thread with ``prepare`` (no Qt inside!)."""
        self._prepare = prepare
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._prepare_loop, name="gui-display", daemon=True
            )
            self._worker.start()

    def set_display_paused(self, paused: bool) -> None:
        """While paused the display thread idles (the newest result is kept for the resume)."""
        with self._cond:
            self._paused = bool(paused)
            self._cond.notify_all()

    # -- Sink API (pipeline thread) ----------------------------------------------------------
    def open(self, session: Session) -> None:
        self.session = session
        self.signals.sessionOpened.emit(session)

    def frame_done(self, record: FrameRecord) -> None:
        self.received += 1
        self.account(record)
        result = record.result
        if record.status != "ok" or result is None:
            self.signals.recordSeen.emit(record)
            return
        if self._prepare is None:
            self._deliver(result)
            return
        with self._cond:
            self._pending = result
            self._cond.notify_all()

    def account(self, record: FrameRecord) -> None:
        """Count ``record`` into the session statistics (each ``seq`` once).

        ``frame_done`` calls it, but a ``latest_only`` sink may not see every record; where the
        pipeline offers ``add_listener``, registering this method makes the statistics exact.
        It is cheap (a histogram update per quantity) and never touches Qt.
        """
        try:
            self.statistics.account(record)
        except Exception:  # a statistics bug must never stop the session
            log.exception("GUI statistics failed for frame %s", record.seq)

    def alert(self, alert: Alert) -> None:
        self.signals.alertRaised.emit(alert)

    def event(self, event: Event) -> None:
        if event.kind in ("coalescence", "nucleation", "dissolution", "left_field"):
            self.statistics.add_event(event.t, event.kind)
        self.signals.eventLogged.emit(event)

    def close(self) -> None:
        self.stop_display()  # prepares the last pending result first
        self.closed = True
        self.signals.sessionClosed.emit()

    def stop_display(self, timeout: float = 10.0) -> None:
        """End the display thread (after preparing what is pending). Safe to call twice."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        w = self._worker
        if w is not None and w is not threading.current_thread():
            w.join(timeout)

    # -- display thread ----------------------------------------------------------------------
    def _prepare_loop(self) -> None:
        # Prepare only when the GUI has taken the previous frame (the ready slot is empty): one
        # frame is prepared while the GUI draws the one before, and none is prepared only to be
        # overwritten. On 2 cores a display thread that ran flat out would take the GIL and a
        # core away from the GUI thread for frames nobody sees.
        while True:
            with self._cond:
                while not self._stopping and (
                    self._pending is None or self._paused or self._ready is not None
                ):
                    self._cond.wait()
                r, self._pending = self._pending, None
                if r is None:  # stopping and nothing left
                    return
            try:
                item: DisplayFrame | FrameResult = self._prepare(r)
            except Exception:
                log.exception("preparing frame %s for display failed", r.seq)
                item = r
            self.prepared += 1
            self._deliver(item)

    def _deliver(self, item: DisplayFrame | FrameResult) -> None:
        with self._cond:
            self._ready = item
            notify = not self._notified
            self._notified = True
        if notify:
            self.signals.resultReady.emit()

    # -- GUI thread --------------------------------------------------------------------------
    def take_newest(self) -> DisplayFrame | FrameResult | None:
        """The newest prepared frame not yet taken (``None`` when nothing new); re-arms the signal."""
        with self._cond:
            self._notified = False
            item, self._ready = self._ready, None
            if item is not None:
                self._cond.notify_all()  # the display thread may prepare the next one
        return item
