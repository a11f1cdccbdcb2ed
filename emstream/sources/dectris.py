"""DECTRIS SIMPLON detector streams: ``emstream listen --protocol dectris ENDPOINT``.

A DECTRIS detector control unit (DCU) *binds* a ZeroMQ PUSH socket; emstream connects a PULL
socket to it (``tcp://<dcu>:9999`` for stream v1, ``tcp://<dcu>:31001`` for stream v2, with
``--allow-remote``). Both stream versions are recognised per message, so one listener accepts
either.

Stream v1 ("legacy", JSON multipart)
------------------------------------
- ``dheader-1.0`` ``{"htype", "series", "header_detail": "all"|"basic"|"none"}``, followed in the
  same multipart message by the detector configuration (a JSON object without ``htype``) and, for
  ``header_detail=all``, flat-field / pixel-mask / count-rate parts (ignored here). The
  ``libertem-dectris`` simulator sends the configuration as a *separate* single-part message
  right after the header; both forms are accepted.
- ``dimage-1.0`` ``{"series", "frame", "hash"}`` + ``dimage_d-1.0`` ``{"shape": [x, y], "type",
  "encoding", "size"}`` + the pixel blob + ``dconfig-1.0`` ``{"start_time", "stop_time",
  "real_time"}`` (ns) [+ an optional appendix part]. Note ``shape`` is ``[width, height]``.
  Encodings: ``<`` (raw little-endian), ``bs8-lz4<`` / ``bs16-lz4<`` / ``bs32-lz4<``
  (bitshuffle + LZ4 with the 12-byte HDF5-filter header; the number is the shuffle element size
  in bits, which need not match the pixel type), ``lz4<`` (an LZ4 block, or HDF5 LZ4 framing).
- ``dseries_end-1.0`` ends the series.

Stream v2 (CBOR, single-part)
-----------------------------
Each message is a CBOR map (normally behind the self-describe tag 55799) whose ``type`` is
``start``, ``image`` or ``end``. An image carries ``series_id``, ``image_id`` and ``data``: a map
from channel name to a row-major multi-dimensional array (tag 40) ``[[rows, cols], typed array]``;
the typed array (RFC 8746 tags 64-87) wraps either a byte string or a DECTRIS compressed byte
string (tag 56500 ``["bslz4", elem_size, bytes]`` or ``["lz4", 0, bytes]``, HDF5 framing).
CBOR is parsed by a small strict decoder here (definite sizes checked against the message, depth
limited, no semantic tags interpreted), never by anything that can build arbitrary objects.

Decompression uses DECTRIS's own ``dectris-compression`` package. The declared uncompressed size
is checked against ``shape × itemsize`` (and the frame cap) *before* decompressing, so a hostile
header cannot make emstream allocate more than one frame.

Calibration
-----------
The detector configuration gives ``x_pixel_size`` / ``y_pixel_size`` (v1) or ``pixel_size_x`` /
``pixel_size_y`` (v2) in metres: that is the size of a *detector* pixel (75 µm on a
QUADRO/ARINA), not a distance on the specimen. The specimen pixel size depends on the
magnification and camera length, which the detector does not know. Frames are therefore marked
uncalibrated (``Calibration.source == "none"``, with the detector pixel size in ``detail``);
give the real value with ``--pixel-size NM`` (applied by the pipeline as an override).

Frames get ``source_id`` ``dectris/<series>/<frame>`` (``.../<channel>`` added when a v2 image
has several channels), ``seq`` = the detector's frame number, and ``t_acq`` the image start time
where the stream carries an absolute time (v2), else the arrival time.
"""

from __future__ import annotations

import datetime as _dt
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from emstream.frame import Calibration, Frame
from emstream.results import Event
from emstream.sources.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    MAX_SIDE,
    ProtocolError,
    RejectedMessage,
    parse_json_object,
)

__all__ = ["CborTag", "DectrisDecoder", "cbor_loads", "decompress_dectris"]

SOURCE_PREFIX = "dectris"

