"""TIFF frames (tifffile) with calibration from the tags that mean something.

Calibration sources, first match wins (``Calibration.detail`` names the one used):

1. emstream's own JSON ``ImageDescription`` (``nm_per_px`` / ``pixel_size_nm``; the simulator).
2. FEI / Thermo Fisher ``[Scan] PixelWidth`` / ``PixelHeight`` (metres) from ``fei_metadata``.
3. TVIPS ``PixelSizeX`` / ``PixelSizeY`` (nm) from the TVIPS tag.
4. DigitalMicrograph-saved TIFF tags 65009/65010 (scale) with 65003/65004 (units).
5. Zeiss SEM ``ap_pixel_size`` from ``sem_metadata``.
6. OME-XML ``PhysicalSizeX/Y`` (+ unit, µm by default).
7. ImageJ: ``unit`` (and ``yunit``) in the ImageJ description *with* X/YResolution (pixels per unit).
8. JEOL SightX (``Make == 'JEOL Ltd.'`` + ``TemReporter`` XML): only RosettaSciIO decodes it
   (resolution tag ÷ magnification), so it is the fallback reader for exactly these files.

**The plain TIFF resolution tag is never used on its own.** XResolution/ResolutionUnit describe
printing (72 dpi, FEI's 64 dpi, 96 dpi navigation-camera shots ...) unless a microscope/ImageJ
context above says what they mean; a file with only those tags is *uncalibrated*, and the
``detail`` says that the tag was ignored. Likewise RosettaSciIO's generic fallbacks are not
trusted: FEI navigation-camera images (no ``[Scan]`` section; RosettaSciIO divides the IR-beam
field width by the pixel count) and the undocumented Olympus SIS tag (its value is kept in the
metadata as ``olympus_sis_pixel_size_m`` so an operator can pass it as an override).

Pages: the first grey-level series becomes the frames (``IYX``/``ZYX``/``TYX`` ... -> one frame
per plane). RGB: a grey image stored as RGB (all channels equal) becomes its first channel; a
colour image is skipped with :class:`NotAnImage` when no grey series of the same file exists
(a colour rendering / false-colour map has no monotonic intensity to segment).
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.frame import Calibration, Frame

from ._common import check_frame_pixels, check_image_shape, frames_from_stack, wrap_errors
from .calibration import calibration_from_axes

log = logging.getLogger(__name__)

_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _open_tiff(path: Path) -> tifffile.TiffFile:
    # mode "rb"; _multifile=False: never follow an OME-XML reference into other files
    return tifffile.TiffFile(str(path), mode="r", _multifile=False)


# --------------------------------------------------------------------------- completeness
def _check_header(path: Path) -> int:
    size = os.stat(path).st_size
    if size == 0:
        raise IncompleteFile("empty file (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 8:
        raise IncompleteFile(f"only {len(head)} bytes: TIFF header incomplete")
    if head[:4] not in _MAGIC:
        raise UnreadableFile("not a TIFF file (bad magic bytes)")
    big = head[2:4] in (b"+\x00", b"\x00+")
    order = "<" if head[:2] == b"II" else ">"
    if big:
        if len(head) < 16:
            raise IncompleteFile("BigTIFF header incomplete")
        first = int(np.frombuffer(head[8:16], dtype=order + "u8")[0])
    else:
        first = int(np.frombuffer(head[4:8], dtype=order + "u4")[0])
    if first >= size:
        raise IncompleteFile(f"first IFD at byte {first} is beyond the end of the file ({size} bytes)")
    if first < 8:
        raise UnreadableFile(f"first IFD offset {first} is invalid")
    return size


#: most IFDs (pages) a TIFF may chain; a longer chain is refused rather than walked for ever
MAX_PAGES = 100_000


def _walk_ifds(path: Path, size: int) -> int:
    """Follow the IFD chain with our own bounds before tifffile does (its page iteration has no
    cap: a next-IFD pointer back to an earlier IFD loops for ever at 100 % CPU). Returns the
    number of IFDs; raises on a loop, a chain beyond :data:`MAX_PAGES`, or an IFD that is cut
    off (the file is still being written) or absurd."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        cnt_t, off_t, entry = (order + "u8", order + "u8", 20) if big else (order + "u2",
                                                                            order + "u4", 12)
        cnt_n, off_n = (8, 8) if big else (2, 4)
        offset = int(np.frombuffer(head[8:16] if big else head[4:8], dtype=off_t)[0])
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise UnreadableFile(f"IFD chain loops back to byte {offset} after "
                                     f"{len(seen)} page(s)")
            if len(seen) >= MAX_PAGES:
                raise UnreadableFile(f"more than {MAX_PAGES} pages in the IFD chain")
            seen.add(offset)
            if offset + cnt_n > size:
                raise IncompleteFile(f"IFD at byte {offset} is beyond the end of the file "
                                     f"({size} bytes)")
            fh.seek(offset)
            n = int(np.frombuffer(fh.read(cnt_n), dtype=cnt_t)[0])
            if n == 0 or n > 4096:
                raise UnreadableFile(f"IFD at byte {offset} declares {n} tags")
            end = offset + cnt_n + n * entry
            if end + off_n > size:
                raise IncompleteFile(f"IFD at byte {offset} ends at byte {end + off_n}, file has "
                                     f"{size} bytes")
            fh.seek(end)
            offset = int(np.frombuffer(fh.read(off_n), dtype=off_t)[0])
    return len(seen)


