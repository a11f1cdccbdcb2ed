"""Entry points: the live monitor window around a running pipeline, and session review.

The CLI layer (``emstream watch / listen / demo / view``) calls these; they own the Qt
application and event loop and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from emstream.gui import theme
from emstream.gui.bridge import GuiSink
from emstream.gui.qt_compat import guard_emit_refcount_bug
from emstream.gui.window import MonitorWindow
from emstream.results import Alert
from emstream.sinks.base import Sink

log = logging.getLogger(__name__)

__all__ = ["run_monitor_window", "view_session", "main", "application", "save_screenshot"]

#: How often the window checks whether the pipeline has finished.
_POLL_MS = 200


def application() -> QtWidgets.QApplication:
    """The process's QApplication (created on first use) with the emstream dark theme."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        QtGui.QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
            QtCore.Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
        )
        app = QtWidgets.QApplication(sys.argv[:1])
        app.setApplicationName("emstream")
    guard_emit_refcount_bug()
    if not app.property("emstream_themed"):
        theme.apply(app)
        app.setProperty("emstream_themed", True)
    return app


def save_screenshot(window: QtWidgets.QWidget, path: str | Path) -> Path:
    """Render ``window`` (works offscreen) to a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    QtWidgets.QApplication.processEvents()
    # every panel of one moment: live, the histogram follows a newly drawn frame at <= 5 Hz
    refresh_all = getattr(window, "refresh_all", None)
    if callable(refresh_all):
        refresh_all()
    if not window.grab().save(str(path)):
        raise OSError(f"could not write screenshot {path}")
    return path


def _pipeline_done(handle: Any) -> bool:
    """Has the pipeline behind ``handle`` finished? Understands ``done()``, ``is_alive()``,
    ``join(timeout)`` returning a bool, and ``done`` / ``finished`` attributes."""
    if handle is None:
        return False
    for name in ("done", "finished"):
        done = getattr(handle, name, None)
        if callable(done):
            return bool(done())
        if isinstance(done, bool):
            return done
    is_alive = getattr(handle, "is_alive", None)
    if callable(is_alive):
        return not is_alive()
    join = getattr(handle, "join", None)
    if callable(join):
        try:
            r = join(0)
        except TypeError:
            return False
        return bool(r) if isinstance(r, bool) else False
    return False


def _attach_listener(handle: Any, sink: GuiSink) -> bool:
    """Feed the session statistics every terminal record (the GUI sink itself is latest-only)."""
    for obj in (handle, getattr(handle, "pipeline", None)):
        add = getattr(obj, "add_listener", None)
        if callable(add):
            add(sink.account)
            return True
    return False


def _stop(handle: Any, timeout: float = 10.0) -> None:
    if handle is None:
        return
    try:
        stop = getattr(handle, "stop", None)
        if callable(stop):
            stop()
        join = getattr(handle, "join", None)
        if callable(join):
            try:
                join(timeout)
            except TypeError:
                join()
    except Exception:
        log.exception("stopping the pipeline failed")


def run_monitor_window(
    start: Callable[[list[Sink]], Any],
    *,
    stats: Callable[[], Any] | None = None,
    screenshot: str | Path | None = None,
    title: str = "emstream — live monitor",
    exit_when: str | bool | Callable[[], bool] | None = None,
    rules: Any = None,
    on_window: Callable[[MonitorWindow], None] | None = None,
) -> int:
    """Open the live window, start the pipeline with the GUI sink, run the Qt event loop.

    Parameters
    ----------
    start : callable
        ``start(sinks)`` starts the pipeline with ``sinks`` (the GUI sink) added and returns a
        handle with ``.stop()`` and ``.done()`` / ``.is_alive()`` / ``.join(timeout)``.
    stats : callable, optional
        Returns the pipeline statistics (dict or ``PipelineStats``) for the status bar.
    screenshot : path, optional
        Save the window as PNG when the pipeline finishes (or when the window closes first).
    title : str
        Window title.
    exit_when : ``"finished"`` / ``True``, ``"never"``, a callable, or ``None``
        ``"finished"``: close when the pipeline finishes (after the screenshot). A callable is
        polled every 200 ms and closes the window when it returns True. ``"never"``: stay open
        until the operator closes the window. ``None`` (default): ``"finished"`` on the
        ``offscreen`` Qt platform (nobody could close that window), else ``"never"``.
    rules : RuleEngine or RulesFile, optional
        Colours outlines of target particles (``.matching(particles)``).
    on_window : callable, optional
        Called with the window once it is shown (tests, CLI extras).

    Returns
    -------
    int
        Exit code: 0.
    """
    app = application()
    if exit_when is None:
        exit_when = "finished" if app.platformName() == "offscreen" else "never"
    sink = GuiSink()
    win = MonitorWindow(sink, stats=stats, rules=rules, title=title)
    win.show()
    state = {"handle": None, "finished": False, "shot": False, "stopped": False}

    def take_screenshot() -> None:
        if screenshot and not state["shot"]:
            state["shot"] = True
            path = save_screenshot(win, screenshot)
            log.info("screenshot saved to %s", path)

    def stop_pipeline() -> None:
        if not state["stopped"]:
            state["stopped"] = True
            _stop(state["handle"])

    def on_closing() -> None:
        take_screenshot()
        poll_timer.stop()
        stop_pipeline()

    def poll() -> None:
        if not state["finished"] and (sink.closed or _pipeline_done(state["handle"])):
            state["finished"] = True
            win.status.extra = "finished · "
            take_screenshot()
            if exit_when in ("finished", True):
                win.close()
                return
        if callable(exit_when) and exit_when():
            win.close()

    win.closing.connect(on_closing)
    poll_timer = QtCore.QTimer(win)
    poll_timer.setInterval(_POLL_MS)
    poll_timer.timeout.connect(poll)
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda *_: win.close())
    except ValueError:  # not the main thread
        previous = None
    try:
        state["handle"] = start([sink])
        _attach_listener(state["handle"], sink)
        if win.rules is None:  # colour target particles with the pipeline's own rules
            h = state["handle"]
            win.rules = getattr(h, "rules", None) or getattr(
                getattr(h, "pipeline", None), "rules", None
            )
        if on_window is not None:
            on_window(win)
        poll_timer.start()
        if win.isVisible():
            app.exec()
    finally:
        poll_timer.stop()
        stop_pipeline()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 0


def view_session(
    session_dir: str | Path,
    screenshot: str | Path | None = None,
    *,
    on_window: Callable[[MonitorWindow], None] | None = None,
) -> int:
    """Re-open a finished session for review: histograms, trends, alerts and snapshots.

    With ``screenshot`` the window is rendered, saved and closed at once (no event loop).
    Returns 0, or 2 when the folder holds no ledger.
    """
    from emstream.gui.review import load_session

    try:
        review = load_session(session_dir)
    except FileNotFoundError as exc:
        print(f"emstream view: {exc}", file=sys.stderr)
        return 2
    app = application()
    win = build_review_window(review)
    win.show()
    if on_window is not None:
        on_window(win)
    if screenshot:
        save_screenshot(win, screenshot)
        win.close()
        return 0
    app.exec()
    return 0


def build_review_window(review) -> MonitorWindow:
    """A :class:`MonitorWindow` in review mode filled from a :class:`SessionReview`."""
    from emstream.gui.snapshots import SnapshotBrowser

    name = review.session_dir.name
    win = MonitorWindow(
        None, stats=review.stats, title=f"emstream — review {name}", statistics=review.statistics
    )
    win.session_dir = review.session_dir
    win.status.session_dir = str(review.session_dir)
    win.status.extra = "review · "
    for a in review.alerts:
        win.alerts_panel.add_alert(_silent(a))
    win.alerts_panel.acknowledge_all()
    browser = SnapshotBrowser(win.frame_view, review.snapshots)
    win.snapshot_browser = browser
    if review.snapshots:
        win.centralWidget().layout().insertWidget(1, browser)
    else:  # no pixels to show: the frame panel becomes the session summary
        win.frame_group.hide()
        win.main_splitter.insertWidget(0, session_summary(review))
        win.main_splitter.setSizes([560, 0, 1120])
    for act in (win.act_pause, win.act_back, win.act_forward, win.act_live):
        act.setEnabled(False)
    win.size_panel.cb_frame.setChecked(False)
    win.size_panel.cb_frame.setVisible(False)
    win.size_panel.legend.removeItem(win.size_panel.curve_frame)
    win.refresh_all()
    return win


def session_summary(review) -> QtWidgets.QWidget:
    """A panel of the session's facts for review mode (when there are no snapshots to show)."""
    import math
    import time as _time

    from emstream.gui.session_stats import quantiles_from_counts

    st = review.statistics
    counts = st.counts()
    sess, _ = st.histogram_snapshot("equivalent_diameter_nm")
    from emstream.gui.session_stats import QUANTITIES

    q = quantiles_from_counts(sess, QUANTITIES["equivalent_diameter_nm"].edges)
    qs = " / ".join(f"{v:.3g}" if math.isfinite(v) else "–" for v in q)
    info = review.info
    d = review.stats()
    t_start = info.get("t_start")
    started = (
        _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(float(t_start)))
        if isinstance(t_start, (int, float))
        else "–"
    )
    mins = review.duration_s / 60.0
    unit = st.unit or "nm"
    rows = [
        ("Session folder", str(review.session_dir)),
        ("Source", d["source"] or "–"),
        ("Segmenter / backend", d["backend"] or "–"),
        ("Started", started),
        ("Acquisition span", f"{mins:.1f} min" if mins else "–"),
        ("Frames processed", f"{d['processed']:,}"),
        ("Quarantined / skipped", f"{d['quarantined']:,} / {d['skipped']:,}"),
        ("Particles measured", f"{counts['particles']:,}"),
        (f"D10 / D50 / D90 ({unit})", qs),
        ("Alerts", f"{len(review.alerts):,}"),
    ]
    html = (
        "<table cellspacing='0' cellpadding='5'>"
        + "".join(
            f"<tr><td style='color:{theme.TEXT_DIM}'>{k}</td><td><b>{v}</b></td></tr>"
            for k, v in rows
        )
        + "</table>"
    )
    label = QtWidgets.QLabel(
        f"<h2 style='margin:0'>Session review</h2>{html}"
        f"<p style='color:{theme.TEXT_DIM}'>Frames are not stored in the ledger and this session "
        "saved no snapshots; the plots cover every processed frame.</p>"
    )
    label.setTextFormat(QtCore.Qt.TextFormat.RichText)
    label.setWordWrap(True)
    label.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop | QtCore.Qt.AlignmentFlag.AlignLeft)
    label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
    box = QtWidgets.QGroupBox("Session")
    lay = QtWidgets.QVBoxLayout(box)
    lay.addWidget(label)
    return box


def _silent(a: Alert) -> Alert:
    return Alert(a.rule, a.severity, a.seq, a.message, a.t, list(a.particle_labels), [], a.builtin)


def main(argv: Sequence[str] | None = None) -> int:
    """``emstream-gui [SESSION] [--screenshot FILE]``: review a session (asks for a folder)."""
    p = argparse.ArgumentParser(prog="emstream-gui", description=main.__doc__)
    p.add_argument("session", nargs="?", help="session folder (holds ledger.sqlite)")
    p.add_argument("--screenshot", help="save the window as PNG and exit")
    args = p.parse_args(argv)
    session = args.session
    if session is None:
        application()
        session = QtWidgets.QFileDialog.getExistingDirectory(None, "Open an emstream session")
        if not session:
            return 0
    return view_session(session, args.screenshot)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
