"""The emstream v1 wire format: round trips, strict validation, garbage never escapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from emstream.errors import ProtocolError
from emstream.sources.protocol import (
    REASONS,
    RejectedMessage,
    decode_v1,
    encode_v1,
    parse_dtype,
)

DTYPES = ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8"]


def _good(**header_changes):
    pixels = np.arange(12, dtype="<u2").reshape(3, 4)
    header, payload = encode_v1(pixels, seq=5, series="run1", t_acq=100.5)
    h = json.loads(header)
    for k, v in header_changes.items():
        if v is KeyError:
            h.pop(k)
        else:
            h[k] = v
    return [json.dumps(h).encode(), payload]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    order=st.sampled_from(["<", ">", "="]),
    seq=st.integers(0, 2**40),
    pixel=st.one_of(st.none(), st.tuples(st.floats(1e-4, 1e4), st.floats(1e-4, 1e4))),
)
def test_round_trip(data, dtype, order, seq, pixel):
    dt = np.dtype(dtype).newbyteorder(order)
    pixels = data.draw(hnp.arrays(dt, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9)))
    if data.draw(st.booleans()):
        pixels = pixels.T  # Fortran-ordered input must still arrive right
    parts = encode_v1(pixels, seq=seq, series="série 1", t_acq=12.25, pixel_size_nm=pixel,
                      meta={"mag": 1000})
    frame = decode_v1(parts, source="tcp://127.0.0.1:1")
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert frame.pixels.dtype == np.dtype(dtype).newbyteorder("=")
    assert frame.pixels.flags.writeable and frame.pixels.flags.c_contiguous
    assert frame.seq == seq and frame.metadata["seq"] == seq
    assert frame.source_id == f"tcp://127.0.0.1:1/série 1/{seq}"
    assert frame.t_acq == 12.25
    assert frame.metadata["meta"] == {"mag": 1000}
    if pixel is None:
        assert not frame.calibration.calibrated and frame.calibration.source == "none"
    else:
        assert frame.calibration.nm_per_px == pytest.approx(pixel)
        assert frame.calibration.source == "stream"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_bytes_only_raise_protocol_error(parts):
    try:
        decode_v1(parts, max_bytes=4096)
    except ProtocolError as exc:
        assert isinstance(exc, RejectedMessage) and exc.reason in REASONS


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "v": st.sampled_from([1, 1.0, True, 2, "1"]) | _json,
            "seq": st.integers(-3, 3) | _json,
            "series": st.text(max_size=6) | _json,
            "shape": st.lists(st.integers(-2, 4) | _json, max_size=3) | _json,
            "dtype": st.sampled_from(DTYPES + ["O", ">u2", "V4", "i4,i4", "uint16", "c8"]) | _json,
            "pixel_size_nm": st.none() | st.lists(st.floats(), max_size=3) | _json,
            "t_acq": st.floats() | _json,
            "meta": _json,
        },
    ),
    payload=st.binary(max_size=80),
)
def test_structured_garbage_only_raises_protocol_error(header, payload):
    raw = json.dumps(header).encode()
    try:
        frame = decode_v1([raw, payload], max_bytes=4096)
    except RejectedMessage as exc:
        assert exc.reason in REASONS
    else:  # anything accepted really is a valid frame
        assert frame.pixels.ndim == 2 and frame.pixels.nbytes == len(payload)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"{}"], "parts"),
        (_good() + [b"extra"], "parts"),
        ([b"\xff\xfe", b""], "header-json"),
        ([b"[1, 2]", b""], "header-json"),
        ([b'{"v": NaN}', b""], "header-json"),
        ([b"{" * 100000, b""], "header-size"),
        (_good(v=2), "version"),
        (_good(v=True), "version"),
        (_good(v=KeyError), "version"),
        (_good(seq=-1), "seq"),
        (_good(seq=1.5), "seq"),
        (_good(series=""), "series"),
        (_good(series="../../etc"), "series"),
        (_good(series="a\nb"), "series"),
        (_good(series="x" * 129), "series"),
        (_good(shape=[3, 4, 1]), "shape"),
        (_good(shape=[0, 4]), "shape"),
        (_good(shape=[3.0, 4]), "shape"),
        (_good(shape=[70000, 1]), "shape"),
        (_good(dtype="O"), "dtype"),
        (_good(dtype=">u2"), "dtype"),
        (_good(dtype="c8"), "dtype"),
        (_good(dtype="i4,i4"), "dtype"),
        (_good(dtype=7), "dtype"),
        (_good(pixel_size_nm=[0, 1]), "pixel-size"),
        (_good(pixel_size_nm=1.0), "pixel-size"),
        (_good(pixel_size_nm=[1.0]), "pixel-size"),
        (_good(t_acq="now"), "t-acq"),
        (_good(t_acq=KeyError), "t-acq"),
        (_good(meta=[1]), "meta"),
        (_good(shape=[4, 4]), "payload-size"),
        (_good(dtype="u4"), "payload-size"),
        (_good(shape=[60000, 60000]), "frame-too-large"),
    ],
)
def test_rejections_carry_their_reason(parts, reason):
    with pytest.raises(RejectedMessage) as info:
        decode_v1(parts)
    assert info.value.reason == reason
    assert isinstance(info.value, ProtocolError)


def test_size_cap_is_checked_before_copy():
    parts = encode_v1(np.zeros((64, 64), "u2"), seq=0, series="s", t_acq=0.0)
    with pytest.raises(RejectedMessage, match="frame-too-large"):
        decode_v1(parts, max_bytes=64 * 64 * 2 - 1)
    assert decode_v1(parts, max_bytes=64 * 64 * 2).shape == (64, 64)


def test_decode_accepts_memoryviews():
    pixels = np.arange(6, dtype="f4").reshape(2, 3)
    header, payload = encode_v1(pixels, seq=0, series="s", t_acq=1.0)
    frame = decode_v1([memoryview(header), memoryview(payload)])
    np.testing.assert_array_equal(frame.pixels, pixels)


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2), bool), np.zeros((2, 2), "c8")])
def test_encode_refuses_what_decode_would_reject(bad):
    with pytest.raises(ValueError):
        encode_v1(bad, seq=0, series="s", t_acq=0.0)
    with pytest.raises(ValueError):
        encode_v1(np.zeros((2, 2)), seq=0, series="a/b", t_acq=0.0)


def test_dtype_names_are_little_endian():
    assert parse_dtype("uint16") == np.dtype("<u2")
    assert parse_dtype("<f4") == np.dtype("<f4")
