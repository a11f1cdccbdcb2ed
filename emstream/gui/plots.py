"""Size distribution (this frame / recent window / whole session) and trends against time."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from emstream.gui import theme
from emstream.gui.session_stats import (
    QUANTITIES,
    SessionStatistics,
    display_bins,
    frame_counts,
    quantiles_from_counts,
)
from emstream.results import FrameResult

__all__ = ["ClockAxis", "SizeDistributionPanel", "TrendsPanel"]


class ClockAxis(pg.DateAxisItem):
    """pyqtgraph's date axis (local time), except that when zoomed to seconds its ticks between
    the minute marks read ``:48`` / ``:48.5`` instead of ``48.000`` / ``48.500``, which look
    like plain numbers (of seconds since anything)."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph override)
        out = super().tickStrings(values, scale, spacing)
        if spacing < 1:  # pyqtgraph's "%S.%f" level, cut to milliseconds: "SS.mmm"
            out = [":" + s.rstrip("0").rstrip(".") if len(s) == 6 and s[2] == "." else s
                   for s in out]
        return out


def _label_style() -> dict:
    return {"color": theme.TEXT, "font-size": "10pt"}


def _style_plot(p: pg.PlotItem) -> None:
    p.showGrid(x=True, y=True, alpha=0.18)
    for ax in ("left", "bottom"):
        a = p.getAxis(ax)
        a.setTextPen(theme.TEXT_DIM)
        a.setPen(theme.BORDER)


