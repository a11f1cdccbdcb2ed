"""Helpers shared by the format readers: building frames, optional imports, small metadata."""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.frame import Calibration, Frame

#: Metadata strings longer than this are cut, so a frame never carries megabytes of tags.
MAX_TEXT = 200

FORMATS_EXTRA_HINT = "install emstream[formats] (ncempy, rosettasciio; GPL-3.0) to read"


def optional_module(name: str, what: str):
    """Import a GPL optional-extra module lazily; raise :class:`UnreadableFile` if missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnreadableFile(f"{FORMATS_EXTRA_HINT} {what} ({name} is not installed: {exc})") \
            from exc


def jsonable(value: Any) -> Any:
    """A small JSON-able copy of ``value`` (numpy scalars -> Python, bytes -> text, cut long)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in list(value)[:16]]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist()) if value.size <= 16 else f"<array {value.shape}>"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.split(b"\0", 1)[0].decode("latin-1", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_TEXT]


def clean_metadata(md: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values and make the rest JSON-able."""
    out = {}
    for k, v in md.items():
        j = jsonable(v)
        if j is None or (isinstance(j, (str, list, dict)) and len(j) == 0):
            continue
        out[str(k)] = j
    return out


def file_mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return time.time()


#: Largest frame accepted, in pixels (16384²: beyond any camera frame). A file declaring more is
#: quarantined before anything is allocated: a few MB of compressed TIFF can declare 40000² px.
MAX_FRAME_PIXELS = 1 << 28


def check_frame_pixels(h: int, w: int, what: str = "image") -> None:
    """Refuse a declared frame larger than :data:`MAX_FRAME_PIXELS` (before reading it)."""
    if int(h) * int(w) > MAX_FRAME_PIXELS:
        raise UnreadableFile(
            f"{what} declares {int(w)}x{int(h)} px ({int(h) * int(w) / 1e6:.0f} MPx), above the "
            f"{MAX_FRAME_PIXELS / 1e6:.0f} MPx limit: a decompression bomb or not a camera frame")


def check_image_shape(shape: Sequence[int], what: str = "dataset") -> None:
    """Reject 1-D data (a spectrum or line profile stored as 1xN), empty arrays and frames above
    :data:`MAX_FRAME_PIXELS`."""
    if len(shape) < 2:
        raise NotAnImage(f"{what} is 1-D (shape {tuple(shape)}): a spectrum or profile, not an image")
    h, w = int(shape[-2]), int(shape[-1])
    if h == 0 or w == 0:
        raise UnreadableFile(f"{what} is empty (shape {tuple(shape)})")
    if h == 1 or w == 1:
        raise NotAnImage(f"{what} has shape {h}x{w}: a spectrum or line profile, not an image")
    check_frame_pixels(h, w, what)


def frames_from_stack(
    path: Path,
    slices: Sequence[np.ndarray],
    *,
    first_index: int,
    is_stack: bool,
    calibration: Calibration | Sequence[Calibration],
    metadata: dict[str, Any],
    t_acq: Sequence[float | None] | float | None,
    t_arrival: float | None,
    n_total: int | None = None,
) -> list[Frame]:
    """Frames for ``slices`` (2-D arrays) numbered from ``first_index``.

    ``source_id`` is ``str(path)`` for a single image and ``f"{path}#{k}"`` for slice k of a
    stack; ``t_acq`` falls back to the file's mtime where the format gave none.
    """
    arrival = time.time() if t_arrival is None else float(t_arrival)
    mtime: float | None = None
    frames: list[Frame] = []
    base = clean_metadata(metadata)
    for j, pixels in enumerate(slices):
        k = first_index + j
        ta = t_acq[j] if isinstance(t_acq, (list, tuple)) else t_acq
        if ta is None or not math.isfinite(float(ta)) or ta <= 0:
            if mtime is None:
                mtime = file_mtime(path)
            ta = mtime
        cal = calibration[j] if isinstance(calibration, (list, tuple)) else calibration
        md = dict(base)
        md["calibration_tag"] = cal.detail
        if is_stack:
            md["frame_index"] = k
            if n_total is not None:
                md["n_frames"] = int(n_total)
        pix = np.asarray(pixels)
        if pix.ndim != 2:
            raise UnreadableFile(f"internal: slice {k} has shape {pix.shape}, expected 2-D")
        frames.append(Frame(
            pixels=pix,
            source_id=f"{path}#{k}" if is_stack else str(path),
            t_acq=float(ta),
            t_arrival=arrival,
            calibration=cal,
            metadata=md,
        ))
    return frames


def wrap_errors(path: Path, exc: BaseException) -> UnreadableFile:
    """Map a library exception to UnreadableFile/IncompleteFile with a short reason."""
    if isinstance(exc, UnreadableFile):
        return exc
    try:
        size = os.stat(path).st_size
    except OSError:
        size = -1
    if size == 0:
        return IncompleteFile("empty file (0 bytes)")
    msg = str(exc).strip().splitlines()[0][:MAX_TEXT] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if isinstance(exc, (EOFError,)) or "truncat" in msg.lower() or "end of file" in msg.lower():
        return IncompleteFile(f"file ends early ({text})")
    return UnreadableFile(f"cannot parse ({text})")
