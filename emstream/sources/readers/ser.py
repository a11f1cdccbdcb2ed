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


class _SerHeader:
    """The fixed SER header and its offset arrays, parsed without ncempy (cheap, no GPL)."""

    def __init__(self, path: Path):
        self.size = os.stat(path).st_size
        if self.size == 0:
            raise IncompleteFile("empty file (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(42)
            if len(head) < 30:
                raise IncompleteFile(f"only {len(head)} bytes: SER header incomplete")
            bo, sid, ver = (int(v) for v in np.frombuffer(head[:6], "<u2"))
            if bo != _SER_BYTE_ORDER or sid != _SER_ID:
                raise UnreadableFile("not a TIA SER file (bad byte-order/series id)")
            self.dtype_id, _tag, self.total, self.valid = (int(v) for v in np.frombuffer(head[6:22], "<i4"))
            off_t = "<i8" if ver >= 0x0220 else "<i4"
            width = np.dtype(off_t).itemsize
            if len(head) < 22 + width:
                raise IncompleteFile("SER header incomplete")
            self.array_offset = int(np.frombuffer(head[22:22 + width], off_t)[0])
            if self.total < 0 or self.valid < 0 or self.valid > self.total or self.total > 1 << 24:
                raise UnreadableFile(f"SER header with implausible element counts "
                                     f"(total {self.total}, valid {self.valid})")
            if self.array_offset < 0:
                raise UnreadableFile("SER header with a negative offset-array position")
            need = self.array_offset + 2 * self.total * width
            if need > self.size:
                raise IncompleteFile(f"SER offset arrays end at byte {need}, file has {self.size}")
            fh.seek(self.array_offset)
            arr = np.frombuffer(fh.read(2 * self.total * width), off_t)
        self.data_offsets = [int(v) for v in arr[: self.total]]
        self.tag_offsets = [int(v) for v in arr[self.total:]]

    def complete_elements(self) -> int:
        """How many of the valid elements lie wholly inside the file (data, then its tag)."""
        n = 0
        for d, t in zip(self.data_offsets[: self.valid], self.tag_offsets[: self.valid], strict=False):
            if d <= 0 or t <= d or t + 8 > self.size:
                break
            n += 1
        return n


def check_ser(path: Path) -> None:
    """Header is a SER header and every valid element's data and tag lie inside the file."""
    h = _SerHeader(path)
    if h.dtype_id not in (_DATA_1D, _DATA_2D):
        raise UnreadableFile(f"unknown SER data type {h.dtype_id:#x}")
    n = h.complete_elements()
    if n < h.valid:
        raise IncompleteFile(f"element {n} of {h.valid} lies beyond the end of the file "
                             f"({h.size} bytes)")


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
    h = _SerHeader(path)
    if h.dtype_id == _DATA_1D:
        raise NotAnImage("TIA SER series of 1-D spectra, not images")
    if h.dtype_id != _DATA_2D:
        raise UnreadableFile(f"unknown SER data type {h.dtype_id:#x}")
    valid = h.valid
    n_complete = h.complete_elements()
    if valid > 0 and n_complete == 0:
        raise IncompleteFile(f"no complete SER element yet ({h.size} bytes)")
    ncser = optional_module("ncempy.io.ser", "TIA SER files")
    frames_px: list[np.ndarray] = []
    cals = []
    times: list[float | None] = []
    seen: dict[tuple[float, ...], Any] = {}
    try:
        with ncser.fileSER(str(path)) as f:
            md = _emi_md(getattr(f, "_emi", None))
            mode = str(md.get("mode") or "")
            if mode.upper().startswith("TEM") and "DIFFRACTION" in mode.upper():
                raise NotAnImage(f"TEM diffraction pattern (TIA mode '{mode}'), not a real-space image")
            n = min(n_complete, len(f.head.get("DataOffsetArray", [])))
            for k in range(max(0, start), n):
                data, meta = f.getDataset(k)
                check_image_shape(np.shape(data), "SER element")
                calib = meta.get("Calibration", ())
                key = tuple(float(c["CalibrationDelta"]) for c in calib[:2]) if len(calib) >= 2 else ()
                if key not in seen:  # one conversion (and one warning) per distinct calibration
                    if key:
                        seen[key] = calibration_from_axes((key[1], "m"), (key[0], "m"),
                                                          detail="TIA SER CalibrationDelta (m)")
                    else:
                        seen[key] = calibration_from_axes((None, ""), (None, ""), detail="TIA SER")
                cal, notes = seen[key]
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
