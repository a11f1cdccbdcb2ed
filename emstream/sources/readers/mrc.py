"""MRC / MRCS frames (mrcfile for the header, plain reads for the slices).

* Pixel size: ``cella / mxyz`` (Ångström) -> nm per axis. ``<= 0`` (Direct Electron writes
  ``-10 Å`` as "not calibrated") and ``0`` leave the frame uncalibrated.
* Stacks and movies (``ispg == 0``, or any ``nz`` with a zero z spacing as Direct Electron movies
  have) give one frame per slice.
* A 3-D density map is :class:`NotAnImage` ("3-D density map, not a frame stack"): its slices
  are sections through one object, not frames in time. A map is a volume stack (``ispg``
  401..630), or a space group 1..230 with a positive z voxel size *and* either a cubic cell
  (``cella`` x = y = z, as EMDB maps such as EMD-3197 have) or a ``.map``/``.rec``/``.ccp4``
  name. ``ispg = 1`` alone is not enough: mrcfile and other writers put 1 on every 3-D array,
  and Direct Electron movies carry it too (with a zero z spacing).
* Growing stacks: only complete slices are read, ``min(header nz, slices the file size holds)``;
  ``start=`` skips slices already processed. :func:`check_mrc` raises
  :class:`IncompleteFile` while the header declares more data than the file holds; a writer that
  updates ``nz`` after each appended slice therefore always passes.
* The file is opened read-only and slices are read with ordinary reads rather than a lasting
  memory map: on Windows a live mapping stops the acquisition software from extending the file.
* ``source_id`` is always ``path#k``, also for a file with one slice: a growing stack starts
  with one slice, and its identity must not change when the second arrives.
* FEI/TFS extended headers (``FEI1``/``FEI2``) give vendor, detector, magnification and a
  per-slice timestamp.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import mrcfile
import mrcfile.utils
import numpy as np

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.frame import Frame

from ._common import frames_from_stack, wrap_errors
from .calibration import calibration_from_axes

log = logging.getLogger(__name__)

HEADER_BYTES = 1024
_OLE_EPOCH_DAYS = 25569.0  # 1970-01-01 as an OLE automation date (FEI extended header)


class _Layout:
    def __init__(self, header, size: int):
        self.header = header
        self.size = size
        self.nx, self.ny, self.nz = int(header.nx), int(header.ny), int(header.nz)
        self.mode = int(header.mode)
        self.ispg = int(header.ispg)
        self.nsymbt = int(header.nsymbt)
        self.offset = HEADER_BYTES + self.nsymbt
        self.dtype = mrcfile.utils.data_dtype_from_header(header)
        self.slice_bytes = self.nx * self.ny * self.dtype.itemsize
        avail = max(0, size - self.offset) // self.slice_bytes if self.slice_bytes else 0
        self.available = int(avail)
        self.complete = min(self.nz, self.available)


def _prevalidate(path: Path, size: int) -> None:
    """Sanity-check the header words ourselves before mrcfile sees them: a garbage header can
    declare a gigabyte extended header that mrcfile would then try to read."""
    with open(path, "rb") as fh:
        raw = fh.read(HEADER_BYTES)
    for order in ("<", ">"):
        nx, ny, nz, mode = np.frombuffer(raw[:16], dtype=order + "i4")
        nsymbt = int(np.frombuffer(raw[92:96], dtype=order + "i4")[0])
        if 0 < nx <= 1 << 17 and 0 < ny <= 1 << 17 and 0 <= nz <= 1 << 24 and 0 <= mode <= 1024 \
                and nsymbt >= 0:
            if HEADER_BYTES + nsymbt > size:
                raise IncompleteFile(f"extended header incomplete ({size} of "
                                     f"{HEADER_BYTES + nsymbt} bytes)")
            return
    why = "" if raw[208:212] == b"MAP " else " and no 'MAP ' signature"
    raise UnreadableFile(f"not a valid MRC header (implausible nx/ny/nz/mode/nsymbt{why})")


def _read_header(path: Path) -> tuple[Any, Any, int]:
    size = os.stat(path).st_size
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)")
    if size < HEADER_BYTES:
        raise IncompleteFile(f"only {size} bytes: the 1024-byte MRC header is incomplete")
    _prevalidate(path, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(str(path), mode="r", permissive=True, header_only=True) as m:
                header = m.header.copy()
                ext = None
                try:
                    if bytes(m.header.exttyp) in (b"FEI1", b"FEI2") and \
                            size >= HEADER_BYTES + int(m.header.nsymbt):
                        ext = m.indexed_extended_header
                except Exception:  # noqa: BLE001 - metadata only
                    ext = None
    except Exception as exc:  # noqa: BLE001
        raise wrap_errors(path, exc) from exc
    if header is None:
        raise UnreadableFile("not an MRC file (header unreadable)")
    return header, ext, size


def _layout(path: Path) -> tuple[_Layout, Any]:
    header, ext, size = _read_header(path)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    is_map = bytes(header.map) == b"MAP "
    if not (0 < nx <= 1 << 17 and 0 < ny <= 1 << 17 and 0 <= nz <= 1 << 24) or int(header.nsymbt) < 0:
        why = "" if is_map else " and no 'MAP ' signature"
        raise UnreadableFile(f"not a valid MRC header (nx={nx}, ny={ny}, nz={nz}{why})")
    mode = int(header.mode)
    if mode in (3, 4):
        raise NotAnImage(f"MRC mode {mode} is complex data (a Fourier transform), not an image")
    if mode == 101:
        raise UnreadableFile("MRC mode 101 (packed 4-bit) is not supported")
    try:
        lay = _Layout(header, size)
    except ValueError as exc:
        raise UnreadableFile(f"not a valid MRC file: unknown mode {mode}") from exc
    return lay, ext


def _voxel(header) -> tuple[float, float, float]:
    out = []
    for c, n in ((header.cella.x, header.mx), (header.cella.y, header.my), (header.cella.z, header.mz)):
        c, n = float(c), int(n)
        out.append(c / n if n > 0 and math.isfinite(c) else 0.0)
    return out[0], out[1], out[2]


_VOLUME_SUFFIXES = (".map", ".rec", ".ccp4")


def _reject_volume(lay: _Layout, path: Path) -> None:
    vx, vy, vz = _voxel(lay.header)
    if 401 <= lay.ispg <= 630:
        raise NotAnImage(f"MRC volume stack (ispg={lay.ispg}): 3-D maps, not a frame stack")
    if not (1 <= lay.ispg <= 230 and lay.nz > 1 and vz > 0):
        return
    cell = [float(c) for c in (lay.header.cella.x, lay.header.cella.y, lay.header.cella.z)]
    cubic = min(cell) > 0 and max(cell) <= 1.01 * min(cell)
    if cubic or path.suffix.lower() in _VOLUME_SUFFIXES:
        raise NotAnImage(f"3-D density map, not a frame stack (ispg={lay.ispg}, "
                         f"{lay.nx}x{lay.ny}x{lay.nz} voxels of {vx:g}x{vy:g}x{vz:g} Å)")


def stack_slices(path: Path) -> int:
    """The complete slices of an MRC stack (raises as the reader would on a file it refuses)."""
    lay, _ = _layout(path)
    _reject_volume(lay, path)
    if lay.nz > lay.complete:
        raise IncompleteFile(f"header declares {lay.nz} slice(s), file holds {lay.complete}")
    return lay.complete


def check_mrc(path: Path) -> None:
    """Header parses and the file holds every slice the header declares."""
    lay, _ = _layout(path)
    if lay.size < lay.offset:
        raise IncompleteFile(f"extended header incomplete ({lay.size} of {lay.offset} bytes)")
    need = lay.offset + lay.nz * lay.slice_bytes
    if lay.size < need:
        raise IncompleteFile(f"header declares {lay.nz} slice(s) ({need} bytes), file has "
                             f"{lay.size} bytes ({lay.available} complete slice(s))")


def _ext_metadata(ext, md: dict[str, Any], n: int) -> list[float | None] | None:
    if ext is None or getattr(ext, "dtype", None) is None or not ext.dtype.names:
        return None
    names = ext.dtype.names
    e0 = ext[0]

    def get(name):
        return e0[name] if name in names else None

    md["vendor"] = "FEI/Thermo Fisher"
    md["instrument"] = get("Microscope type")
    md["application"] = get("Application")
    det = get("STEM Detector name")
    cam = get("Camera name")
    md["detector"] = det if det not in (None, b"") else cam
    mag = get("Magnification")
    if mag is not None and float(mag) > 0:
        md["magnification"] = float(mag)
    ht = get("HT")
    if ht is not None:
        md["high_tension_v"] = float(ht)
    if "Timestamp" not in names:
        return None
    times: list[float | None] = []
    for k in range(n):
        if k >= len(ext):
            times.append(None)
            continue
        ts = float(ext[k]["Timestamp"])
        times.append((ts - _OLE_EPOCH_DAYS) * 86400.0 if ts > _OLE_EPOCH_DAYS else None)
    return times


def read_mrc(path: Path, *, start: int = 0, t_arrival: float | None = None,
             limit: int | None = None) -> list[Frame]:
    """Every complete slice from ``start`` on (see module docstring for the rules), at most
    ``limit`` of them (a long stack is read in parts, so memory does not grow with the file)."""
    lay, ext = _layout(path)
    _reject_volume(lay, path)
    if lay.nz == 0:
        raise IncompleteFile("MRC header declares no slices yet (nz = 0)")
    n = lay.complete
    if n == 0:
        raise IncompleteFile(f"no complete slice yet ({lay.size} bytes, header+extended header "
                             f"{lay.offset}, one slice {lay.slice_bytes})")
    vx, vy, vz = _voxel(lay.header)
    cal, notes = calibration_from_axes((vy, "Å"), (vx, "Å"), detail="MRC header cella/mx,my (Å)")
    md: dict[str, Any] = {"format": "MRC", "mode": lay.mode, "ispg": lay.ispg,
                          "exttyp": bytes(lay.header.exttyp).decode("latin-1", "replace").strip("\0 ")}
    if lay.nz > n:
        md["slices_declared"] = lay.nz
    times = _ext_metadata(ext, md, lay.nz)
    if notes:
        md["warnings"] = notes
    first = max(0, int(start))
    slices = []
    native = lay.dtype.newbyteorder("=")
    try:
        with open(path, "rb") as fh:
            stop = n if limit is None else min(n, first + max(1, int(limit)))
            for k in range(first, stop):
                fh.seek(lay.offset + k * lay.slice_bytes)
                buf = fh.read(lay.slice_bytes)
                if len(buf) < lay.slice_bytes:
                    break  # the file shrank or is being rewritten: stop at the last whole slice
                arr = np.frombuffer(buf, dtype=lay.dtype).reshape(lay.ny, lay.nx)
                slices.append(arr.astype(native, copy=False) if arr.dtype != native else arr.copy())
    except OSError as exc:
        raise UnreadableFile(f"cannot read slices ({exc})") from exc
    t_acq = times[first:first + len(slices)] if times else None
    # MRC is a stack format: even a one-slice file may be the start of a growing stack, so
    # slices are always named path#k (the folder watcher resumes stacks from the last #k).
    return frames_from_stack(path, slices, first_index=first, is_stack=True, calibration=cal,
                             metadata=md, t_acq=t_acq, t_arrival=t_arrival, n_total=lay.nz)