#: Pixel types a v1 ``dimage_d`` may declare.
_V1_TYPES = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float32": np.dtype("<f4"),
}
#: RFC 8746 typed-array tags that can hold image pixels.
_TYPED_ARRAY_TAGS = {
    64: "u1", 68: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    81: ">f4", 82: ">f8", 85: "<f4", 86: "<f8",
}
_TAG_SELF_DESCRIBE = 55799
_TAG_MULTIDIM_ROW_MAJOR = 40
_TAG_DECTRIS_COMPRESSION = 56500
_BITSHUFFLE_DEFAULT_BLOCK_BYTES = 8192
#: Small detector-config fields worth keeping in frame metadata (flat-fields etc. are not).
_CONFIG_KEYS = (
    "description", "detector_description", "detector_number", "detector_serial_number",
    "x_pixel_size", "y_pixel_size", "pixel_size_x", "pixel_size_y",
    "x_pixels_in_detector", "y_pixels_in_detector", "image_size_x", "image_size_y",
    "count_time", "frame_time", "nimages", "ntrigger", "number_of_images", "trigger_mode",
    "bit_depth_image", "compression", "sensor_material", "series_unique_id", "arm_date",
)


# --------------------------------------------------------------------------------------------
# CBOR (RFC 8949), the strict subset stream v2 needs
# --------------------------------------------------------------------------------------------


class CborTag(NamedTuple):
    """A tagged CBOR item, left uninterpreted."""

    tag: int
    value: Any


_BREAK = object()


class _CborReader:
    def __init__(self, data: memoryview, max_depth: int, max_items: int):
        self.buf = data
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items

    def fail(self, what: str) -> RejectedMessage:
        return RejectedMessage("cbor", f"{what} at byte {self.pos}")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"item of {n} bytes runs past the end of the message")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def argument(self, info: int) -> int | None:
        if info < 24:
            return info
        if info == 31:
            return None  # indefinite length
        size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
        if size is None:
            raise self.fail(f"reserved additional information {info}")
        return int.from_bytes(self.take(size), "big")

    def item(self, depth: int = 0) -> Any:
        if depth > self.max_depth:
            raise self.fail("nesting too deep")
        self.items_left -= 1
        if self.items_left < 0:  # a flood of tiny items would cost far more memory than bytes
            raise self.fail("too many items")
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self.simple(info)
        arg = self.argument(info)
        if major == 0:
            return _require_definite(self, arg)
        if major == 1:
            return -1 - _require_definite(self, arg)
        if major in (2, 3):
            if arg is None:  # indefinite string: concatenation of definite chunks
                chunks = []
                while True:
                    chunk = self.item(depth + 1)
                    if chunk is _BREAK:
                        break
                    if not isinstance(chunk, (bytes, memoryview, str)):
                        raise self.fail("bad chunk in indefinite string")
                    chunks.append(bytes(chunk) if major == 2 else chunk)
                raw: Any = b"".join(chunks) if major == 2 else "".join(chunks)
                return raw
            data = self.take(arg)
            if major == 2:
                return data
            try:
                return str(data, "utf-8")
            except UnicodeDecodeError:
                raise self.fail("text string is not UTF-8") from None
        if major == 4:
            out = []
            if arg is None:
                while (x := self.item(depth + 1)) is not _BREAK:
                    out.append(x)
                return out
            if arg > len(self.buf) - self.pos:
                raise self.fail(f"array of {arg} items cannot fit")
            return [self.value(depth + 1) for _ in range(arg)]
        if major == 5:
            result: dict[Any, Any] = {}
            count = arg
            if count is not None and 2 * count > len(self.buf) - self.pos:
                raise self.fail(f"map of {count} pairs cannot fit")
            i = 0
            while count is None or i < count:
                key = self.item(depth + 1)
                if key is _BREAK:
                    if count is None:
                        break
                    raise self.fail("unexpected break")
                if not isinstance(key, (str, int)):
                    raise self.fail("map key is not a text string or integer")
                result[key] = self.value(depth + 1)
                i += 1
            return result
        # major 6: tag
        tag = _require_definite(self, arg)
        inner = self.value(depth + 1)
        if tag == _TAG_SELF_DESCRIBE:
            return inner
        return CborTag(tag, inner)

    def value(self, depth: int) -> Any:
        x = self.item(depth)
        if x is _BREAK:
            raise self.fail("unexpected break")
        return x

    def simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info in (22, 23):
            return None
        if info == 25:
            return struct.unpack(">e", self.take(2))[0]
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        if info == 31:
            return _BREAK
        if info == 24:
            self.take(1)
            return None
        if info < 20:
            return None  # unassigned simple values
        raise self.fail(f"reserved simple value {info}")


def _require_definite(reader: _CborReader, arg: int | None) -> int:
    if arg is None:
        raise reader.fail("indefinite length where a number is required")
    return arg


