"""ZeroMQ sender: delivers N emstream v1 frames to a real PULL socket on 127.0.0.1."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq

from emstream.errors import ConfigError
from emstream.sources.protocol import RejectedMessage, decode_v1
from emstream.sources.simulate import run_simulate
from emstream.sources.simulate.scene import SceneConfig
from emstream.sources.simulate.stream import BAD_MESSAGES, send_stream

SHAPE = (64, 80)
CAP = SHAPE[0] * SHAPE[1] * 2  # a receiver that accepts exactly our frame size


def _config() -> SceneConfig:
    return SceneConfig(shape=SHAPE, nm_per_px=0.3, coverage_start=0.1)


def _drain(sock: zmq.Socket, expected: int, patience_ms: int = 20000) -> list[list[bytes]]:
    """Receive until ``expected`` messages came (or nothing for ``patience_ms``), then check
    briefly that nothing more follows."""
    msgs = []
    while len(msgs) < expected and sock.poll(patience_ms):
        msgs.append(sock.recv_multipart())
    while sock.poll(200):
        msgs.append(sock.recv_multipart())
    return msgs


def _run_in_thread(**kw):
    box: dict = {}
    bound = threading.Event()

    def on_bound(ep: str) -> None:
        box["endpoint"] = ep
        bound.set()

    def target() -> None:
        try:
            box["result"] = send_stream(on_bound=on_bound, **kw)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            box["error"] = exc
            bound.set()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    assert bound.wait(30)
    return th, box


def test_sender_binds_and_pull_receives_every_frame(tmp_path):
    ctx = zmq.Context.instance()
    manifest = tmp_path / "stream.jsonl"
    th, box = _run_in_thread(endpoint="tcp://127.0.0.1:*", frames=12, fps=0, seed=4,
                             config=_config(), manifest=manifest)
    assert "error" not in box
    pull = ctx.socket(zmq.PULL)
    try:
        pull.connect(box["endpoint"])
        msgs = _drain(pull, 12)
    finally:
        pull.close(linger=0)
    th.join(10)
    assert box["result"]["sent"] == 12 and box["result"]["bad"] == []
    frames = [decode_v1(m, max_bytes=CAP) for m in msgs]
    assert len(frames) == 12
    assert [f.metadata.get("seq", f.seq) for f in frames] == list(range(12))
    for f in frames:
        assert f.pixels.dtype == np.uint16 and f.shape == SHAPE
        assert f.calibration.nm_per_px == pytest.approx((0.3, 0.3))
        assert f.metadata["series"] == "sim-4"
    recs = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert recs[-1]["event"] == "end" and recs[-1]["frames"] == 12
    assert [r["seq"] for r in recs[:-1]] == list(range(12))


def test_sender_connects_to_a_bound_pull_and_injects_malformed_messages():
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        th, box = _run_in_thread(endpoint=f"tcp://127.0.0.1:{port}", bind=False, frames=10,
                                 fps=0, seed=5, malformed=True, config=_config())
        msgs = _drain(pull, 10 + len(BAD_MESSAGES))
        th.join(10)
    finally:
        pull.close(linger=0)
    assert "error" not in box
    res = box["result"]
    assert sorted(res["bad"]) == sorted(BAD_MESSAGES)
    assert len(msgs) == 10 + len(BAD_MESSAGES)
    ok, reasons = 0, []
    for m in msgs:
        try:
            decode_v1(m, max_bytes=CAP)
            ok += 1
        except RejectedMessage as exc:
            reasons.append(exc.reason)
    assert ok == 10
    assert len(reasons) == len(BAD_MESSAGES)
    assert "frame-too-large" in reasons and "payload-size" in reasons
    assert msgs[-1][0] and json.loads(msgs[-1][0])["shape"] == [2 * SHAPE[0], 2 * SHAPE[1]]


def test_stop_ends_a_blocked_push_without_listener():
    stop = threading.Event()
    th, box = _run_in_thread(endpoint="tcp://127.0.0.1:*", frames=1000, fps=0, seed=1,
                             config=_config(), stop=stop)
    stop.set()
    th.join(20)
    assert not th.is_alive()
    assert box["result"]["stopped"] is True and box["result"]["sent"] < 1000


def test_non_loopback_is_refused_by_default():
    with pytest.raises(ConfigError):
        send_stream("tcp://192.0.2.7:5555", frames=1, fps=0, seed=0, config=_config())
    with pytest.raises(ValueError):
        send_stream("tcp://127.0.0.1:*", frames=1, fps=0, seed=0, pattern="req")


def test_run_simulate_over_zmq():
    """``emstream simulate --zmq`` path: the simulator binds, a listener connects."""
    import socket

    ctx = zmq.Context.instance()
    # a free port from the OS (a plain socket closes at once; a ZeroMQ one closes in its I/O
    # thread, and the simulator's bind could find the port still taken)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    box: dict = {}
    th = threading.Thread(target=lambda: box.setdefault("r", run_simulate(
        zmq=f"tcp://127.0.0.1:{port}", frames=3, fps=50, seed=2, config=_config())),
        daemon=True)
    th.start()
    pull = ctx.socket(zmq.PULL)
    try:
        pull.connect(f"tcp://127.0.0.1:{port}")
        msgs = _drain(pull, 3)
    finally:
        pull.close(linger=0)
    th.join(10)
    assert len(msgs) == 3 and box["r"]["sent"] == 3
