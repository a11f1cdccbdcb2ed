"""What runs on a dask worker: the model, set up once per worker, and one task's frames.

:class:`SegmenterPlugin` carries the segmenter's recipe (kind, backend, the model's files as
bytes): dask pickles it to each worker once, also to workers that join later or restart, and
``setup`` builds the segmenter there. A task (:func:`process_task`) reads its file itself, or,
where the workers do not see the client's files, gets the file's bytes with it, and returns every
frame's terminal record exactly as the live pipeline's workers make them
(:func:`emstream.pipeline.frame_record`): processed, or quarantined with the reason. A task never
raises for a bad file; only a dead worker makes dask retry it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from emstream.errors import IncompleteFile, UnreadableFile
from emstream.frame import Calibration
from emstream.results import FrameRecord
from emstream.scaleout.plan import FileTask
from emstream.sources import readers
from emstream.sources.base import FILE_VERSION_KEY, TrackedRecord

__all__ = ["PLUGIN_NAME", "SegmenterPlugin", "SegmenterRecipe", "process_task", "quarantined"]

PLUGIN_NAME = "emstream-segmenter"


@dataclass
class SegmenterRecipe:
    """How to build the client's segmenter on a worker: ``kind`` ``classical`` or ``learned``,
    the backend asked for, and the model's files (name -> bytes) for a learned one."""

    kind: str
    backend: str = "auto"
    files: dict[str, bytes] = field(default_factory=dict)
    threads: int | None = None  # CPU threads for inference on each worker

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


class SegmenterPlugin(WorkerPlugin):
    """Builds the segmenter once per worker (``worker.plugins[PLUGIN_NAME].segmenter``)."""

    name = PLUGIN_NAME

    def __init__(self, recipe: SegmenterRecipe):
        self.recipe = recipe
        self.segmenter: Any = None

    def setup(self, worker: Any = None) -> None:  # noqa: ARG002 - dask's signature
        from emstream.pipeline import make_segmenter

        r = self.recipe
        if r.threads:
            os.environ["EMSTREAM_ORT_THREADS"] = str(r.threads)
        if r.kind == "classical" or not r.files:
            self.segmenter = make_segmenter(kind="classical")
            return
        # the runtimes read the model while the segmenter is built: the files go right after
        with tempfile.TemporaryDirectory(prefix="emstream-model-") as d:
            onnx = None
            for name, data in r.files.items():
                target = Path(d) / Path(name).name  # a bare name, never a path
                target.write_bytes(data)
                if target.suffix == ".onnx":
                    onnx = target
            self.segmenter = make_segmenter(kind="learned", backend=r.backend, model=onnx)

    def teardown(self, worker: Any = None) -> None:  # noqa: ARG002
        self.segmenter = None


def quarantined(task: FileTask, reason: str) -> list[FrameRecord]:
    """One quarantined record per frame the task stood for (each stack slice its own row)."""
    sources = ([task.path] if task.count is None
               else [f"{task.path}#{k}" for k in range(task.start, task.start + task.count)])
    return [TrackedRecord(seq=-1, source_id=s, status="quarantined", t_arrival=time.time(),
                          reason=reason, file_version=task.version) for s in sources]


def _read(task: FileTask, data: bytes | None) -> list[Any]:
    t_arrival = time.time()
    if data is None:
        readers.check_complete(task.path)  # as the folder monitor checks before reading
        return readers.read_frames(task.path, start=task.start, t_arrival=t_arrival,
                                   limit=task.count)
    # the client sent the file: read a private copy, named like the original (the format is
    # told by its suffix), and give every frame the original name back
    with tempfile.TemporaryDirectory(prefix="emstream-task-") as d:
        copy = Path(d) / ("frame" + Path(task.path).suffix.lower())
        copy.write_bytes(data)
        readers.check_complete(copy)
        frames = readers.read_frames(copy, start=task.start, t_arrival=t_arrival,
                                     limit=task.count)
    for f in frames:
        f.source_id = task.path + f.source_id[len(str(copy)):]
    return frames


def process_task(task: FileTask, data: bytes | None = None, *, pixel_size_nm: float | None = None,
                 polarity: str = "auto", segmenter: Any = None) -> list[FrameRecord]:
    """Read the task's frames and process each into its terminal record (never raises).

    ``segmenter`` defaults to the one :class:`SegmenterPlugin` built on this worker.
    """
    from emstream.pipeline import frame_record

    if segmenter is None:
        segmenter = get_worker().plugins[PLUGIN_NAME].segmenter
    t0 = time.perf_counter()
    try:
        frames = _read(task, data)
    except IncompleteFile as exc:  # a recorded file will not grow any more
        return quarantined(task, f"incomplete: {exc.reason}")
    except UnreadableFile as exc:
        return quarantined(task, exc.reason)
    except Exception as exc:  # noqa: BLE001 - a reader bug quarantines the file, not the run
        return quarantined(task, f"reader failed: {exc!r}")
    if not frames:
        return quarantined(task, "no complete frame in the file")
    read_ms = (time.perf_counter() - t0) * 1e3 / len(frames)
    out = []
    for f in frames:
        f.metadata[FILE_VERSION_KEY] = task.version
        if pixel_size_nm is not None:
            f.calibration = Calibration.override(pixel_size_nm)
        out.append(frame_record(f, segmenter, polarity=polarity, read_ms=read_ms,
                                keep_labels=False))
    return out