class SizeDistributionPanel(QtWidgets.QWidget):
    """Histogram of one particle measurement with fixed bins, D10/D50/D90 markers."""

    def __init__(self, stats: SessionStatistics, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats = stats
        self.result: FrameResult | None = None
        self.column = "equivalent_diameter_nm"
        #: What is on screen: display edges and counts per series (tests read these).
        self.shown: dict[str, np.ndarray] = {}
        self.quantiles: list[float] = [math.nan] * 3

        self.quantity = QtWidgets.QComboBox()
        for col, q in QUANTITIES.items():
            self.quantity.addItem(q.label, col)
        self.quantity.currentIndexChanged.connect(self._on_quantity)
        self.cb_frame = QtWidgets.QCheckBox("This frame")
        self.cb_recent = QtWidgets.QCheckBox(f"Last {stats.recent_frames} frames")
        self.cb_session = QtWidgets.QCheckBox("Session")
        self.cb_norm = QtWidgets.QCheckBox("Fraction (%)")
        self.cb_log = QtWidgets.QCheckBox("Log counts")
        for cb in (self.cb_frame, self.cb_recent, self.cb_session, self.cb_norm):
            cb.setChecked(True)
        for cb in (self.cb_frame, self.cb_recent, self.cb_session, self.cb_norm, self.cb_log):
            cb.toggled.connect(self.refresh)

        controls = QtWidgets.QHBoxLayout()
        controls.setContentsMargins(4, 2, 4, 2)
        controls.addWidget(self.quantity)
        for cb in (self.cb_frame, self.cb_recent, self.cb_session, self.cb_norm, self.cb_log):
            controls.addWidget(cb)
        controls.addStretch(1)

        self.plot_widget = pg.PlotWidget(background=theme.PANEL_BG)
        self.plot: pg.PlotItem = self.plot_widget.getPlotItem()
        _style_plot(self.plot)
        self.plot.setMenuEnabled(False)
        self.legend = self.plot.addLegend(offset=(-8, 34), labelTextColor=theme.TEXT)
        self.curve_session = self.plot.plot(
            name="Session",
            stepMode="center",
            fillLevel=0,
            brush=pg.mkBrush(74, 163, 255, 70),
            pen=pg.mkPen(theme.HIST_SESSION, width=2),
        )
        self.curve_recent = self.plot.plot(
            name="Recent", stepMode="center", pen=pg.mkPen(theme.HIST_RECENT, width=2)
        )
        self.curve_frame = self.plot.plot(
            name="This frame", stepMode="center", pen=pg.mkPen(theme.HIST_FRAME, width=2)
        )
        # Quantile markers: plain line items + text (InfLineLabel trips a PySide6 6.12 refcount bug)
        self.qlines: list[pg.PlotDataItem] = []
        self.qlabels: list[pg.TextItem] = []
        for _ in ("D10", "D50", "D90"):
            line = pg.PlotDataItem(
                pen=pg.mkPen(theme.QUANTILE, width=1.5, style=QtCore.Qt.PenStyle.DashLine)
            )
            label = pg.TextItem("", color=theme.TEXT, anchor=(0.5, 1.0), fill=(27, 29, 33, 200))
            for item in (line, label):
                item.setVisible(False)
                self.plot.addItem(item, ignoreBounds=True)
            self.qlines.append(line)
            self.qlabels.append(label)

        self.summary = QtWidgets.QLabel("")
        self.summary.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(controls)
        lay.addWidget(self.plot_widget, 1)
        lay.addWidget(self.summary)
        self.refresh()

    def set_result(self, result: FrameResult | None) -> None:
        self.result = result
        self.refresh()

    def set_column(self, column: str) -> None:
        i = self.quantity.findData(column)
        if i >= 0:
            self.quantity.setCurrentIndex(i)

    def _on_quantity(self) -> None:
        self.column = self.quantity.currentData()
        self.refresh()

    def refresh(self) -> None:
        q = QUANTITIES[self.column]
        session, recent = self.stats.histogram_snapshot(self.column)
        frame = (
            frame_counts(self.result.particles, self.column)
            if self.result is not None
            else np.zeros(q.nbins, np.int64)
        )
        edges, (m_session, m_recent, m_frame) = display_bins(
            [session, recent, frame], q, 32, min_width=self.stats.min_bin_width(self.column))
        self.shown = {"edges": edges, "session": m_session, "recent": m_recent, "frame": m_frame}
        norm = self.cb_norm.isChecked()
        log = self.cb_log.isChecked()
        unit = self.stats.unit or (self.result.unit if self.result else "nm")

        def y(c: np.ndarray) -> np.ndarray:
            v = c.astype(np.float64)
            if norm:
                tot = v.sum()
                v = 100.0 * v / tot if tot else v
            if log:
                v = np.log10(np.where(v > 0, v, np.nan))
            return v

        series = (
            (self.curve_session, self.cb_session, y(m_session)),
            (self.curve_recent, self.cb_recent, y(m_recent)),
            (self.curve_frame, self.cb_frame, y(m_frame)),
        )
        shown = [v[np.isfinite(v)] for _, cb, v in series if cb.isChecked()]
        finite = np.concatenate(shown) if shown else np.zeros(0)
        top = float(finite.max()) if finite.size else 1.0
        if log:
            floor = (float(finite.min()) if finite.size else 0.0) - 0.5
            top = max(top, floor + 1.0)
        else:
            floor = 0.0
            top = top if top > 0 else 1.0
        span = top - floor
        for curve, cb, v in series:
            curve.setVisible(cb.isChecked())
            curve.setData(edges, np.nan_to_num(v, nan=floor) if log else v)
        self.curve_session.setFillLevel(floor)
        ylabel = "Fraction of particles (%)" if norm else "Particles"
        if log:
            ylabel = f"log₁₀ {ylabel.lower()}"
        labels = (ylabel, q.axis_label(unit))
        if labels != getattr(
            self, "_labels", None
        ):  # setLabel re-lays out the axes: only on change
            self._labels = labels
            self.plot.setLabel("left", ylabel, **_label_style())
            self.plot.setLabel("bottom", labels[1], **_label_style())
        self.quantiles = quantiles_from_counts(session, q.edges)
        # labels closer than a tenth of the axis would print over each other: step them up
        near = 0.1 * float(edges[-1] - edges[0])
        rows, last_x = [], None
        for v in self.quantiles:
            bump = last_x is not None and math.isfinite(v) and abs(v - last_x) < near
            rows.append((rows[-1] + 1) if bump and rows else 0)
            last_x = v if math.isfinite(v) else last_x
        self.plot.setYRange(floor, floor + span * (1.25 + 0.12 * max(rows)), padding=0)
        self.label_rows = rows
        for line, label, v, name, row in zip(
            self.qlines, self.qlabels, self.quantiles, ("D10", "D50", "D90"), rows, strict=True
        ):
            ok = math.isfinite(v) and self.cb_session.isChecked()
            line.setVisible(ok)
            label.setVisible(ok)
            if ok:
                line.setData([v, v], [floor, floor + span * (1.12 + 0.12 * row)])
                label.setText(f"{name} {v:.3g}")
                label.setAnchor((0.5, 0.0))
                label.setPos(v, floor + span * (1.24 + 0.12 * row))

        counts = self.stats.counts()
        u = q.unit(unit)
        qs = " / ".join(f"{v:.3g}" if math.isfinite(v) else "–" for v in self.quantiles)
        text = (
            f"<span style='color:{theme.HIST_SESSION}'>■</span> Session: "
            f"<b>{counts['particles']:,}</b> particles in <b>{counts['frames_ok']:,}</b> frames · "
            f"D10 / D50 / D90 = <b>{qs}</b> {u}"
            f"<span style='color:{theme.TEXT_DIM}'> · {counts.get('edge_cut', 0):,} cut by the "
            "image edge not sized</span>"
        )
        if self.result is not None:
            fq = quantiles_from_counts(frame, q.edges)
            fqs = " / ".join(f"{v:.3g}" if math.isfinite(v) else "–" for v in fq)
            text += (
                f"<br><span style='color:{theme.HIST_FRAME}'>■</span> Frame #{self.result.seq}: "
                f"<b>{int(frame.sum())}</b> particles · D10 / D50 / D90 = <b>{fqs}</b> {u}"
            )
        if self.stats.mixed_units:
            text += f"<br><span style='color:{theme.WARN}'>Calibrated and uncalibrated frames are mixed.</span>"
        self.summary.setText(text)


class TrackSizePlot(QtWidgets.QWidget):
    """The size over time of the track of the particle last clicked."""

    def __init__(self, history, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.track_id: int | None = None
        self.plot = pg.PlotWidget(axisItems={"bottom": ClockAxis()})
        self.plot.setBackground(theme.PANEL_BG)
        p = self.plot.getPlotItem()
        _style_plot(p)
        p.setMenuEnabled(False)
        p.setLabel("bottom", "Acquisition time", **_label_style())
        self.curve = p.plot(pen=pg.mkPen(theme.TRAIL, width=1.8), symbol="o", symbolSize=4,
                            symbolBrush=theme.TRAIL, symbolPen=None)
        self.title = QtWidgets.QLabel("Click a particle: its track's size over time")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.title)
        lay.addWidget(self.plot, 1)

    def show_track(self, track_id: int | None, unit: str) -> None:
        self.track_id = track_id
        if track_id is None:
            self.curve.setData([], [])
            self.title.setText("This particle is not tracked")
            return
        t, d = self.history.sizes_of(track_id)
        self.curve.setData(t, d)
        self.plot.getPlotItem().setLabel("left", f"diameter ({unit})", **_label_style())
        rate = ""
        if len(t) >= 3 and float(np.ptp(t)) > 0:
            from emstream.process.track import growth_rate

            rate = f" · growth {growth_rate(t, d):+.3g} {unit}/s"
        self.title.setText(f"Track #{track_id}: {len(t)} recent frames{rate}")

    @property
    def points(self) -> int:
        return len(self.curve.xData) if self.curve.xData is not None else 0


class TrendsPanel(QtWidgets.QWidget):
    """Count, mean/median diameter, coverage and stage drift against acquisition (clock) time;
    coalescence (red) and nucleation (blue) marks on the count."""

    def __init__(self, stats: SessionStatistics, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.stats = stats
        self.points = 0
        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground(theme.PANEL_BG)
        self.plots: list[pg.PlotItem] = []
        specs = [
            ("count", [("count", theme.ACCENT, "Particles per frame")]),
            (
                "nm",
                [
                    ("mean_diameter", theme.HIST_FRAME, "Mean diameter"),
                    ("median_diameter", theme.HIST_RECENT, "Median diameter"),
                ],
            ),
            ("%", [("coverage", theme.OUTLINE_MATCH, "Coverage")]),
            ("drift nm", [("drift_y", theme.ACCENT, "Drift y"), ("drift_x", theme.WARN, "Drift x")]),
        ]
        self.curves: dict[str, pg.PlotDataItem] = {}
        for i, (ylabel, series) in enumerate(specs):
            axis = {"bottom": ClockAxis()} if i == len(specs) - 1 else {}
            p = self.glw.addPlot(row=i, col=0, axisItems=axis)
            _style_plot(p)
            p.setMenuEnabled(False)
            p.setLabel("left", ylabel, **_label_style())
            p.setClipToView(True)
            p.setDownsampling(auto=True, mode="peak")
            p.getAxis("left").setWidth(62)
            p.addLegend(offset=(8, 4), labelTextColor=theme.TEXT, brush=(27, 29, 33, 170))
            for key, colour, name in series:
                self.curves[key] = p.plot(name=name, pen=pg.mkPen(colour, width=1.8))
            if self.plots:
                p.setXLink(self.plots[0])
            if i < len(specs) - 1:
                p.getAxis("bottom").setStyle(showValues=False)
            self.plots.append(p)
        self.plots[-1].setLabel("bottom", "Acquisition time", **_label_style())
        self.event_marks = {
            kind: pg.ScatterPlotItem(symbol=symbol, size=9, pen=None, brush=colour, name=name)
            for kind, symbol, colour, name in (
                ("coalescence", "t", theme.EVENT_COALESCENCE, "coalescence"),
                ("nucleation", "o", theme.EVENT_NUCLEATION, "nucleation"))
        }
        for item in self.event_marks.values():
            self.plots[0].addItem(item)
        self.n_events = 0
        # frames left out of the statistics (out of focus, beam off ...): marks on the D50 plot
        self.state_marks = pg.ScatterPlotItem(symbol="x", size=8, pen=pg.mkPen(theme.WARN),
                                              brush=theme.WARN, name="frame not ok")
        self.plots[1].addItem(self.state_marks)
        self.n_untrusted = 0
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.glw)

    def refresh(self) -> None:
        t = self.stats.trend_snapshot()
        unit = self.stats.unit or "nm"
        if unit != getattr(self, "_unit", None):
            self._unit = unit
            self.plots[1].setLabel("left", unit, **_label_style())
        # frames can finish out of acquisition order (several files, stacks): plot in time order
        order = np.argsort(t["t_acq"], kind="stable")
        x = t["t_acq"][order]
        self.points = len(x)
        for key, curve in self.curves.items():
            v = t[key][order] * (100.0 if key == "coverage" else 1.0)
            curve.setData(x, v, connect="finite")
        if unit != getattr(self, "_drift_unit", None):
            self._drift_unit = unit
            self.plots[3].setLabel("left", f"drift {unit}", **_label_style())
        bad = self.stats.untrusted_snapshot()
        self.n_untrusted = len(bad)
        med = t["median_diameter"][order]
        if bad and x.size and np.isfinite(med).any():
            tb = np.array([b[0] for b in bad], float)
            floor = float(np.nanmin(med))
            self.state_marks.setData(tb, np.full(tb.size, floor))
        else:
            self.state_marks.setData([], [])
        events = self.stats.event_snapshot()
        self.n_events = len(events)
        counts = t["count"][order]
        for kind, item in self.event_marks.items():
            te = np.array([e[0] for e in events if e[1] == kind], float)
            if te.size and x.size:
                item.setData(te, np.interp(te, x, np.nan_to_num(counts)))
            else:
                item.setData([], [])
