"""HDF5-based EMD files read with h5py (no GPL dependency).

* **Velox EMD** (Thermo Fisher): ``Data/Image/<uuid>/Data`` is ``(y, x, frames)`` with one JSON
  ``Metadata`` column per frame. Pixel size from ``BinaryResult.PixelSize`` with
  ``PixelUnitX/Y`` (``m``; ``1/m`` marks a diffraction pattern -> :class:`NotAnImage`).
  Only images recorded by an imaging or scanning detector are frames; EDS element maps
  (analytical detectors) and spectra are not. When several detectors imaged the same field
  (e.g. HAADF + BF), HAADF is taken, else the first; the others are named in the metadata.
* **Berkeley EMD** (``emd_group_type == 1`` groups: ``data`` + ``dim1..dimN``): each ``dimK``
  vector calibrates axis K-1 (pixel size = ``dim[1] - dim[0]``, unit from its ``units``
  attribute, ``'n_m'`` included). 2-D -> one frame; 3-D -> frames along the one axis that is
  not a length (all three lengths = a volume -> :class:`NotAnImage`); 4-D and more ->
  :class:`NotAnImage`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.frame import Frame

from ._common import check_image_shape, frames_from_stack, wrap_errors
from .calibration import calibration_from_axes, reject_non_image_axis
from .units import axis_kind

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            for off in (0, 512, 1024, 2048):
                fh.seek(off)
                if fh.read(8) == HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


def _open(path: Path) -> h5py.File:
    size = os.stat(path).st_size
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)")
    if not is_hdf5(path):
        if size < 8:
            raise IncompleteFile("HDF5 signature incomplete")
        raise UnreadableFile("not an HDF5/EMD file (no HDF5 signature)")
    try:
        # locking=False: a reader's HDF5 lock would stop the acquisition software from
        # reopening the file for writing; we only read files that already look complete.
        return h5py.File(str(path), "r", locking=False)
    except OSError as exc:
        text = str(exc).lower()
        if "truncat" in text or "eof" in text or "end of file" in text:
            raise IncompleteFile(f"HDF5 file truncated ({exc})") from exc
        if "unable to lock" in text or "file locking" in text:
            raise IncompleteFile(f"HDF5 file is locked by its writer ({exc})") from exc
        raise UnreadableFile(f"HDF5 file cannot be opened ({exc})") from exc


def check_emd(path: Path) -> None:
    """HDF5 signature present and the file opens (truncated / writer-locked -> Incomplete)."""
    with _open(path):
        pass


# --------------------------------------------------------------------------- Velox
def _velox_json(meta_ds, k: int) -> dict[str, Any]:
    try:
        raw = np.asarray(meta_ds[:, k]).tobytes().rstrip(b"\0")
        return json.loads(raw.decode("utf-8", "replace")) if raw else {}
    except (ValueError, IndexError):
        return {}


def _velox_kind(md: dict[str, Any]) -> tuple[str, str]:
    br = md.get("BinaryResult", {}) or {}
    name = str(br.get("Detector", ""))
    idx = br.get("DetectorIndex")
    if idx is not None:
        det = (md.get("Detectors", {}) or {}).get(f"Detector-{idx}", {}) or {}
        return str(det.get("DetectorType", "")), str(det.get("DetectorName", name))
    return "AnalyticalDetector" if name.upper().startswith(("SUPERX", "EDS", "EDX")) else "", name


def _read_velox(path: Path, h: h5py.File, start: int, t_arrival: float | None) -> list[Frame]:
    images = h.get("Data/Image")
    candidates = []
    skipped = []
    if images is not None:
        for key, grp in images.items():
            if not isinstance(grp, h5py.Group) or "Data" not in grp or "Metadata" not in grp:
                continue
            md0 = _velox_json(grp["Metadata"], 0)
            kind, name = _velox_kind(md0)
            if kind in ("ImagingDetector", "ScanningDetector"):
                candidates.append((name, key, grp, md0))
            else:
                skipped.append(name or key)
    if not candidates:
        what = sorted(k for k in (h.get("Data") or {}).keys())
        raise NotAnImage("Velox file holds no detector image "
                         f"(data kinds: {', '.join(what) or 'none'}; EDS maps skipped: {len(skipped)})")
    candidates.sort(key=lambda c: (c[0].upper() != "HAADF",))
    name, key, grp, md0 = candidates[0]
    data = grp["Data"]
    if data.ndim != 3:
        raise NotAnImage(f"Velox image dataset with shape {data.shape}, expected (y, x, frames)")
    br = md0.get("BinaryResult", {}) or {}
    ps = br.get("PixelSize", {}) or {}
    yu, xu = br.get("PixelUnitY", ""), br.get("PixelUnitX", "")
    reject_non_image_axis(xu, "x axis")
    reject_non_image_axis(yu, "y axis")
    check_image_shape(data.shape[:2], "Velox image")
    cal, notes = calibration_from_axes((ps.get("height"), yu), (ps.get("width"), xu),
                                       detail="Velox BinaryResult.PixelSize")
    optics = md0.get("Optics", {}) or {}
    instr = md0.get("Instrument", {}) or {}
    md: dict[str, Any] = {
        "format": "Velox EMD", "vendor": "Thermo Fisher", "detector": name,
        "instrument": instr.get("InstrumentModel"),
        "magnification": _num(optics.get("NominalMagnification")),
        "other_detectors": [c[0] for c in candidates[1:]],
        "skipped_maps": len(skipped),
    }
    if notes:
        md["warnings"] = notes
    n = int(data.shape[2])
    first = max(0, int(start))
    meta = grp["Metadata"]
    slices, times = [], []
    for k in range(first, n):
        slices.append(np.asarray(data[:, :, k]))
        mk = _velox_json(meta, k) if k < meta.shape[1] else md0
        acq = mk.get("Acquisition", {}) or {}
        t = _num((acq.get("AcquisitionDatetime") or {}).get("DateTime"))
        if not t:
            t = _num((acq.get("AcquisitionStartDatetime") or {}).get("DateTime"))
        times.append(t if t and t > 0 else None)
    return frames_from_stack(path, slices, first_index=first, is_stack=n > 1, calibration=cal,
                             metadata=md, t_acq=times, t_arrival=t_arrival, n_total=n)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


# --------------------------------------------------------------------------- Berkeley EMD
def _emd_groups(h: h5py.File) -> list[h5py.Group]:
    found: list[h5py.Group] = []

    def visit(_name, obj):
        if isinstance(obj, h5py.Group) and int(np.asarray(obj.attrs.get("emd_group_type", 0)).ravel()[0]
                                                if obj.attrs.get("emd_group_type") is not None else 0) == 1:
            found.append(obj)

    h.visititems(visit)
    return found


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return _text(v.ravel()[0]) if v.size else ""
    return str(v) if v is not None else ""


def _dim(grp: h5py.Group, k: int) -> tuple[float | None, str]:
    ds = grp.get(f"dim{k}")
    if ds is None:
        return None, ""
    unit = _text(ds.attrs.get("units", ""))
    try:
        v = np.asarray(ds[:2], dtype=float)
    except (TypeError, ValueError):
        return None, unit
    return (float(v[1] - v[0]) if v.size >= 2 else None), unit


def _read_berkeley(path: Path, h: h5py.File, start: int, t_arrival: float | None) -> list[Frame]:
    groups = _emd_groups(h)
    if not groups:
        raise NotAnImage("HDF5 file without EMD data groups (emd_group_type = 1) or Velox images")
    grp = groups[0]
    data = grp.get("data")
    if data is None:
        raise UnreadableFile("EMD group without a 'data' dataset")
    dims = [_dim(grp, k + 1) for k in range(data.ndim)]
    md: dict[str, Any] = {"format": "Berkeley EMD", "dataset": grp.name}
    mic = h.get("microscope")
    if isinstance(mic, h5py.Group):
        md["instrument"] = _text(mic.attrs.get("name", "")) or None
        md["magnification"] = _num(np.asarray(mic.attrs.get("magnification", np.nan)).ravel()[0]) \
            if "magnification" in mic.attrs else None
    if data.ndim >= 4:
        raise NotAnImage(f"{data.ndim}-D EMD dataset (shape {data.shape}): not an image")
    if data.ndim == 3:
        kinds = [axis_kind(u) for _, u in dims]
        if all(k == "length" for k in kinds):
            raise NotAnImage(f"3-D EMD dataset with three length axes (shape {data.shape}): a volume")
        if "energy" in kinds:
            raise NotAnImage(f"spectrum image (energy axis, shape {data.shape}), not an image")
        frame_axis = 0 if kinds[0] != "length" or kinds[2] == "length" else 2
        arr = np.moveaxis(np.asarray(data), frame_axis, 0)
        ydim, xdim = [d for i, d in enumerate(dims) if i != frame_axis]
    else:
        arr = np.asarray(data)[None] if data.ndim == 2 else np.asarray(data)
        if data.ndim < 2:
            unit = dims[0][1] if dims else ""
            reject_non_image_axis(unit, "axis")
            raise NotAnImage(f"1-D EMD dataset (shape {data.shape}): a spectrum or profile")
        ydim, xdim = dims[0], dims[1]
    check_image_shape(arr.shape, "EMD dataset")
    cal, notes = calibration_from_axes(ydim, xdim, detail=f"EMD {grp.name}/dim vectors")
    if notes:
        md["warnings"] = notes
    t = None
    if "acquisition times" in grp:
        try:
            t = float(np.asarray(grp["acquisition times"][()]).ravel()[0])
        except (TypeError, ValueError, IndexError):
            t = None
    n = arr.shape[0]
    first = max(0, int(start))
    return frames_from_stack(path, [arr[k] for k in range(first, n)], first_index=first,
                             is_stack=data.ndim == 3, calibration=cal, metadata=md, t_acq=t,
                             t_arrival=t_arrival, n_total=n)


def read_emd(path: Path, *, start: int = 0, t_arrival: float | None = None) -> list[Frame]:
    """Frames of a Velox or Berkeley EMD (or EMD-structured HDF5) file."""
    h = _open(path)
    try:
        with h:
            if isinstance(h.get("Data"), h5py.Group) and ("Application" in h or "Data/Image" in h):
                return _read_velox(path, h, start, t_arrival)
            return _read_berkeley(path, h, start, t_arrival)
    except UnreadableFile:
        raise
    except Exception as exc:  # noqa: BLE001
        raise wrap_errors(path, exc) from exc
