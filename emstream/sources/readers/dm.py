"""Gatan DigitalMicrograph DM3/DM4 frames (ncempy.io.dm; RosettaSciIO as a fallback).

Both libraries are GPL-3.0 and belong to the optional ``emstream[formats]`` extra; they are
imported only when a DM file is read, and their absence raises :class:`UnreadableFile` with an
install hint. Calibration comes from the image's ``ImageData.Calibrations.Dimension`` scale and
unit per axis (y and x separately: ``dmTest_float32_nonSquare_diffPixelSize`` has y in Å and x
in nm). Spectra (1xN, eV), diffraction patterns (1/nm), spectrum images (an energy axis) and
4-D data are :class:`NotAnImage`. A 3-D dataset whose leading axis is not energy is a stack ->
one frame per plane.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.frame import Frame

from ._common import (
    FORMATS_EXTRA_HINT,
    check_image_shape,
    frames_from_stack,
    wrap_errors,
)
from .calibration import calibration_from_axes, reject_non_image_axis
from .units import axis_kind

_FILETIME_EPOCH_S = 11644473600.0  # seconds from 1601-01-01 to 1970-01-01


def check_dm(path: Path) -> None:
    """DM3/DM4 header: version 3/4 and the declared length fits in the file."""
    size = os.stat(path).st_size
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 16:
        raise IncompleteFile(f"only {len(head)} bytes: DM header incomplete")
    version = int.from_bytes(head[0:4], "big")
    if version == 3:
        declared = int.from_bytes(head[4:8], "big") + 16  # root tag group length + header
    elif version == 4:
        declared = int.from_bytes(head[4:12], "big") + 16
    else:
        raise UnreadableFile(f"not a DM3/DM4 file (version field {version})")
    if declared > size:
        raise IncompleteFile(f"DM header declares {declared} bytes, file has {size}")


def _t_acq(md: dict[str, Any]) -> float | None:
    for key, value in md.items():
        if key.endswith("Acquisition Time (OS)"):
            try:
                t = float(value) / 1e7 - _FILETIME_EPOCH_S
            except (TypeError, ValueError):
                continue
            if t > 0:
                return t
    return None


def _small_md(md: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"format": "DigitalMicrograph", "vendor": "Gatan"}
    pick = {
        "Microscope Info Name": "instrument",
        "Microscope Info Indicated Magnification": "magnification",
        "Microscope Info Voltage": "high_tension_v",
        "Microscope Info Operation Mode": "operation_mode",
        "DataBar Device Name": "detector",
        "Acquisition Device Name": "detector",
        "Meta Data Signal": "signal",
        "Meta Data Format": "data_format",
    }
    for key, value in md.items():
        for suffix, name in pick.items():
            if key.endswith(suffix) and name not in out:
                out[name] = value
    return out


def _frames_from_arrays(path, data, sizes, units, md, t_acq, start, t_arrival) -> list[Frame]:
    if data.ndim >= 4:
        raise NotAnImage(f"{data.ndim}-D dataset (shape {data.shape}): 4D-STEM / hyperspectral, "
                         "not an image")
    if len(units) > 2:
        lead = units[-3]
        if axis_kind(lead) == "energy":
            raise NotAnImage(f"spectrum image (energy axis in {lead}), not an image")
    ysz = (sizes[-2] if len(sizes) >= 2 else None, units[-2] if len(units) >= 2 else "")
    xsz = (sizes[-1] if sizes else None, units[-1] if units else "")
    reject_non_image_axis(xsz[1], "x axis")
    reject_non_image_axis(ysz[1], "y axis")
    check_image_shape(data.shape, "DM dataset")
    cal, notes = calibration_from_axes(ysz, xsz, detail="DM ImageData.Calibrations.Dimension scale/units")
    if notes:
        md["warnings"] = notes
    planes = data.reshape((-1,) + data.shape[-2:])
    n = planes.shape[0]
    first = max(0, int(start))
    return frames_from_stack(path, [planes[k] for k in range(first, n)], first_index=first,
                             is_stack=data.ndim == 3, calibration=cal, metadata=md, t_acq=t_acq,
                             t_arrival=t_arrival, n_total=n)


def _read_ncempy(path: Path, start: int, t_arrival: float | None) -> list[Frame]:
    import ncempy.io.dm as ncdm

    # Our own read-only handle and on_memory=False: ncempy's default maps the file, and a live
    # map (or a view into it) keeps the file locked on Windows after the read.
    with open(path, "rb") as fh:
        f = ncdm.fileDM(fh, verbose=False, on_memory=False)
        n_ds = f.numObjects - (1 if f.thumbnail else 0)
        if n_ds < 1:
            raise NotAnImage("DM file holds no dataset besides its thumbnail")
        idx = 1 if f.thumbnail and f.numObjects > 1 else 0
        if int(f.dataType[idx]) == 23:
            raise NotAnImage("DM RGB image (a rendering), not a detector frame")
        ds = f.getDataset(0)
        try:
            raw_md = f.getMetadata(0)
        except Exception:  # noqa: BLE001 - metadata is optional
            raw_md = {}
    data = np.asarray(ds["data"])
    sizes = [float(v) for v in ds.get("pixelSize", [])]
    units = [str(u) for u in ds.get("pixelUnit", [])]
    md = _small_md(raw_md)
    return _frames_from_arrays(path, data, sizes, units, md, _t_acq(raw_md), start, t_arrival)


def _read_rsciio(path: Path, start: int, t_arrival: float | None) -> list[Frame]:
    from rsciio.digitalmicrograph import file_reader

    dicts = file_reader(str(path), lazy=False)
    d = dicts[0]
    data = np.asarray(d["data"])
    axes = d["axes"]
    sizes = [float(a.get("scale", 1.0)) for a in axes]
    units = [str(a.get("units") or "") for a in axes]
    md = {"format": "DigitalMicrograph", "vendor": "Gatan", "reader": "rosettasciio"}
    return _frames_from_arrays(path, data, sizes, units, md, None, start, t_arrival)


def read_dm(path: Path, *, start: int = 0, t_arrival: float | None = None) -> list[Frame]:
    """Frames of a DM3/DM4 file (see module docstring)."""
    check_dm(path)
    try:
        import ncempy.io.dm  # noqa: F401
        have_ncempy = True
    except ImportError:
        have_ncempy = False
    try:
        import rsciio.digitalmicrograph  # noqa: F401
        have_rsciio = True
    except ImportError:
        have_rsciio = False
    if not (have_ncempy or have_rsciio):
        raise UnreadableFile(f"{FORMATS_EXTRA_HINT} DM3/DM4 files (neither ncempy nor rosettasciio "
                             "is installed)")
    first_error: BaseException | None = None
    readers = ([_read_ncempy] if have_ncempy else []) + ([_read_rsciio] if have_rsciio else [])
    for reader in readers:
        try:
            return reader(path, start, t_arrival)
        except UnreadableFile:
            raise
        except Exception as exc:  # noqa: BLE001 - try the next library, then report the first
            first_error = first_error or exc
    assert first_error is not None
    raise wrap_errors(path, first_error) from first_error
