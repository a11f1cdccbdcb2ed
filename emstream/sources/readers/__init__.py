"""File-format readers: every complete 2-D image in a microscope file becomes a :class:`Frame`.

Public API (see ``interfaces.md``)::

    SUPPORTED_SUFFIXES                 suffixes the folder watcher picks up
    is_supported(path) -> bool
    check_complete(path) -> None       cheap; raises IncompleteFile while half-written
    read_frames(path, *, start=0, t_arrival=None) -> list[Frame]
    length_to_nm(value, unit) -> float | None

=====================  =====================  ==========================================  =========
format                 library                calibration source                          licence
=====================  =====================  ==========================================  =========
TIFF (.tif/.tiff)      tifffile               emstream JSON, FEI [Scan] PixelWidth,        BSD
                                              TVIPS PixelSize, DM tags 65009/65010,
                                              Zeiss ap_pixel_size, OME PhysicalSize,
                                              ImageJ unit+resolution (never the bare
                                              resolution tag)
JEOL SightX TIFF       tifffile + rsciio      TemReporter XML via RosettaSciIO            GPL (opt.)
MRC (.mrc/.mrcs/.st    mrcfile                cella/mxyz (Å), <= 0 = uncalibrated;        BSD
 .ali/.rec/.map)                               3-D maps are NotAnImage
DM3/DM4                ncempy (rsciio)        ImageData calibrations per axis             GPL (opt.)
TIA SER (+ .emi)       ncempy                 SER CalibrationDelta (m)                    GPL (opt.)
Velox EMD              h5py                   BinaryResult.PixelSize + PixelUnitX/Y        BSD
Berkeley EMD           h5py                   dimN vectors + units attribute              BSD
PNG / JPEG / BMP       OpenCV                 none (exports and figures; ``analyze`` only) Apache
=====================  =====================  ==========================================  =========

The format is chosen by content (magic bytes) first and by suffix second, so a TIFF named
``.dat`` still reads and a text file named ``.tif`` is reported as not a TIFF. Non-image datasets
(spectra, diffraction patterns, spectrum images, 3-D maps, colour renderings) raise
:class:`~emstream.errors.NotAnImage` with the reason; unparseable files
:class:`~emstream.errors.UnreadableFile`; half-written ones
:class:`~emstream.errors.IncompleteFile`. No other exception type escapes :func:`read_frames`
or :func:`check_complete` for a bad file.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from emstream.errors import IncompleteFile, UnreadableFile
from emstream.frame import Frame

from ._common import wrap_errors
from .units import length_to_nm

__all__ = [
    "SUPPORTED_SUFFIXES",
    "check_complete",
    "detect_format",
    "format_report",
    "is_supported",
    "length_to_nm",
    "read_frames",
    "slice_count",
]

_SUFFIX_FORMAT = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".mrc": "mrc",
    ".mrcs": "mrc",
    ".map": "mrc",
    ".st": "mrc",
    ".ali": "mrc",
    ".rec": "mrc",
    ".dm3": "dm",
    ".dm4": "dm",
    ".ser": "ser",
    ".emd": "emd",
    ".png": "plain",
    ".jpg": "plain",
    ".jpeg": "plain",
    ".bmp": "plain",
}

#: Suffixes the folder watcher treats as frame files (lower case). ``.emi`` is deliberately
#: absent (TIA metadata only) and so are generic ``.h5``/``.hdf5`` (detector master files);
#: :func:`read_frames` still reads EMD-structured ``.h5`` files handed to it directly. Plain
#: images (PNG, JPEG, BMP) are read when handed over (``analyze``) but not watched: acquisition
#: software writes them as previews beside the real data.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    s for s, fmt in _SUFFIX_FORMAT.items() if fmt != "plain")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True when ``path``'s suffix is one the readers turn into frames."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """``"tiff" | "mrc" | "dm" | "ser" | "emd" | "emi"`` from the content, else the suffix."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(212)
    except OSError:
        head = b""
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "emd"
    if _looks_like_dm(head):
        return "dm"
    if head[:4] == b"II\x97\x01":
        return "ser"
    if len(head) >= 212 and head[208:212] == b"MAP ":
        return "mrc"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        return "plain"
    suffix = p.suffix.lower()
    if suffix == ".emi":
        return "emi"
    if suffix in (".h5", ".hdf5"):
        return "emd"
    return _SUFFIX_FORMAT.get(suffix)


