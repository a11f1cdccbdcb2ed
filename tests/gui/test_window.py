"""The live window, driven offscreen through the GUI sink from a pipeline-like thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gui_sim_frames import as_record, make_result

pytestmark = pytest.mark.gui


class SizeRule:
    """A stand-in for RuleEngine.matching: target = equivalent diameter above a threshold."""

    def __init__(self, min_nm: float) -> None:
        self.min_nm = min_nm

    def matching(self, particles, unit="nm"):
        return particles["equivalent_diameter_nm"] >= self.min_nm


def feed(sink, results, *, alerts=(), delay=0.0) -> threading.Thread:
    """Call the sink from a background thread, as the pipeline's sink runner does."""

    def run():
        for r in results:
            sink.frame_done(as_record(r))
            if delay:
                time.sleep(delay)
        for a in alerts:
            sink.alert(a)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_display_available_does_not_import_qt():
    code = (
        "import sys, emstream.gui as g; g.display_available(); g.qt_available();"
        "print('PySide6' in sys.modules, 'pyqtgraph' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_display_available_follows_environment(monkeypatch):
    from emstream import gui

    for var in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert gui.display_available() is False
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert gui.display_available() is True
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert gui.display_available() is True
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.setattr(sys, "platform", "win32")
    assert gui.display_available() is True


def test_outlines_drawn_equal_particles_measured(window_factory, rng):
    from emstream.gui.bridge import GuiSink

    sink = GuiSink()
    win = window_factory(sink, rules=SizeRule(8.0))
    r = make_result(rng, 0, n=50)
    win.show_result(r)
    n = len(r.particles["label"])
    assert n == r.summary.count >= 45
    assert win.frame_view.outlines.count == n
    assert win.frame_view.outlines_drawn == n
    target = int((r.particles["equivalent_diameter_nm"] >= 8.0).sum())
    assert 0 < target < n
    assert win.frame_view.matches.sum() == target
    # the magenta path holds exactly the target particles' outlines (one closed loop each)
    o = win.frame_view.outlines.select(win.frame_view.matches)
    assert o.count == target
    assert int((o.connect == 0).sum()) == target
    win.frame_view.set_show_outlines(False)
    assert not win.frame_view.path_match.isVisible()


def test_sink_feeds_window_and_session_histogram(qtbot, window_factory, rng):
    from emstream.gui.bridge import GuiSink
    from emstream.gui.session_stats import QUANTITIES

    sink = GuiSink()
    win = window_factory(sink)
    results = [make_result(rng, i, shape=(256, 256), n=20) for i in range(25)]
    t = feed(sink, results)
    t.join(30)
    qtbot.waitUntil(lambda: win.frame_view.result is results[-1], timeout=10_000)
    # sized = not cut by the image edge (counted, never sized: the report and rules agree)
    inside = [~r.particles["touches_border"].astype(bool) for r in results]
    total = int(sum(k.sum() for k in inside))
    cut = sum(len(r.particles["label"]) for r in results) - total
    st = sink.statistics
    assert st.counts() == {"frames_ok": 25, "frames_other": 0, "particles": total,
                           "edge_cut": cut}
    session, recent = st.histogram_snapshot("equivalent_diameter_nm")
    assert session.sum() + st.out_of_range("equivalent_diameter_nm") == total
    win.size_panel.refresh()
    # the drawing leaves out the extreme 0.5 % at each end (outliers must not squeeze the bulk)
    shown = win.size_panel.shown["session"].sum()
    assert session.sum() * 0.985 <= shown <= session.sum()
    assert int(inside[-1].sum()) * 0.9 <= win.size_panel.shown["frame"].sum() <= int(
        inside[-1].sum())
    # quantile markers sit where the exact session quantiles are (within one fine bin)
    d = np.concatenate([r.particles["equivalent_diameter_nm"][k] for r, k in
                        zip(results, inside, strict=True)])
    exact = np.percentile(d, [10, 50, 90])
    w = QUANTITIES["equivalent_diameter_nm"].width
    assert np.allclose(win.size_panel.quantiles, exact, atol=2 * w)
    # the display is throttled: it never drew more frames than it received
    assert 1 <= win.displayed <= 25


def test_switch_quantity_and_log_counts(qtbot, window_factory, rng):
    from emstream.gui.bridge import GuiSink

    sink = GuiSink()
    win = window_factory(sink)
    r = make_result(rng, 0, n=30)
    sink.frame_done(as_record(r))
    qtbot.waitUntil(lambda: win.frame_view.result is r, timeout=10_000)
    for col in ("feret_diameter_max_nm", "aspect_ratio", "roundness", "area_nm2"):
        win.size_panel.set_column(col)
        assert win.size_panel.column == col
        assert win.size_panel.shown["frame"].sum() == 30
    win.size_panel.cb_log.setChecked(True)
    assert "log" in win.size_panel.plot.getAxis("left").labelText


def test_pause_keeps_processing_going(qtbot, window_factory, rng):
    from emstream.gui.bridge import GuiSink

    sink = GuiSink()
    win = window_factory(sink)
    first = [make_result(rng, i, shape=(128, 128), n=8) for i in range(3)]
    feed(sink, first).join(10)
    qtbot.waitUntil(lambda: win.frame_view.result is first[-1], timeout=10_000)
    win.set_paused(True)
    shown = win.frame_view.result
    more = [make_result(rng, i, shape=(128, 128), n=8) for i in range(3, 12)]
    feed(sink, more).join(10)
    qtbot.waitUntil(lambda: sink.statistics.counts()["frames_ok"] == 12, timeout=10_000)
    qtbot.wait(100)
    assert win.frame_view.result is shown  # display frozen ...
    assert sink.received == 12  # ... while every frame was still processed
    assert sink.prepared <= 4  # the display thread idled while paused
    win.set_paused(False)
    qtbot.waitUntil(lambda: win.frame_view.result is more[-1], timeout=10_000)


def test_step_back_and_forward_through_recent_frames(window_factory, rng):
    from emstream.gui.bridge import GuiSink

    win = window_factory(GuiSink())
    results = [make_result(rng, i, shape=(128, 128), n=5) for i in range(5)]
    for r in results:
        win.show_result(r)
    assert len(win.ring) == 5
    win.step_back()
    assert win.paused and win.frame_view.result is results[3]
    win.step_back()
    win.step_back()
    assert win.frame_view.result is results[1]
    win.step_forward()
    assert win.frame_view.result is results[2]
    assert "PAUSED" in win.mode_label.text()
    win.go_live()
    assert not win.paused and win.frame_view.result is results[-1]


def test_step_ring_is_bounded_by_memory(window_factory, rng, monkeypatch):
    from emstream.gui import window as window_mod
    from emstream.gui.bridge import GuiSink

    r = make_result(rng, 0, shape=(256, 256), n=5)
    per = r.frame.pixels.nbytes + r.labels.nbytes + r.frame.pixels.size  # + the uint8 copy
    monkeypatch.setattr(window_mod, "RING_BYTES", 3 * per)
    win = window_factory(GuiSink())
    for _ in range(10):
        win.show_result(r)
    assert len(win.ring) == 3


def test_alerts_reach_panel_and_banner(qtbot, window_factory):
    from emstream.gui.bridge import GuiSink
    from emstream.results import Alert

    sink = GuiSink()
    win = window_factory(sink)
    alerts = [
        Alert("large particles", "warning", 7, "3 particles 15–40 nm", actions=["banner", "sound"]),
        Alert("stall", "critical", None, "no frame for 30 s", builtin=True),
    ]
    feed(sink, [], alerts=alerts).join(5)
    qtbot.waitUntil(lambda: win.alerts_panel.total == 2, timeout=10_000)
    rows = win.alerts_panel.rows()
    assert rows[0][1:4] == ("", "stall", "critical")  # newest first
    assert rows[1][1:4] == ("7", "large particles", "warning")
    assert win.alerts_panel.beeps == 1  # only the rule with the "sound" action beeps
    assert win.banner.isVisible() and "stall" in win.banner.text.text()
    win.banner.button.click()
    assert not win.banner.isVisible()
    assert win.alerts_panel.unacknowledged == 0


def test_hover_shows_measurements_in_nm(window_factory, rng):
    from emstream.gui.frame_view import particle_info

    win = window_factory(None)
    r = make_result(rng, 0, n=10, nm_per_px=0.5)
    win.show_result(r)
    p = r.particles
    for row in range(len(p["label"])):
        y, x = p["centroid_y_px"][row], p["centroid_x_px"][row]
        if r.labels[int(y), int(x)] == p["label"][row]:
            assert win.frame_view.row_at(x + 0.2, y + 0.2) == row
            break
    info = dict(particle_info(r, 0))
    assert info["Equivalent diameter"].endswith(" nm")
    assert info["Area"].endswith(" nm²")
    win._show_particle((r, 0))
    assert win.particle_table.rowCount() == len(particle_info(r, 0))
    win.frame_view.select_row(0)  # a click highlights the particle's outline
    assert not win.frame_view.path_selected.path().isEmpty()
    win.frame_view.select_row(-1)
    assert win.frame_view.path_selected.path().isEmpty()
    assert win.frame_view.row_at(-5, -5) == -1


def test_scale_bar_is_round_and_says_px_when_uncalibrated(window_factory, rng):
    win = window_factory(None)
    win.show_result(make_result(rng, 0, shape=(512, 512), n=5, nm_per_px=0.5))
    bar = win.frame_view.scale_bar
    length_nm = float(bar.label_text().split()[0])
    assert bar.label_text().endswith(" nm")
    assert length_nm in {1, 2, 5, 10, 20, 50, 100, 200, 500}
    assert bar.size == pytest.approx(length_nm / 0.5)
    win.show_result(make_result(rng, 1, shape=(512, 512), n=5, nm_per_px=None))
    assert bar.label_text().endswith(" px")
    assert "uncalibrated" in win.frame_view.caption.text()


def test_status_bar_reads_pipeline_stats(window_factory):
    from emstream.gui.status import stats_as_dict

    try:
        from emstream.pipeline import PipelineStats
    except ImportError:  # pragma: no cover - before the pipeline lands
        PipelineStats = None
    d = {
        "source": "folder /data/run3",
        "backend": "onnxruntime-cpu",
        "frames_in": 1204,
        "processed": 1190,
        "quarantined": 3,
        "skipped": 11,
        "fps": 9.87,
        "lag_s": 0.42,
        "queue_depth": 2,
    }
    stats = PipelineStats(**d) if PipelineStats else d
    assert stats_as_dict(stats)["processed"] == 1190
    win = window_factory(None, stats=lambda: stats)
    win.status.refresh()
    text = " ".join(lab.text() for lab in win.status.labels.values())
    for needle in ("folder /data/run3", "onnxruntime-cpu", "1,204", "1,190", "9.9", "0.42", "11"):
        assert needle in text


def test_status_bar_calls_a_negative_lag_a_clock_offset(window_factory):
    stats = {"lag_s": 0.3}
    win = window_factory(None, stats=lambda: stats)
    win.status.refresh()
    assert "0.30 s" in win.status.labels["lag"].text()
    assert "ahead" not in win.status.labels["lag"].text()
    stats["lag_s"] = -5.08  # acquisition times in the future: the microscope PC's clock is ahead
    win.status.refresh()
    assert "-5.08 s</b> (clock ahead)" in win.status.labels["lag"].text()
    assert "5.1 s ahead" in win.status.labels["lag"].toolTip()


def test_open_session_folder_without_session_is_harmless(window_factory):
    win = window_factory(None)
    assert win.open_session_folder() is False


def test_run_monitor_window_with_screenshot(tmp_path, artifacts_dir, rng, qapp):
    from emstream.gui.app import run_monitor_window
    from emstream.results import Alert
    from emstream.sinks.base import Session

    results = [
        make_result(rng, i, shape=(768, 768), n=40 + 2 * i, t_acq=1.7e9 + 5 * i) for i in range(12)
    ]

    class Handle:
        def __init__(self, sink):
            self.sink = sink
            self.stop_event = threading.Event()
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()

        def run(self):
            self.sink.open(Session(tmp_path, "simulated", "classical"))
            for r in results:
                if self.stop_event.is_set():
                    break
                self.sink.frame_done(as_record(r))
                time.sleep(0.02)
            self.sink.alert(Alert("large particles", "warning", 11, "6 particles ≥ 15 nm"))
            self.sink.close()

        def stop(self):
            self.stop_event.set()

        def done(self):
            return not self.thread.is_alive()

    handles = []

    def start(sinks):
        assert len(sinks) == 1 and sinks[0].latest_only
        handles.append(Handle(sinks[0]))
        return handles[0]

    shot = artifacts_dir / "gui_run_monitor_window.png"
    shot.unlink(missing_ok=True)
    rc = run_monitor_window(
        start,
        stats=lambda: {"source": "simulated", "backend": "classical", "processed": 12},
        screenshot=shot,
        exit_when="finished",
        rules=SizeRule(10.0),
    )
    assert rc == 0
    assert handles[0].stop_event.is_set()  # closing the window stopped the pipeline
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_gui_sink_never_blocks_on_a_busy_gui_thread(qapp, rng):
    """frame_done returns at once even when the GUI thread does not run its event loop."""
    from emstream.gui.bridge import GuiSink

    sink = GuiSink()
    r = make_result(rng, 0, shape=(128, 128), n=5)
    times = []

    def run():
        for i in range(200):
            r.frame.seq = i
            t0 = time.perf_counter()
            sink.frame_done(as_record(r))
            times.append(time.perf_counter() - t0)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)  # the GUI thread is blocked here: no event is processed meanwhile
    assert len(times) == 200
    assert sink.statistics.counts()["frames_ok"] == 200
    assert sink.take_newest() is r  # only the newest is kept, nothing queued up
    assert sink.take_newest() is None


