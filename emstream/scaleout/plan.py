"""What ``emstream reprocess`` reads: files and stack slices, in acquisition order (no dask here).

A SOURCE is a folder of frames or a session folder (its ``ledger.sqlite`` lists the files and
content versions the session saw). Each file becomes one task, an MRC stack one task per
``STACK_PART`` slices. Content versions are keyed as the folder monitor keys them
(``"size:mtime_ns"``), so a session written by ``watch`` and one written by ``reprocess`` agree
on what was processed, and a rerun skips it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from emstream.sources import readers
from emstream.sources.folder import STACK_PART, STACK_SUFFIXES, content_version, regular_files

__all__ = ["FileTask", "Missing", "plan_sources"]


@dataclass(frozen=True)
class FileTask:
    """One unit of work: a whole file, or ``count`` slices of a stack from ``start``."""

    path: str
    version: str
    mtime_ns: int
    start: int = 0
    count: int | None = None  # None: every frame the file holds
    stack: bool = False
    total: int | None = None  # a stack's complete slices (the last task completes the file)

    @property
    def label(self) -> str:
        if self.count is None:
            return self.path
        return f"{self.path}#{self.start}-{self.start + self.count - 1}"


@dataclass(frozen=True)
class Missing:
    """A file a session saw that cannot be read again as it was (gone, or rewritten since)."""

    path: str
    version: str
    reason: str


def _folder_files(folder: Path, recursive: bool) -> Iterable[str]:
    return (e.path for e in regular_files(folder, recursive=recursive)
            if readers.is_supported(e.path))


def _session_files(session: Path) -> tuple[list[tuple[str, str]], int]:
    """``(path, version)`` of the last version of every file the session saw, and how many of
    its frames came from streams (no file to read again)."""
    uri = f"{(session / 'ledger.sqlite').resolve().as_uri()}?mode=ro"
    con = sqlite3.connect(uri, uri=True)
    try:
        rows = con.execute(
            "SELECT path, version FROM files f WHERE rowid = (SELECT MAX(rowid) FROM files g "
            "WHERE g.path = f.path) AND version NOT IN ('symlink', 'folder', 'special') "
            "ORDER BY rowid").fetchall()
        paths = {p for p, _ in rows}
        streamed = sum(1 for (src,) in con.execute("SELECT source FROM frames")
                       if src.partition("#")[0] not in paths)
    finally:
        con.close()
    return [(str(p), str(v)) for p, v in rows], streamed


def _tasks_for(path: str, st: os.stat_result, version: str) -> list[FileTask]:
    if not path.lower().endswith(STACK_SUFFIXES):
        return [FileTask(path, version, st.st_mtime_ns)]
    total = readers.slice_count(path)
    if not total:  # not a stack that can be counted: read whole (a broken one is quarantined)
        return [FileTask(path, version, st.st_mtime_ns)]
    return [FileTask(path, version, st.st_mtime_ns, start=k, count=min(STACK_PART, total - k),
                     stack=True, total=total) for k in range(0, total, STACK_PART)]


def plan_sources(sources: Iterable[str | os.PathLike[str]], *, recursive: bool = False
                 ) -> tuple[list[FileTask | Missing], list[str]]:
    """Every task of ``sources`` in acquisition order (oldest content first, path as the
    tie-breaker, as ``watch`` reads a folder that already holds files), and notes for the user.

    Raises
    ------
    FileNotFoundError
        a SOURCE that is neither a folder of frames nor a session folder.
    """
    found: dict[str, tuple[os.stat_result | None, str | None]] = {}
    notes: list[str] = []
    for src in sources:
        p = Path(src)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: not a folder (give a folder of frames or a session "
                                    "folder)")
        if (p / "ledger.sqlite").is_file():
            files, streamed = _session_files(p)
            if streamed:
                notes.append(f"{p}: {streamed} frame(s) came over a stream and have no file to "
                             "read again: not reprocessed")
            for path, version in files:
                try:
                    found[path] = (os.stat(path), version)
                except OSError:
                    found[path] = (None, version)
        else:
            for path in _folder_files(p, recursive):
                try:
                    found.setdefault(os.path.abspath(path), (os.stat(path), None))
                except OSError:
                    continue
    out: list[tuple[tuple[int, str], FileTask | Missing]] = []
    for path, (st, seen) in found.items():
        if st is None:
            out.append(((0, path), Missing(path, seen or "", "no longer exists")))
            continue
        version = content_version(st)
        if seen is not None and seen != version:
            out.append(((st.st_mtime_ns, path), Missing(
                path, seen, f"rewritten since the session saw it (version {seen}, now {version})")))
            continue
        out.extend(((st.st_mtime_ns, path), t) for t in _tasks_for(path, st, version))
    out.sort(key=lambda kv: (kv[0], getattr(kv[1], "start", 0)))
    return [t for _, t in out], notes
