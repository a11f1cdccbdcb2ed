"""The Qt-free parts of the window: display scaling, outlines, binning, statistics (no display)."""

from __future__ import annotations

import numpy as np
import pytest
from gui_sim_frames import as_record, make_result
from hypothesis import example, given, settings
from hypothesis import strategies as st

from emstream.gui.outlines import (
    _outlines_mosaic,
    _outlines_per_particle,
    _outlines_whole_frame,
    display_factor,
    downsample,
    nice_length,
    particle_outlines,
    to_display_u8,
)
from emstream.gui.session_stats import (
    QUANTITIES,
    SessionStatistics,
    TrendSeries,
    display_bins,
    quantiles_from_counts,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_display_scaling_saturates_and_is_monotone(dtype):
    v = np.linspace(0, 250, 251).astype(dtype)[None, :]
    u = to_display_u8(v, (50.0, 150.0)).ravel().astype(int)
    assert (u[:51] == 0).all() and (u[150:] == 255).all()
    assert (np.diff(u) >= 0).all()
    assert abs(int(u[100]) - 127) <= 1


@given(st.floats(1e-3, 1e6))
def test_nice_length_is_a_round_number_not_above_target(target):
    v = nice_length(target)
    assert 0 < v <= target * (1 + 1e-12)
    mant = v / 10 ** np.floor(np.log10(v) + 1e-12)
    assert any(np.isclose(mant, m) for m in (1, 2, 5))
    assert v * 5 > target * (1 - 1e-12)  # never more than one 1-2-5 step below


@given(st.floats(0.5, 100))
def test_display_factor_is_a_power_of_two_at_or_below_the_ratio(r):
    f = display_factor(r)
    assert f & (f - 1) == 0 and 1 <= f <= max(1.0, r) and (f * 2 > r or f == 1)


def test_downsample_area_averages():
    u8 = np.zeros((8, 8), np.uint8)
    u8[:, ::2] = 200
    d = downsample(u8, 2)
    assert d.shape == (4, 4) and (d == 100).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outline_strategies_agree_one_outline_per_particle(seed):
    rng = np.random.default_rng(seed)
    r = make_result(rng, 0, shape=(256, 256), n=40, radius=(2.0, 12.0))
    n = len(r.particles["label"])
    a = _outlines_whole_frame(r.labels, r.particles)
    b = _outlines_per_particle(r.labels, r.particles, np.arange(n))
    c = particle_outlines(r.labels, r.particles)
    d = _outlines_mosaic(r.labels, r.particles, np.arange(n))
    # the mosaic traces exactly what the crop-by-crop loop traces, in one findContours call
    for got, want in ((d.x, b.x), (d.y, b.y), (d.connect, b.connect), (d.start, b.start)):
        assert np.array_equal(got, want)
    for o in (a, b, c, d):
        assert o.count == n
        assert np.array_equal(o.rows, np.arange(n))
        assert int((o.connect == 0).sum()) == n  # one closed loop each
        # every outline vertex lies inside its particle's bounding box (pixel centres)
        rows = np.repeat(o.rows, np.diff(o.start))
        p = r.particles
        assert (o.x >= p["bbox_min_x_px"][rows]).all() and (o.x <= p["bbox_max_x_px"][rows]).all()
        assert (o.y >= p["bbox_min_y_px"][rows]).all() and (o.y <= p["bbox_max_y_px"][rows]).all()


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
@pytest.mark.parametrize("seed", [3, 4])
def test_outline_mosaic_equals_crop_loop_on_fragmented_touching_labels(seed, dtype):
    """Overlapping ellipses: touching instances, labels split in pieces, frame edges."""
    import cv2

    from emstream.frame import Calibration
    from emstream.process.measure import measure

    rng = np.random.default_rng(seed)
    labels = np.zeros((200, 300), np.int32)
    for k in range(1, 120):
        c = (int(rng.integers(-5, 305)), int(rng.integers(-5, 205)))
        ax = (int(rng.integers(1, 14)), int(rng.integers(1, 14)))
        cv2.ellipse(labels, c, ax, float(rng.uniform(0, 180)), 0, 360, k, -1)
    labels = labels.astype(dtype)
    particles = measure(labels, labels.astype(np.float32), Calibration.none())
    n = len(particles["label"])
    assert n > 50
    a = _outlines_per_particle(labels, particles, np.arange(n))
    b = _outlines_mosaic(labels, particles, np.arange(n))
    assert b.count == n
    for got, want in ((b.rows, a.rows), (b.x, a.x), (b.y, a.y), (b.start, a.start)):
        assert np.array_equal(got, want)
    some = np.arange(0, n, 3)
    assert np.array_equal(_outlines_mosaic(labels, particles, some).rows, some)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 300), min_size=1, max_size=400))