@pytest.mark.skipif(os.name == "nt", reason="grab path only")
def test_screenshot_states(window_factory, artifacts_dir, rng, qtbot):
    """Screenshots people look at: BF with overlays, HAADF, alerts firing."""
    from emstream.gui.app import save_screenshot
    from emstream.gui.bridge import GuiSink
    from emstream.results import Alert
    from emstream.sinks.base import Session

    def session(win, sink, name):
        sink.open(Session(Path("/data/sessions") / name, "folder /data/etem/run3", "classical"))
        qtbot.waitUntil(lambda: win.session_dir is not None, timeout=5000)

    stats = {
        "source": "folder /data/etem/run3",
        "backend": "classical",
        "frames_in": 121,
        "processed": 120,
        "quarantined": 1,
        "skipped": 0,
        "fps": 4.1,
        "lag_s": 0.6,
        "queue_depth": 0,
    }
    t0 = 1.7e9
    for mode, name in (("bf", "gui_bf_overlays.png"), ("haadf", "gui_haadf.png")):
        sink = GuiSink()
        win = window_factory(sink, rules=SizeRule(11.0), stats=lambda: stats)
        session(win, sink, f"2026-11-22_{mode}")
        for i in range(40):
            r = make_result(
                rng,
                i,
                shape=(1024, 1024),
                n=50 + 2 * i,
                mode=mode,
                t_acq=t0 + 6 * i,
                radius=(3.5 + 0.05 * i, 12 + 0.12 * i),
                nm_per_px=0.4,
            )
            sink.frame_done(as_record(r))
        qtbot.waitUntil(lambda s=sink: s.statistics.counts()["frames_ok"] == 40, timeout=10_000)
        # the newest frame is prepared off the GUI thread: wait until it is drawn, so that the
        # frame, its histogram and the status bar of the screenshot are of the same moment
        def newest_drawn(w=win):
            w.pull_newest()
            return w.frame_view.result is not None and w.frame_view.result.seq == 39

        qtbot.waitUntil(newest_drawn, timeout=10_000)
        win.refresh_all()
        assert win.frame_view.result.seq == win.size_panel.result.seq == 39
        assert win.frame_view.outlines_drawn == win.frame_view.result.summary.count
        p = save_screenshot(win, artifacts_dir / name)
        assert p.stat().st_size > 10_000
        if mode == "bf":
            sink.alert(
                Alert(
                    "large particles",
                    "warning",
                    39,
                    "7 particles with diameter ≥ 15 nm",
                    actions=["banner", "sound"],
                )
            )
            sink.alert(Alert("coverage above 8 %", "critical", 39, "coverage 8.4 % ≥ 8 %"))
            qtbot.waitUntil(lambda w=win: w.alerts_panel.total == 2, timeout=5000)
            save_screenshot(win, artifacts_dir / "gui_alerts_firing.png")
        win.close()