def _check_pages(tif: tifffile.TiffFile, size: int) -> None:
    n = 0
    for page in tif.pages:
        if page is None:
            continue
        n += 1
        # the declared size, before any pixel is decoded
        check_frame_pixels(getattr(page, "imagelength", 0), getattr(page, "imagewidth", 0),
                           f"page {page.index}")
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if offsets and counts:
            end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
            if end > size:
                raise IncompleteFile(
                    f"page {page.index}: image data ends at byte {end}, file has {size} bytes")
    if n == 0:
        raise IncompleteFile("no readable TIFF page")


def check_tiff(path: Path) -> None:
    """Cheap completeness check: header, IFD chain parses, page data inside the file."""
    size = _check_header(path)
    _walk_ifds(path, size)
    try:
        with _open_tiff(path) as tif:
            _check_pages(tif, size)
    except UnreadableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse error becomes a reason
        raise wrap_errors(path, exc) from exc


# --------------------------------------------------------------------------- calibration
def _descriptions(page) -> list[str]:
    out = []
    for tag in page.tags.values():
        if tag.code == 270 and isinstance(tag.value, str):
            out.append(tag.value)
    return out


def _emstream_json(page, imagej: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """emstream's JSON: a JSON ImageDescription, or JSON in the ImageJ ``Info`` property."""
    texts = _descriptions(page)
    if imagej and isinstance(imagej.get("Info"), str):
        texts.append(imagej["Info"])
    for text in texts:
        t = text.strip()
        if not t.startswith("{"):
            continue
        try:
            obj = json.loads(t)
        except ValueError:
            continue
        if isinstance(obj, dict) and ("nm_per_px" in obj or "pixel_size_nm" in obj
                                      or str(obj.get("generator", "")).startswith("emstream")):
            return obj
    return None


def _json_calibration(obj: dict[str, Any]) -> tuple[Calibration, list[str]] | None:
    v = obj.get("nm_per_px", obj.get("pixel_size_nm"))
    if v is None:
        return Calibration.none("emstream JSON ImageDescription: no pixel size"), []
    if isinstance(v, (list, tuple)) and len(v) == 2:
        y, x = v
    else:
        y = x = v
    return calibration_from_axes((y, "nm"), (x, "nm"), detail="emstream JSON ImageDescription nm_per_px")


def _fei_calibration(fei: dict[str, Any]) -> tuple[Calibration, list[str]] | None:
    for section in ("Scan", "EScan", "IScan"):
        sec = fei.get(section)
        if isinstance(sec, dict) and "PixelWidth" in sec:
            w = sec.get("PixelWidth")
            h = sec.get("PixelHeight", w)
            return calibration_from_axes((h, "m"), (w, "m"),
                                         detail=f"FEI/TFS [{section}] PixelHeight/PixelWidth")
    return None


def _tvips_calibration(tv: dict[str, Any]) -> tuple[Calibration, list[str]] | None:
    if "PixelSizeX" in tv:
        x = tv.get("PixelSizeX")
        y = tv.get("PixelSizeY", x)
        return calibration_from_axes((y, "nm"), (x, "nm"), detail="TVIPS PixelSizeY/PixelSizeX")
    return None


def _dm_tag_calibration(page) -> tuple[Calibration, list[str]] | None:
    tags = page.tags
    if 65009 not in tags and 65010 not in tags:
        return None
    ys = tags.get(65009)
    xs = tags.get(65010)
    yu = tags.get(65003)
    xu = tags.get(65004)
    y = (ys.value if ys else None, yu.value if yu else "")
    x = (xs.value if xs else None, xu.value if xu else "")
    return calibration_from_axes(y, x, detail="DigitalMicrograph TIFF tags 65009/65010 + 65003/65004")


def _zeiss_calibration(sem: dict[str, Any]) -> tuple[Calibration, list[str]] | None:
    ps = sem.get("ap_pixel_size") or sem.get("ap_image_pixel_size")
    if isinstance(ps, (list, tuple)) and len(ps) >= 3:
        return calibration_from_axes((ps[1], ps[2]), (ps[1], ps[2]), detail="Zeiss SEM ap_pixel_size")
    return None


def _ome_calibration(xml: str) -> tuple[Calibration, list[str]] | None:
    m = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", xml)
    if not m:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    if "PhysicalSizeX" not in attrs:
        return None
    x = (attrs.get("PhysicalSizeX"), attrs.get("PhysicalSizeXUnit", "µm"))
    y = (attrs.get("PhysicalSizeY", x[0]), attrs.get("PhysicalSizeYUnit", x[1]))
    return calibration_from_axes(y, x, detail="OME-XML PhysicalSizeY/PhysicalSizeX")


def _per_unit(tag) -> float | None:
    """Pixel size in 'units' from an X/YResolution rational (pixels per unit)."""
    if tag is None:
        return None
    v = tag.value
    try:
        num, den = (float(v[0]), float(v[1])) if isinstance(v, tuple) else (float(v), 1.0)
    except (TypeError, ValueError, IndexError):
        return None
    if num <= 0 or den <= 0:
        return None
    return den / num


def _unescape(text: str) -> str:
    """ImageJ writes non-ASCII units as ``\\u00B5m`` / ``\\u00C5``."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _imagej_calibration(ij: dict[str, Any], page) -> tuple[Calibration, list[str]] | None:
    unit = ij.get("unit")
    if not isinstance(unit, str):
        return None
    unit = _unescape(unit)
    yunit = ij.get("yunit", unit)
    if isinstance(yunit, str):
        yunit = _unescape(yunit)
    x = _per_unit(page.tags.get("XResolution"))
    y = _per_unit(page.tags.get("YResolution"))
    if y is None:
        y = x
    return calibration_from_axes((y, yunit), (x, unit), detail="ImageJ unit + YResolution/XResolution")


def _is_jeol_sightx(page) -> bool:
    make = page.tags.get("Make")
    return bool(make and str(make.value).startswith("JEOL")) and any(
        "TemReporter" in d for d in _descriptions(page))


def _jeol_calibration(path: Path) -> tuple[Calibration, list[str]]:
    try:
        from rsciio.tiff import file_reader  # GPL-3.0 optional extra, imported lazily
    except ImportError:
        return Calibration.none(
            "JEOL SightX TIFF: calibration needs RosettaSciIO (install emstream[formats])"), []
    try:
        dicts = file_reader(str(path), lazy=False)
        axes = {a.get("name"): a for a in dicts[0]["axes"]}
        ya, xa = axes["height"], axes["width"]
    except Exception as exc:  # noqa: BLE001 - a vendor decoder failure leaves it uncalibrated
        return Calibration.none(f"JEOL SightX TIFF: RosettaSciIO could not decode ({exc})"), []
    return calibration_from_axes((ya.get("scale"), ya.get("units")), (xa.get("scale"), xa.get("units")),
                                 detail="JEOL SightX TemReporter (RosettaSciIO)")


def _resolution_note(page) -> str:
    xr = page.tags.get("XResolution")
    ru = page.tags.get("ResolutionUnit")
    if xr is None:
        return "no calibration tags"
    unit = getattr(ru.value, "name", str(ru.value)).lower() if ru else "none"
    ppu = _per_unit(xr)
    val = f"{1 / ppu:.6g} px/{unit}" if ppu else "?"
    return f"no microscope calibration tag; TIFF resolution tag ({val}) ignored as meaningless"


def _calibrate(tif: tifffile.TiffFile, page, path: Path, md: dict[str, Any]
               ) -> tuple[Calibration, list[str]]:
    obj = _emstream_json(page, tif.imagej_metadata if tif.is_imagej else None)
    if obj is not None:
        md["vendor"] = "emstream"
        res = _json_calibration(obj)
        if res is not None:
            return res
    if tif.is_fei and tif.fei_metadata:
        fei = tif.fei_metadata
        md["vendor"] = "FEI/Thermo Fisher"
        system = fei.get("System", {}) if isinstance(fei.get("System"), dict) else {}
        md["instrument"] = system.get("SystemType")
        det = fei.get("Detectors", {}) if isinstance(fei.get("Detectors"), dict) else {}
        md["detector"] = det.get("Name")
        res = _fei_calibration(fei)
        if res is not None:
            return res
        return Calibration.none("FEI/TFS metadata without [Scan] PixelWidth (e.g. navigation "
                                "camera); " + _resolution_note(page)), []
    if tif.is_tvips and tif.tvips_metadata:
        tv = tif.tvips_metadata
        md["vendor"] = "TVIPS"
        md["magnification"] = tv.get("Magnification")
        res = _tvips_calibration(tv)
        if res is not None:
            return res
    res = _dm_tag_calibration(page)
    if res is not None:
        md["vendor"] = "Gatan DigitalMicrograph (TIFF export)"
        return res
    if tif.is_sem and tif.sem_metadata:
        md["vendor"] = "Zeiss"
        res = _zeiss_calibration(tif.sem_metadata)
        if res is not None:
            return res
    if tif.is_ome and tif.ome_metadata:
        res = _ome_calibration(tif.ome_metadata)
        if res is not None:
            return res
    if tif.is_imagej and tif.imagej_metadata:
        md["vendor"] = md.get("vendor") or "ImageJ"
        res = _imagej_calibration(tif.imagej_metadata, page)
        if res is not None:
            return res
    if _is_jeol_sightx(page):
        md["vendor"] = "JEOL"
        model = page.tags.get("Model")
        md["instrument"] = model.value if model else None
        return _jeol_calibration(path)
    for p in tif.pages:
        if p is not None and 33560 in p.tags:
            md["vendor"] = "Olympus SIS"
            sis = p.tags[33560].value
            if isinstance(sis, dict):  # recorded for the operator, not used: see module docstring
                md["olympus_sis_pixel_size_m"] = [sis.get("pixelsizey"), sis.get("pixelsizex")]
            return Calibration.none("Olympus SIS tag is undocumented and not a trusted "
                                    "calibration source; " + _resolution_note(page)), []
    return Calibration.none(_resolution_note(page)), []


def _t_acq(tif, page, obj: dict[str, Any] | None, n: int) -> list[float | None] | float | None:
    if obj is not None:
        t = obj.get("t_acq")
        if isinstance(t, (int, float)):
            return float(t)
        if isinstance(t, list) and len(t) == n and all(isinstance(v, (int, float)) for v in t):
            return [float(v) for v in t]
    if _is_jeol_sightx(page):
        for d in _descriptions(page):
            m = re.search(r"<DateTime>([^<]+)</DateTime>", d)
            if m:
                s = re.sub(r"(\.\d{6})\d+", r"\1", m.group(1).strip())
                try:
                    dt = datetime.fromisoformat(s)
                except ValueError:
                    continue
                if dt.tzinfo is not None:  # a time without zone is ambiguous: use mtime
                    return dt.timestamp()
    return None


# --------------------------------------------------------------------------- pixels
def _pick_series(tif: tifffile.TiffFile):
    series = [s for s in tif.series if s is not None and len(s.shape) >= 2]
    if not series:
        raise NotAnImage("TIFF has no image series")
    first = series[0]
    if "S" not in first.axes:
        return first
    for s in series[1:]:
        if "S" not in s.axes and tuple(s.shape[-2:]) == tuple(first.shape[-3:-1]):
            return s  # colour rendering first, grey data next (e.g. Olympus SIS)
    return first


def _to_planes(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    if "S" in axes:
        s_ax = axes.index("S")
        if s_ax != arr.ndim - 1:
            arr = np.moveaxis(arr, s_ax, -1)
            axes = axes.replace("S", "") + "S"
        nch = arr.shape[-1]
        if nch == 1:
            arr = arr[..., 0]
        else:
            c0 = arr[..., 0]
            color = arr[..., :3] if nch >= 3 else arr
            if not all(np.array_equal(c0, color[..., c]) for c in range(1, color.shape[-1])):
                raise NotAnImage(f"colour image ({nch} channels that differ): a rendering or "
                                 "false-colour map, not a grey-level detector frame")
            arr = c0  # grey stored as RGB(A)
        axes = axes[:-1]
    check_image_shape(arr.shape, "TIFF image")
    if arr.ndim == 2:
        return arr[None]
    if not axes.endswith("YX") and "Q" not in axes[-2:]:
        raise NotAnImage(f"TIFF series with axes {axes!r}: no Y/X image planes")
    return arr.reshape((-1,) + arr.shape[-2:])


def read_tiff(path: Path, *, start: int = 0, t_arrival: float | None = None) -> list[Frame]:
    """Every 2-D image of the file's image series from index ``start`` on."""
    size = _check_header(path)
    _walk_ifds(path, size)
    try:
        with _open_tiff(path) as tif:
            _check_pages(tif, size)
            series = _pick_series(tif)
            page = series.keyframe if getattr(series, "keyframe", None) is not None else tif.pages[0]
            md: dict[str, Any] = {"format": "TIFF"}
            cal, notes = _calibrate(tif, page, path, md)
            pages = list(series.pages) if hasattr(series, "pages") else []
            one_plane_per_page = (len(pages) > 1 and "S" not in series.axes
                                  and all(p is not None and p.shape == pages[0].shape
                                          and len(p.shape) == 2 for p in pages))
            if one_plane_per_page and start > 0:
                # a long multi-page file read from slice `start`: decode only the pages needed
                n = len(pages)
                check_image_shape(pages[0].shape, "TIFF image")
                planes = [None] * start + [p.asarray() for p in pages[start:]]
            else:
                arr = series.asarray()
                planes = _to_planes(np.asarray(arr), series.axes, path)
                n = planes.shape[0]
            obj = _emstream_json(page, tif.imagej_metadata if tif.is_imagej else None)
            t_acq = _t_acq(tif, page, obj, n)
    except UnreadableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on bad files
        raise wrap_errors(path, exc) from exc
    if notes:
        md["warnings"] = notes
    if isinstance(t_acq, list):
        t_acq = t_acq[start:]
    sel = [planes[k] for k in range(max(0, start), n)]
    return frames_from_stack(path, sel, first_index=max(0, start), is_stack=n > 1,
                             calibration=cal, metadata=md, t_acq=t_acq, t_arrival=t_arrival,
                             n_total=n)
