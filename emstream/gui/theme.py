"""Colours, fonts and the dark style of the window (a dim room next to a microscope)."""

from __future__ import annotations

WINDOW_BG = "#1b1d21"
PANEL_BG = "#22252b"
VIEW_BG = "#101113"
BORDER = "#343841"
TEXT = "#e6e8eb"
TEXT_DIM = "#9aa1ab"
ACCENT = "#4aa3ff"
WARN = "#ffb347"
CRITICAL = "#ff5c5c"
OK = "#59d38c"

OUTLINE_OTHER = "#39d0ff"  # cyan: every measured particle
OUTLINE_MATCH = "#ff4fd8"  # magenta: particles matching a target rule
TRAIL = "#c58cff"  # violet: where tracked particles moved on the sample
EVENT_COALESCENCE = "#ff6b6b"
EVENT_NUCLEATION = "#4aa3ff"
OUTLINE_SELECTED = "#ffe14a"  # yellow: the particle picked with the mouse
SCALE_BAR = "#ffffff"

HIST_SESSION = "#4aa3ff"
HIST_RECENT = "#59d38c"
HIST_FRAME = "#ffb347"
QUANTILE = "#e6e8eb"

SEVERITY_COLOURS = {"info": ACCENT, "warning": WARN, "critical": CRITICAL}

STYLE_SHEET = f"""
QWidget {{ background: {WINDOW_BG}; color: {TEXT}; font-size: 10pt; }}
QMainWindow::separator {{ background: {BORDER}; width: 3px; height: 3px; }}
QGroupBox {{ border: 1px solid {BORDER}; border-radius: 4px; margin-top: 14px; padding-top: 6px;
            background: {PANEL_BG}; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 8px; padding: 0 4px; color: {TEXT_DIM};
                    font-weight: bold; }}
QTabWidget::pane {{ border: 1px solid {BORDER}; background: {PANEL_BG}; }}
QTabBar::tab {{ background: {WINDOW_BG}; color: {TEXT_DIM}; padding: 5px 12px;
               border: 1px solid {BORDER}; border-bottom: none; }}
QTabBar::tab:selected {{ background: {PANEL_BG}; color: {TEXT}; }}
QToolBar {{ background: {PANEL_BG}; border-bottom: 1px solid {BORDER}; spacing: 6px; padding: 3px; }}
QToolButton, QPushButton {{ background: #2d3138; border: 1px solid {BORDER}; border-radius: 3px;
                            padding: 3px 9px; color: {TEXT}; }}
QToolButton:checked, QPushButton:checked {{ background: #2f4d6e; border-color: {ACCENT}; }}
QToolButton:hover, QPushButton:hover {{ border-color: {ACCENT}; }}
QComboBox {{ background: #2d3138; border: 1px solid {BORDER}; padding: 2px 6px; }}
QCheckBox {{ spacing: 5px; }}
QTableWidget, QTableView {{ background: {PANEL_BG}; alternate-background-color: #262a31;
                           gridline-color: {BORDER}; selection-background-color: #2f4d6e; }}
QHeaderView::section {{ background: #2a2e35; color: {TEXT_DIM}; border: none;
                       border-right: 1px solid {BORDER}; padding: 3px 6px; font-weight: bold; }}
QStatusBar {{ background: {PANEL_BG}; border-top: 1px solid {BORDER}; }}
QStatusBar QLabel {{ color: {TEXT}; padding: 0 6px; }}
QLabel#frameCaption {{ color: {TEXT}; font-size: 11pt; padding: 2px 4px; }}
QFrame#alertBanner {{ border-radius: 4px; }}
QLabel#alertBannerText {{ font-size: 12pt; font-weight: bold; background: transparent; }}
QToolTip {{ background: #2d3138; color: {TEXT}; border: 1px solid {ACCENT}; }}
"""


def apply(app) -> None:
    """Dark Fusion style for ``app`` and pyqtgraph's defaults."""
    import pyqtgraph as pg
    from PySide6 import QtGui

    app.setStyle("Fusion")
    pal = QtGui.QPalette()
    roles = QtGui.QPalette.ColorRole
    for role, colour in (
        (roles.Window, WINDOW_BG),
        (roles.WindowText, TEXT),
        (roles.Base, PANEL_BG),
        (roles.AlternateBase, "#262a31"),
        (roles.Text, TEXT),
        (roles.Button, "#2d3138"),
        (roles.ButtonText, TEXT),
        (roles.Highlight, "#2f4d6e"),
        (roles.HighlightedText, TEXT),
        (roles.ToolTipBase, "#2d3138"),
        (roles.ToolTipText, TEXT),
    ):
        pal.setColor(role, QtGui.QColor(colour))
    app.setPalette(pal)
    app.setStyleSheet(STYLE_SHEET)
    pg.setConfigOptions(imageAxisOrder="row-major", background=PANEL_BG, foreground=TEXT)