def test_screenshot_shows_frame_and_histogram_of_the_same_moment(window_factory, rng, tmp_path):
    """Live, the histogram lags a newly drawn frame (<= 5 Hz); a screenshot must not."""
    from emstream.gui.app import save_screenshot

    win = window_factory()
    first, second = (make_result(rng, seq, n=n) for seq, n in ((1, 20), (2, 35)))
    win.show_result(first)
    win.show_result(second)  # within the histogram's interval: its text still says frame #1
    save_screenshot(win, tmp_path / "shot.png")
    assert win.frame_view.result.seq == 2
    assert f"Frame #2: <b>{second.summary.count}</b> particles" in win.size_panel.summary.text()


def test_outline_paths_equal_pyqtgraphs_and_split_by_target(qapp, rng):
    """The in-place path writer gives pyqtgraph's path; target + other = every outline."""
    import pyqtgraph as pg

    from emstream.gui.frame_view import _outline_path, outline_paths
    from emstream.gui.outlines import particle_outlines

    r = make_result(rng, 0, shape=(256, 256), n=30)
    o = particle_outlines(r.labels, r.particles)
    want = pg.arrayToQPath(o.x, o.y, connect=o.connect, finiteCheck=False)
    assert _outline_path(o) == want and want.elementCount() == len(o.x)
    n = len(r.particles["label"])
    m = np.arange(n) % 3 == 0
    match, other, drawn = outline_paths(o, m, n)
    assert drawn == n
    assert match.elementCount() == len(o.select(m).x)
    assert other.elementCount() == len(o.select(~m).x)
    _, everything, drawn = outline_paths(o, None, n)
    assert drawn == n and everything == want


