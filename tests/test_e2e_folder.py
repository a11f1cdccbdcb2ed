"""End to end on a real folder: simulator → ``emstream watch`` (subprocess, SIGKILLed and restarted).

The simulator writes ≥ 200 frames with every write mode (whole, chunked, temp-then-rename,
growing MRC stacks) plus injected zero-byte, truncated, random-bytes and short-MRC files. The
monitor runs as a real subprocess, is killed with SIGKILL midway and restarted on the same
session. Afterwards, checked against the simulator's manifest: every good frame has exactly one
``ok`` row, every bad file one ``quarantined`` row with a reason, nothing else, no duplicates,
and ``seq`` is contiguous across the restart.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import emstream.sources.simulate.scene as scene
import emstream.sources.simulate.writers as writers

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

N_FRAMES = 200
FPS = 8.0
SAFETY_S = 150  # only keeps a broken run from hanging; never asserted on


def monitor(acq: Path, session: Path, idle_s: float) -> subprocess.Popen:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.Popen(
        [sys.executable, "-m", "emstream", "watch", str(acq), "--session-dir", str(session),
         "--exit-when-idle", str(idle_s), "--headless", "--no-report", "--segmenter", "classical",
         "--poll", "0.1", "--min-age", "0.3", "--quarantine-after", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def ledger_rows(session: Path) -> int:
    db = session / "ledger.sqlite"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        n = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
        con.close()
        return int(n)
    except sqlite3.Error:
        return 0


def expected_from_manifest(acq: Path) -> dict[str, str]:
    want: dict[str, str] = {}
    for line in (acq / writers.MANIFEST_NAME).read_text().splitlines():
        rec = json.loads(line)
        if "event" in rec:
            continue
        src = str(acq / rec["file"])
        if rec["slice"] is not None:
            src = f"{src}#{rec['slice']}"
        assert src not in want, f"manifest lists {src} twice"
        want[src] = rec["status"]
    return want


def test_watch_kill_restart_exactly_once(tmp_path):
    acq = (tmp_path / "acq").resolve()
    acq.mkdir()
    session = tmp_path / "session"
    stop = threading.Event()
    sim = threading.Thread(
        target=writers.write_session, args=(acq,),
        kwargs={"frames": N_FRAMES, "fps": FPS, "seed": 11, "inject_bad": True, "stop": stop,
                "config": scene.SceneConfig(shape=(256, 256), fps=FPS)},
        daemon=True,
    )
    first = monitor(acq, session, idle_s=60)
    sim.start()
    deadline = time.time() + SAFETY_S
    try:
        while ledger_rows(session) < 60 and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        recorded_before_restart = ledger_rows(session)
        time.sleep(1.0)  # the simulator goes on writing while nobody watches
        second = monitor(acq, session, idle_s=4)
        sim.join(SAFETY_S)
        _, err = second.communicate(timeout=SAFETY_S)
    finally:
        stop.set()
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    assert second.returncode == 0, err
    want = expected_from_manifest(acq)
    assert Counter(want.values())["ok"] == N_FRAMES
    assert Counter(want.values())["quarantined"] >= 4  # each kind of bad file at least once
    assert 0 < recorded_before_restart < len(want)  # the kill really was midway

    con = sqlite3.connect(session / "ledger.sqlite")
    rows = con.execute("SELECT seq, source, status, reason FROM frames ORDER BY seq").fetchall()
    sources = [r[1] for r in rows]
    dupes = [s for s, n in Counter(sources).items() if n > 1]
    assert not dupes, f"recorded twice: {dupes[:5]}"
    got = {r[1]: r[2] for r in rows}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing, f"never recorded: {missing[:5]}"
    assert not extra, f"not written by the simulator: {extra[:5]}"
    wrong = {s: (got[s], want[s]) for s in want if got[s] != want[s]}
    assert not wrong, f"wrong status: {list(wrong.items())[:5]}"
    assert all(r[3] for r in rows if r[2] == "quarantined"), "a quarantined frame without a reason"
    assert [r[0] for r in rows] == list(range(len(rows)))  # seq contiguous across the restart
    pending = con.execute("SELECT path, version FROM files WHERE status='pending'").fetchall()
    assert not pending, pending
    # the restart is visible in the ledger
    assert con.execute("SELECT COUNT(*) FROM events WHERE kind='restart'").fetchone()[0] == 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
