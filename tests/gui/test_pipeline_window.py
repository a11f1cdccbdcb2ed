"""The window driven by the real pipeline (simulated microscope → ledger + GUI), then reviewed."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

pytestmark = pytest.mark.gui

from simulated import SimulatedSource, TruthSegmenter  # noqa: E402

import emstream.pipeline as pipeline_mod  # noqa: E402
import emstream.sources.simulate.scene as scene  # noqa: E402

RULES = """
[[rules]]
name = "large particles"
severity = "warning"
particles.equivalent_diameter_nm = {min = 9.0}
min_count = 3
cooldown_s = 4
actions = ["banner", "sound", "log"]
"""


def _simulate(n: int, mode: str, seed: int):
    cfg = scene.SceneConfig(
        shape=(384, 384),
        nm_per_px=0.3,
        mode=mode,
        fps=2.0,
        coverage_start=0.05,
        coverage_end=0.15,
        ramp_frames=n,
    )
    mic = scene.Microscope(cfg, seed=seed)
    return [mic.next_frame() for _ in range(n)]


@pytest.fixture(scope="module")
def finished_session(tmp_path_factory, artifacts_dir):
    """Run 30 simulated frames through Pipeline(ledger + GUI) inside run_monitor_window."""
    from emstream.gui.app import run_monitor_window
    from emstream.process.rules import RuleEngine, RuleSet
    from emstream.sinks.base import Session
    from emstream.sinks.ledger import Ledger

    session_dir = tmp_path_factory.mktemp("session")
    sims = _simulate(30, "bf", seed=7)
    engine = RuleEngine(RuleSet.from_toml_text(RULES))
    box = {}

    def start(sinks):
        p = pipeline_mod.Pipeline(
            SimulatedSource(sims),
            TruthSegmenter(sims),
            [Ledger(session_dir), *sinks],
            session=Session(session_dir, "", ""),
            rules=engine,
            policy="all",
        )
        box["pipeline"] = p
        return p.start()

    shot = artifacts_dir / "gui_pipeline_finished.png"
    rc = run_monitor_window(
        start,
        stats=lambda: box["pipeline"].stats,
        screenshot=shot,
        exit_when="finished",
        rules=engine,
        on_window=lambda w: box.setdefault("window", w),
    )
    assert rc == 0
    assert box["pipeline"].join(30)
    return session_dir, box["window"], sims, shot


def test_histogram_counts_equal_ledger(finished_session):
    from emstream.gui.session_stats import QUANTITIES

    session_dir, win, sims, shot = finished_session
    con = sqlite3.connect(f"file:{session_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    n_frames = con.execute("SELECT COUNT(*) FROM frames WHERE status='ok'").fetchone()[0]
    n_particles = con.execute("SELECT COUNT(*) FROM particles").fetchone()[0]
    n_cut = con.execute("SELECT COUNT(*) FROM particles WHERE touches_border = 1").fetchone()[0]
    per_frame = con.execute("SELECT count FROM frames WHERE status='ok' ORDER BY seq").fetchall()
    n_alerts = con.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    con.close()
    assert n_frames == len(sims) == 30
    st = win.statistics
    assert st.counts()["frames_ok"] == n_frames
    assert n_particles == sum(len(s.particles) for s in sims)
    # counted all, sized those not cut by the image edge (as the report and the rules)
    assert st.counts()["particles"] + st.counts()["edge_cut"] == n_particles
    assert st.counts()["edge_cut"] == n_cut > 0
    for col in QUANTITIES:
        session, _ = st.histogram_snapshot(col)
        assert session.sum() + st.out_of_range(col) == n_particles - n_cut, col
    trend = st.trend_snapshot()
    assert list(trend["count"].astype(int)) == [c for (c,) in per_frame]
    # overlays drawn on the last displayed frame == particles measured on it
    assert win.frame_view.outlines_drawn == win.frame_view.result.summary.count
    assert win.frame_view.result.seq == 29  # the display ended on the newest frame
    # every alert of the session reached the panel
    assert n_alerts >= 1
    assert win.alerts_panel.total == n_alerts
    assert shot.is_file()


def test_review_session_shows_ledger(finished_session, artifacts_dir):
    from emstream.gui.app import view_session
    from emstream.gui.review import load_session

    session_dir, win, sims, _ = finished_session
    review = load_session(session_dir)
    live = win.statistics
    assert review.statistics.counts()["particles"] == live.counts()["particles"]
    a, _ = review.statistics.histogram_snapshot("equivalent_diameter_nm")
    b, _ = live.histogram_snapshot("equivalent_diameter_nm")
    assert np.array_equal(a, b)
    assert len(review.alerts) == win.alerts_panel.total
    box = {}
    shot = artifacts_dir / "gui_review_session.png"
    assert view_session(session_dir, shot, on_window=lambda w: box.setdefault("w", w)) == 0
    assert shot.is_file()
    w = box["w"]
    assert w.alerts_panel.total == len(review.alerts)
    assert "REVIEW" in w.mode_label.text()
    assert w.trends_panel.points == 30


def test_gui_script_reviews_a_session(finished_session, tmp_path):
    from emstream.gui.app import main

    session_dir = finished_session[0]
    shot = tmp_path / "review.png"
    assert main([str(session_dir), "--screenshot", str(shot)]) == 0
    assert shot.stat().st_size > 10_000


def test_view_session_without_ledger_is_a_usage_error(tmp_path):
    from emstream.gui.app import view_session

    assert view_session(tmp_path) == 2


def test_haadf_pipeline_screenshot(artifacts_dir, tmp_path):
    """HAADF (bright particles) through the same path, for people to look at."""
    from emstream.gui.app import run_monitor_window
    from emstream.sinks.base import Session

    sims = _simulate(12, "haadf", seed=3)
    box = {}

    def start(sinks):
        p = pipeline_mod.Pipeline(
            SimulatedSource(sims),
            TruthSegmenter(sims),
            sinks,
            session=Session(tmp_path, "", ""),
        )
        box["p"] = p
        return p.start()

    shot = artifacts_dir / "gui_pipeline_haadf.png"
    run_monitor_window(
        start,
        stats=lambda: box["p"].stats,
        screenshot=shot,
        exit_when="finished",
        on_window=lambda w: box.setdefault("w", w),
    )
    assert box["w"].statistics.counts()["frames_ok"] == 12
    assert shot.is_file()


def test_review_shows_saved_snapshots(tmp_path, artifacts_dir, rng):
    """A session with snapshot PNGs: review mode shows them in the frame view."""
    from gui_sim_frames import as_record, make_result

    from emstream.gui.app import view_session
    from emstream.gui.snapshots import read_picture
    from emstream.results import Alert
    from emstream.sinks.base import Session
    from emstream.sinks.ledger import Ledger

    led = Ledger(tmp_path)
    led.open(Session(tmp_path, "folder /data/run7", "classical"))
    for i in range(8):
        led.frame_done(as_record(make_result(rng, i, shape=(256, 256), n=12, t_acq=1.7e9 + i)))
    led.alert(Alert("large particles", "warning", 7, "4 particles ≥ 12 nm"))
    led.close()
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    src = artifacts_dir / "gui_bf_overlays.png"
    if not src.is_file():  # written by test_window; make a small picture otherwise
        from PySide6 import QtGui

        img = QtGui.QImage(64, 48, QtGui.QImage.Format.Format_RGB32)
        img.fill(QtGui.QColor("#336699"))
        img.save(str(snaps / "seq000007_large-particles.png"))
    else:
        (snaps / "seq000007_large-particles.png").write_bytes(src.read_bytes())
    pic = read_picture(snaps / "seq000007_large-particles.png")
    box = {}
    shot = artifacts_dir / "gui_review_snapshots.png"
    assert view_session(tmp_path, shot, on_window=lambda w: box.setdefault("w", w)) == 0
    w = box["w"]
    assert w.snapshot_browser.combo.count() == 1
    assert w.frame_view.image.image.shape == pic.shape
    assert "Snapshot" in w.frame_view.caption.text()
    assert w.statistics.counts()["frames_ok"] == 8
    assert w.alerts_panel.total == 1


def test_tracks_drawn_and_a_clicked_particle_shows_its_size_over_time(finished_session,
                                                                        artifacts_dir, qtbot):
    """Trails and IDs on the overlay; clicking a particle plots its track's diameter."""
    session_dir, win, sims, shot = finished_session
    fv = win.frame_view
    res = fv.result
    assert res.track_ids is not None and (res.track_ids >= 0).all()
    assert fv.path_ids.path().elementCount() > 0  # ID labels
    assert fv.path_trails.path().elementCount() > 0  # the stage drifts; trails are on the sample
    row = int(np.argmax(res.particles["area_px"]))
    fv.particleClicked.emit((res, row))
    assert win.track_plot.track_id == int(res.track_ids[row])
    assert win.track_plot.points >= 20  # present since the first frame
    win.act_tracks.trigger()  # toggle off
    assert not fv.path_trails.isVisible() and not fv.show_tracks
    win.act_tracks.trigger()
    assert fv.path_trails.isVisible()
    con = sqlite3.connect(f"file:{session_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    n_tracks = con.execute("SELECT COUNT(DISTINCT track_id) FROM particles").fetchone()[0]
    con.close()
    assert n_tracks >= len(sims[0].particles)
    win.grab().save(str(artifacts_dir / "gui_track_clicked.png"))


def test_window_and_report_agree_on_the_size_distribution(finished_session):
    """One rule for edge-cut particles everywhere (issue 21 item 14): same D10/D50/D90."""
    from emstream.gui.session_stats import QUANTITIES, quantiles_from_counts
    from emstream.sinks.report import collect

    session_dir, win, sims, _ = finished_session
    counts, _ = win.statistics.histogram_snapshot("equivalent_diameter_nm")
    q = QUANTITIES["equivalent_diameter_nm"]
    window = quantiles_from_counts(counts, q.edges)
    report = [float(r["value"]) for r in collect(session_dir)["size"]["rows"]]
    assert np.allclose(window, report, atol=2 * q.width), (window, report)


def test_rules_ignore_particles_cut_by_the_edge_unless_asked():
    from emstream.frame import Calibration, Frame
    from emstream.process.rules import RuleEngine, RuleSet
    from emstream.results import PARTICLE_COLUMNS, FrameResult, FrameSummary

    p = {c: np.zeros(2, dtype=dt) for c, (dt, _) in PARTICLE_COLUMNS.items()}
    p["equivalent_diameter_nm"][:] = [20.0, 20.0]
    p["touches_border"][:] = [True, False]
    p["label"][:] = [1, 2]
    frame = Frame(np.zeros((8, 8), np.uint16), "f", 0.0, 0.0, Calibration((1.0, 1.0), "file"))
    res = FrameResult(frame, p, FrameSummary(2, 0.1, "nm"), "t")
    eng = RuleEngine(RuleSet.from_toml_text(
        '[[rules]]\nname = "big"\nparticles.equivalent_diameter_nm = [15, 40]\n\n'
        '[[rules]]\nname = "cut too"\nparticles.equivalent_diameter_nm = [15, 40]\n'
        "particles.touches_border = true\n"))
    big, cut = eng.evaluate(res)
    assert big.particle_labels == [2] and "1 particle with" in big.message
    assert "1 particle with" in cut.message