def cbor_loads(data: bytes | memoryview, *, max_depth: int = 32, max_items: int = 100_000) -> Any:
    """Decode one CBOR item strictly.

    Byte strings come back as ``memoryview`` slices of ``data`` (no copy); tags as
    :class:`CborTag` (self-describe tag 55799 is unwrapped). Integers, floats, text, arrays,
    maps with text/integer keys, booleans and null are supported; nothing is interpreted.
    At most ``max_items`` data items (pixels travel as byte strings, one item each).

    Raises
    ------
    RejectedMessage
        ``cbor`` for anything malformed, truncated, too deep, too many items, or followed by
        trailing bytes.
    """
    reader = _CborReader(memoryview(data).cast("B"), max_depth, max_items)
    try:
        out = reader.value(0)
    except RecursionError:
        raise RejectedMessage("cbor", "nesting too deep") from None
    if reader.pos != len(reader.buf):
        raise RejectedMessage("cbor", f"{len(reader.buf) - reader.pos} trailing bytes")
    return out


# --------------------------------------------------------------------------------------------
# decompression
# --------------------------------------------------------------------------------------------


def decompress_dectris(data: bytes | memoryview, algorithm: str, elem_size: int,
                       expected: int) -> bytes | memoryview:
    """Decompress one DECTRIS payload to exactly ``expected`` bytes.

    Parameters
    ----------
    data : the compressed bytes.
    algorithm : ``"none"``, ``"bslz4"`` (bitshuffle + LZ4, HDF5-filter framing with its 12-byte
        header), ``"lz4"`` (HDF5 LZ4 framing) or ``"lz4-block"`` (a bare LZ4 block).
    elem_size : bitshuffle element size in bytes (1, 2 or 4) for ``bslz4``.
    expected : the exact decompressed size (rows × cols × itemsize).

    Raises
    ------
    RejectedMessage
        ``compressed-size`` when the declared size disagrees with ``expected``,
        ``decompress`` when the data does not decompress, ``encoding`` for an unknown algorithm.
    """
    buf = memoryview(data).cast("B")
    if algorithm == "none":
        if len(buf) != expected:
            raise RejectedMessage("payload-size", f"raw payload is {len(buf)} bytes, "
                                  f"expected {expected}")
        return buf
    if algorithm == "lz4-block" and len(buf) >= 12 and struct.unpack(">Q", buf[:8])[0] == expected:
        algorithm = "lz4"  # HDF5-framed LZ4 (as in stream v2) rather than a bare block
    if algorithm == "lz4-block":
        import lz4.block

        try:
            out = lz4.block.decompress(bytes(buf), uncompressed_size=expected)
        except Exception as exc:  # noqa: BLE001 - lz4 raises LZ4BlockError / ValueError
            raise RejectedMessage("decompress", f"LZ4 block: {exc}") from None
    elif algorithm in ("bslz4", "lz4"):
        if algorithm == "bslz4" and elem_size not in (1, 2, 4, 8):
            raise RejectedMessage("encoding", f"bitshuffle element size {elem_size}")
        if len(buf) < 12:
            raise RejectedMessage("decompress", f"{algorithm} payload shorter than its header")
        declared, block = struct.unpack(">QI", buf[:12])
        if declared == 0 and block == 0 and algorithm == "bslz4":
            # libertem-dectris' simulator leaves the HDF5 header zeroed; the blocks follow
            # bitshuffle's default block size. Fill the header in from what we know.
            buf = memoryview(
                struct.pack(">QI", expected, _BITSHUFFLE_DEFAULT_BLOCK_BYTES) + bytes(buf[12:])
            )
        elif declared != expected:
            raise RejectedMessage("compressed-size", f"{algorithm} header declares {declared} "
                                  f"bytes, the image needs {expected}")
        from dectris.compression import decompress

        try:
            out = decompress(bytes(buf), algorithm, elem_size=elem_size)
        except Exception as exc:  # noqa: BLE001 - the C extension raises RuntimeError
            raise RejectedMessage("decompress", f"{algorithm}: {exc}") from None
    else:
        raise RejectedMessage("encoding", f"unsupported compression {algorithm!r}")
    if len(out) != expected:
        raise RejectedMessage("decompress", f"{algorithm} gave {len(out)} bytes, "
                              f"expected {expected}")
    return out


