"""The GUI sink: the only door between the pipeline's threads and the Qt GUI thread.

The pipeline calls :class:`GuiSink` from the sink's own thread. The sink never touches a widget:
it keeps the newest result in a one-slot mailbox, updates the session statistics (cheap, fixed
bins), and wakes the GUI thread with queued Qt signals. The window pulls the newest result at
most ~30 times a second, so a fast pipeline never waits for the display and the display never
builds up a backlog (python-microscope's "newest frame only" rule).
"""

from __future__ import annotations

import logging
import threading

from PySide6 import QtCore

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
        self.closed = False
        self._lock = threading.Lock()
        self._newest: FrameResult | None = None
        self._newest_serial = 0
        self._notified = False

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
        with self._lock:
            self._newest = result
            self._newest_serial += 1
            notify = not self._notified
            self._notified = True
        if notify:
            self.signals.resultReady.emit()

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
        self.signals.eventLogged.emit(event)

    def close(self) -> None:
        self.closed = True
        self.signals.sessionClosed.emit()

    # -- GUI thread --------------------------------------------------------------------------
    def take_newest(self) -> FrameResult | None:
        """The newest result not yet taken (``None`` when nothing new), and re-arm the signal."""
        with self._lock:
            self._notified = False
            r, self._newest = self._newest, None
        return r

    @property
    def results_received(self) -> int:
        return self._newest_serial
