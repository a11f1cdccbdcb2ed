"""The command line: exit codes, watch end to end, the analyze --json contract."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emstream.cli import main

tifffile = pytest.importorskip("tifffile")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([sys.executable, "-m", "emstream", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def disks(seed: int, size: int = 160) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 3000.0)
    truth = []
    while len(truth) < 5:
        cy, cx = rng.uniform(20, size - 20, 2)
        r = rng.uniform(6, 10)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 6) ** 2 for y, x, q in truth):
            truth.append((cy, cx, r))
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1000.0
    img += rng.normal(0, 50, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16), truth


def write_calibrated_tif(path: Path, img: np.ndarray, nm_per_px: float) -> None:
    # ImageJ calibration: resolution in pixels per unit, unit "nm"
    tifffile.imwrite(path, img, imagej=True, resolution=(1 / nm_per_px, 1 / nm_per_px),
                     metadata={"unit": "nm"})


def test_version_and_help_exit_zero(capsys):
    assert main(["--version"]) == 0
    assert main(["watch", "--help"]) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["watch", "/definitely/not/here"],
        ["watch", ".", "--policy", "sometimes"],
        ["watch", ".", "--segmenter", "magic"],
        ["simulate"],  # needs --out or --zmq
        ["analyze"],  # needs files
        ["listen", "tcp://10.1.2.3:5555"],  # remote endpoint without --allow-remote
    ],
)
def test_usage_errors_exit_2(args, tmp_path):
    assert main([*args, "--session-dir", str(tmp_path / "s")] if args[0] == "listen" else args) == 2


def test_report_on_a_non_session_is_usage_error(tmp_path):
    assert main(["report", str(tmp_path)]) == 2


def test_bad_rules_file_is_usage_error(tmp_path):
    import emstream.rules_file  # noqa: F401
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "x"\nparticles.no_such_field = [1, 2]\n')
    acq = tmp_path / "acq"
    acq.mkdir()
    rc = main(["watch", str(acq), "--rules", str(rules), "--session-dir", str(tmp_path / "s"),
               "--exit-when-idle", "0.5", "--headless", "--no-report"])
    assert rc == 2


def test_doctor_runs():
    r = run_cli("doctor")
    assert r.returncode == 0, r.stderr
    assert "python" in r.stdout and "backend" in r.stdout.lower()
    assert "reprocess" in r.stdout and "hub page" in r.stdout  # the scale-out extras named


@pytest.fixture
def needs_processing():
    import emstream.process.classical  # noqa: F401
    import emstream.process.prepare  # noqa: F401
def test_analyze_json_contract(tmp_path, needs_processing):
    img, truth = disks(1)
    a = tmp_path / "a.tif"
    write_calibrated_tif(a, img, 0.5)
    b = tmp_path / "b.tif"
    tifffile.imwrite(b, img)  # no calibration
    out = tmp_path / "out.json"
    r = run_cli("analyze", str(a), str(b), "--json", str(out), "--segmenter", "classical")
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"a.tif", "b.tif"}
    da, db = doc["a.tif"], doc["b.tif"]
    assert da["shape"] == [160, 160] and db["shape"] == [160, 160]
    assert da["nm_per_px"] == [0.5, 0.5] and da["calibration"] == "file"
    assert db["nm_per_px"] is None and db["calibration"] == "none"
    # the classical baseline gives no confidence; nothing is flagged
    assert da["confidence"] is None and da["flag"] is None and da["segmentation_scale"] is None
    assert da["segmentation_view"] is None
    assert len(da["particles"]) == len(truth)
    for p in da["particles"]:
        y, x = p["centroid_yx_px"]
        # each detected particle sits on a true disk, with the right size in nm
        cy, cx, r = min(truth, key=lambda t: (t[0] - y) ** 2 + (t[1] - x) ** 2)
        assert abs(cy - y) < 2 and abs(cx - x) < 2
        assert p["equivalent_diameter_nm"] == pytest.approx(2 * r * 0.5, rel=0.2)
        assert {"area_nm2", "feret_diameter_max_nm", "solidity", "touches_border"} <= set(p)
    # uncalibrated: diameters in pixels
    dpx = sorted(p["equivalent_diameter_nm"] for p in db["particles"])
    dnm = sorted(p["equivalent_diameter_nm"] for p in da["particles"])
    assert dpx == pytest.approx([2 * d for d in dnm], rel=1e-6)


def test_analyze_unreadable_file_exit_1(tmp_path, needs_processing):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff" * 20)
    out = tmp_path / "out.json"
    assert main(["analyze", str(bad), "--json", str(out)]) == 1
    assert "error" in json.loads(out.read_text())["bad.tif"]


def test_watch_exit_when_idle_records_every_file(tmp_path, needs_processing):
    acq = tmp_path / "acq"
    acq.mkdir()
    for i in range(3):
        write_calibrated_tif(acq / f"f{i}.tif", disks(i)[0], 0.4)
    (acq / "broken.tif").write_bytes(b"II*\x00garbage")
    ses = tmp_path / "ses"
    r = run_cli("watch", str(acq), "--session-dir", str(ses), "--exit-when-idle", "1",
                "--headless", "--no-report", "--poll", "0.1", "--min-age", "0.2",
                "--quarantine-after", "1", "--segmenter", "classical")
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(ses / "ledger.sqlite")
    rows = dict(con.execute("SELECT source, status FROM frames").fetchall())
    assert {Path(k).name: v for k, v in rows.items()} == {
        "f0.tif": "ok", "f1.tif": "ok", "f2.tif": "ok", "broken.tif": "quarantined"}
    cfg = json.loads((ses / "config.json").read_text())
    assert cfg["command"] == "watch" and cfg["versions"]["emstream"]
    assert cfg["segmenter"] == "classical" and cfg["segmenter_requested"] == "classical"
    assert cfg["watch"] == str(acq) and cfg["quarantine_after_s"] == 1.0
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "summary" in r.stderr
    # the same folder replayed, then the session reported
    ses2 = tmp_path / "replayed"
    r = run_cli("replay", str(acq), "--as-fast-as-possible", "--session-dir", str(ses2),
                "--headless", "--no-report", "--segmenter", "classical")
    assert r.returncode == 0, r.stderr
    con2 = sqlite3.connect(ses2 / "ledger.sqlite")
    assert dict(con2.execute("SELECT status, COUNT(*) FROM frames GROUP BY status").fetchall()) == {
        "ok": 3, "quarantined": 1}
    import emstream.sinks.report  # noqa: F401
    assert main(["report", str(ses)]) == 0
    assert (ses / "report.html").exists()


@pytest.mark.slow
def test_demo_ledger_matches_simulator(tmp_path, needs_processing):
    import emstream.sources.simulate.writers  # noqa: F401
    ses = tmp_path / "demo"
    r = run_cli("demo", "--frames", "12", "--fps", "6", "--size", "256", "--inject-bad",
                "--headless", "--no-report", "--session-dir", str(ses), "--segmenter", "classical",
                "--out", str(tmp_path / "frames"), timeout=170)
    assert r.returncode == 0, r.stderr
    assert "ledger matches the simulator" in r.stderr
    manifest = [json.loads(x) for x in (tmp_path / "frames" / "simulator-manifest.jsonl").read_text().splitlines()]
    bad = sum(1 for m in manifest if m.get("status") == "quarantined")
    con = sqlite3.connect(ses / "ledger.sqlite")
    counts = dict(con.execute("SELECT status, COUNT(*) FROM frames GROUP BY status").fetchall())
    assert counts == {"ok": 12, "quarantined": bad}


def test_bad_input_is_named_in_one_line_never_a_traceback(tmp_path):
    """Issue 21 item 12: a zero pixel size, a 3x3 frame and a broken file each get one line."""
    good = tmp_path / "good.tif"
    write_calibrated_tif(good, disks(1, 96)[0], 0.5)
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.ones((3, 3), np.uint16))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    p = run_cli("analyze", str(good), "--pixel-size", "0", "--json", str(tmp_path / "o.json"))
    flat = " ".join(p.stderr.replace("│", " ").split())  # rich wraps the message in a box
    assert p.returncode == 2 and "positive number of nm" in flat
    assert "Traceback" not in p.stderr
    p = run_cli("analyze", str(good), str(tiny), str(bad), "--segmenter", "classical",
                "--json", str(tmp_path / "o.json"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "tiny.tif: frame of 3x3 px is too small" in p.stderr
    assert "bad.tif" in p.stderr and "2 failed" in p.stderr
    out = json.loads((tmp_path / "o.json").read_text())
    assert set(out) == {"good.tif", "tiny.tif", "bad.tif"} and "particles" in out["good.tif"]


def test_a_refused_command_leaves_no_session_folder(tmp_path):
    """Issue 21 item 18: a refused endpoint, or --screenshot with --headless, creates nothing."""
    s1 = tmp_path / "s1"
    assert main(["listen", "tcp://10.1.2.3:5555", "--session-dir", str(s1)]) == 2
    assert not s1.exists()
    s2 = tmp_path / "s2"
    assert main(["watch", str(tmp_path), "--headless", "--screenshot", str(tmp_path / "x.png"),
                 "--session-dir", str(s2)]) == 2
    assert not s2.exists()
    existing = tmp_path / "old"  # a session being resumed is never removed
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert main(["listen", "tcp://10.1.2.3:5555", "--session-dir", str(existing)]) == 2
    assert (existing / "keep.txt").is_file()


def test_without_a_terminal_progress_comes_as_plain_lines(capsys):
    """Issue 21 item 15: `watch` from a script says what it is doing."""
    import time as _time

    from emstream.console import LiveView
    from emstream.pipeline import PipelineStats

    st = PipelineStats(processed=7, fps=2.5, lag_s=0.4, particles=33, d50=4.1, unit="nm")
    with LiveView(lambda: st, line_every_s=0.1):
        _time.sleep(0.35)
    err = capsys.readouterr().err
    assert "emstream: 7 processed" in err and "2.50 frames/s" in err and "D50 4.1 nm" in err
    assert err.count("\n") == 1  # the same figures are not repeated
