"""The ``emstream`` v1 wire format: one 2-D frame per ZeroMQ multipart message.

Message layout
--------------
Every frame is a multipart message of exactly two parts::

    part 0  header   UTF-8 JSON object (at most ``max_header_bytes``, default 64 KiB)
    part 1  payload  the pixels, raw C-order (row-major) bytes, little-endian

Header fields (all required unless marked optional; unknown extra keys are ignored)::

    {
      "v": 1,                          # protocol version, the integer 1
      "seq": 17,                       # sender's frame number, integer >= 0, +1 per frame
      "series": "run-2024-05-01a",     # acquisition series name: 1-128 printable characters,
                                       #   no '/' or '\\' (it is part of the frame's id, never a path)
      "shape": [2048, 2048],           # [rows, columns], positive integers (each <= 65536)
      "dtype": "<u2",                  # numpy dtype string: u1 u2 u4 u8 i1 i2 i4 i8 f4 f8 (or the
                                       #   names "uint16", "float32" ...); byte order '<' or none,
                                       #   always read as little-endian; '>' is rejected
      "pixel_size_nm": [0.12, 0.12],   # specimen pixel size [y, x] in nm, finite > 0, or null
      "t_acq": 1714550000.25,          # acquisition time, POSIX seconds (finite number)
      "meta": {"mag": 250000}          # optional: small JSON object of extra metadata
    }

The payload must hold exactly ``shape[0] * shape[1] * itemsize`` bytes. ``seq`` counts per
``series``: a receiver on a lossy pattern (PUB/SUB) uses it to detect and count dropped frames,
and a new ``series`` name starts a new count.

Validation is strict: a message that breaks any rule above is rejected with a
:class:`RejectedMessage` (a :class:`emstream.errors.ProtocolError`) whose ``reason`` is a short,
stable code (``parts``, ``header-size``, ``header-json``, ``version``, ``seq``, ``series``,
``shape``, ``dtype``, ``pixel-size``, ``t-acq``, ``meta``, ``frame-too-large``, ``payload-size``).
Nothing received is ever unpickled or evaluated; frames larger than ``max_bytes`` are refused
before any pixel is copied.

Sending a frame from Python (``pyzmq``)::

    from emstream.sources.protocol import encode_v1
    sock.send_multipart(encode_v1(image, seq=i, series="run1", t_acq=time.time(),
                                  pixel_size_nm=(0.12, 0.12)))

Any language can speak it: send a two-part message whose first part is the JSON header above.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emstream.errors import ProtocolError
from emstream.frame import Calibration, Frame

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "MAX_SIDE",
    "PROTOCOL_VERSION",
    "REASONS",
    "RejectedMessage",
    "decode_v1",
    "encode_v1",
    "parse_dtype",
    "parse_json_object",
]

PROTOCOL_VERSION = 1
#: Largest accepted payload (bytes) unless the receiver says otherwise: 256 MiB.
DEFAULT_MAX_FRAME_BYTES = 256 * 2**20
#: Largest accepted JSON header (bytes).
DEFAULT_MAX_HEADER_BYTES = 64 * 2**10
#: Largest accepted image side (pixels).
MAX_SIDE = 65536
MAX_SERIES_LEN = 128

#: Every reason code :class:`RejectedMessage` may carry.
REASONS = (
    "parts",
    "header-size",
    "header-json",
    "version",
    "seq",
    "series",
    "shape",
    "dtype",
    "pixel-size",
    "t-acq",
    "meta",
    "frame-too-large",
    "payload-size",
)

#: Accepted pixel types: numeric, fixed size, read as little-endian.
_ALLOWED_DTYPES = frozenset(
    np.dtype(s).newbyteorder("<")
    for s in ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8")
)
_DTYPE_TEXT = re.compile(r"^[<>=|]?[a-z][a-z0-9]{0,15}$")


class RejectedMessage(ProtocolError):
    """A message that breaks the protocol.

    Attributes
    ----------
    reason : short machine-readable code (one of :data:`REASONS`, or a protocol-specific code
        from another decoder), used as the key of the receiver's reject counters.
    detail : human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def parse_dtype(text: object) -> np.dtype:
    """Turn a header ``dtype`` string into an allowed little-endian numpy dtype.

    Raises
    ------
    RejectedMessage
        ``dtype`` when the text is not a string, not a dtype, big-endian, or not in the allow-list.
    """
    if not isinstance(text, str) or not _DTYPE_TEXT.match(text):
        raise RejectedMessage("dtype", f"not an allowed dtype string: {str(text)[:40]!r}")
    try:
        dt = np.dtype(text)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise RejectedMessage("dtype", f"unknown dtype {text!r}") from exc
    if dt.byteorder == ">" or dt.fields is not None or dt.subdtype is not None:
        raise RejectedMessage("dtype", f"dtype {text!r} is big-endian or structured")
    dt = dt.newbyteorder("<")
    if dt not in _ALLOWED_DTYPES:
        raise RejectedMessage("dtype", f"dtype {text!r} is not one of u1..u8, i1..i8, f4, f8")
    return dt


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_series(series: object) -> str:
    if (
        not isinstance(series, str)
        or not 0 < len(series) <= MAX_SERIES_LEN
        or not series.isprintable()
        or "/" in series
        or "\\" in series
    ):
        raise RejectedMessage(
            "series", "series must be 1-128 printable characters without '/' or '\\'"
        )
    return series


