"""Plain image files (PNG, JPEG, BMP): exported views and figure crops, read for ``analyze``.

They carry no pixel size (frames are uncalibrated: pass ``--pixel-size``), 8 or 16 bits. A colour
file whose channels are equal is read as its grey values; a genuinely coloured one (a figure
with coloured annotations) as its luminance, with ``colour_converted`` in the metadata. The
folder watcher does not pick these suffixes up (acquisition software writes them as previews
beside the real data); :func:`emstream.sources.readers.read_frames` reads them when asked.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emstream.errors import IncompleteFile, UnreadableFile
from emstream.frame import Calibration, Frame

from ._common import check_image_shape, frames_from_stack

_PNG_END = b"IEND"
_JPEG_END = b"\xff\xd9"


def check_plain(path: Path) -> None:
    """A PNG must end with its IEND chunk, a JPEG with its end-of-image marker."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if head.startswith(b"\x89PNG") and _PNG_END not in tail[-12:]:
        raise IncompleteFile("PNG without its end chunk (still being written?)")
    if head.startswith(b"\xff\xd8") and _JPEG_END not in tail:
        raise IncompleteFile("JPEG without its end-of-image marker (still being written?)")


def read_plain(path: Path, *, start: int = 0, t_arrival: float | None = None) -> list[Frame]:
    if start > 0:
        return []
    check_plain(path)
    data = np.fromfile(path, np.uint8)  # not cv2.imread: that fails on non-ASCII Windows paths
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UnreadableFile("cannot decode the image")
    md: dict = {"format": Path(path).suffix.lower().lstrip(".")}
    if img.ndim == 3:
        colour = img[..., :3]
        if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0],
                                                                              colour[..., 2]):
            img = colour[..., 0]
        else:
            img = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
            md["colour_converted"] = "luminance of a colour image"
    check_image_shape(img.shape, "image")
    cal = Calibration.none("plain image file: no pixel size (pass --pixel-size)")
    return frames_from_stack(path, [np.ascontiguousarray(img)], first_index=0, is_stack=False,
                             calibration=cal, metadata=md, t_acq=None, t_arrival=t_arrival)
