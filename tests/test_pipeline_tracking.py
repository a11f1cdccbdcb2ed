"""Tracking inside the pipeline: ledger columns and tables, published events, rules on events,
exports, and a restart that goes on without renumbering (real SQLite, real ZeroMQ sockets)."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time

import numpy as np
import pytest
import zmq
from simulated import SimulatedSource, TruthSegmenter

from emstream.pipeline import Pipeline
from emstream.process.rules import RuleEngine, RuleSet
from emstream.sinks.base import Session
from emstream.sinks.export import export_session
from emstream.sinks.ledger import Ledger
from emstream.sinks.publish import Publisher
from emstream.sources.simulate.scene import Microscope, SceneConfig


@pytest.fixture(scope="module")
def sims():
    cfg = SceneConfig(shape=(512, 512), nm_per_px=0.25, mode="haadf", t0=1.7e9, fps=2.0,
                      nucleation_per_frame=2.0, coalescence_prob=0.5)
    mic = Microscope(cfg, seed=5)
    return [mic.next_frame() for _ in range(60)]


RULES = """
[[rules]]
name = "nuclei appear"
severity = "info"
events.kind = "nucleation"
events.count = [2, inf]
events.window_s = 10
"""


def run(sims, session_dir, extra=(), rules=None):
    p = Pipeline(SimulatedSource(sims), TruthSegmenter(sims), [Ledger(session_dir), *extra],
                 session=Session(session_dir, "sim", "ground-truth"), rules=rules)
    p.run()
    return p


def test_tracked_session_is_recorded_published_and_exported(sims, tmp_path):
    ctx = zmq.Context.instance()
    pub = Publisher("tcp://127.0.0.1:0")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"event")
    sub.connect(pub.endpoint)
    time.sleep(0.3)
    got: list[dict] = []
    done = threading.Event()

    def listen():
        while not done.is_set():
            if sub.poll(100):
                _, data = sub.recv_multipart()
                got.append(json.loads(data))

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    engine = RuleEngine(RuleSet.from_toml_text(RULES))
    run(sims, tmp_path, [pub], rules=engine)
    time.sleep(0.3)
    done.set()
    th.join(5)
    sub.close()

    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    untracked = con.execute("SELECT COUNT(*) FROM particles WHERE track_id IS NULL").fetchone()[0]
    assert untracked == 0
    # the stage drift recorded per frame matches the simulator's (px and nm)
    rows = con.execute("SELECT drift_y_px, drift_x_px, drift_y_nm FROM frames ORDER BY seq").fetchall()
    truth = np.array([s.stage_offset_px for s in sims]) - sims[0].stage_offset_px
    got_drift = np.array([r[:2] for r in rows])
    assert np.median(np.abs(got_drift - truth)) < 0.2
    assert rows[-1][2] == pytest.approx(rows[-1][0] * 0.25)
    kinds = dict(con.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
    assert kinds.get("nucleation", 0) >= 3
    ev = con.execute("SELECT data_json FROM events WHERE kind='nucleation' LIMIT 1").fetchone()[0]
    data = json.loads(ev)
    assert {"seq", "tracks", "y_px", "x_px"} <= set(data)
    # one row per track, and every particle's track has one
    n_tracks = con.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    assert n_tracks == con.execute("SELECT COUNT(DISTINCT track_id) FROM particles").fetchone()[0]
    began = dict(con.execute("SELECT began, COUNT(*) FROM tracks GROUP BY began").fetchall())
    assert began.get("present_at_start", 0) >= 5 and began.get("nucleated", 0) >= 3
    rate = con.execute("SELECT growth_rate, unit FROM tracks WHERE frames_seen = 60 LIMIT 1").fetchone()
    assert rate[1] == "nm" and rate[0] is not None
    alerts = con.execute("SELECT name FROM alerts WHERE name='nuclei appear'").fetchall()
    assert alerts  # a rule on tracking events fired
    con.close()
    # published on the event topic, schema versioned
    pub_kinds = {m["kind"] for m in got}
    assert "nucleation" in pub_kinds
    assert all(m["schema"] == "emstream.publish" and m["v"] == 1 for m in got)
    # exports: trackpy's columns
    export_session(tmp_path)
    with open(tmp_path / "exports" / "trajectories.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["frame", "particle", "y", "x"]
    assert (tmp_path / "exports" / "tracks.parquet").is_file()


def test_restart_goes_on_with_the_same_tracks(sims, tmp_path):
    run(sims[:30], tmp_path)
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    before = dict(con.execute("SELECT label, track_id FROM particles WHERE seq=29").fetchall())
    top = con.execute("SELECT MAX(track_id) FROM particles").fetchone()[0]
    con.close()
    run(sims[30:], tmp_path)  # a new monitor on the same session
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    seqs = [r[0] for r in con.execute("SELECT DISTINCT seq FROM frames ORDER BY seq")]
    assert seqs == list(range(60))
    # the truth id under each particle tells which particle it is: same particle, same track
    after = con.execute("SELECT centroid_y_px, centroid_x_px, track_id FROM particles "
                        "WHERE seq=30").fetchall()
    old = con.execute("SELECT centroid_y_px, centroid_x_px, track_id FROM particles "
                      "WHERE seq=29").fetchall()
    new_ids = con.execute("SELECT MIN(track_id) FROM tracks WHERE first_seq >= 30").fetchone()[0]
    con.close()
    truth29, truth30 = sims[29].labels, sims[30].labels
    id29 = {int(truth29[round(y), round(x)]): t for y, x, t in old}
    id30 = {int(truth30[round(y), round(x)]): t for y, x, t in after}
    common = [k for k in id29 if k in id30 and k]
    assert len(common) > 10
    kept = sum(id29[k] == id30[k] for k in common)
    assert kept / len(common) > 0.95
    assert set(before.values()) & set(id30.values())
    assert new_ids is None or new_ids > top  # new tracks number on


def test_report_has_the_kinetics_section(sims, tmp_path, artifacts_dir):
    import shutil
    import subprocess

    from emstream.sinks.report import collect, write_report

    run(sims, tmp_path)
    kin = collect(tmp_path)["kinetics"]
    assert kin is not None
    rows = dict(kin["rows"])
    assert rows["Tracks"].split()[0].replace(",", "").isdigit()
    assert "nucleation" in rows["Events"]
    assert "R²" in rows[next(k for k in rows if k.startswith("LSW rate"))]
    captions = [c for c, _ in kin["svgs"]]
    assert any("drift" in c for c in captions) and any("<r>³" in c for c in captions)
    path = write_report(tmp_path)
    html = path.read_text(encoding="utf-8")
    assert 'id="kinetics"' in html and "Tracking events" in html
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    # the kinetics section alone (the other sections are in session_report.png)
    import re

    only = tmp_path / "kinetics.html"
    only.write_text(re.sub(r'<section id="(?!kinetics")[^"]*">.*?</section>', "", html,
                           flags=re.S), encoding="utf-8")
    shot = artifacts_dir / "report_kinetics.png"
    shot.unlink(missing_ok=True)
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--window-size=1200,2700", f"--screenshot={shot}",
                    only.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file()
