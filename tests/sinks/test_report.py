"""The session report: one self-contained HTML file from a real simulated session; screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from emstream.sinks.report import collect, frame_bootstrap_ci, nice_ticks, write_report
from tests.sinks.test_report_helpers import build_session


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    d = tmp_path_factory.mktemp("session")
    info = build_session(d)
    return d, info


def test_report_is_self_contained_and_complete(session, artifacts_dir):
    d, info = session
    path = write_report(d)
    assert path == d / "report.html"
    html = path.read_text(encoding="utf-8")
    # one file: no scripts, no external references
    assert "<script" not in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    for section in (
        "Size distribution",
        "Trends over time",
        "Alerts",
        "Quarantined files",
        "Provenance",
    ):
        assert section in html
    assert html.count("<svg") >= 6  # histogram, 4 trends (confidence too), alert timeline
    assert "Frames with doubtful segmentation" in html and "low confidence 0.45" in html
    assert "data:image/jpeg;base64," in html  # the alert snapshot is embedded
    assert "unreadable TIFF: page 0 truncated" in html  # quarantined file with its reason
    assert "policy latest: superseded" in html
    for rule in ("large particles", "crowded", "stall"):
        assert rule in html
    assert "TIFF ResolutionUnit" in html and "classical" in html
    assert not list(d.glob(".report.html.*"))
    (artifacts_dir / "session_report.html").write_text(html, encoding="utf-8")


def test_report_numbers_match_the_data(session):
    d, _ = session
    c = collect(d)
    assert c["status_counts"] == {"ok": 38, "quarantined": 1, "skipped": 1}
    size = c["size"]
    assert size["unit"] == "nm" and size["n"] > 500 and size["n_frames"] == 38
    d50 = float(size["rows"][1]["value"])
    lo, hi = float(size["rows"][1]["lo"]), float(size["rows"][1]["hi"])
    assert lo <= d50 <= hi and 3 < d50 < 12
    assert [a["rule"] for a in c["alerts"]] == ["stall", "large particles", "crowded"]
    assert c["alerts"][1]["seq"] == 26 and c["alerts"][1]["snapshot"]
    assert [(f["seq"], f["confidence"]) for f in c["flagged"]] == [(17, "0.45")]
    assert ("Doubtful segmentation", "1 frame") in c["cards"]


def test_partly_and_fully_uncalibrated_sessions(tmp_path):
    part = tmp_path / "part"
    info = build_session(part, n_frames=16, target_from=6, shape=(160, 160), uncalibrated_from=10)
    rules = [a.rule for a in info["alerts"]]
    assert "calibration missing" in rules
    c = collect(part)
    assert c["size"]["unit"] == "nm" and c["size"]["n_other_unit"] > 0
    assert any(row["nm_per_px"] == "uncalibrated (px)" for row in c["calibration"])
    write_report(part)

    px = tmp_path / "px"
    build_session(px, n_frames=8, target_from=4, shape=(160, 160), uncalibrated_from=0)
    c = collect(px)
    assert c["size"]["unit"] == "px" and c["size"]["n"] > 0 and c["size"]["n_other_unit"] == 0
    assert "diameter (px)" in write_report(px).read_text(encoding="utf-8")


def test_empty_session(tmp_path):
    import emstream.sinks.ledger as ledger
    ledger.Ledger(tmp_path).close()
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No particles were measured" in html and "No alerts were raised" in html


def test_frame_bootstrap_ci_covers_and_is_deterministic():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 40)
    values = rng.lognormal(2.0, 0.3, groups.size)
    a = frame_bootstrap_ci(values, groups, (0.1, 0.5, 0.9), n=300, seed=3)
    b = frame_bootstrap_ci(values, groups, (0.1, 0.5, 0.9), n=300, seed=3)
    assert a == b
    for (lo, hi), q in zip(a, np.quantile(values, (0.1, 0.5, 0.9)), strict=True):
        assert lo < q < hi and hi - lo < 0.5 * q
    # frame-to-frame variation widens the interval compared with independent particles
    shifted = values * np.repeat(rng.lognormal(0, 0.2, 30), 40)
    ((lo1, hi1),) = frame_bootstrap_ci(values, groups, (0.5,), n=300)
    ((lo2, hi2),) = frame_bootstrap_ci(shifted, groups, (0.5,), n=300)
    assert hi2 - lo2 > hi1 - lo1
    ((lo3, hi3),) = frame_bootstrap_ci(values[:40], groups[:40], (0.5,), n=200)  # one frame
    assert lo3 < np.median(values[:40]) < hi3


def test_nice_ticks():
    assert nice_ticks(0, 10, 5) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0.3, 16.2, 4, cover=True)[-1] >= 16.2
    assert nice_ticks(float("nan"), 1) == []


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_report_screenshot_in_headless_chromium(session, artifacts_dir):
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    d, _ = session
    path = write_report(d)
    shot = artifacts_dir / "session_report.png"
    shot.unlink(missing_ok=True)
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1200,4400",
            f"--screenshot={shot}",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file(), proc.stderr.decode(errors="replace")[-2000:]
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (4400, 1200)
    # the page rendered: the header band is the report's accent colour, not a blank page
    b, g, r = img[30, 600]
    assert (int(b), int(g), int(r)) != (255, 255, 255) and b > r


def test_trend_lines_are_joined_in_time_order():
    """Frames recorded out of acquisition order (stacks, several files) must not zig-zag."""
    from emstream.sinks.report import timeseries_svg

    t = np.array([0.0, 2.0, 1.0, 3.0, np.nan])
    y = np.array([0.0, 2.0, 1.0, 3.0, 5.0])
    svg = timeseries_svg(t, [("y", y, "#000")], xlabel="t", ylabel="y",
                         band=(y - 1, y + 1, "#000"))
    pts = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    xs = [float(p.split(",")[0]) for p in pts]
    assert xs == sorted(xs) and len(xs) == 4
    upper = re.search(r'<polygon points="([^"]+)"', svg).group(1).split()[:4]
    assert [float(p.split(",")[0]) for p in upper] == sorted(float(p.split(",")[0]) for p in upper)


def test_report_bins_follow_the_data_and_the_pixel():
    """Issue 21 item 19 in the report: small particles get many bins; a coarse pixel none finer
    than the diameter step it makes."""
    from emstream.sinks.report import _hist_edges

    d = np.random.default_rng(1).lognormal(np.log(3.5), 0.25, 800)
    e = _hist_edges(d)
    assert ((e[:-1] >= np.quantile(d, 0.05)) & (e[1:] <= np.quantile(d, 0.95))).sum() >= 10
    coarse = _hist_edges(d, min_width=0.9)
    assert np.diff(coarse).min() >= 0.9 - 1e-9
