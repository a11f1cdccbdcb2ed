"""GUI test fixtures (offscreen Qt)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).parent))  # gui_sim_frames (tests run in importlib mode)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def window_factory(qtbot):
    """Make a themed MonitorWindow (registered with qtbot so it is closed after the test)."""
    from emstream.gui.app import application
    from emstream.gui.window import MonitorWindow

    application()

    def make(sink=None, **kw):
        win = MonitorWindow(sink, **kw)
        qtbot.addWidget(win)
        win.show()
        return win

    return make