def _v1_algorithm(encoding: object) -> tuple[str, int]:
    """Map a v1 ``encoding`` string to (algorithm, bitshuffle element size in bytes)."""
    if encoding in ("<", "", None):
        return "none", 0
    if encoding == "lz4<":
        return "lz4-block", 0
    if isinstance(encoding, str) and encoding.startswith("bs") and encoding.endswith("-lz4<"):
        bits = encoding[2:-5]
        if bits in ("8", "16", "32"):
            return "bslz4", int(bits) // 8
    raise RejectedMessage("encoding", f"unsupported DECTRIS v1 encoding {str(encoding)[:30]!r}")


# --------------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------------


def _int(value: object, what: str, reason: str = "dectris-field") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RejectedMessage(reason, f"{what} must be an integer >= 0")
    return value


def _small_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in _CONFIG_KEYS:
        v = config.get(key)
        if isinstance(v, (int, float, str, bool)) and not (isinstance(v, str) and len(v) > 200):
            out[key] = v
    return out


def _detector_pixel_note(config: Mapping[str, Any]) -> str:
    x = config.get("x_pixel_size", config.get("pixel_size_x"))
    y = config.get("y_pixel_size", config.get("pixel_size_y"))
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return (f"DECTRIS detector pixel {y * 1e6:g} x {x * 1e6:g} um is not the specimen "
                "pixel size; pass --pixel-size")
    return "DECTRIS stream carries no specimen pixel size; pass --pixel-size"


def _pixels(raw: bytes | memoryview, dtype: np.dtype, rows: int, cols: int) -> np.ndarray:
    arr = np.frombuffer(raw, dtype=dtype).reshape(rows, cols)
    return arr.astype(dtype.newbyteorder("="), copy=True)


