"""StreamSource over real ZeroMQ sockets on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq
import zmq.auth

from emstream.errors import ConfigError
from emstream.frame import Frame
from emstream.results import FrameRecord
from emstream.sources.protocol import encode_v1
from emstream.sources.zmq import StreamSource, check_endpoint

SAFETY_S = 20.0  # only stops a broken test from hanging; never asserted on


def image(i: int, shape=(6, 7), dtype="<u2") -> np.ndarray:
    return (np.arange(shape[0] * shape[1]).reshape(shape) + i).astype(dtype)


def collect(source: StreamSource, until: Callable[[list], bool]) -> list:
    """Run the source until ``until(items)`` holds (or the safety net trips)."""
    stop = threading.Event()
    timer = threading.Timer(SAFETY_S, stop.set)
    timer.start()
    items: list = []
    try:
        for item in source.frames(stop):
            items.append(item)
            if until(items):
                break
    finally:
        timer.cancel()
    return items


def frames_only(items: list) -> list[Frame]:
    return [x for x in items if isinstance(x, Frame)]


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_pull_connects_to_binding_sender_and_keeps_order(ctx):
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    with StreamSource(f"tcp://127.0.0.1:{port}") as source:
        assert "pull connect" in source.describe()

        def send():
            for i in range(20):
                push.send_multipart(encode_v1(image(i), seq=i, series="run1", t_acq=1000.0 + i,
                                              pixel_size_nm=(0.5, 0.5)))

        threading.Thread(target=send, daemon=True).start()
        got = frames_only(collect(source, lambda xs: len(xs) == 20))
        stats = source.stats
    assert [f.metadata["seq"] for f in got] == list(range(20))
    for i, f in enumerate(got):
        np.testing.assert_array_equal(f.pixels, image(i))
        assert f.source_id == f"tcp://127.0.0.1:{port}/run1/{i}"
        assert f.calibration.nm_per_px == (0.5, 0.5) and f.calibration.source == "stream"
        assert f.t_acq == 1000.0 + i
    assert stats.accepted == 20 and stats.received == 20
    assert stats.rejected == {} and stats.gaps == 0 and stats.missing == 0


def test_bind_on_random_port_reports_real_endpoint(ctx):
    with StreamSource("tcp://127.0.0.1:0", bind=True) as source:
        assert source.endpoint.startswith("tcp://127.0.0.1:")
        assert not source.endpoint.endswith(":0")
        push = ctx.socket(zmq.PUSH)
        push.connect(source.endpoint)
        push.send_multipart(encode_v1(image(3, dtype="f4"), seq=0, series="b", t_acq=1.0))
        (frame,) = collect(source, lambda xs: len(xs) == 1)
    np.testing.assert_array_equal(frame.pixels, image(3, dtype="f4"))
    assert not frame.calibration.calibrated


def _bad_messages() -> dict[str, list[bytes]]:
    good_header, good_payload = encode_v1(image(0), seq=0, series="x", t_acq=0.0)
    h = json.loads(good_header)
    return {
        "header-json": [b"{not json", good_payload],
        "parts": [good_header, good_payload, b"extra"],
        "payload-size": [json.dumps({**h, "shape": [7, 7]}).encode(), good_payload],
        "dtype": [json.dumps({**h, "dtype": "O"}).encode(), good_payload],
        "frame-too-large": [json.dumps({**h, "shape": [512, 512]}).encode(), bytes(512 * 512 * 2)],
        "version": [json.dumps({**h, "v": 2}).encode(), good_payload],
    }


def test_bad_messages_are_rejected_counted_and_good_frames_keep_flowing(ctx):
    bad = _bad_messages()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    with StreamSource(f"tcp://127.0.0.1:{port}", max_frame_bytes=64 * 1024) as source:

        def send():
            seq = 0
            for parts in bad.values():
                push.send_multipart(encode_v1(image(seq), seq=seq, series="good", t_acq=0.0))
                seq += 1
                push.send_multipart(parts)
            push.send_multipart(encode_v1(image(seq), seq=seq, series="good", t_acq=0.0))

        threading.Thread(target=send, daemon=True).start()
        n_total = 2 * len(bad) + 1
        items = collect(source, lambda xs: len(xs) == n_total)
        stats = source.stats
        events = source.drain_events()
    good = frames_only(items)
    records = [x for x in items if isinstance(x, FrameRecord)]
    assert [f.metadata["seq"] for f in good] == list(range(len(bad) + 1))
    assert stats.accepted == len(bad) + 1
    assert stats.rejected == {reason: 1 for reason in bad}
    assert stats.received == n_total
    # each reject reached the caller as a quarantine record with its reason, in order
    assert len(records) == len(bad)
    assert all(r.status == "quarantined" for r in records)
    for record, reason in zip(records, bad, strict=True):
        assert reason in record.reason
    reject_events = [e for e in events if e.kind == "reject"]
    assert sorted(e.data["reason"] for e in reject_events) == sorted(bad)


def test_message_over_transport_limit_is_dropped_and_stream_recovers(ctx):
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    source = StreamSource(f"tcp://127.0.0.1:{port}", max_frame_bytes=4096)
    stop_sending = threading.Event()

    def send():
        huge = np.zeros((1024, 2048), "u2")  # 4 MiB >> MAXMSGSIZE (~1 MiB)
        push.send_multipart(encode_v1(huge, seq=0, series="big", t_acq=0.0))
        i = 0
        while not stop_sending.is_set():
            try:
                push.send_multipart(encode_v1(image(i), seq=i, series="after", t_acq=0.0),
                                    flags=zmq.NOBLOCK)
                i += 1
            except zmq.Again:
                pass
            time.sleep(0.01)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        got = frames_only(collect(source, lambda xs: len(frames_only(xs)) >= 3))
        stats = source.stats
        events = source.drain_events()
    finally:
        stop_sending.set()
        t.join()
        source.close()
    assert all(f.metadata["series"] == "after" for f in got)
    assert len(got) >= 3
    # ZeroMQ dropped the connection for the oversized message; the source said so and reconnected
    assert stats.disconnects >= 1
    assert any(e.kind == "disconnected" for e in events)


def test_sub_counts_sequence_gaps(ctx):
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    dropped = {5, 6, 12}
    subscribed = threading.Event()
    with StreamSource(f"tcp://127.0.0.1:{port}", pattern="sub") as source:

        def send():
            k = 0
            while not subscribed.is_set():  # PUB drops until the subscription has arrived
                pub.send_multipart(encode_v1(image(0), seq=k, series="warmup", t_acq=0.0))
                k += 1
                time.sleep(0.01)
            for seq in range(20):
                if seq not in dropped:
                    pub.send_multipart(encode_v1(image(seq), seq=seq, series="run", t_acq=0.0))
                    time.sleep(0.001)

        threading.Thread(target=send, daemon=True).start()

        def until(items):
            if items:
                subscribed.set()
            return any(f.metadata["series"] == "run" and f.metadata["seq"] == 19
                       for f in frames_only(items))

        got = frames_only(collect(source, until))
        stats = source.stats
        events = source.drain_events()
    run = [f.metadata["seq"] for f in got if f.metadata["series"] == "run"]
    assert run == [s for s in range(20) if s not in dropped]
    assert stats.gaps == 2 and stats.missing == 3
    gaps = [e for e in events if e.kind == "gap"]
    assert [(e.data["first_missing"], e.data["missing"]) for e in gaps] == [(5, 2), (12, 1)]
    assert {e.data["series"] for e in events if e.kind == "series-start"} == {"warmup", "run"}


def test_stop_and_close_end_the_loop():
    source = StreamSource("tcp://127.0.0.1:0", bind=True, poll_ms=20)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert list(source.frames(stop)) == []  # returns once stop is set
    # close() from another thread while the loop runs also ends it and frees the socket
    stop2 = threading.Event()
    threading.Timer(0.2, source.close).start()
    assert list(source.frames(stop2)) == []
    assert source._sock.closed
    assert list(source.frames(threading.Event())) == []  # closed source yields nothing


@pytest.mark.parametrize(
    ("endpoint", "bind", "allow_remote", "match"),
    [
        ("tcp://192.0.2.1:5555", False, False, "non-loopback"),
        ("tcp://example.org:5555", False, False, "non-loopback"),
        ("tcp://0.0.0.0:0", True, False, "non-loopback"),
        ("tcp://*:5555", True, False, "non-loopback"),
        ("tcp://0.0.0.0:0", True, True, "CURVE"),
        ("udp://127.0.0.1:5555", False, False, "not supported"),
        ("tcp://127.0.0.1", False, False, "HOST:PORT"),
        ("tcp://127.0.0.1:0", False, False, "explicit port"),
        ("127.0.0.1:5555", False, False, "expected"),
    ],
)
def test_refuses_remote_and_malformed_endpoints(endpoint, bind, allow_remote, match):
    with pytest.raises(ConfigError, match=match):
        StreamSource(endpoint, bind=bind, allow_remote=allow_remote)


def test_loopback_rules():
    assert check_endpoint("tcp://127.0.0.1:1", bind=False, allow_remote=False)
    assert check_endpoint("tcp://localhost:1", bind=False, allow_remote=False)
    assert check_endpoint("tcp://[::1]:1", bind=False, allow_remote=False)
    assert check_endpoint("ipc:///tmp/x", bind=True, allow_remote=False)
    assert not check_endpoint("tcp://192.0.2.1:1", bind=False, allow_remote=True)
    # remote connect is allowed with the explicit opt-in
    StreamSource("tcp://192.0.2.1:5555", allow_remote=True).close()


def test_curve_allow_list_admits_only_known_clients(ctx, tmp_path):
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    _, server_secret = zmq.auth.create_certificates(keys, "server")
    good_public, good_secret = zmq.auth.create_certificates(keys, "good")
    _, bad_secret = zmq.auth.create_certificates(keys, "intruder")
    (allowed / "good.key").write_bytes(open(good_public, "rb").read())
    server_public = keys / "server.key"

    with StreamSource("tcp://127.0.0.1:0", bind=True, curve_keys=server_secret,
                      curve_allow=allowed) as source:
        assert "CURVE" in source.describe()

        def client(secret_file, series):
            sock = ctx.socket(zmq.PUSH)
            pub, sec = zmq.auth.load_certificate(secret_file)
            sock.curve_publickey, sock.curve_secretkey = pub, sec
            sock.curve_serverkey, _ = zmq.auth.load_certificate(server_public)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(source.endpoint)
            return sock

        intruder = client(bad_secret, "intruder")
        for i in range(3):
            try:
                intruder.send_multipart(encode_v1(image(i), seq=i, series="intruder", t_acq=0.0),
                                        flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # no authenticated peer: nothing can even be queued
        good = client(good_secret, "good")
        for i in range(3):
            good.send_multipart(encode_v1(image(i), seq=i, series="good", t_acq=0.0))
        got = frames_only(collect(source, lambda xs: len(frames_only(xs)) == 3))
    assert [f.metadata["series"] for f in got] == ["good"] * 3


def test_curve_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="curve_allow"):
        StreamSource("tcp://127.0.0.1:5555", curve_allow=tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        StreamSource("tcp://127.0.0.1:0", bind=True, curve_keys=tmp_path / "missing",
                     curve_allow=tmp_path)
    keys = tmp_path / "k"
    keys.mkdir()
    public, secret = zmq.auth.create_certificates(keys, "server")
    with pytest.raises(ConfigError, match="secret"):
        StreamSource("tcp://127.0.0.1:0", bind=True, curve_keys=public, curve_allow=keys)
    with pytest.raises(ConfigError, match="folder of client"):
        StreamSource("tcp://127.0.0.1:0", bind=True, curve_keys=secret,
                     curve_allow=tmp_path / "nope")


def test_frames_queued_before_the_sender_left_are_not_lost(ctx):
    """A sender that sends and quits: everything it delivered is read before reconnecting.

    (Reconnecting discards the dropped connection's pipe, so reading must come first.)
    """
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    with StreamSource(f"tcp://127.0.0.1:{port}") as source:
        time.sleep(0.3)  # connected
        for i in range(10):
            push.send_multipart(encode_v1(image(i), seq=i, series="run1", t_acq=1.0 + i))
        push.close(linger=5000)  # all delivered, then the connection drops
        time.sleep(0.5)  # the disconnect is reported while the frames wait unread
        got = frames_only(collect(source, lambda xs: len(xs) == 10))
        stats = source.stats
    assert [f.metadata["seq"] for f in got] == list(range(10))
    assert stats.disconnects >= 1


def test_a_readable_socket_without_a_message_does_not_end_the_listener(ctx, monkeypatch):
    """``zmq.Again`` after a poll (CURVE handshakes make the socket readable) is not fatal: the
    listener stops only when asked (issue 21 item 6)."""
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    with StreamSource(f"tcp://127.0.0.1:{port}") as source:
        real = source._recv_message
        calls = {"n": 0}

        def flaky():
            calls["n"] += 1
            if calls["n"] <= 3:  # the first polls find nothing whole to read
                raise zmq.Again()
            return real()

        monkeypatch.setattr(source, "_recv_message", flaky)

        def send():
            for i in range(5):
                push.send_multipart(encode_v1(image(i), seq=i, series="r", t_acq=1.0 + i,
                                              pixel_size_nm=None))

        threading.Thread(target=send, daemon=True).start()
        got = frames_only(collect(source, lambda xs: len(frames_only(xs)) == 5))
    assert [f.metadata["seq"] for f in got] == list(range(5))
    assert calls["n"] >= 8


def test_frames_that_never_arrive_get_quarantined_rows(ctx):
    """Issue 21 item 18: a frame ZeroMQ refused (above --max-frame-mb) or lost leaves a
    quarantined record per missing sequence number, not only a gap event."""
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    with StreamSource(f"tcp://127.0.0.1:{port}") as source:
        def send():
            for i in (0, 1, 4, 5):  # 2 and 3 never sent
                push.send_multipart(encode_v1(image(i), seq=i, series="r", t_acq=1.0 + i))

        threading.Thread(target=send, daemon=True).start()
        items = collect(source, lambda xs: len(frames_only(xs)) == 4)
    recs = [x for x in items if isinstance(x, FrameRecord)]
    assert [r.source_id.rsplit("/", 1)[1] for r in recs] == ["2", "3"]
    assert all(r.status == "quarantined" and "never arrived" in r.reason
               and "--max-frame-mb" in r.reason for r in recs)
    # in stream order: the missing ones come just before the frame that revealed the gap
    kinds = ["f" if isinstance(x, Frame) else "q" for x in items]
    assert kinds == ["f", "f", "q", "q", "f", "f"]