def _check_pixel_size(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_number(v) for v in value)
    ):
        raise RejectedMessage("pixel-size", "pixel_size_nm must be [y, x] numbers or null")
    y, x = float(value[0]), float(value[1])
    if not (math.isfinite(y) and math.isfinite(x) and y > 0 and x > 0):
        raise RejectedMessage("pixel-size", "pixel_size_nm must be finite and > 0")
    return (y, x)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json_object(raw: bytes | memoryview, max_header_bytes: int) -> dict[str, Any]:
    """Parse a size-capped UTF-8 JSON object (standard JSON only: no NaN / Infinity).

    Raises
    ------
    RejectedMessage
        ``header-size`` when larger than ``max_header_bytes``, ``header-json`` when it is not
        UTF-8 JSON or not an object.
    """
    if len(raw) > max_header_bytes:
        raise RejectedMessage("header-size", f"header is {len(raw)} bytes > {max_header_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RejectedMessage("header-json", f"header is not UTF-8 JSON ({exc})"[:200]) from None
    if not isinstance(header, dict):
        raise RejectedMessage("header-json", "header is not a JSON object")
    return header


def decode_v1(
    parts: Sequence[bytes | memoryview],
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    source: str = "stream",
    t_arrival: float | None = None,
) -> Frame:
    """Validate one emstream v1 multipart message and turn it into a :class:`Frame`.

    Parameters
    ----------
    parts : the message parts as received (``bytes``, ``zmq.Frame.buffer`` or ``memoryview``).
    max_bytes : largest accepted payload in bytes.
    max_header_bytes : largest accepted JSON header in bytes.
    source : prefix of ``Frame.source_id`` (normally the receiver's endpoint); the id is
        ``f"{source}/{series}/{seq}"``.
    t_arrival : arrival time (POSIX seconds); now when omitted.

    Returns
    -------
    Frame
        ``pixels`` a fresh, writeable array in native byte order; ``seq`` the sender's seq
        (the pipeline renumbers it); ``metadata`` holds ``protocol``, ``series``, ``seq``
        and the optional ``meta``; calibration source ``"stream"`` when the header carries a
        pixel size, else ``"none"``.

    Raises
    ------
    RejectedMessage
        with a ``reason`` code from :data:`REASONS` when the message breaks the protocol.
    """
    if t_arrival is None:
        t_arrival = time.time()
    if len(parts) != 2:
        raise RejectedMessage("parts", f"expected 2 parts [header, payload], got {len(parts)}")
    header = parse_json_object(parts[0], max_header_bytes)

    v = header.get("v")
    if not _is_int(v) or v != PROTOCOL_VERSION:
        raise RejectedMessage("version", f"unsupported protocol version {str(v)[:20]!r}")
    seq = header.get("seq")
    if not _is_int(seq) or not 0 <= seq < 2**63:
        raise RejectedMessage("seq", "seq must be an integer >= 0")
    series = _check_series(header.get("series"))
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(_is_int(s) and 0 < s <= MAX_SIDE for s in shape)
    ):
        raise RejectedMessage("shape", f"shape must be [rows, cols] of ints in 1..{MAX_SIDE}")
    dtype = parse_dtype(header.get("dtype"))
    pixel_size = _check_pixel_size(header.get("pixel_size_nm"))
    t_acq = header.get("t_acq")
    if not _is_number(t_acq) or not math.isfinite(float(t_acq)):
        raise RejectedMessage("t-acq", "t_acq must be a finite number (POSIX seconds)")
    meta = header.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RejectedMessage("meta", "meta must be a JSON object")

    expected = int(shape[0]) * int(shape[1]) * dtype.itemsize
    if expected > max_bytes:
        raise RejectedMessage("frame-too-large", f"frame needs {expected} bytes > cap {max_bytes}")
    try:
        payload = memoryview(parts[1]).cast("B")
    except (TypeError, ValueError) as exc:
        raise RejectedMessage("payload-size", f"payload is not a contiguous buffer ({exc})") from None
    if len(payload) != expected:
        raise RejectedMessage(
            "payload-size",
            f"payload is {len(payload)} bytes, shape {shape} of {dtype.name} needs {expected}",
        )

    pixels = np.frombuffer(payload, dtype=dtype).reshape(shape[0], shape[1])
    pixels = pixels.astype(dtype.newbyteorder("="), copy=True)  # own, writeable, native order

    calibration = (
        Calibration(pixel_size, "stream", "emstream v1 header pixel_size_nm")
        if pixel_size is not None
        else Calibration.none("emstream v1 header pixel_size_nm is null")
    )
    return Frame(
        pixels=pixels,
        source_id=f"{source}/{series}/{seq}",
        t_acq=float(t_acq),
        t_arrival=float(t_arrival),
        calibration=calibration,
        seq=seq,
        metadata={"protocol": "emstream-v1", "series": series, "seq": seq, "meta": meta},
    )