class DectrisDecoder:
    """Stateful decoder of one DECTRIS stream (v1 or v2, detected per message).

    Parameters
    ----------
    max_bytes : largest accepted decoded frame in bytes.
    max_header_bytes : largest accepted JSON part (v1 header, config, dimage_d ...).
    source : ``source_id`` prefix (``"dectris"``).

    :meth:`decode` returns the frames and events one message produces, or raises
    :class:`RejectedMessage` (reasons ``dectris-htype``, ``dectris-field``, ``parts``,
    ``shape``, ``dtype``, ``encoding``, ``compressed-size``, ``decompress``, ``payload-size``,
    ``frame-too-large``, ``cbor``, ``header-json``, ``header-size``).
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, source: str = SOURCE_PREFIX):
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.source = source
        self.config: dict[str, Any] = {}
        self.series: str | None = None
        self._awaiting_config = False

    # -- entry point ------------------------------------------------------------------------

    def decode(self, parts: Sequence[bytes | memoryview],
               t_arrival: float) -> tuple[list[Frame], list[Event]]:
        """Frames and events of one message; anything malformed raises :class:`RejectedMessage`
        (never another exception: a message is untrusted input)."""
        try:
            return self._decode(parts, t_arrival)
        except ProtocolError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                struct.error) as exc:
            raise RejectedMessage("malformed", f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, parts: Sequence[bytes | memoryview],
                t_arrival: float) -> tuple[list[Frame], list[Event]]:
        if not parts:
            raise RejectedMessage("parts", "empty message")
        first = memoryview(parts[0]).cast("B")
        if len(first) == 0:
            raise RejectedMessage("header-json", "empty first part")
        if first[0] in (0x7B, 0x20, 0x0A, 0x0D, 0x09):  # '{' or whitespace: JSON, stream v1
            return self._decode_v1(parts, t_arrival)
        if len(parts) != 1:
            raise RejectedMessage("parts", f"a CBOR (stream v2) message has 1 part, "
                                  f"got {len(parts)}")
        return self._decode_v2(first, t_arrival)

    # -- stream v1 --------------------------------------------------------------------------

    def _json(self, part: bytes | memoryview) -> dict[str, Any]:
        return parse_json_object(memoryview(part).cast("B"), self.max_header_bytes)

    def _decode_v1(self, parts: Sequence[bytes | memoryview],
                   t_arrival: float) -> tuple[list[Frame], list[Event]]:
        head = self._json(parts[0])
        htype = head.get("htype")
        if htype is None:
            if self._awaiting_config and len(parts) == 1:  # simulator: config as its own message
                self._awaiting_config = False
                self.config = head
                return [], [self._config_event()]
            raise RejectedMessage("dectris-htype", "JSON message without 'htype'")
        if not isinstance(htype, str):
            raise RejectedMessage("dectris-htype", "'htype' is not a string")
        self._awaiting_config = False
        if htype.startswith("dheader-"):
            series = str(_int(head.get("series"), "series"))
            self.series = series
            events = [Event("series-start", f"DECTRIS series {series} armed "
                            f"(header_detail={head.get('header_detail')!r})",
                            data={"series": series, "protocol": "dectris-stream-v1"})]
            if len(parts) >= 2:
                self.config = self._json(parts[1])
                events.append(self._config_event())
            else:
                self.config = {}
                self._awaiting_config = True
            return [], events
        if htype.startswith("dimage-"):
            return [self._v1_image(head, parts, t_arrival)], []
        if htype.startswith("dseries_end-"):
            series = head.get("series", self.series)
            self.series = None
            return [], [Event("series-end", f"DECTRIS series {series} ended",
                              data={"series": str(series)})]
        raise RejectedMessage("dectris-htype", f"unknown htype {htype[:40]!r}")

    def _config_event(self) -> Event:
        small = _small_config(self.config)
        return Event("dectris-config", f"DECTRIS detector {small.get('description', '?')}: "
                     f"{small.get('x_pixels_in_detector', '?')} x "
                     f"{small.get('y_pixels_in_detector', '?')} px",
                     data=small)

    def _v1_image(self, head: dict[str, Any], parts: Sequence[bytes | memoryview],
                  t_arrival: float) -> Frame:
        if not 3 <= len(parts) <= 5:
            raise RejectedMessage("parts", f"a dimage message has 4 parts, got {len(parts)}")
        frame_no = _int(head.get("frame"), "frame")
        series = (str(_int(head["series"], "series")) if "series" in head
                  else self.series or "0")
        info = self._json(parts[1])
        if info.get("htype", "dimage_d-1.0") != "dimage_d-1.0":
            raise RejectedMessage("dectris-htype", "second part is not dimage_d-1.0")
        shape = info.get("shape")
        if (not isinstance(shape, list) or len(shape) not in (2, 3)
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE
                           for s in shape)
                or (len(shape) == 3 and shape[2] != 1)):
            raise RejectedMessage("shape", f"dimage_d shape must be [x, y], got {str(shape)[:40]}")
        cols, rows = shape[0], shape[1]  # DECTRIS writes [x, y] = [width, height]
        dtype = _V1_TYPES.get(info.get("type"))  # type: ignore[arg-type]
        if dtype is None:
            raise RejectedMessage("dtype", f"unsupported pixel type {str(info.get('type'))[:20]!r}")
        algorithm, elem_size = _v1_algorithm(info.get("encoding"))
        expected = rows * cols * dtype.itemsize
        if expected > self.max_bytes:
            raise RejectedMessage("frame-too-large", f"frame needs {expected} bytes > cap "
                                  f"{self.max_bytes}")
        blob = memoryview(parts[2]).cast("B")
        size = info.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size != len(blob):
            raise RejectedMessage("payload-size", f"blob is {len(blob)} bytes, dimage_d says "
                                  f"{size}")
        raw = decompress_dectris(blob, algorithm, elem_size, expected)
        timing: dict[str, Any] = {}
        if len(parts) >= 4:
            try:
                tail = self._json(parts[3])
            except RejectedMessage:
                tail = {}
            for key in ("start_time", "stop_time", "real_time"):
                if isinstance(tail.get(key), (int, float)) and not isinstance(tail[key], bool):
                    timing[key + "_ns"] = tail[key]
        return Frame(
            pixels=_pixels(raw, dtype, rows, cols),
            source_id=f"{self.source}/{series}/{frame_no}",
            t_acq=t_arrival,
            t_arrival=t_arrival,
            calibration=Calibration.none(_detector_pixel_note(self.config)),
            seq=frame_no,
            metadata={
                "protocol": "dectris-stream-v1", "series": series, "seq": frame_no,
                "encoding": info.get("encoding"), "hash": str(head.get("hash", ""))[:64],
                "detector": _small_config(self.config), **timing,
            },
        )

    # -- stream v2 --------------------------------------------------------------------------

    def _decode_v2(self, data: memoryview,
                   t_arrival: float) -> tuple[list[Frame], list[Event]]:
        msg = cbor_loads(data)
        if not isinstance(msg, dict):
            raise RejectedMessage("cbor", "a stream v2 message is a CBOR map")
        kind = msg.get("type")
        if kind == "start":
            series = str(_int(msg.get("series_id", 0), "series_id"))
            self.series = series
            self.config = {k: v for k, v in msg.items() if isinstance(k, str)}
            small = _small_config(self.config)
            return [], [Event("series-start", f"DECTRIS series {series} armed "
                              f"({small.get('number_of_images', '?')} images)",
                              data={"series": series, "protocol": "dectris-stream-v2", **small})]
        if kind == "image":
            return self._v2_image(msg, t_arrival), []
        if kind == "end":
            series = msg.get("series_id", self.series)
            self.series = None
            return [], [Event("series-end", f"DECTRIS series {series} ended",
                              data={"series": str(series)})]
        raise RejectedMessage("dectris-htype", f"unknown stream v2 message type {str(kind)[:30]!r}")

    def _v2_image(self, msg: dict[Any, Any], t_arrival: float) -> list[Frame]:
        series = (str(_int(msg["series_id"], "series_id")) if "series_id" in msg
                  else self.series or "0")
        image_id = _int(msg.get("image_id"), "image_id")
        data = msg.get("data")
        if not isinstance(data, dict) or not data or len(data) > 8:
            raise RejectedMessage("dectris-field", "image 'data' must map 1-8 channels to arrays")
        t_acq = _v2_time(msg) or t_arrival
        frames = []
        for channel, array in data.items():
            pixels = self._v2_array(array)
            sid = f"{self.source}/{series}/{image_id}"
            if len(data) > 1:
                sid += f"/{channel}"
            frames.append(Frame(
                pixels=pixels,
                source_id=sid,
                t_acq=t_acq,
                t_arrival=t_arrival,
                calibration=Calibration.none(_detector_pixel_note(self.config)),
                seq=image_id,
                metadata={
                    "protocol": "dectris-stream-v2", "series": series, "seq": image_id,
                    "channel": str(channel)[:64],
                    "series_unique_id": str(msg.get("series_unique_id", ""))[:128],
                    "detector": _small_config(self.config),
                },
            ))
        return frames

    def _v2_array(self, array: object) -> np.ndarray:
        if not (isinstance(array, CborTag) and array.tag == _TAG_MULTIDIM_ROW_MAJOR
                and isinstance(array.value, list) and len(array.value) == 2):
            raise RejectedMessage("dectris-field", "channel data is not a tag-40 [dims, array]")
        dims, typed = array.value
        if (not isinstance(dims, list) or len(dims) != 2
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIDE
                           for d in dims)):
            raise RejectedMessage("shape", f"dims must be [rows, cols], got {str(dims)[:40]}")
        rows, cols = dims
        if not isinstance(typed, CborTag) or typed.tag not in _TYPED_ARRAY_TAGS:
            raise RejectedMessage("dtype", "channel data is not an integer/float typed array")
        dtype = np.dtype(_TYPED_ARRAY_TAGS[typed.tag])
        expected = rows * cols * dtype.itemsize
        if expected > self.max_bytes:
            raise RejectedMessage("frame-too-large", f"frame needs {expected} bytes > cap "
                                  f"{self.max_bytes}")
        content = typed.value
        if isinstance(content, CborTag) and content.tag == _TAG_DECTRIS_COMPRESSION:
            spec = content.value
            if (not isinstance(spec, list) or len(spec) != 3 or not isinstance(spec[0], str)
                    or not isinstance(spec[1], int) or not isinstance(spec[2], memoryview)):
                raise RejectedMessage("encoding", "tag 56500 must be [algorithm, int, bytes]")
            algorithm, elem_size, blob = spec
            if algorithm not in ("bslz4", "lz4"):
                raise RejectedMessage("encoding", f"unsupported compression {algorithm[:20]!r}")
            raw = decompress_dectris(blob, algorithm, elem_size, expected)
        elif isinstance(content, (memoryview, bytes)):
            raw = decompress_dectris(content, "none", 0, expected)
        else:
            raise RejectedMessage("dectris-field", "typed array content is not a byte string")
        return _pixels(raw, dtype, rows, cols)


def _v2_time(msg: Mapping[Any, Any]) -> float | None:
    """Absolute image start time from ``series_date`` + ``start_time`` (a rational)."""
    date = msg.get("series_date")
    if isinstance(date, CborTag) and date.tag == 0:
        date = date.value
    start = msg.get("start_time")
    if not isinstance(date, str) or not isinstance(start, list) or len(start) != 2:
        return None
    num, den = start
    if not (isinstance(num, int) and isinstance(den, int) and den > 0):
        return None
    try:
        base = _dt.datetime.fromisoformat(date.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    t = base + num / den
    return t if math.isfinite(t) else None
