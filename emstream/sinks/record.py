"""Keep the frames of a stream (``emstream listen --record DIR``): one TIFF per processed frame.

A ZeroMQ stream leaves nothing on disk, so without this it cannot be analysed again. Each frame
that reached the pipeline is written as ``DIR/<seq>.tif`` (the session's own frame number,
never a name that came over the network), a 16-bit or 32-bit ImageJ TIFF with the calibration
(ImageJ resolution) and emstream's JSON (``t_acq``, ``nm_per_px``, the stream's source name as
data) that the TIFF reader reads back. Written to a hidden temporary name and renamed, so a
folder monitor never sees half a file. The folder is then an ordinary recorded folder:
``emstream reprocess DIR`` and ``emstream replay DIR`` read it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from emstream.results import FrameRecord
from emstream.sinks.base import Sink, replace_atomically

__all__ = ["FrameRecorder"]

log = logging.getLogger(__name__)


class FrameRecorder(Sink):
    """Writes every processed frame's pixels into ``directory`` (see the module docstring)."""

    name = "record"
    latest_only = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.written = 0

    def frame_done(self, record: FrameRecord) -> None:
        res = record.result
        if record.status != "ok" or res is None or res.frame.pixels is None:
            return  # a rejected message has no pixels; the ledger says why
        frame = res.frame
        pixels = np.asarray(frame.pixels)
        if pixels.dtype not in (np.uint8, np.uint16, np.float32):
            pixels = pixels.astype(np.float32)
        cal = frame.calibration
        info = {"generator": "emstream-record", "t_acq": frame.t_acq, "seq": record.seq,
                "source": record.source_id, "unit": cal.unit,
                "nm_per_px": list(cal.nm_per_px) if cal.nm_per_px else None}
        kwargs = {}
        if cal.nm_per_px:
            kwargs["resolution"] = (1.0 / cal.nm_per_px[1], 1.0 / cal.nm_per_px[0])
        path = self.directory / f"{record.seq:08d}.tif"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        try:
            tifffile.imwrite(tmp, pixels, imagej=True,
                             metadata={"unit": "nm" if cal.nm_per_px else "pixel",
                                       "Info": json.dumps(info)}, **kwargs)
            replace_atomically(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.written += 1