def encode_v1(
    pixels: np.ndarray,
    *,
    seq: int,
    series: str,
    t_acq: float,
    pixel_size_nm: Sequence[float] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """Build one emstream v1 message ``[header, payload]`` for ``sock.send_multipart``.

    Parameters
    ----------
    pixels : 2-D array of an allowed dtype (any byte order / memory layout; sent little-endian,
        C-order).
    seq : frame number within ``series``, ``>= 0``.
    series : acquisition series name (see the module docstring for the rules).
    t_acq : acquisition time, POSIX seconds.
    pixel_size_nm : specimen pixel size ``(y, x)`` in nm, or ``None`` when unknown.
    meta : optional small JSON-able mapping of extra metadata.

    Raises
    ------
    ValueError
        if the arguments would produce a message that :func:`decode_v1` rejects.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"a frame is a non-empty 2-D image, got shape {arr.shape}")
    try:
        dtype = parse_dtype(arr.dtype.newbyteorder("<").str)
        _check_series(series)
        pixel_size = _check_pixel_size(None if pixel_size_nm is None else list(pixel_size_nm))
    except RejectedMessage as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(seq, (int, np.integer)) or isinstance(seq, bool) or int(seq) < 0:
        raise ValueError(f"seq must be an integer >= 0, got {seq!r}")
    if not math.isfinite(float(t_acq)):
        raise ValueError("t_acq must be finite")
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "seq": int(seq),
        "series": series,
        "shape": [int(arr.shape[0]), int(arr.shape[1])],
        "dtype": dtype.str,
        "pixel_size_nm": None if pixel_size is None else list(pixel_size),
        "t_acq": float(t_acq),
    }
    if meta:
        header["meta"] = dict(meta)
    payload = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    return [json.dumps(header, allow_nan=False).encode("utf-8"), payload]
