"""The live window (pyqtgraph). The only package that imports Qt.

Importing this package is Qt-free so that the CLI can ask :func:`display_available` before it
decides between the window and the terminal view. The Qt parts are imported on first use:

- :class:`emstream.gui.bridge.GuiSink` (also ``emstream.gui.GuiSink``): the sink the pipeline feeds.
- :func:`emstream.gui.app.run_monitor_window`: open the live window around a running pipeline.
- :func:`emstream.gui.app.view_session`: re-open a finished session from its ledger for review.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["GuiSink", "display_available", "qt_available"]


def display_available() -> bool:
    """Can a window be shown here?

    True on Windows and macOS (a desktop session is assumed), on Linux when ``DISPLAY`` or
    ``WAYLAND_DISPLAY`` is set, and anywhere ``QT_QPA_PLATFORM`` is set (``offscreen`` renders
    without a screen, which the tests and ``--screenshot`` use). Does not import Qt.
    """
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform.startswith("win") or sys.platform == "darwin":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def qt_available() -> bool:
    """Are PySide6 and pyqtgraph installed (the ``emstream[gui]`` extra)? Does not import them."""
    from importlib.util import find_spec

    return find_spec("PySide6") is not None and find_spec("pyqtgraph") is not None


def __getattr__(name: str) -> Any:
    # Lazy: ``from emstream.gui import GuiSink`` imports Qt only when it is asked for.
    if name == "GuiSink":
        from emstream.gui.bridge import GuiSink

        return GuiSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
