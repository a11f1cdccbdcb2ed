"""End to end over real ZeroMQ sockets: ``emstream listen`` as a subprocess, bad messages included.

A PUSH sender binds on 127.0.0.1 (as a detector does) and sends good emstream v1 frames
interleaved with malformed, wrong-shape, wrong-dtype and oversized messages. Afterwards every
good frame has exactly one ``ok`` row and every bad message one ``quarantined`` row with a
reason, and the listener exited cleanly by ``--exit-when-idle``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
from emstream.sources.protocol import encode_v1  # noqa: E402

pytestmark = pytest.mark.slow


def disk_frame(k: int, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 3000.0)
    for _ in range(4):
        cy, cx = rng.uniform(15, size - 15, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 1000.0
    img += rng.normal(0, 40, img.shape)
    return img.astype(np.uint16)


def bad_messages(t: float) -> dict[str, list[bytes]]:
    good_hdr, good_payload = encode_v1(disk_frame(0), seq=10_000, series="bad", t_acq=t)
    hdr = json.loads(good_hdr)
    wrong_shape = dict(hdr, shape=[64, 64])
    wrong_dtype = dict(hdr, dtype="complex128")
    big = np.zeros((640, 640), np.uint16)  # 0.8 MB > --max-frame-mb 0.5
    big_hdr, big_payload = encode_v1(big, seq=10_001, series="bad", t_acq=t)
    return {
        "not json": [b"\xff{{not json", good_payload],
        "single part": [good_hdr],
        "missing fields": [json.dumps({"v": 1}).encode(), good_payload],
        "wrong shape": [json.dumps(wrong_shape).encode(), good_payload],
        "wrong dtype": [json.dumps(wrong_dtype).encode(), good_payload],
        "oversized": [big_hdr, big_payload],
    }


def test_listen_end_to_end_with_bad_messages(tmp_path):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    session = tmp_path / "session"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emstream", "listen", endpoint, "--session-dir", str(session),
         "--exit-when-idle", "4", "--headless", "--no-report", "--segmenter", "classical",
         "--max-frame-mb", "0.5", "--pixel-size", "0.7"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    n_good = 40
    bad = bad_messages(time.time())
    bad_slots = {5 + 6 * i: name for i, name in enumerate(bad)}
    try:
        for k in range(n_good):
            push.send_multipart(encode_v1(disk_frame(k), seq=k, series="run1", t_acq=time.time()))
            if k in bad_slots:
                push.send_multipart(bad[bad_slots[k]])
        _, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
        push.close(0)
        ctx.term()
    assert proc.returncode == 0, err
    con = sqlite3.connect(session / "ledger.sqlite")
    rows = con.execute("SELECT source, status, reason, calibration_source FROM frames").fetchall()
    ok = [r for r in rows if r[1] == "ok"]
    quarantined = [r for r in rows if r[1] == "quarantined"]
    assert sorted(r[0] for r in ok) == sorted(f"{endpoint}/run1/{k}" for k in range(n_good))
    assert all(r[3] == "override" for r in ok)
    assert len(quarantined) == len(bad)
    assert all(r[2] and r[2].startswith("protocol") for r in quarantined)
    assert len({r[0] for r in rows}) == len(rows)  # no duplicates
    seqs = [r[0] for r in con.execute("SELECT seq FROM frames ORDER BY seq")]
    assert seqs == list(range(n_good + len(bad)))
    # the source's own counters are in the ledger's events
    stats = con.execute("SELECT data_json FROM events WHERE kind='source_stats'").fetchone()
    assert stats is not None
    data = json.loads(stats[0])
    assert data.get("accepted") == n_good
