"""The stall alert fires when the simulator pauses (A's ZeroMQ simulator -> C's stream source ->
F's pipeline with the watchdog), and the stall lands in the ledger's alerts table."""

from __future__ import annotations

import sqlite3
import threading

import emstream.pipeline as pipeline
import emstream.process.classical as classical
import emstream.sinks.ledger as ledger_mod
import emstream.sources.simulate.scene as scene
import emstream.sources.simulate.stream as stream
import emstream.sources.zmq as zmq_source
from emstream.process.watchdog import Watchdog
from emstream.sinks.base import Session

PAUSE_AT = 3


def test_stall_alert_when_the_simulator_pauses(tmp_path):
    bound: list[str] = []
    is_bound = threading.Event()
    stalled = threading.Event()
    stop = threading.Event()
    sent: list[int] = []

    def on_bound(ep: str) -> None:
        bound.append(ep)
        is_bound.set()

    def on_frame(rec) -> None:
        sent.append(1)
        if len(sent) == PAUSE_AT:
            stalled.wait(60)  # the simulator pauses until the stall alert is out

    cfg = scene.SceneConfig(shape=(256, 256), nm_per_px=0.5, banner=False, scale_bar=False)
    sender = threading.Thread(
        target=stream.send_stream,
        args=("tcp://127.0.0.1:*",),
        kwargs=dict(
            frames=6,
            fps=4.0,
            seed=3,
            config=cfg,
            on_bound=on_bound,
            on_frame=on_frame,
            stop=stop,
            linger_ms=5000,  # close() must not drop the last frames still queued
        ),
        daemon=True,
    )
    sender.start()
    assert is_bound.wait(30)
    src = zmq_source.StreamSource(bound[0])
    ledger = ledger_mod.Ledger(tmp_path)
    alerts: list = []

    class Catch:
        name = "catch"
        latest_only = False

        def open(self, s): ...
        def frame_done(self, r): ...
        def event(self, e): ...
        def close(self): ...

        def alert(self, a):
            alerts.append(a)
            if a.rule == "stall":
                stalled.set()

    p = pipeline.Pipeline(
        src,
        classical.ClassicalSegmenter(),
        [ledger, Catch()],
        session=Session(tmp_path, "simulator", "classical"),
        watchdog=Watchdog(stall_s=1.5),
    )
    p.start()
    try:
        assert stalled.wait(60), "no stall alert while the simulator paused"
        sender.join(60)
        assert p.wait_idle(1.0)
    finally:
        stop.set()
        stalled.set()
        p.stop()
        assert p.join(60)
    stall = [a for a in alerts if a.rule == "stall"]
    assert len(stall) == 1 and stall[0].builtin and stall[0].seq is None
    assert f"last frame {PAUSE_AT - 1}" in stall[0].message
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    rows = con.execute("SELECT seq, name, builtin FROM alerts WHERE name = 'stall'").fetchall()
    n_ok = con.execute("SELECT COUNT(*) FROM frames WHERE status = 'ok'").fetchone()[0]
    con.close()
    assert rows == [(None, "stall", 1)]
    assert n_ok == 6  # the session went on after the pause