@example([43.0, 117.5])  # a span of 30 fine bins straddling a merge boundary: was 31 bins
def test_display_bins_keep_every_count(values):
    q = QUANTITIES["equivalent_diameter_nm"]
    c = q.counts(np.array(values))
    edges, (m,) = display_bins([c], q, 30, trim=0.0)
    assert m.sum() == c.sum() == len(values)
    assert len(m) <= 30 and len(edges) == len(m) + 1 and (np.diff(edges) > 0).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1, 100), min_size=5, max_size=300))
def test_binned_quantiles_within_a_bin_of_exact(values):
    q = QUANTITIES["equivalent_diameter_nm"]
    v = np.array(values)
    s, n, w = np.sort(v), len(v), q.width
    got = quantiles_from_counts(q.counts(v), q.edges, (0.1, 0.5, 0.9))
    for p, g in zip((0.1, 0.5, 0.9), got, strict=True):
        # between the order statistics around rank p·n, give or take one fine bin
        below = s[max(0, int(np.floor(p * n)) - 1)]
        above = s[min(n - 1, int(np.ceil(p * n)))]
        assert below - w - 1e-9 <= g <= above + w + 1e-9


def test_trend_series_is_bounded_and_spans_the_session():
    t = TrendSeries(capacity=1000)
    for i in range(100_000):
        t.add(float(i), i, 1, 2.0, 2.0, 0.1)
    a = t.arrays()
    assert t.n <= 1000 and len(a["t_acq"]) == t.n
    assert a["t_acq"][0] == 0.0 and a["t_acq"][-1] >= 100_000 - 2 * t.stride
    assert (np.diff(a["t_acq"]) > 0).all()


def test_statistics_count_each_frame_once():
    rng = np.random.default_rng(5)
    s = SessionStatistics(recent_frames=3)
    results = [make_result(rng, i, shape=(128, 128), n=6) for i in range(5)]
    for r in results:
        assert s.account(as_record(r))
        assert not s.account(as_record(r))  # the sink and the listener both saw it
    # particles cut by the image edge are counted, not sized (as in the report and the rules)
    def sized(r):
        return int((~r.particles["touches_border"].astype(bool)).sum())

    total = sum(sized(r) for r in results)
    cut = sum(len(r.particles["label"]) for r in results) - total
    assert s.counts() == {"frames_ok": 5, "frames_other": 0, "particles": total, "edge_cut": cut}
    session, recent = s.histogram_snapshot("equivalent_diameter_nm")
    assert session.sum() == total
    assert recent.sum() == sum(sized(r) for r in results[-3:])


def test_small_particles_get_readable_bins_despite_outliers():
    """Issue 21 item 19: in-situ Au, D50 3.5 nm, plus a few 40 nm blobs: the bulk must spread
    over many bars, not three; coarse pixels never draw bins finer than a pixel's step."""
    rng = np.random.default_rng(2)
    q = QUANTITIES["equivalent_diameter_nm"]
    d = np.concatenate([rng.lognormal(np.log(3.5), 0.25, 800), [38.0, 41.0, 45.0]])
    edges, (m,) = display_bins([q.counts(d)], q, 32)
    bulk = (edges[:-1] >= np.quantile(d, 0.05)) & (edges[1:] <= np.quantile(d, 0.95))
    assert bulk.sum() >= 10
    assert m.sum() >= len(d) - 6  # only the extreme outliers are left out of the drawing
    _, (coarse,) = display_bins([q.counts(d)], q, 32, min_width=1.0)
    edges_c, _ = display_bins([q.counts(d)], q, 32, min_width=1.0)
    assert np.diff(edges_c).min() >= 1.0 - 1e-9


