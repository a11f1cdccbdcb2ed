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

__all__ = ["GuiSink", "display_available", "qt_available", "window_problem"]


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


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships a shared library: ``libxcb-icccm.so.4`` ->
    ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` -> ``libxkbcommon-x11-0``, ``libEGL.so.1`` ->
    ``libegl1`` (Debian's naming rule for library packages)."""
    base, _, version = soname.partition(".so")
    version = version.lstrip(".").split(".")[0]
    base = base.lower()
    return f"{base}-{version}" if base[-1:].isdigit() and version else f"{base}{version}"


def missing_libraries(ldd_output: str) -> list[str]:
    """Shared libraries ``ldd`` reports as ``not found``."""
    out = []
    for line in ldd_output.splitlines():
        if "not found" in line:
            name = line.split("=>", 1)[0].strip()
            if name and name not in out:
                out.append(name)
    return out


def _qt_plugin_libraries() -> list[str]:
    """Libraries the Qt xcb platform plugin needs that this system lacks (Linux only)."""
    import shutil
    import subprocess
    from importlib.util import find_spec

    spec = find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations or not shutil.which("ldd"):
        return []
    from pathlib import Path

    root = Path(list(spec.submodule_search_locations)[0]) / "Qt"
    missing: list[str] = []
    for lib in (root / "plugins" / "platforms" / "libqxcb.so", *root.glob("lib/libQt6XcbQpa.so*")):
        if lib.is_file():
            try:
                out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, timeout=20)
            except (OSError, subprocess.SubprocessError):
                continue
            missing += [m for m in missing_libraries(out.stdout) if m not in missing]
    return missing


def window_problem(timeout: float = 30.0) -> str | None:
    """Why the live window cannot open here, ``None`` when it can. Qt is tried in a child
    process: a platform plugin that cannot load aborts the process that loads it (rc 134)."""
    import subprocess

    if not qt_available():
        return "PySide6 / pyqtgraph are not installed (pip install 'emstream[gui]')"
    code = ("import sys; from PySide6.QtWidgets import QApplication; "
            "app = QApplication(sys.argv[:1]); print('window ok')")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the Qt window did not start within {timeout:g} s"
    if proc.returncode == 0 and "window ok" in proc.stdout:
        return None
    why = "the Qt window cannot start here"
    if "platform plugin" in proc.stderr:
        why += " (its platform plugin does not load)"
    missing = _qt_plugin_libraries() if sys.platform.startswith("linux") else []
    if missing:
        pkgs = " ".join(sorted({debian_package(m) for m in missing}))
        why += f": missing system libraries {', '.join(missing)}; on Debian/Ubuntu: " \
               f"sudo apt-get install {pkgs}"
    else:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or [""]
        why += f": {last[0][:200]}" if last[0] else ""
    return why


def __getattr__(name: str) -> Any:
    # Lazy: ``from emstream.gui import GuiSink`` imports Qt only when it is asked for.
    if name == "GuiSink":
        from emstream.gui.bridge import GuiSink

        return GuiSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
