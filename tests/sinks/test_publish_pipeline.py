"""End to end through the real pipeline: target particles appear at a known frame, the rule fires
within for_frames and never before; the alert lands in the ledger's ``alerts`` table and on the
PUB socket (real SUB subscriber); a pause in the source raises the stall alert."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import numpy as np
import zmq

import emstream.pipeline as pipeline
import emstream.process.classical as classical
import emstream.sinks.ledger as ledger_mod
from emstream.frame import Calibration, Frame
from emstream.process.rules import RuleEngine, RuleSet
from emstream.process.watchdog import Watchdog
from emstream.sinks.actions import ActionsSink
from emstream.sinks.base import Session
from emstream.sinks.publish import Publisher
from tests.sinks.test_report_helpers import _draw

FIRST = 6  # targets appear in this frame
FOR = 2
N = 12
PAUSE_AFTER = 9  # the "writer" stalls after this frame


class ScriptedSource:
    """Frames of small particles; two large targets from frame FIRST on; a pause mid-way."""

    def __init__(self, stall_s: float) -> None:
        self.rng = np.random.default_rng(7)
        self.stall_s = stall_s
        self.emitted = 0
        self.resume = threading.Event()

    def describe(self) -> str:
        return "scripted test source"

    def close(self) -> None:
        pass

    def frames(self, stop):
        h = w = 192
        small = [(30 + 40 * (k % 4), 25 + 45 * (k // 4), 2.5) for k in range(12)]
        targets = [(60.0, 120.0, 9.0), (150.0, 150.0, 8.5)]
        small = [
            s
            for s in small
            if all((s[0] - t[0]) ** 2 + (s[1] - t[1]) ** 2 > 35**2 for t in targets)
        ]
        for i in range(N):
            if stop.is_set():
                return
            if i == PAUSE_AFTER + 1:
                self.resume.wait(30)  # the test lets it go on once the stall alert is out
            parts = small + (targets if i >= FIRST else [])
            raw, _ = _draw(self.rng, parts, (h, w), 0.5)
            t = time.time()
            self.emitted += 1
            yield Frame(
                raw,
                f"scripted/{i}",
                t_acq=t,
                t_arrival=t,
                calibration=Calibration((0.5, 0.5), "stream"),
            )


def test_alerts_reach_ledger_and_subscriber_and_stall_fires(tmp_path):
    rules = RuleEngine(
        RuleSet.from_toml_text(
            f'[[rules]]\nname = "large particles"\nparticles.equivalent_diameter_nm = [14, 40]\n'
            f'for_frames = {FOR}\nclear_frames = 2\nactions = ["log", "snapshot", "publish"]\n'
        )
    )
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:*", context=ctx, matching=rules.matching)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"alert")
    sub.setsockopt(zmq.SUBSCRIBE, b"frame")
    sub.connect(pub.endpoint)
    time.sleep(0.3)  # let the subscription propagate (PUB drops until then); not an assertion

    got: list[tuple[str, dict]] = []
    stall_seen = threading.Event()
    done = threading.Event()

    def listen():
        while not done.is_set():
            if sub.poll(100):
                topic, data = sub.recv_multipart()
                msg = json.loads(data)
                got.append((topic.decode(), msg))
                if msg.get("rule") == "stall":
                    stall_seen.set()

    th = threading.Thread(target=listen, daemon=True)
    th.start()

    src = ScriptedSource(stall_s=1.0)
    ledger = ledger_mod.Ledger(tmp_path)
    p = pipeline.Pipeline(
        src,
        classical.ClassicalSegmenter(),
        [ledger, pub, ActionsSink(tmp_path, rules=rules)],
        session=Session(tmp_path, "scripted", "classical"),
        rules=rules,
        watchdog=Watchdog(stall_s=1.0),
    )
    p.start()
    try:
        assert stall_seen.wait(60), "no stall alert while the source paused"
    finally:
        src.resume.set()
    assert p.join(120)
    time.sleep(0.3)  # let the last PUB messages arrive before we stop listening
    done.set()
    th.join(5)
    sub.close()
    ctx.term()

    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    rows = con.execute(
        "SELECT seq, name, severity, builtin, snapshot FROM alerts ORDER BY id"
    ).fetchall()
    con.close()
    large = [r for r in rows if r[1] == "large particles"]
    assert large, rows
    first_seq = large[0][0]
    assert FIRST <= first_seq <= FIRST + FOR - 1, rows  # within for_frames, never before
    assert large[0][4] == f"snapshots/alert_{first_seq:06d}_large_particles.png"
    assert (tmp_path / large[0][4]).is_file()
    stall = [r for r in rows if r[1] == "stall"]
    assert stall and stall[0][0] is None and stall[0][3] == 1

    alerts_pub = [m for t, m in got if t == "alert"]
    assert any(m["rule"] == "large particles" and m["seq"] == first_seq for m in alerts_pub)
    frames_pub = {m["seq"]: m for t, m in got if t == "frame"}
    assert frames_pub, "no frame summaries published"
    if first_seq in frames_pub:
        assert frames_pub[first_seq]["matching"] >= 1
