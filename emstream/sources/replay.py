"""Replay source (``emstream replay DIR``): a recorded folder fed through the same pipeline.

Frames are released at their original pace, taken from their acquisition times (``t_acq``),
divided by ``speed``; ``speed=None`` feeds them as fast as the pipeline takes them. Files are
ordered by acquisition time of their first frame (file mtime as the tie-breaker), stacks frame
by frame. Unreadable files become quarantined records, as in the folder source. Each replayed
frame keeps its original ``t_acq`` in ``metadata["t_acq_original"]`` and is re-stamped to the
replay clock so that lag means the same thing as live.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from emstream.errors import UnreadableFile
from emstream.frame import Frame
from emstream.results import FrameRecord
from emstream.sources.base import READ_MS_KEY, TrackedRecord
from emstream.sources.folder import ignored_name

log = logging.getLogger(__name__)


class ReplaySource:
    """Frames of the image files in ``directory``, paced like the original acquisition.

    Parameters
    ----------
    directory : a folder recorded earlier (e.g. by ``emstream simulate --out``).
    speed : pace multiplier (1 = original pace, 2 = twice as fast); ``None`` = no pacing.
    recursive : include sub-folders.
    max_gap_s : longer pauses in the recording are shortened to this (seconds, before speed).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        speed: float | None = 1.0,
        recursive: bool = False,
        max_gap_s: float = 10.0,
    ):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"not a folder: {self.directory}")
        if speed is not None and speed <= 0:
            speed = None
        self.speed = speed
        self.recursive = recursive
        self.max_gap_s = float(max_gap_s)

    def describe(self) -> str:
        pace = "as fast as possible" if self.speed is None else f"×{self.speed:g}"
        return f"replay {self.directory} ({pace})"

    def close(self) -> None:
        pass

    def files(self) -> list[Path]:
        """The recorded image files, oldest first (by mtime)."""
        from emstream.sources.readers import is_supported

        found: list[tuple[int, str]] = []
        it = self.directory.rglob("*") if self.recursive else self.directory.iterdir()
        for p in it:
            if ignored_name(p.name) or not p.is_file() or not is_supported(p):
                continue
            try:
                found.append((os.stat(p).st_mtime_ns, str(p)))
            except OSError:
                continue
        found.sort()
        return [Path(p) for _, p in found]

    def frames(self, stop: threading.Event) -> Iterator[Frame | FrameRecord]:
        from emstream.sources.readers import read_frames

        t0_rec: float | None = None  # acquisition time of the first frame
        t0_wall = time.time()
        prev_rec: float | None = None
        shift = 0.0  # accumulated shortening of long pauses
        for path in self.files():
            if stop.is_set():
                return
            t_read = time.perf_counter()
            try:
                frames = read_frames(path, t_arrival=time.time())
            except UnreadableFile as exc:
                yield TrackedRecord(seq=-1, source_id=str(path), status="quarantined",
                                    t_arrival=time.time(), reason=exc.reason)
                continue
            except Exception as exc:  # noqa: BLE001
                yield TrackedRecord(seq=-1, source_id=str(path), status="quarantined",
                                    t_arrival=time.time(), reason=f"reader failed: {exc!r}")
                continue
            read_ms = (time.perf_counter() - t_read) * 1e3 / max(1, len(frames))
            for f in frames:
                f.metadata[READ_MS_KEY] = read_ms
                t_rec = float(f.t_acq)
                if t0_rec is None:
                    t0_rec = prev_rec = t_rec
                assert prev_rec is not None
                gap = t_rec - prev_rec
                if gap > self.max_gap_s:
                    shift += gap - self.max_gap_s
                prev_rec = max(prev_rec, t_rec)
                if self.speed is not None:
                    due = t0_wall + max(0.0, (t_rec - t0_rec - shift)) / self.speed
                    while not stop.is_set():
                        wait = due - time.time()
                        if wait <= 0:
                            break
                        stop.wait(min(wait, 0.25))
                    if stop.is_set():
                        return
                f.metadata["t_acq_original"] = t_rec
                now = time.time()
                f.t_acq = now
                f.t_arrival = now
                yield f