def test_quantile_labels_do_not_print_over_each_other(qtbot):
    from emstream.gui.plots import SizeDistributionPanel

    s = SessionStatistics()
    rng = np.random.default_rng(3)
    d = np.concatenate([rng.normal(3.5, 0.1, 500), rng.uniform(1, 10, 40)])
    r = make_result(rng, 0, shape=(64, 64), n=5)
    r.particles = {**r.particles}
    s.add_result(r)
    with s._lock:
        s.hist["equivalent_diameter_nm"].add(d)
    panel = SizeDistributionPanel(s)
    qtbot.addWidget(panel)
    panel.refresh()
    xs = panel.quantiles
    rows = panel.label_rows
    assert max(rows) >= 1  # D10, D50 and D90 lie close together here
    for i in range(1, 3):
        if abs(xs[i] - xs[i - 1]) < 0.1 * float(panel.shown["edges"][-1] - panel.shown["edges"][0]):
            assert rows[i] != rows[i - 1]


def test_missing_qt_system_libraries_are_named_with_their_packages():
    """Issue 21 item 11: the window's missing system libraries, found by ldd, named as the
    packages to install."""
    from emstream.gui import debian_package, missing_libraries

    ldd = ("\tlinux-vdso.so.1 (0x00007ffd)\n"
           "\tlibxcb-icccm.so.4 => not found\n"
           "\tlibxcb-keysyms.so.1 => not found\n"
           "\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)\n"
           "\tlibxcb-icccm.so.4 => not found\n")
    assert missing_libraries(ldd) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert [debian_package(x) for x in ("libxcb-icccm.so.4", "libxcb-keysyms.so.1",
                                        "libxkbcommon-x11.so.0", "libEGL.so.1",
                                        "libxcb-cursor.so.0")] == [
        "libxcb-icccm4", "libxcb-keysyms1", "libxkbcommon-x11-0", "libegl1", "libxcb-cursor0"]


def test_window_problem_tries_qt_for_real(monkeypatch):
    from emstream.gui import window_problem

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert window_problem() is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setenv("DISPLAY", ":97")  # no X server there: Qt cannot start
    why = window_problem()
    assert why is not None and why.startswith("the Qt window cannot start here")


def test_demo_falls_back_to_the_terminal_view_when_the_window_cannot_start(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env["DISPLAY"] = ":97"  # a display is claimed, but Qt cannot open it
    p = subprocess.run([sys.executable, "-m", "emstream", "demo", "--frames", "6", "--fps", "20",
                        "--segmenter", "classical", "--session-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "showing the terminal view instead" in " ".join(p.stderr.split())


def test_untrusted_frames_are_marked_on_the_trends_not_sized(qtbot):
    """Issue 22: a defocused frame is counted, marked on the trends, and left out of sizes."""
    from emstream.gui.plots import TrendsPanel

    rng = np.random.default_rng(4)
    s = SessionStatistics()
    good, bad = make_result(rng, 0, shape=(64, 64), n=5), make_result(rng, 1, shape=(64, 64), n=5)
    bad.state = "out_of_focus"
    s.add_result(good)
    before = s.histogram_snapshot("equivalent_diameter_nm")[0].sum()
    s.add_result(bad)
    assert s.histogram_snapshot("equivalent_diameter_nm")[0].sum() == before
    assert s.counts()["frames_ok"] == 2
    panel = TrendsPanel(s)
    qtbot.addWidget(panel)
    panel.refresh()
    assert panel.n_untrusted == 1 and s.untrusted_snapshot()[0][1] == "out_of_focus"


def test_status_bar_says_how_many_frames_were_not_ok():
    from emstream.gui.status import segmentation_text

    text = segmentation_text({"confidence": 0.9, "flagged": 0, "not_ok": 3,
                              "last_state": "frame 12: out of focus"})
    assert "3 not ok" in text and "frame 12: out of focus" in text
