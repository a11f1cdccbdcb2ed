"""Alerts: a table of every alert, a banner for the newest one, acknowledge, and sound."""

from __future__ import annotations

import time

from PySide6 import QtCore, QtGui, QtWidgets

from emstream.gui import theme
from emstream.results import Alert

__all__ = ["AlertBanner", "AlertsPanel"]

_COLUMNS = ("Time", "Frame", "Rule", "Severity", "Message")


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


class AlertBanner(QtWidgets.QFrame):
    """A coloured strip across the window for the newest unacknowledged alert."""

    acknowledged = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("alertBanner")
        self.text = QtWidgets.QLabel("")
        self.text.setObjectName("alertBannerText")
        self.text.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.button = QtWidgets.QPushButton("Acknowledge")
        self.button.setShortcut(QtGui.QKeySequence("Ctrl+K"))
        self.button.clicked.connect(self.acknowledge)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(10, 6, 10, 6)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.button)
        self.pending = 0
        self.setVisible(False)

    def show_alert(self, alert: Alert) -> None:
        self.pending += 1
        colour = theme.SEVERITY_COLOURS.get(alert.severity, theme.WARN)
        fg = "#111" if alert.severity != "critical" else "#fff"
        self.setStyleSheet(
            f"QFrame#alertBanner {{ background: {colour}; }} "
            f"QLabel#alertBannerText {{ color: {fg}; }} "
            f"QPushButton {{ background: rgba(0,0,0,0.25); color: {fg}; border: 1px solid {fg}; }}"
        )
        where = f"frame #{alert.seq}" if alert.seq is not None else "session"
        more = f"  (+{self.pending - 1} more)" if self.pending > 1 else ""
        self.text.setText(
            f"⚠ {alert.severity.upper()} · {_clock(alert.t)} · {alert.rule} · {where} — "
            f"{alert.message}{more}"
        )
        self.setVisible(True)

    def acknowledge(self) -> None:
        self.pending = 0
        self.setVisible(False)
        self.acknowledged.emit()


class AlertsPanel(QtWidgets.QWidget):
    """Every alert of the session, newest first (bounded to ``max_rows``)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, max_rows: int = 5000) -> None:
        super().__init__(parent)
        self.max_rows = max_rows
        self.total = 0
        self.unacknowledged = 0
        self._last_beep = 0.0
        self.beeps = 0
        self.table = QtWidgets.QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        hh = self.table.horizontalHeader()
        for i in range(len(_COLUMNS) - 1):
            hh.setSectionResizeMode(i, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        hh.setStretchLastSection(True)
        self.header = QtWidgets.QLabel("No alerts")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.header)
        lay.addWidget(self.table, 1)

    def add_alert(self, alert: Alert) -> None:
        self.total += 1
        self.unacknowledged += 1
        self.table.insertRow(0)
        colour = QtGui.QColor(theme.SEVERITY_COLOURS.get(alert.severity, theme.WARN))
        values = (
            _clock(alert.t),
            "" if alert.seq is None else str(alert.seq),
            alert.rule,
            alert.severity,
            alert.message,
        )
        for col, v in enumerate(values):
            item = QtWidgets.QTableWidgetItem(v)
            if col == 3:
                item.setForeground(colour)
                f = item.font()
                f.setBold(True)
                item.setFont(f)
            self.table.setItem(0, col, item)
        while self.table.rowCount() > self.max_rows:
            self.table.removeRow(self.table.rowCount() - 1)
        self._update_header()
        if "sound" in alert.actions:
            self._beep()

    def acknowledge_all(self) -> None:
        self.unacknowledged = 0
        self._update_header()

    def rows(self) -> list[tuple[str, ...]]:
        """The table's text, newest first (for tests and export)."""
        t = self.table
        return [
            tuple(t.item(r, c).text() for c in range(t.columnCount())) for r in range(t.rowCount())
        ]

    def _update_header(self) -> None:
        un = (
            f" · <b style='color:{theme.WARN}'>{self.unacknowledged} unacknowledged</b>"
            if self.unacknowledged
            else ""
        )
        self.header.setText(f"{self.total} alert{'s' if self.total != 1 else ''}{un}")

    def _beep(self) -> None:
        now = time.monotonic()
        if now - self._last_beep < 1.0:  # one beep a second at most, however many alerts
            return
        self._last_beep = now
        self.beeps += 1
        QtWidgets.QApplication.beep()
