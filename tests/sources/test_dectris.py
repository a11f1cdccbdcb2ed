"""DECTRIS SIMPLON streams: v1 from the real libertem-dectris sender, v2 from a CBOR sender.

Compressed test payloads are made by the upstream bitshuffle / LZ4 HDF5 filters (via
``hdf5plugin``), an implementation independent of the ``dectris-compression`` decoder under test.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Callable

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from emstream.frame import Frame
from emstream.sources.dectris import CborTag, DectrisDecoder, cbor_loads
from emstream.sources.protocol import RejectedMessage
from emstream.sources.zmq import StreamSource

cbor2 = pytest.importorskip("cbor2")

SAFETY_S = 20.0


def collect(source: StreamSource, until: Callable[[list], bool]) -> list:
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


def h5_chunk(a: np.ndarray, algorithm: str) -> bytes:
    """One HDF5 chunk of ``a`` compressed by the reference bitshuffle / LZ4 filter."""
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    filt = (hdf5plugin.Bitshuffle(nelems=0, cname="lz4") if algorithm == "bslz4"
            else hdf5plugin.LZ4())
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        d = f.create_dataset("x", data=a, chunks=a.shape, **filt)
        _, chunk = d.id.read_direct_chunk((0,) * a.ndim)
    return bytes(chunk)


def test_image(k: int, shape=(37, 53), dtype="<u2") -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.poisson(20 + k, size=shape).astype(dtype)


test_image.__test__ = False  # a helper, not a test


# ----------------------------------------------------------------------------- stream v1


def test_v1_from_libertem_dectris_simulator():
    libertem_dectris = pytest.importorskip("libertem_dectris")
    n = 7
    sim = libertem_dectris.DectrisSim.new_mocked("tcp://127.0.0.1", num_frames=n,
                                                 random_port=True)
    with StreamSource(sim.get_uri(), protocol="dectris") as source:
        def send():
            sim.send_headers()  # dheader and detector config as two messages
            sim.send_frames()
            sim.send_footer()

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = collect(source, lambda xs: len(xs) == n)
        t.join()
        # the footer arrives after the last image: read until the series-end event
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        assert list(source.frames(stop)) == []
        stats = source.stats
        events = source.drain_events()
    assert all(isinstance(f, Frame) for f in got)
    assert [f.source_id for f in got] == [f"dectris/34/{k}" for k in range(n)]
    for k, f in enumerate(got):
        assert f.shape == (512, 512) and f.pixels.dtype == np.uint16
        assert (f.pixels == k).all()  # the simulator's frame k is filled with k (bs16-lz4)
        assert f.seq == k and f.metadata["encoding"] == "bs16-lz4<"
        assert not f.calibration.calibrated
        assert "detector pixel" in f.calibration.detail and "--pixel-size" in f.calibration.detail
    assert stats.accepted == n and stats.rejected == {} and stats.gaps == 0
    kinds = [e.kind for e in events]
    assert kinds[0] == "series-start" and kinds[-1] == "series-end"
    config = next(e for e in events if e.kind == "dectris-config").data
    assert config["x_pixels_in_detector"] == 512 and config["x_pixel_size"] == 7.5e-5


def v1_image_message(k: int, a: np.ndarray, encoding: str, series: int = 7) -> list[bytes]:
    if encoding == "<":
        blob = a.astype(a.dtype.newbyteorder("<")).tobytes()
    elif encoding == "lz4<":
        import lz4.block

        blob = lz4.block.compress(a.tobytes(), store_size=False)
    else:
        blob = h5_chunk(a, "bslz4")  # element size from the dtype
    dtype_name = {1: "uint8", 2: "uint16", 4: "uint32"}[a.itemsize]
    return [
        json.dumps({"htype": "dimage-1.0", "series": series, "frame": k, "hash": ""}).encode(),
        json.dumps({"htype": "dimage_d-1.0", "shape": [a.shape[1], a.shape[0]],
                    "type": dtype_name, "encoding": encoding, "size": len(blob)}).encode(),
        blob,
        json.dumps({"htype": "dconfig-1.0", "start_time": 10 * k, "stop_time": 10 * k + 5,
                    "real_time": 5}).encode(),
    ]


V1_CASES = [("bs16-lz4<", "<u2"), ("bs32-lz4<", "<u4"), ("bs8-lz4<", "u1"), ("lz4<", "<u2"),
            ("<", "<u2")]


def test_v1_detector_form_every_encoding_over_socket():
    """A real detector sends dheader + config (+ flat-field etc. for detail=all) in one message."""
    config = {"x_pixel_size": 7.5e-5, "y_pixel_size": 7.5e-5, "x_pixels_in_detector": 53,
              "y_pixels_in_detector": 37, "description": "test"}
    header = [
        json.dumps({"htype": "dheader-1.0", "series": 7, "header_detail": "all"}).encode(),
        json.dumps(config).encode(),
        json.dumps({"htype": "dflatfield-1.0", "shape": [53, 37], "type": "float32"}).encode(),
        np.ones((37, 53), "<f4").tobytes(),
        json.dumps({"htype": "dpixelmask-1.0", "shape": [53, 37], "type": "uint32"}).encode(),
        np.zeros((37, 53), "<u4").tobytes(),
        json.dumps({"htype": "dcountrate_table-1.0", "shape": [2, 1000], "type": "float32"}).encode(),
        np.zeros((2, 1000), "<f4").tobytes(),
    ]
    images = [test_image(k, dtype=dt) for k, (_, dt) in enumerate(V1_CASES)]
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        with StreamSource(f"tcp://127.0.0.1:{port}", protocol="dectris") as source:
            push.send_multipart(header)
            for k, ((enc, _), a) in enumerate(zip(V1_CASES, images, strict=True)):
                push.send_multipart(v1_image_message(k, a, enc))
            push.send_multipart([json.dumps({"htype": "dseries_end-1.0", "series": 7}).encode()])
            got = collect(source, lambda xs: len(xs) == len(V1_CASES))
            stats = source.stats
    finally:
        ctx.destroy(linger=0)
    assert stats.rejected == {}
    for k, (f, a) in enumerate(zip(got, images, strict=True)):
        assert f.shape == (37, 53)  # [x, y] in dimage_d is [width, height]
        assert f.pixels.dtype == a.dtype.newbyteorder("=")
        np.testing.assert_array_equal(f.pixels, a)
        assert f.source_id == f"dectris/7/{k}"
        assert f.metadata["start_time_ns"] == 10 * k
        assert f.metadata["detector"]["description"] == "test"


def _decoder_with_header() -> DectrisDecoder:
    d = DectrisDecoder(max_bytes=1 << 20)
    d.decode([json.dumps({"htype": "dheader-1.0", "series": 1, "header_detail": "none"}).encode(),
              b"{}"], 0.0)
    return d


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: [m[0], m[1].replace(b"bs16-lz4<", b"bs12-lz4<"), m[2], m[3]], "encoding"),
        (lambda m: [m[0], m[1].replace(b"uint16", b"float64"), m[2], m[3]], "dtype"),
        (lambda m: [m[0], m[1], struct.pack(">QI", 123, 8192) + m[2][12:], m[3]],
         "compressed-size"),
        (lambda m: [m[0], m[1], m[2][:12] + b"\x00\x00\x00\x05hello" + m[2][21:], m[3]],
         "decompress"),
        (lambda m: [m[0], m[1], m[2][:-3], m[3]], "payload-size"),
        (lambda m: [m[0]], "parts"),
        (lambda m: [b'{"htype": "dwhatever-1.0"}'], "dectris-htype"),
        (lambda m: [b'{"no": "htype"}'], "dectris-htype"),
        (lambda m: [m[0].replace(b'"frame": 0', b'"frame": -1'), *m[1:]], "dectris-field"),
        (lambda m: [m[0], m[1].replace(b"[53, 37]", b"[53, 37, 2]"), m[2], m[3]], "shape"),
        (lambda m: [m[0], m[1].replace(b"[53, 37]", b"[5300, 3700]"), m[2], m[3]],
         "frame-too-large"),
    ],
)
def test_v1_rejections(mutate, reason):
    message = v1_image_message(0, test_image(0), "bs16-lz4<")
    decoder = _decoder_with_header()
    decoder.decode(message, 0.0)  # the unmodified message is fine
    with pytest.raises(RejectedMessage) as info:
        decoder.decode(mutate(message), 0.0)
    assert info.value.reason == reason


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_v1_corrupted_payload_only_raises_rejected(data):
    message = v1_image_message(0, test_image(1), data.draw(st.sampled_from(["bs16-lz4<", "lz4<"])))
    blob = bytearray(message[2])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        frames, _ = _decoder_with_header().decode([message[0], message[1], bytes(blob),
                                                   message[3]], 0.0)
    except RejectedMessage:
        return
    assert frames[0].shape == (37, 53)  # a lucky mutation may still decode to some image


# ----------------------------------------------------------------------------- stream v2


def v2_image(image_id: int, a: np.ndarray, compression: str, series_id: int = 3,
             channels: tuple[str, ...] = ("threshold_1",)) -> bytes:
    tag = {1: 64, 2: 69, 4: 70}[a.itemsize]
    if compression == "none":
        content = a.astype(a.dtype.newbyteorder("<")).tobytes()
    else:
        elem = a.itemsize if compression == "bslz4" else 0
        content = cbor2.CBORTag(56500, [compression, elem, h5_chunk(a, compression)])
    array = cbor2.CBORTag(40, [list(a.shape), cbor2.CBORTag(tag, content)])
    msg = {
        "type": "image",
        "series_id": series_id,
        "series_unique_id": "abc",
        "image_id": image_id,
        "series_date": cbor2.CBORTag(0, "2024-05-01T12:00:00Z"),
        "start_time": [image_id * 5, 10],  # image k starts k/2 s after series_date
        "stop_time": [image_id * 5 + 1, 10],
        "real_time": [1, 10],
        "data": {c: array for c in channels},
    }
    return cbor2.dumps(cbor2.CBORTag(55799, msg))


def v2_start(series_id: int = 3) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, {
        "type": "start", "series_id": series_id, "series_unique_id": "abc",
        "arm_date": cbor2.CBORTag(0, "2024-05-01T12:00:00Z"), "channels": ["threshold_1"],
        "image_size_x": 53, "image_size_y": 37, "pixel_size_x": 7.5e-5, "pixel_size_y": 7.5e-5,
        "number_of_images": 4, "detector_description": "CBOR test sender",
        "countrate_correction_lookup_table": cbor2.CBORTag(70, bytes(400)),
        "goniometer": {"omega": {"increment": 0.0, "start": 0.0}},
        "threshold_energy": {"threshold_1": 4020.5},
    }))


def v2_end(series_id: int = 3) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, {"type": "end", "series_id": series_id,
                                             "series_unique_id": "abc"}))


def test_v2_cbor_sender_over_socket():
    cases = [("bslz4", "<u2"), ("lz4", "<u2"), ("none", "<u4"), ("bslz4", "<u4")]
    images = [test_image(10 + k, dtype=dt) for k, (_, dt) in enumerate(cases)]
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        with StreamSource(f"tcp://127.0.0.1:{port}", protocol="dectris") as source:
            push.send(v2_start())
            for k, ((comp, _), a) in enumerate(zip(cases, images, strict=True)):
                push.send(v2_image(k, a, comp))
            push.send(v2_end())
            got = collect(source, lambda xs: len(xs) == len(cases))
            stop = threading.Event()
            threading.Timer(0.3, stop.set).start()
            list(source.frames(stop))
            stats = source.stats
            events = source.drain_events()
    finally:
        ctx.destroy(linger=0)
    assert stats.rejected == {} and stats.accepted == len(cases)
    for k, (f, a) in enumerate(zip(got, images, strict=True)):
        assert f.source_id == f"dectris/3/{k}"
        assert f.shape == (37, 53) and f.pixels.dtype == a.dtype.newbyteorder("=")
        np.testing.assert_array_equal(f.pixels, a)
        assert f.t_acq == pytest.approx(1714564800.0 + k / 2)
        assert f.metadata["protocol"] == "dectris-stream-v2"
        assert not f.calibration.calibrated and "75 x 75 um" in f.calibration.detail
    assert [e.kind for e in events] == ["series-start", "series-end"]
    assert events[0].data["number_of_images"] == 4


def test_v2_multichannel_gives_one_frame_per_channel():
    a = test_image(0)
    frames, _ = DectrisDecoder().decode([v2_image(5, a, "bslz4", channels=("t1", "t2"))], 0.0)
    assert [f.source_id for f in frames] == ["dectris/3/5/t1", "dectris/3/5/t2"]
    # over a socket the two channels of one image are not mistaken for a sequence restart
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        with StreamSource(f"tcp://127.0.0.1:{port}", protocol="dectris") as source:
            for k in range(3):
                push.send(v2_image(k, a, "none", channels=("t1", "t2")))
            got = collect(source, lambda xs: len(xs) == 6)
            stats = source.stats
    finally:
        ctx.destroy(linger=0)
    assert [f.metadata["channel"] for f in got] == ["t1", "t2"] * 3
    assert stats.restarts == 0 and stats.gaps == 0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\xd9\xd9\xf7\xa1", "cbor"),  # truncated map
        (cbor2.dumps([1, 2]), "cbor"),
        (cbor2.dumps({"type": "nope"}), "dectris-htype"),
        (cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {}}),
         "dectris-field"),
        (cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                      "data": {"c": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, bytes(30))])}}),
         "payload-size"),
        (cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                      "data": {"c": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(83, bytes(32))])}}),
         "dtype"),
        (cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                      "data": {"c": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, cbor2.CBORTag(
                          56500, ["zstd", 2, b"xx"]))])}}), "encoding"),
        (cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                      "data": {"c": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, cbor2.CBORTag(
                          56500, ["bslz4", 2, struct.pack(">QI", 1 << 40, 8192)]))])}}),
         "compressed-size"),
        (cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                      "data": {"c": cbor2.CBORTag(40, [[100000, 4],
                                                        cbor2.CBORTag(69, bytes(8))])}}),
         "shape"),
    ],
)
def test_v2_rejections(message, reason):
    with pytest.raises(RejectedMessage) as info:
        DectrisDecoder().decode([message], 0.0)
    assert info.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_random_messages_only_raise_rejected(parts):
    try:
        DectrisDecoder(max_bytes=1 << 16).decode(parts, 0.0)
    except RejectedMessage:
        pass


_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=10) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    # tag 256 is left out: cbor2's encoder answers it by writing string references (tag 25)
    # inside, a CBOR extension DECTRIS streams do not use and the reader does not decode
    | st.builds(cbor2.CBORTag, st.integers(41, 1000).filter(lambda t: t != 256), inner),
    max_leaves=20,
)


def _plain(x):
    if isinstance(x, memoryview):
        return bytes(x)
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (CborTag, cbor2.CBORTag)):
        return ("tag", x.tag, _plain(x.value))
    return x


@settings(max_examples=200, deadline=None)
@given(_cbor_values)
def test_cbor_reader_agrees_with_cbor2(value):
    encoded = cbor2.dumps(value)
    assert _plain(cbor_loads(encoded)) == _plain(value)


def test_cbor_reader_limits():
    with pytest.raises(RejectedMessage, match="deep"):
        cbor_loads(b"\x81" * 100 + b"\x01")
    with pytest.raises(RejectedMessage, match="cannot fit"):
        cbor_loads(b"\x9b" + (1 << 40).to_bytes(8, "big"))
    with pytest.raises(RejectedMessage, match="past the end"):
        cbor_loads(b"\x5b" + (1 << 40).to_bytes(8, "big") + b"x")
    with pytest.raises(RejectedMessage, match="trailing"):
        cbor_loads(b"\x01\x02")
    with pytest.raises(RejectedMessage, match="too many items"):
        cbor_loads(cbor2.dumps([0] * 200_000))
    # indefinite-length strings and containers are read
    assert _plain(cbor_loads(b"\x5f\x42ab\x41c\xff")) == b"abc"
    assert cbor_loads(b"\x9f\x01\x02\xff") == [1, 2]
    assert cbor_loads(b"\xbf\x61a\x01\xff") == {"a": 1}


def test_malformed_cbor_is_rejected_not_raised():
    """An indefinite byte string made of text chunks raised TypeError (issue 21 item 10)."""
    from emstream.sources.dectris import DectrisDecoder
    from emstream.sources.protocol import RejectedMessage

    d = DectrisDecoder()
    for msg in (bytes([0xD9, 0xD9, 0xF7, 0x5F, 0x61, 0x61, 0xFF]), bytes([0x5F, 0x61, 0x61, 0xFF])):
        with pytest.raises(RejectedMessage) as err:
            d.decode([msg], 0.0)
        assert err.value.reason == "malformed" and "TypeError" in err.value.detail
