"""The shape every source has: an iterator of frames (or terminal records) that stops on request.

A source yields :class:`~emstream.frame.Frame` objects for images to process and
:class:`~emstream.results.FrameRecord` objects for items that reached a terminal status before
becoming a frame (a quarantined file, a frame skipped by policy). The pipeline assigns ``seq``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from emstream.frame import Frame
from emstream.results import Event, FrameRecord

#: Metadata key under which file-based sources store the content version of the file a frame
#: came from (``"<size>:<mtime_ns>"``); the ledger keys exactly-once processing on it.
FILE_VERSION_KEY = "file_version"

#: Metadata key a source may set to the milliseconds it spent reading/decoding the frame (the
#: pipeline moves it into ``timings_ms["read"]``; without it the wait for the next frame is used).
READ_MS_KEY = "_read_ms"


@runtime_checkable
class Source(Protocol):
    """Where frames come from (folder, ZeroMQ, replay, simulator)."""

    def frames(self, stop: threading.Event) -> Iterator[Frame | FrameRecord]:
        """Yield frames until exhausted or until ``stop`` is set. Never raises on bad input."""
        ...

    def describe(self) -> str:
        """One line for humans: ``"folder /data/run3"``, ``"zmq tcp://127.0.0.1:5555"``."""
        ...

    def close(self) -> None: ...


@dataclass
class TrackedRecord(FrameRecord):
    """A :class:`FrameRecord` that also names the content version of the file it came from."""

    file_version: str | None = None


def file_version_of(item: Frame | FrameRecord) -> str | None:
    """The file content version carried by a frame or record, if it came from a file."""
    if isinstance(item, Frame):
        v = item.metadata.get(FILE_VERSION_KEY)
        return str(v) if v is not None else None
    v = getattr(item, "file_version", None)
    if v is None and item.result is not None:
        v = item.result.frame.metadata.get(FILE_VERSION_KEY)
    return v


def drain_events(source: object) -> list[Event]:
    """Events a source has collected (sequence gaps, rejected messages); ``[]`` if it has none."""
    fn = getattr(source, "drain_events", None)
    if fn is None:
        return []
    try:
        return list(fn())
    except Exception:  # noqa: BLE001 - a source bug must not stop the pipeline
        return []
