"""The main window: frame view, size distribution, trends, alerts, status and controls."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from emstream.gui import theme
from emstream.gui.alerts_panel import AlertBanner, AlertsPanel
from emstream.gui.bridge import GuiSink
from emstream.gui.frame_view import CONTRAST_PRESETS, FrameView, outline_paths, particle_info
from emstream.gui.outlines import DisplayFrame, prepare_display
from emstream.gui.plots import SizeDistributionPanel, TrackSizePlot, TrendsPanel
from emstream.gui.session_stats import SessionStatistics
from emstream.gui.status import StatusBar
from emstream.gui.trails import trail_paths
from emstream.results import Alert, FrameResult

log = logging.getLogger(__name__)

__all__ = ["MonitorWindow", "DISPLAY_INTERVAL_MS"]

#: Newest result at most every 33 ms (≤ 30 Hz): the display never sets the pace of processing.
DISPLAY_INTERVAL_MS = 33
#: The size histogram follows the display at most this often while live.
HIST_INTERVAL_S = 0.2
#: Trends and status are redrawn less often (they change slowly and cost more with many points).
SLOW_INTERVAL_MS = 500
#: Step-back ring: at most this many displayed results and at most this many bytes of pixels+labels.
RING_FRAMES = 20
RING_BYTES = 256 * 1024**2


class MonitorWindow(QtWidgets.QMainWindow):
    """The live window (or, with ``sink=None``, the review window of a finished session).

    Parameters
    ----------
    sink : GuiSink or None
        Where results come from (``None`` for review mode).
    stats : callable returning a dict / ``PipelineStats``, optional
        Polled twice a second for the status bar.
    rules : object with ``.matching(particles) -> bool array`` (a ``RuleEngine``), or an object
        with ``.engine`` (a ``RulesFile``, re-read on every frame so edits show), optional.
    title : str
        Window title.
    """

    closing = QtCore.Signal()

    def __init__(
        self,
        sink: GuiSink | None = None,
        *,
        stats: Callable[[], Any] | None = None,
        rules: Any = None,
        title: str = "emstream",
        statistics: SessionStatistics | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle(title)
        self.resize(1680, 1020)
        self.sink = sink
        self.rules = rules
        self.statistics = statistics or (sink.statistics if sink else SessionStatistics())
        self.paused = False
        self.displayed = 0  # results drawn
        self.ring: deque[DisplayFrame] = deque()
        self.ring_pos = -1  # index into ring being shown; -1 = live (newest)
        self.session_dir: Path | None = None
        self._last_display = 0.0
        self._last_hist = 0.0
        self._hist_stale = False
        self._display_times: deque[float] = deque(maxlen=60)
        self.update_ms: deque[float] = deque(maxlen=200)

        # -- widgets -----------------------------------------------------------------------------
        self.frame_view = FrameView()
        self.size_panel = SizeDistributionPanel(self.statistics)
        self.trends_panel = TrendsPanel(self.statistics)
        self.alerts_panel = AlertsPanel()
        self.banner = AlertBanner()
        self.banner.acknowledged.connect(self.alerts_panel.acknowledge_all)
        self.particle_table = QtWidgets.QTableWidget(0, 2)
        self.particle_table.setHorizontalHeaderLabels(["Measurement", "Value"])
        self.particle_table.verticalHeader().setVisible(False)
        self.particle_table.horizontalHeader().setStretchLastSection(True)
        self.particle_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.particle_table.setAlternatingRowColors(True)
        self.frame_view.particleHovered.connect(self._show_particle)
        self.frame_view.particleClicked.connect(self._show_particle)
        self.frame_view.particleClicked.connect(self._show_track)
        self.track_plot = TrackSizePlot(self.statistics.tracks)
        particle_tab = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        particle_tab.addWidget(self.particle_table)
        particle_tab.addWidget(self.track_plot)

        self.lower_tabs = QtWidgets.QTabWidget()
        self.lower_tabs.addTab(self.alerts_panel, "Alerts")
        self.lower_tabs.addTab(particle_tab, "Particle")

        def group(title: str, w: QtWidgets.QWidget) -> QtWidgets.QGroupBox:
            box = QtWidgets.QGroupBox(title)
            lay = QtWidgets.QVBoxLayout(box)
            lay.setContentsMargins(4, 8, 4, 4)
            lay.addWidget(w)
            return box

        right = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        right.addWidget(group("Size distribution", self.size_panel))
        right.addWidget(group("Trends", self.trends_panel))
        right.addWidget(self.lower_tabs)
        right.setSizes([420, 380, 220])
        main = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.frame_group = group("Frame", self.frame_view)
        main.addWidget(self.frame_group)
        main.addWidget(right)
        main.setSizes([960, 720])
        self.main_splitter = main
        central = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(central)
        lay.setContentsMargins(6, 4, 6, 4)
        lay.addWidget(self.banner)
        lay.addWidget(main, 1)
        self.setCentralWidget(central)

        self.status = StatusBar(stats)
        self.setStatusBar(self.status)
        self._build_toolbar()

        # -- timers and signals ------------------------------------------------------------------
        self._display_timer = QtCore.QTimer(self)
        self._display_timer.setSingleShot(True)
        self._display_timer.timeout.connect(self.pull_newest)
        self._slow_timer = QtCore.QTimer(self)
        self._slow_timer.setInterval(SLOW_INTERVAL_MS)
        self._slow_timer.timeout.connect(self.refresh_slow)
        self._slow_timer.start()
        if sink is not None:
            q = QtCore.Qt.ConnectionType.QueuedConnection
            sink.signals.resultReady.connect(self._on_result_ready, q)
            sink.signals.alertRaised.connect(self.add_alert, q)
            sink.signals.sessionOpened.connect(self._on_session_opened, q)
            sink.signals.sessionClosed.connect(self.pull_newest, q)
            if sink.session is not None:
                self._on_session_opened(sink.session)
            sink.set_preparer(self.prepare)

    # -- toolbar -------------------------------------------------------------------------------
    def _build_toolbar(self) -> None:
        tb = self.addToolBar("Controls")
        tb.setMovable(False)
        tb.setIconSize(QtCore.QSize(16, 16))

        style = self.style()
        SP = QtWidgets.QStyle.StandardPixmap
        tb.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

        def action(text, tip, key, slot, checkable=False, icon=None) -> QtGui.QAction:
            a = QtGui.QAction(text, self)
            if icon is not None:
                a.setIcon(style.standardIcon(icon))
            a.setToolTip(f"{tip} ({key})" if key else tip)
            if key:
                a.setShortcut(QtGui.QKeySequence(key))
            a.setCheckable(checkable)
            a.triggered.connect(slot)
            tb.addAction(a)
            return a

        self.act_pause = action(
            "Pause display",
            "Freeze the display; processing continues",
            "Space",
            self.set_paused,
            True,
            SP.SP_MediaPause,
        )
        self.act_back = action(
            "Back", "Previous displayed frame", "Left", self.step_back, icon=SP.SP_MediaSeekBackward
        )
        self.act_forward = action(
            "Forward",
            "Next displayed frame",
            "Right",
            self.step_forward,
            icon=SP.SP_MediaSeekForward,
        )
        self.act_live = action(
            "Live", "Jump to the newest frame", "End", self.go_live, icon=SP.SP_MediaSkipForward
        )
        tb.addSeparator()
        self.act_outlines = action(
            "Outlines", "Show particle outlines", "O", self.frame_view.set_show_outlines, True
        )
        self.act_outlines.setChecked(True)
        self.act_tracks = action(
            "Tracks", "Show track IDs and trails (where particles moved on the sample)", "T",
            self.frame_view.set_show_tracks, True
        )
        self.act_tracks.setChecked(True)
        self.act_fit = action("Fit", "Fit the frame to the view", "F", self._fit)
        tb.addWidget(QtWidgets.QLabel(" Contrast "))
        self.contrast = QtWidgets.QComboBox()
        for label, lo, hi in CONTRAST_PRESETS:
            self.contrast.addItem(label, (lo, hi))
        self.contrast.currentIndexChanged.connect(
            lambda _: self.frame_view.set_contrast(*self.contrast.currentData())
        )
        tb.addWidget(self.contrast)
        tb.addSeparator()
        self.act_folder = action(
            "Session folder",
            "Open the session folder",
            "Ctrl+O",
            self.open_session_folder,
            icon=SP.SP_DirOpenIcon,
        )
        spacer = QtWidgets.QWidget()
        spacer.setSizePolicy(
            QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Preferred
        )
        tb.addWidget(spacer)
        self.legend = QtWidgets.QLabel(
            f"<span style='color:{theme.OUTLINE_OTHER}'>━</span> particle &nbsp; "
            f"<span style='color:{theme.OUTLINE_MATCH}'>━</span> target rule &nbsp; "
            f"<span style='color:{theme.OUTLINE_SELECTED}'>━</span> selected &nbsp; "
            f"<span style='color:{theme.TRAIL}'>━</span> track &nbsp;"
        )
        tb.addWidget(self.legend)
        self.mode_label = QtWidgets.QLabel("")
        tb.addWidget(self.mode_label)
        self._update_mode_label()

    # -- results ---------------------------------------------------------------------------------
    def _on_result_ready(self) -> None:
        if self.paused or self._display_timer.isActive():
            return
        if self.isMinimized():
            # nothing to draw on: leave the frame in the sink (its display thread then idles
            # too, see GuiSink); changeEvent pulls the newest when the window comes back
            return
        wait = DISPLAY_INTERVAL_MS - (time.monotonic() - self._last_display) * 1e3
        self._display_timer.start(max(0, int(wait)))

    def pull_newest(self) -> bool:
        """Draw the newest result from the sink if there is one (and we are live)."""
        if self.sink is None or self.paused:
            return False
        r = self.sink.take_newest()
        if r is None:
            return False
        self.show_result(r)
        return True

    def matches_for(self, result: FrameResult) -> np.ndarray | None:
        engine = getattr(self.rules, "engine", self.rules)
        if engine is None or not hasattr(engine, "matching"):
            return None
        try:
            try:
                m = engine.matching(result.particles, unit=result.unit)
            except TypeError:  # a matcher without the unit argument
                m = engine.matching(result.particles)
            m = np.asarray(m, bool)
        except Exception:
            log.exception("rule matching failed; outlines drawn in one colour")
            return None
        return m if m.shape == (len(result.particles["label"]),) else None

    def prepare(self, result: FrameResult) -> DisplayFrame:
        """Ready ``result`` for drawing (display thread: numpy/OpenCV only, no widgets)."""
        fv = self.frame_view
        d = prepare_display(
            result,
            low_pct=fv.low_pct,
            high_pct=fv.high_pct,
            matching=self.matches_for,
            factor=fv.shown_factor or 1,
        )
        # the outline paths too: QPainterPath is a value type, safe to build off the GUI thread
        t0 = time.perf_counter()
        d.paths = outline_paths(d.outlines, d.matches, len(result.particles.get("label", ())))
        if self.frame_view.show_tracks:
            d.tracks = trail_paths(result, self.statistics.tracks)
        d.prepare_ms += (time.perf_counter() - t0) * 1e3
        return d

    def show_result(self, item: FrameResult | DisplayFrame) -> None:
        """Display one result now (prepared or not) and remember it in the step-back ring."""
        t0 = time.perf_counter()
        d = item if isinstance(item, DisplayFrame) else self.prepare(item)
        self._draw(d)
        self._remember(d)
        self.ring_pos = -1
        self.displayed += 1
        now = time.monotonic()
        self._last_display = now
        self._display_times.append(now)
        self.update_ms.append((time.perf_counter() - t0) * 1e3)
        self._update_mode_label()

    def _draw(self, d: DisplayFrame) -> None:
        self.frame_view.set_result(
            d.result,
            d.matches,
            outlines=d.outlines,
            display=(d.u8, d.levels),
            small=(d.small, d.factor),
            paths=d.paths,
        )
        self.frame_view.set_track_paths(d.tracks)
        # the size histogram follows at ≤ 5 Hz while live (every frame when stepping/paused)
        now = time.monotonic()
        if self.paused or now - self._last_hist >= HIST_INTERVAL_S:
            self._last_hist = now
            self.size_panel.set_result(d.result)
        else:
            self.size_panel.result = d.result
            self._hist_stale = True

    def _remember(self, d: DisplayFrame) -> None:
        self.ring.append(d)
        while len(self.ring) > RING_FRAMES or (
            len(self.ring) > 1 and sum(e.nbytes for e in self.ring) > RING_BYTES
        ):
            self.ring.popleft()

    def _show_entry(self, d: DisplayFrame) -> None:
        self._draw(d)
        self._update_mode_label()

    # -- controls --------------------------------------------------------------------------------
    def set_paused(self, paused: bool) -> None:
        """Freeze the display (processing and statistics continue); resume goes live."""
        self.paused = bool(paused)
        if self.sink is not None:
            self.sink.set_display_paused(self.paused)
        self.act_pause.setChecked(self.paused)
        self.act_pause.setText("Resume display" if self.paused else "Pause display")
        self.act_pause.setIcon(
            self.style().standardIcon(
                QtWidgets.QStyle.StandardPixmap.SP_MediaPlay
                if self.paused
                else QtWidgets.QStyle.StandardPixmap.SP_MediaPause
            )
        )
        if not self.paused:
            self.ring_pos = -1
            if not self.pull_newest() and self.ring:
                self._show_entry(self.ring[-1])
        self._update_mode_label()

    def step_back(self) -> None:
        if not self.ring:
            return
        if not self.paused:
            self.set_paused(True)
        pos = (len(self.ring) - 1) if self.ring_pos < 0 else self.ring_pos
        self.ring_pos = max(0, pos - 1)
        self._show_entry(self.ring[self.ring_pos])

    def step_forward(self) -> None:
        if not self.ring or self.ring_pos < 0:
            return
        self.ring_pos = min(len(self.ring) - 1, self.ring_pos + 1)
        self._show_entry(self.ring[self.ring_pos])

    def go_live(self) -> None:
        self.set_paused(False)

    def _fit(self) -> None:
        self.frame_view.vb.autoRange(padding=0.0)

    def open_session_folder(self) -> bool:
        if self.session_dir is None:
            return False
        return QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(self.session_dir)))

    def _update_mode_label(self) -> None:
        if self.sink is None:
            txt, colour = "REVIEW", theme.ACCENT
        elif self.paused:
            n = len(self.ring)
            pos = (self.ring_pos if self.ring_pos >= 0 else n - 1) + 1
            txt, colour = f"PAUSED · {pos}/{n}", theme.WARN
        else:
            txt, colour = "LIVE", theme.OK
        self.mode_label.setText(
            f"<b style='color:{colour}; font-size:11pt'>&nbsp;● {txt}&nbsp;</b>"
        )

    # -- alerts, particle info, session ----------------------------------------------------------
    def add_alert(self, alert: Alert) -> None:
        self.alerts_panel.add_alert(alert)
        self.banner.show_alert(alert)

    def _show_particle(self, hit) -> None:
        if hit is None:
            return
        result, row = hit
        m = self.frame_view.matches
        info = particle_info(result, row, bool(m[row]) if m is not None else None)
        t = self.particle_table
        t.setRowCount(len(info))
        for i, (k, v) in enumerate(info):
            t.setItem(i, 0, QtWidgets.QTableWidgetItem(k))
            t.setItem(i, 1, QtWidgets.QTableWidgetItem(v))

    def _show_track(self, hit) -> None:
        """A clicked particle: its track's size over time."""
        if hit is None:
            return
        result, row = hit
        ids = result.track_ids
        if ids is None or row >= len(ids) or ids[row] < 0:
            self.track_plot.show_track(None, result.unit)
            return
        self.track_plot.show_track(int(ids[row]), result.unit)
        self.lower_tabs.setCurrentIndex(1)

    def _on_session_opened(self, session) -> None:
        self.session_dir = Path(session.session_dir)
        self.status.session_dir = str(self.session_dir)
        self.refresh_slow()

    def display_rate(self) -> float | None:
        t = self._display_times
        if len(t) < 2 or time.monotonic() - t[-1] > 2.0:
            return None
        return (len(t) - 1) / max(1e-6, t[-1] - t[0])

    def refresh_slow(self) -> None:
        """Trends, session histogram between frames, and the status bar."""
        self.trends_panel.refresh()
        self.frame_view.refresh_histogram()
        if self.paused or self.sink is None or self._hist_stale:
            self._hist_stale = False
            self.size_panel.refresh()
        self.status.refresh(self.display_rate(), self.displayed)

    def refresh_all(self) -> None:
        """Bring every panel up to date now (used before a screenshot)."""
        self.pull_newest()
        self.size_panel.refresh()
        self.refresh_slow()

    def changeEvent(self, event: QtCore.QEvent) -> None:  # noqa: N802 (Qt override)
        super().changeEvent(event)
        if event.type() == QtCore.QEvent.Type.WindowStateChange and not self.isMinimized():
            self._on_result_ready()  # restored: show the newest at once

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt override)
        self._slow_timer.stop()
        self._display_timer.stop()
        self.closing.emit()
        if self.sink is not None:
            self.sink.stop_display()
        super().closeEvent(event)
