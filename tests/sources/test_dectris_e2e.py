"""``emstream listen --protocol dectris`` end to end into the session ledger (issue 6).

v1 comes from the real ``libertem-dectris`` simulator (header and detector config as two
messages), v2 from the CBOR sender in ``test_dectris.py``'s format. The listener runs as a
subprocess and stops itself with ``--exit-when-idle``.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
cbor2 = pytest.importorskip("cbor2")
pytestmark = pytest.mark.slow


def listen(endpoint: str, session, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.Popen(
        [sys.executable, "-m", "emstream", "listen", endpoint, "--protocol", "dectris",
         "--session-dir", str(session), "--exit-when-idle", "4", "--headless", "--no-report",
         "--segmenter", "classical", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def ledger_rows(session) -> list[tuple]:
    con = sqlite3.connect(session / "ledger.sqlite")
    try:
        return con.execute(
            "SELECT seq, source, status, calibration_source FROM frames ORDER BY seq"
        ).fetchall()
    finally:
        con.close()


def test_dectris_v1_simulator_session_reaches_ledger(tmp_path):
    libertem_dectris = pytest.importorskip("libertem_dectris")
    n = 12
    sim = libertem_dectris.DectrisSim.new_mocked("tcp://127.0.0.1", num_frames=n,
                                                 random_port=True)
    session = tmp_path / "session"
    uri = sim.get_uri()  # (the simulator is busy, and locked, while it sends)

    def send():  # blocks until the listener has connected
        sim.send_headers()
        sim.send_frames()
        sim.send_footer()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    proc = listen(uri, session)
    try:
        _, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    sender.join(timeout=5)
    assert proc.returncode == 0, err
    rows = ledger_rows(session)
    assert [r[1] for r in rows] == [f"dectris/34/{k}" for k in range(n)]
    assert all(r[2] == "ok" for r in rows)
    assert all(r[3] in ("none", None, "") for r in rows)  # detector pixel is not a calibration


def test_dectris_v2_cbor_session_reaches_ledger_with_pixel_size_override(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "_dectris_v2_sender", Path(__file__).with_name("test_dectris.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    v2_start, v2_image, v2_end = helpers.v2_start, helpers.v2_image, helpers.v2_end

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    session = tmp_path / "session"
    proc = listen(f"tcp://127.0.0.1:{port}", session, "--pixel-size", "0.25")
    n = 6
    rng = np.random.default_rng(0)
    try:
        push.send(v2_start())  # blocks until the listener connects
        for k in range(n):
            a = rng.poisson(100, size=(96, 128)).astype("<u2")
            push.send(v2_image(k, a, "bslz4" if k % 2 else "lz4"))
        push.send(v2_end())
        _, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
        push.close(0)
        ctx.term()
    assert proc.returncode == 0, err
    rows = ledger_rows(session)
    assert [r[1] for r in rows] == [f"dectris/3/{k}" for k in range(n)]
    assert all(r[2] == "ok" for r in rows)
    assert all(r[3] == "override" for r in rows)
