"""The frame view: newest processed frame, contrast, zoom/pan, particle outlines, scale bar.

Fast path (pyqtgraph's VideoSpeedTest recipe): the frame is scaled to uint8 once with percentile
levels from a subsample, shown with ``imageAxisOrder='row-major'`` and ``autoLevels=False``;
outlines are two ``QPainterPath`` items (target particles / others) built in one vectorised call
each, drawn with cosmetic pens so they stay one screen pixel wide at any zoom.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyqtgraph as pg
from pyqtgraph.graphicsItems.GraphicsWidgetAnchor import GraphicsWidgetAnchor
from pyqtgraph.Qt import internals as _qt_internals
from PySide6 import QtCore, QtGui, QtWidgets

from emstream.gui import theme
from emstream.gui.outlines import (
    Outlines,
    auto_levels,
    display_factor,
    downsample,
    nice_length,
    particle_outlines,
    to_display_u8,
)
from emstream.results import FrameResult

__all__ = ["FrameView", "CalibratedScaleBar", "outline_paths", "particle_info"]

#: Contrast presets: (label, low percentile, high percentile).
CONTRAST_PRESETS = [
    ("Auto 0.5–99.5 %", 0.5, 99.5),
    ("Auto 0.1–99.9 %", 0.1, 99.9),
    ("Auto 2–98 %", 2.0, 98.0),
    ("Min – max", 0.0, 100.0),
]

#: Rows of the particle info table: (column, label, kind) with kind as in session_stats.Quantity.
INFO_ROWS = [
    ("label", "Label", "id"),
    ("equivalent_diameter_nm", "Equivalent diameter", "length"),
    ("feret_diameter_max_nm", "Feret max", "length"),
    ("feret_diameter_min_nm", "Feret min", "length"),
    ("axis_major_length_nm", "Major axis", "length"),
    ("axis_minor_length_nm", "Minor axis", "length"),
    ("area_nm2", "Area", "area"),
    ("perimeter_nm", "Perimeter", "length"),
    ("aspect_ratio", "Aspect ratio", "ratio"),
    ("roundness", "Roundness", "ratio"),
    ("circularity", "Circularity", "ratio"),
    ("solidity", "Solidity", "ratio"),
    ("orientation_deg", "Orientation", "deg"),
    ("intensity_mean", "Mean intensity", "counts"),
    ("centroid_x_px", "Centroid x", "px"),
    ("centroid_y_px", "Centroid y", "px"),
    ("touches_border", "Touches border", "bool"),
]


def particle_info(
    result: FrameResult, row: int, matches: bool | None = None
) -> list[tuple[str, str]]:
    """Human-readable (name, value with unit) pairs for one particle-table row."""
    unit = result.unit
    out: list[tuple[str, str]] = []
    for col, label, kind in INFO_ROWS:
        if col not in result.particles:
            continue
        v = result.particles[col][row]
        if kind == "id":
            s = str(int(v))
        elif kind == "length":
            s = f"{v:.2f} {unit}"
        elif kind == "area":
            s = f"{v:.1f} {unit}²"
        elif kind == "ratio":
            s = f"{v:.3f}"
        elif kind == "deg":
            s = f"{v:.1f}°"
        elif kind == "px":
            s = f"{v:.1f} px"
        elif kind == "bool":
            s = "yes" if bool(v) else "no"
        else:
            s = f"{v:.1f}"
        out.append((label, s))
    if matches is not None:
        out.append(("Matches target rule", "yes" if matches else "no"))
    return out


def outline_paths(
    outlines: Outlines | None, matches: np.ndarray | None, n: int
) -> tuple[QtGui.QPainterPath, QtGui.QPainterPath, int]:
    """One ``QPainterPath`` per colour: (target particles, other particles, outlines in them).

    ``QPainterPath`` is a plain value type (no widget, no QObject), so the display thread builds
    these and the GUI thread only hands them to the two path items.
    """
    if outlines is None or outlines.count == 0:
        return QtGui.QPainterPath(), QtGui.QPainterPath(), 0
    m = (
        np.asarray(matches, bool)
        if matches is not None and len(matches) == n
        else np.zeros(n, bool)
    )
    # usually no particle matches a target rule: then every outline is "other", no copy needed
    parts = (outlines.select(m), outlines.select(~m)) if m.any() else (None, outlines)
    paths = []
    drawn = 0
    for sel in parts:
        if sel is None or sel.count == 0:
            paths.append(QtGui.QPainterPath())
            continue
        drawn += sel.count
        paths.append(_outline_path(sel))
    return paths[0], paths[1], drawn


def _outline_path(o: Outlines) -> QtGui.QPainterPath:
    """``pg.arrayToQPath(x, y, connect=…)`` written straight into the path's element array.

    pyqtgraph's own writer goes through a QDataStream (3.6 ms for 1,000 outlines, ~47k vertices);
    writing the elements in place, as its ``enableExperimental`` option does, takes 0.13 ms and
    gives the equal path. Falls back to ``arrayToQPath`` where that internal is unavailable.
    """
    n = len(o.x)
    try:
        path = QtGui.QPainterPath()
        path.reserve(n)
        arr = _qt_internals.get_qpainterpath_element_array(path, n)
    except Exception:  # another binding / pyqtgraph version
        return pg.arrayToQPath(o.x, o.y, connect=o.connect, finiteCheck=False)
    arr["x"] = o.x
    arr["y"] = o.y
    c = arr["c"]
    c[:1] = 0  # MoveTo
    c[1:] = o.connect[:-1]  # LineTo where the previous vertex joins this one
    return path


class CalibratedScaleBar(GraphicsWidgetAnchor, pg.GraphicsObject):
    """A scale bar that picks a round length (1/2/5 × 10^k nm) for the current zoom.

    Drawn on a dark plate so it reads on bright bright-field and dark HAADF frames alike; shows
    pixels ("px") when the frame is uncalibrated.
    """

    def __init__(self) -> None:
        pg.GraphicsObject.__init__(self)
        GraphicsWidgetAnchor.__init__(self)
        self.setFlag(self.GraphicsItemFlag.ItemHasNoContents)
        self.setAcceptedMouseButtons(QtCore.Qt.MouseButton.NoButton)
        self.nm_per_px: float | None = None
        self.size = 100.0  # bar length in image pixels
        self.plate = QtWidgets.QGraphicsRectItem(self)
        self.plate.setBrush(pg.mkBrush(0, 0, 0, 150))
        self.plate.setPen(pg.mkPen(None))
        self.bar = QtWidgets.QGraphicsRectItem(self)
        self.bar.setBrush(pg.mkBrush(theme.SCALE_BAR))
        self.bar.setPen(pg.mkPen(None))
        self.text = QtWidgets.QGraphicsSimpleTextItem("", self)
        self.text.setBrush(pg.mkBrush(theme.SCALE_BAR))
        f = QtGui.QFont()
        f.setPointSize(11)
        f.setBold(True)
        self.text.setFont(f)

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802 (Qt override)
        return QtCore.QRectF()

    def paint(self, *args) -> None:
        pass

    def setParentItem(self, p) -> None:  # noqa: N802 (Qt override)
        super().setParentItem(p)
        p.sigRangeChanged.connect(self.updateBar)

    def set_calibration(self, nm_per_px: float | None) -> None:
        self.nm_per_px = nm_per_px
        self.updateBar()

    def label_text(self) -> str:
        return self.text.text()

    def updateBar(self) -> None:  # noqa: N802 (pyqtgraph naming)
        view = self.parentItem()
        if view is None:
            return
        (x0, x1), _ = view.viewRange()
        visible_px = max(1e-9, x1 - x0)
        per = self.nm_per_px or 1.0
        length = nice_length(visible_px * per / 5.0)
        if length <= 0:
            return
        self.size = length / per
        if self.nm_per_px is None:
            txt = f"{length:g} px"
        elif length >= 1000:
            txt = f"{length / 1000:g} µm"
        else:
            txt = f"{length:g} nm"
        self.text.setText(txt)
        p1 = view.mapFromViewToItem(self, QtCore.QPointF(0, 0))
        p2 = view.mapFromViewToItem(self, QtCore.QPointF(self.size, 0))
        w = abs((p2 - p1).x())
        tr = self.text.boundingRect()
        # anchored by its top-right corner: text, then the bar below it
        pad = 8
        self.text.setPos(-w / 2 - tr.width() / 2 - pad, pad)
        self.bar.setRect(QtCore.QRectF(-w - pad, pad + tr.height() + 4, w, 8))
        left = min(-w, -w / 2 - tr.width() / 2) - 2 * pad
        self.plate.setRect(QtCore.QRectF(left, 0, -left, tr.height() + 8 + 4 + 2 * pad))


class FrameView(QtWidgets.QWidget):
    """Shows one processed frame with outlines; emits the particle under the mouse.

    Signals
    -------
    particleHovered(object) : ``(result, row)`` of the particle under the cursor or ``None``.
    particleClicked(object) : ``(result, row)`` of a clicked particle or ``None``.
    """

    particleHovered = QtCore.Signal(object)
    particleClicked = QtCore.Signal(object)
    contrastChanged = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: FrameResult | None = None
        self.matches: np.ndarray | None = None
        self.outlines: Outlines | None = None
        self.outlines_drawn = 0
        self.show_outlines = True
        self.low_pct, self.high_pct = CONTRAST_PRESETS[0][1], CONTRAST_PRESETS[0][2]
        self.auto_contrast = True
        self.levels: tuple[float, float] | None = None
        self.last_update_ms: dict[str, float] = {}
        self._shape: tuple[int, int] | None = None
        self._hover_row = -1
        self._selected_row = -1

        self.glw = pg.GraphicsLayoutWidget()
        self.glw.setBackground(theme.VIEW_BG)
        self.vb = self.glw.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.vb.setDefaultPadding(0.0)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.vb.addItem(self.image)
        self._u8: np.ndarray | None = None
        self.shown_factor = 0  # integer downsampling of the uploaded image (0 = nothing uploaded)
        self.vb.sigRangeChanged.connect(self._on_range_changed)
        self.vb.sigResized.connect(self._on_range_changed)

        self.path_other = QtWidgets.QGraphicsPathItem()
        self.path_match = QtWidgets.QGraphicsPathItem()
        self.path_selected = QtWidgets.QGraphicsPathItem()
        for item, colour, width in (
            # width 0 = Qt's one-pixel hairline, ~3× faster to paint than width 1 (measured)
            (self.path_other, theme.OUTLINE_OTHER, 0),
            (self.path_match, theme.OUTLINE_MATCH, 2),
            (self.path_selected, theme.OUTLINE_SELECTED, 3),
        ):
            pen = QtGui.QPen(QtGui.QColor(colour))
            pen.setCosmetic(True)
            pen.setWidth(width)
            item.setPen(pen)
            item.setBrush(QtGui.QBrush(QtCore.Qt.BrushStyle.NoBrush))
            item.setZValue(10)
            self.vb.addItem(item)

        self.show_tracks = True
        self.path_trails = QtWidgets.QGraphicsPathItem()
        self.path_ids = QtWidgets.QGraphicsPathItem()
        for item, brush in ((self.path_trails, None), (self.path_ids, theme.TRAIL)):
            pen = QtGui.QPen(QtGui.QColor(theme.TRAIL))
            pen.setCosmetic(True)
            pen.setWidth(0 if brush else 2)
            item.setPen(pen if brush is None else QtGui.QPen(QtCore.Qt.PenStyle.NoPen))
            item.setBrush(QtGui.QBrush(QtGui.QColor(brush)) if brush else
                          QtGui.QBrush(QtCore.Qt.BrushStyle.NoBrush))
            item.setZValue(11)
            self.vb.addItem(item)

        self.scale_bar = CalibratedScaleBar()
        self.scale_bar.setParentItem(self.vb)
        # top-right: burned-in data bars and scale bars usually sit along the bottom edge
        self.scale_bar.anchor((0, 0), (1, 0), offset=(-16, 16))

        self.scale_bar.setVisible(False)  # until a frame is shown

        self.lut = pg.HistogramLUTWidget(image=self.image, orientation="vertical")
        self.lut.setBackground(theme.PANEL_BG)
        self.lut.setMinimumWidth(110)
        self.lut.setMaximumWidth(130)
        # The LUT's histogram is recomputed on every new image by default; the window refreshes
        # it twice a second instead (refresh_histogram), which is plenty for a contrast control.
        self.image.sigImageChanged.disconnect(self.lut.item.imageChanged)
        self.lut.item.setLevels(0, 255)
        self.lut.item.setHistogramRange(0, 255)

        self.caption = QtWidgets.QLabel("Waiting for the first processed frame …")
        self.caption.setObjectName("frameCaption")
        self.caption.setTextFormat(QtCore.Qt.TextFormat.RichText)

        view_row = QtWidgets.QHBoxLayout()
        view_row.setContentsMargins(0, 0, 0, 0)
        view_row.setSpacing(2)
        view_row.addWidget(self.glw, 1)
        view_row.addWidget(self.lut)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.caption)
        lay.addLayout(view_row, 1)

        self._mouse_proxy = pg.SignalProxy(
            self.glw.scene().sigMouseMoved, rateLimit=30, slot=self._on_mouse_moved
        )
        self.glw.scene().sigMouseClicked.connect(self._on_mouse_clicked)

    # -- public API ------------------------------------------------------------------------------
    def set_contrast(self, low_pct: float, high_pct: float) -> None:
        """Percentile auto-levels used for every new frame (and re-applied to this one)."""
        self.low_pct, self.high_pct = low_pct, high_pct
        self.auto_contrast = True
        if self.result is not None:
            self.set_result(self.result, self.matches, keep_outlines=True)
        self.contrastChanged.emit()

    def set_show_tracks(self, show: bool) -> None:
        """Track trails and IDs on or off."""
        self.show_tracks = bool(show)
        for item in (self.path_trails, self.path_ids):
            item.setVisible(self.show_tracks)

    def set_track_paths(self, paths: tuple[QtGui.QPainterPath, QtGui.QPainterPath] | None) -> None:
        trails, ids = paths if paths is not None else (QtGui.QPainterPath(), QtGui.QPainterPath())
        self.path_trails.setPath(trails)
        self.path_ids.setPath(ids)

    def set_show_outlines(self, show: bool) -> None:
        self.show_outlines = bool(show)
        for item in (self.path_match, self.path_other, self.path_selected):
            item.setVisible(self.show_outlines)

    def set_result(
        self,
        result: FrameResult,
        matches: np.ndarray | None = None,
        *,
        keep_outlines: bool = False,
        outlines: Outlines | None = None,
        display: tuple[np.ndarray, tuple[float, float]] | None = None,
        small: tuple[np.ndarray | None, int] = (None, 0),
        paths: tuple[QtGui.QPainterPath, QtGui.QPainterPath, int] | None = None,
    ) -> None:
        """Show ``result``: image, outlines (``matches`` = target mask per row), scale bar.

        ``display`` = (uint8 pixels, levels) already prepared off the GUI thread, else they are
        computed here with the current contrast setting. ``paths`` = :func:`outline_paths` of
        these outlines and matches, built off the GUI thread (else built here).
        """
        t0 = time.perf_counter()
        if display is not None:
            u8, self.levels = display
        else:
            pixels = result.frame.pixels
            self.levels = auto_levels(pixels, self.low_pct, self.high_pct)
            u8 = to_display_u8(pixels, self.levels)
        t1 = time.perf_counter()
        first = self._shape is None
        self._u8 = u8
        if self._shape != u8.shape:
            self._shape = u8.shape
            self.vb.setRange(QtCore.QRectF(0, 0, u8.shape[1], u8.shape[0]), padding=0.0)
        self._upload(True, *small)
        if first:
            self.image.setLevels((0, 255))
        t2 = time.perf_counter()

        same = self.result is result
        self.result = result
        n = len(result.particles.get("label", ()))
        self.matches = (
            np.asarray(matches, bool) if matches is not None and len(matches) == n else None
        )
        if outlines is not None:
            self.outlines = outlines
        elif not (keep_outlines and same and self.outlines is not None):
            self.outlines = (
                particle_outlines(result.labels, result.particles)
                if result.labels is not None and n
                else None
            )
        t3 = time.perf_counter()
        if paths is not None and outlines is not None:
            self._set_paths(paths)
        else:
            self._draw_outlines()
        if not same:
            self._selected_row = -1
            self.path_selected.setPath(QtGui.QPainterPath())
        cal = result.calibration
        self.scale_bar.setVisible(True)
        self.scale_bar.set_calibration(cal.nm_per_px[1] if cal.nm_per_px else None)
        self._update_caption()
        t4 = time.perf_counter()
        self.last_update_ms = {
            "scale_u8": (t1 - t0) * 1e3,
            "set_image": (t2 - t1) * 1e3,
            "outlines": (t3 - t2) * 1e3,
            "paths": (t4 - t3) * 1e3,
        }

    def refresh_histogram(self) -> None:
        """Recompute the contrast control's pixel histogram from the image shown."""
        if self._shape is not None:
            self.lut.item.imageChanged()

    def display_factor(self) -> int:
        """Image pixels per screen pixel in the current view, rounded down (≥ 1)."""
        if self._shape is None:
            return 1
        (x0, x1), (y0, y1) = self.vb.viewRange()
        w, h = self.vb.width(), self.vb.height()
        if w < 50 or h < 50:  # not laid out yet: full resolution until it is
            return 1
        per = min(x1 - x0, self._shape[1]) / w, min(y1 - y0, self._shape[0]) / h
        return display_factor(max(per))

    def _upload(
        self, force: bool = False, small: np.ndarray | None = None, factor: int = 0
    ) -> None:
        """Send the uint8 frame to the image item, area-averaged to about screen resolution.

        Zoomed out on a 4k frame the screen shows ~1 of every 4×4 pixels: averaging them with
        ``cv2.INTER_AREA`` is both faster to paint and truer than nearest-pixel sampling. Zooming
        in re-uploads at full resolution. Coordinates stay image pixels (``setRect``).
        """
        if self._u8 is None:
            return
        f = self.display_factor()
        if f == self.shown_factor and not force:
            return
        h, w = self._u8.shape
        img = small if (small is not None and factor == f) else downsample(self._u8, f)
        self.image.setImage(img, autoLevels=False)
        self.image.setRect(QtCore.QRectF(0, 0, w, h))
        self.shown_factor = f

    def _on_range_changed(self, *args) -> None:
        if self._u8 is not None and self.display_factor() != self.shown_factor:
            self._upload()

    def show_picture(self, rgba: np.ndarray, caption: str) -> None:
        """Show a ready-made picture (a saved snapshot) without outlines or measurements."""
        self.result = None
        self.outlines = None
        self._draw_outlines()
        self.path_selected.setPath(QtGui.QPainterPath())
        self._u8 = None
        self.shown_factor = 0
        self.image.setImage(rgba, autoLevels=False, levels=(0, 255))
        h, w = rgba.shape[:2]
        self.image.setRect(QtCore.QRectF(0, 0, w, h))
        self._shape = (h, w)
        self.vb.setRange(QtCore.QRectF(0, 0, w, h), padding=0.0)
        self.scale_bar.setVisible(False)
        self.caption.setText(caption)

    def select_row(self, row: int) -> None:
        """Highlight one particle-table row (``-1`` clears)."""
        self._selected_row = row
        path = QtGui.QPainterPath()
        if row >= 0 and self.outlines is not None:
            k = np.flatnonzero(self.outlines.rows == row)
            if len(k):
                sel = np.zeros(len(self.result.particles["label"]), bool)
                sel[row] = True
                o = self.outlines.select(sel)
                path = _outline_path(o)
        self.path_selected.setPath(path)

    def row_at(self, x: float, y: float) -> int:
        """Particle-table row under image coordinates (x, y), or -1."""
        r = self.result
        if r is None or r.labels is None:
            return -1
        ix, iy = int(math.floor(x)), int(math.floor(y))
        h, w = r.labels.shape
        if not (0 <= ix < w and 0 <= iy < h):
            return -1
        lab = int(r.labels[iy, ix])
        if lab <= 0:
            return -1
        rows = np.flatnonzero(r.particles["label"] == lab)
        return int(rows[0]) if len(rows) else -1

    # -- internals -------------------------------------------------------------------------------
    def _draw_outlines(self) -> None:
        n = len(self.result.particles["label"]) if self.result is not None else 0
        self._set_paths(outline_paths(self.outlines if n else None, self.matches, n))

    def _set_paths(self, paths: tuple[QtGui.QPainterPath, QtGui.QPainterPath, int]) -> None:
        match, other, self.outlines_drawn = paths
        self.path_match.setPath(match)
        self.path_other.setPath(other)

    def _update_caption(self) -> None:
        r = self.result
        if r is None:
            return
        f = r.frame
        h, w = f.shape
        cal = r.calibration
        if cal.nm_per_px:
            calib = f"{cal.nm_per_px[1]:.3g} nm/px <span style='color:{theme.TEXT_DIM}'>({cal.source})</span>"
        else:
            calib = f"<span style='color:{theme.WARN}'>uncalibrated (px)</span>"
        n = r.summary.count
        nm = int(self.matches.sum()) if self.matches is not None else 0
        tgt = f" · <span style='color:{theme.OUTLINE_MATCH}'>{nm} target</span>" if nm else ""
        ts = time.strftime("%H:%M:%S", time.localtime(f.t_acq))
        lv = f" · levels {self.levels[0]:.4g}–{self.levels[1]:.4g}" if self.levels else ""
        conf = ""
        if getattr(r, "confidence", None) is not None:
            conf = f" · confidence {r.confidence:.2f}"
        if getattr(r, "seg_flag", None):
            conf += f" · <span style='color:{theme.WARN}'>⚠ doubtful segmentation</span>"
        state = getattr(r, "state", "ok") or "ok"
        if state != "ok":  # the frame's state (process.quality): left out of the statistics
            left_out = "" if state == "moved" else ", not in the statistics"
            conf += (f" · <span style='color:{theme.WARN}'>⚠ {state.replace('_', ' ')}"
                     f"{left_out}</span>")
        self.caption.setText(
            f"<b>Frame #{r.seq}</b> · acquired {ts} · {w}×{h} px · {calib} · "
            f"<b>{n}</b> particles{tgt} · {r.backend}{conf}"
            f"<span style='color:{theme.TEXT_DIM}'>{lv}</span>"
        )
        self.caption.setToolTip(r.seg_flag or "")

    def _on_mouse_moved(self, evt) -> None:
        pos = evt[0]
        if self.result is None or not self.vb.sceneBoundingRect().contains(pos):
            return
        p = self.vb.mapSceneToView(pos)
        row = self.row_at(p.x(), p.y())
        if row != self._hover_row:
            self._hover_row = row
            self.particleHovered.emit((self.result, row) if row >= 0 else None)
            if row >= 0:
                info = particle_info(self.result, row, self._matches_row(row))
                tip = "<br>".join(f"{k}: <b>{v}</b>" for k, v in info[:8])
                QtWidgets.QToolTip.showText(QtGui.QCursor.pos(), tip, self.glw)
            else:
                QtWidgets.QToolTip.hideText()

    def _on_mouse_clicked(self, evt) -> None:
        if self.result is None:
            return
        p = self.vb.mapSceneToView(evt.scenePos())
        row = self.row_at(p.x(), p.y())
        self.select_row(row)
        self.particleClicked.emit((self.result, row) if row >= 0 else None)

    def _matches_row(self, row: int) -> bool | None:
        return bool(self.matches[row]) if self.matches is not None else None