def format_report() -> list[dict[str, object]]:
    """Which formats this installation reads, for ``emstream doctor``.

    Returns a list of ``{"name", "available", "detail"}``; looks packages up without importing
    them (ncempy and RosettaSciIO are slow to import).
    """
    import importlib.util

    def have(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            return False

    ncempy, rsciio = have("ncempy"), have("rsciio")
    hint = "install emstream[formats] (ncempy, rosettasciio; GPL-3.0)"
    return [
        {"name": "TIFF (ImageJ, FEI/TFS, TVIPS, DM export, Zeiss, OME, emstream)",
         "available": have("tifffile"), "detail": "tifffile"},
        {"name": "JEOL SightX TIFF calibration", "available": rsciio,
         "detail": "rosettasciio" if rsciio else f"frames read, uncalibrated: {hint}"},
        {"name": "MRC / MRCS", "available": have("mrcfile"), "detail": "mrcfile"},
        {"name": "Velox EMD, Berkeley EMD", "available": have("h5py"), "detail": "h5py"},
        {"name": "DM3 / DM4", "available": ncempy or rsciio,
         "detail": "ncempy" if ncempy else ("rosettasciio" if rsciio else hint)},
        {"name": "TIA SER (+ EMI)", "available": ncempy, "detail": "ncempy" if ncempy else hint},
        {"name": "PNG / JPEG / BMP (uncalibrated; analyze only, not watched)",
         "available": have("cv2"), "detail": "opencv"},
    ]


def _looks_like_dm(head: bytes) -> bool:
    if len(head) < 16:
        return False
    version = int.from_bytes(head[:4], "big")
    if version == 3:
        return int.from_bytes(head[8:12], "big") in (0, 1)
    if version == 4:
        return int.from_bytes(head[12:16], "big") in (0, 1)
    return False


#: format -> reader module; each module has ``read_<module>`` and ``check_<module>``
#: (imported on first use: the GPL readers are optional).
_MODULES = {"tiff": "tiff", "mrc": "mrc", "dm": "dm", "ser": "ser", "emi": "ser", "emd": "emd",
            "plain": "plain"}


def _reader(fmt: str) -> Callable[..., list[Frame]]:
    if fmt not in _MODULES:
        raise UnreadableFile(f"unsupported format {fmt!r}")
    mod = _MODULES[fmt]
    return getattr(importlib.import_module(f".{mod}", __package__), f"read_{mod}")


def _checker(fmt: str) -> Callable[[Path], None] | None:
    if fmt not in _MODULES or fmt == "emi":  # a lone .emi holds metadata, not frames
        return None
    mod = _MODULES[fmt]
    return getattr(importlib.import_module(f".{mod}", __package__), f"check_{mod}")


def _stat(p: Path) -> int:
    try:
        st = os.stat(p)
    except FileNotFoundError as exc:
        raise UnreadableFile("file not found", str(p)) from exc
    except OSError as exc:
        raise UnreadableFile(f"cannot stat ({exc})", str(p)) from exc
    if not os.path.isfile(p):
        raise UnreadableFile("not a regular file", str(p))
    return st.st_size


def _with_path(exc: UnreadableFile, p: Path) -> UnreadableFile:
    if exc.path is None:
        new = type(exc)(exc.reason, str(p))
        new.__cause__ = exc.__cause__ or exc
        return new
    return exc


def check_complete(path: str | os.PathLike[str]) -> None:
    """Cheap check that the file looks completely written.

    Raises :class:`IncompleteFile` when it visibly is not (empty, MRC header declaring more
    slices than the file holds, TIFF pages pointing past the end, DM/SER/HDF5 structures cut
    off), :class:`UnreadableFile` when it is not a file this package reads.
    """
    p = Path(path)
    size = _stat(p)
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)", str(p))
    fmt = detect_format(p)
    if fmt is None:
        raise UnreadableFile(f"unsupported file type {p.suffix!r}", str(p))
    checker = _checker(fmt)
    if checker is None:
        return
    try:
        checker(p)
    except UnreadableFile as exc:
        raise _with_path(exc, p) from exc
    except Exception as exc:  # noqa: BLE001 - never leak a library exception type
        raise _with_path(wrap_errors(p, exc), p) from exc


def slice_count(path: str | os.PathLike[str]) -> int | None:
    """How many complete slices an MRC stack holds, from its header and size (``None`` for other
    formats and for a file the reader would refuse: read those whole)."""
    p = Path(path)
    if detect_format(p) != "mrc":
        return None
    from emstream.sources.readers.mrc import stack_slices

    try:
        return stack_slices(p)
    except Exception:  # noqa: BLE001 - the read that follows says what is wrong
        return None


def read_frames(path: str | os.PathLike[str], *, start: int = 0,
                t_arrival: float | None = None, limit: int | None = None) -> list[Frame]:
    """Every complete 2-D image in ``path`` from index ``start`` on.

    Parameters
    ----------
    path : the file (opened read-only, never modified).
    start : index of the first slice wanted (stacks: slices before it were already processed).
    limit : at most this many frames (MRC stacks: the rest is read by a later call from
        ``start + limit``; other formats return everything).
    t_arrival : when the file was picked up (POSIX seconds); now when omitted.

    Returns
    -------
    list of :class:`Frame` with ``source_id`` ``str(path)`` for a single image and
    ``f"{path}#{k}"`` for slice ``k`` of a stack (MRC files always use ``#k``, as a growing
    stack starts with one slice), ``calibration.source == "file"`` with the tag
    used in ``calibration.detail`` (or ``"none"`` and the reason), ``t_acq`` from the file's
    metadata where the format records it, else the file's mtime.

    Raises
    ------
    NotAnImage, IncompleteFile, UnreadableFile
        with a human-readable ``reason``.
    """
    p = Path(path)
    size = _stat(p)
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)", str(p))
    fmt = detect_format(p)
    if fmt is None:
        raise UnreadableFile(f"unsupported file type {p.suffix!r}", str(p))
    try:
        if limit is not None and fmt == "mrc":
            return _reader(fmt)(p, start=max(0, int(start)), t_arrival=t_arrival, limit=limit)
        return _reader(fmt)(p, start=max(0, int(start)), t_arrival=t_arrival)
    except UnreadableFile as exc:
        raise _with_path(exc, p) from exc
    except MemoryError as exc:
        raise UnreadableFile("file too large to read into memory", str(p)) from exc
    except Exception as exc:  # noqa: BLE001 - never leak a library exception type
        raise _with_path(wrap_errors(p, exc), p) from exc
