"""FEI/TIA SER frames (ncempy.io.ser, GPL-3.0 optional extra).

The ``*_N.ser`` file holds the frames; the ``.emi`` beside it holds the metadata (microscope,
mode, magnification) and is read when present. A lone ``.emi`` is not a frame file
(:class:`NotAnImage` with that reason). TIA stores calibrations in SI units, so the
``CalibrationDelta`` of a 2-D element is metres per pixel; x comes first in the element header.
1-D series (spectra) and TEM diffraction (``Mode`` "TEM ... Diffraction") are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.frame import Frame

from ._common import check_image_shape, frames_from_stack, optional_module, wrap_errors
from .calibration import calibration_from_axes

_SER_BYTE_ORDER = 0x4949
_SER_ID = 0x0197
_DATA_1D = 0x4120
_DATA_2D = 0x4122


def _raw_header(path: Path) -> tuple[int, int, int, int]:
    size = os.stat(path).st_size
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(30)
    if len(head) < 30:
        raise IncompleteFile(f"only {len(head)} bytes: SER header incomplete")
    bo, sid, _ver = np.frombuffer(head[:6], "<u2")
    if int(bo) != _SER_BYTE_ORDER or int(sid) != _SER_ID:
        raise UnreadableFile("not a TIA SER file (bad byte-order/series id)")
    dtype_id, _tag_id, total, valid = np.frombuffer(head[6:22], "<i4")
    return size, int(dtype_id), int(total), int(valid)


def check_ser(path: Path) -> None:
    """Header is a SER header and every valid element's data and tag lie inside the file."""
    size, dtype_id, _total, valid = _raw_header(path)
    if dtype_id not in (_DATA_1D, _DATA_2D):
        raise UnreadableFile(f"unknown SER data type {dtype_id:#x}")
    ncser = optional_module("ncempy.io.ser", "TIA SER files")
    try:
        with ncser.fileSER(str(path)) as f:
            head = f.head
    except Exception as exc:  # noqa: BLE001
        raise wrap_errors(path, exc) from exc
    offsets = list(head.get("DataOffsetArray", []))[:valid]
    tags = list(head.get("TagOffsetArray", []))[:valid]
    for k, (d, t) in enumerate(zip(offsets, tags, strict=False)):
        if int(d) >= size or int(t) > size:
            raise IncompleteFile(f"element {k} lies beyond the end of the file ({size} bytes)")


def _emi_md(emi: dict[str, Any] | None) -> dict[str, Any]:
    md: dict[str, Any] = {"format": "TIA SER", "vendor": "FEI/Thermo Fisher"}
    if not emi:
        md["emi"] = "missing"
        return md
    md["instrument"] = emi.get("Microscope []")
    md["mode"] = (emi.get("Mode []") or "").strip() or None
    mag = emi.get("Magnification [x]")
    if isinstance(mag, (int, float)) and mag > 0:
        md["magnification"] = mag
    md["detector"] = emi.get("CameraNamePath") or emi.get("DetectorNamePath")
    return md


def read_ser(path: Path, *, start: int = 0, t_arrival: float | None = None) -> list[Frame]:
    """Frames of a TIA ``.ser`` file (see module docstring)."""
    if path.suffix.lower() == ".emi":
        raise NotAnImage("TIA .emi holds metadata only; the frames are in the *_N.ser file beside it")
    _size, dtype_id, _total, valid = _raw_header(path)
    if dtype_id == _DATA_1D:
        raise NotAnImage("TIA SER series of 1-D spectra, not images")
    if dtype_id != _DATA_2D:
        raise UnreadableFile(f"unknown SER data type {dtype_id:#x}")
    ncser = optional_module("ncempy.io.ser", "TIA SER files")
    frames_px: list[np.ndarray] = []
    cals = []
    times: list[float | None] = []
    try:
        with ncser.fileSER(str(path)) as f:
            md = _emi_md(getattr(f, "_emi", None))
            mode = str(md.get("mode") or "")
            if mode.upper().startswith("TEM") and "DIFFRACTION" in mode.upper():
                raise NotAnImage(f"TEM diffraction pattern (TIA mode '{mode}'), not a real-space image")
            n = min(valid, len(f.head.get("DataOffsetArray", [])))
            for k in range(max(0, start), n):
                data, meta = f.getDataset(k)
                check_image_shape(np.shape(data), "SER element")
                calib = meta.get("Calibration", ())
                if len(calib) >= 2:
                    x = (calib[0]["CalibrationDelta"], "m")
                    y = (calib[1]["CalibrationDelta"], "m")
                    cal, notes = calibration_from_axes(y, x, detail="TIA SER CalibrationDelta (m)")
                else:
                    cal, notes = calibration_from_axes((None, ""), (None, ""), detail="TIA SER")
                if notes:
                    md["warnings"] = notes
                frames_px.append(np.asarray(data))
                cals.append(cal)
                t = f._getTag(k).get("Time", 0)
                times.append(float(t) if t and t > 0 else None)
    except UnreadableFile:
        raise
    except Exception as exc:  # noqa: BLE001
        raise wrap_errors(path, exc) from exc
    return frames_from_stack(path, frames_px, first_index=max(0, start), is_stack=valid > 1,
                             calibration=cals, metadata=md, t_acq=times, t_arrival=t_arrival,
                             n_total=valid)