def test_minimised_window_draws_nothing_and_catches_up(qtbot, window_factory, rng):
    from emstream.gui.bridge import GuiSink

    sink = GuiSink()
    win = window_factory(sink)
    first = make_result(rng, 0, shape=(128, 128), n=6)
    feed(sink, [first]).join(10)
    qtbot.waitUntil(lambda: win.frame_view.result is first, timeout=10_000)
    win.showMinimized()
    qtbot.waitUntil(win.isMinimized, timeout=5_000)
    shown = win.displayed
    more = [make_result(rng, i, shape=(128, 128), n=6) for i in range(1, 8)]
    feed(sink, more).join(10)
    qtbot.waitUntil(lambda: sink.statistics.counts()["frames_ok"] == 8, timeout=10_000)
    qtbot.wait(150)
    assert win.displayed == shown  # no display work while minimised ...
    assert sink.prepared <= 3  # ... and the display thread prepared at most one ahead
    win.showNormal()
    qtbot.waitUntil(lambda: win.frame_view.result is more[-1], timeout=10_000)


def test_trend_time_axis_writes_seconds_as_clock_seconds(qapp):
    import pyqtgraph as pg

    from emstream.gui.plots import ClockAxis

    axis = ClockAxis()
    plot = pg.PlotWidget(axisItems={"bottom": axis})
    plot.resize(800, 200)
    plot.grab()  # the axis measures its font when first painted
    t0 = time.mktime((2026, 12, 5, 16, 19, 48, 0, 0, -1))  # local 16:19:48
    levels = dict(axis.tickValues(t0, t0 + 5, 800))  # 5 s over 800 px: ticks every 0.5 s
    fine = [v for s, v in levels.items() if s < 1][0]
    assert axis.tickStrings(fine[:2], 1.0, 0.001) == [":48.5", ":49"]  # pyqtgraph: 48.500, 49.000
    wide = dict(axis.tickValues(t0, t0 + 120, 800))  # minutes: pyqtgraph's clock strings kept
    v = list(wide.values())[0]
    assert axis.tickStrings(v, 1.0, list(wide)[0]) == [
        time.strftime("%H:%M:%S", time.localtime(x)) for x in v]


def test_segmentation_confidence_and_flags_are_shown(window_factory, rng, artifacts_dir):
    stats = {"confidence": 0.93, "flagged": 0, "last_flag": ""}
    win = window_factory(None, stats=lambda: stats)
    win.status.refresh()
    assert "Confidence <b>0.93</b>" in win.status.labels["segmentation"].text()
    assert "flagged" not in win.status.labels["segmentation"].text()
    stats.update(confidence=0.41, flagged=2, last_flag="frame 17: low confidence 0.41 < 0.70")
    win.status.refresh()
    assert "2 flagged" in win.status.labels["segmentation"].text()
    assert "frame 17: low confidence" in win.status.labels["segmentation"].toolTip()
    r = make_result(rng, 17, n=12)
    r.confidence, r.seg_flag = 0.41, "low confidence 0.41 < 0.70"
    win.show_result(r)
    caption = win.frame_view.caption
    assert "confidence 0.41" in caption.text() and "doubtful segmentation" in caption.text()
    assert caption.toolTip() == r.seg_flag
    from emstream.gui.app import save_screenshot

    save_screenshot(win, artifacts_dir / "gui_doubtful_frame.png")
