"""Folder source (``emstream watch DIR``): pick up every image the acquisition software saves.

The periodic rescan (``os.scandir``) is the truth; watchdog events only wake the scanner early
(events are lost on network shares and on buffer overflow). A file is read only when it looks
complete: closed-after-write where the OS reports it, otherwise size and mtime unchanged over
``stable_polls`` scans and at least ``min_age_s`` old, and in both cases the reader's format
check (:func:`emstream.sources.readers.check_complete`) passes. A file that stays incomplete for
``quarantine_after_s`` is quarantined with the reason; an unreadable one at once.

Exactly once: each content version (``"<size>:<mtime_ns>"``) of a path is processed once,
recorded in the ledger's ``files`` table; a growing stack (MRC written slice by slice) is read
from the first slice not yet recorded, so each slice becomes one frame. Files are opened
read-only and never moved, renamed or deleted. The folder is the buffer: the generator reads
the next file only when the pipeline asks for the next frame.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emstream.errors import IncompleteFile, UnreadableFile
from emstream.frame import Frame
from emstream.results import Event, FrameRecord
from emstream.sources import readers
from emstream.sources.base import FILE_VERSION_KEY, READ_MS_KEY, TrackedRecord

log = logging.getLogger(__name__)

#: Suffixes of formats that can grow in place one slice at a time.
STACK_SUFFIXES = (".mrc", ".mrcs", ".st", ".ali", ".rec")
#: slices of a stack read at a time (a 4k x 4k float32 slice is 64 MB)
STACK_PART = 4


def content_digest(path: str, size: int, block: int = 65536) -> str | None:
    """Size plus a BLAKE2 digest of the first and last ``block`` bytes: cheap, and enough to see
    that a file whose time changed (``touch``, a copy keeping the bytes) holds what it held
    (``None`` if it cannot be read)."""
    import hashlib

    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    try:
        with open(path, "rb") as fh:
            h.update(fh.read(block))
            if size > block:
                fh.seek(max(size - block, block))
                h.update(fh.read(block))
    except OSError:
        return None
    return f"{size}:{h.hexdigest()}"


def content_version(st: os.stat_result) -> str:
    """A file's content version as the ledger keys it: ``"size:mtime_ns"``."""
    return f"{st.st_size}:{st.st_mtime_ns}"
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


def ignored_name(name: str) -> bool:
    """Names acquisition software uses while writing: temp, partial, hidden and lock files."""
    low = name.lower()
    return name.startswith((".", "~")) or low.endswith(_IGNORED_SUFFIXES)


def regular_files(directory: str | Path, *, recursive: bool = False,
                  not_a_file: Callable[[str, str, str], None] | None = None
                  ) -> Iterator[os.DirEntry]:
    """The regular files in ``directory`` (and its sub-folders if ``recursive``), skipping names
    acquisition software uses while writing; links are never followed. Every other entry is
    passed to ``not_a_file(path, kind, why)`` (kind ``symlink``, ``folder`` or ``special``)."""
    def odd(path: str, kind: str, why: str) -> None:
        if not_a_file is not None:
            not_a_file(path, kind, why)

    stack = [str(directory)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if ignored_name(e.name):
                        continue
                    try:
                        if e.is_symlink():
                            odd(e.path, "symlink", "a symbolic link: links are not followed")
                            continue
                        if e.is_dir(follow_symlinks=False):
                            if recursive:
                                stack.append(e.path)
                            else:
                                odd(e.path, "folder", "a folder, not a file "
                                    "(--recursive reads inside folders)")
                            continue
                        if not e.is_file(follow_symlinks=False):
                            odd(e.path, "special", "not a regular file (a FIFO, socket or device)")
                            continue
                    except OSError:
                        continue
                    yield e
        except OSError as exc:
            log.warning("cannot scan %s: %s", d, exc)


@dataclass
class _Candidate:
    """What the scanner knows about one path that is not finished yet."""

    size: int
    mtime_ns: int
    first_seen: float  # monotonic, this content version
    stable: int = 0  # consecutive scans with the same size and mtime
    closed: bool = False  # a closed-after-write event arrived for this version
    incomplete_since: float | None = None  # monotonic; first failed completeness check
    incomplete_reason: str = ""
    queued: bool = False

    @property
    def version(self) -> str:
        return f"{self.size}:{self.mtime_ns}"


class FolderSource:
    """Frames from image files appearing in a folder.

    Parameters
    ----------
    directory : the folder the acquisition software writes into.
    ledger : the session :class:`~emstream.sinks.ledger.Ledger` (bookkeeping for exactly-once).
    poll_s : rescan interval (seconds).
    min_age_s : a file must be unchanged for at least this long before it is read.
    stable_polls : consecutive scans with unchanged size and mtime required.
    quarantine_after_s : a file still incomplete after this long is quarantined.
    recursive : also watch sub-folders.
    use_watchdog : use filesystem events to wake the scanner (polling works without).
    """

    def __init__(
        self,
        directory: str | Path,
        ledger: Any,
        *,
        poll_s: float = 0.5,
        min_age_s: float = 1.0,
        stable_polls: int = 2,
        quarantine_after_s: float = 30.0,
        recursive: bool = False,
        use_watchdog: bool = True,
    ):
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise FileNotFoundError(f"not a folder: {self.directory}")
        self.ledger = ledger
        self.poll_s = float(poll_s)
        self.min_age_s = float(min_age_s)
        self.stable_polls = int(stable_polls)
        self.quarantine_after_s = float(quarantine_after_s)
        self.recursive = recursive
        self.use_watchdog = use_watchdog
        self._cands: dict[str, _Candidate] = {}
        self._finished: dict[str, str] = {}  # path -> last finished version
        self._next_slice: dict[str, int] = {}  # path -> next stack slice to read
        self._ready: deque[str] = deque()
        self._wake = threading.Event()
        self._closed_paths: set[str] = set()
        self._closed_lock = threading.Lock()
        self._observer: Any = None
        self._events: list[Event] = []
        self._odd: deque[FrameRecord] = deque()  # skipped records of names that are not files
        self._odd_seen: set[str] = set()
        self.stats = {"files_seen": 0, "files_done": 0, "files_quarantined": 0, "frames_read": 0}

    # ------------------------------------------------------------------ public
    def describe(self) -> str:
        return f"folder {self.directory}"

    @property
    def busy(self) -> bool:
        """True while some file is known but not finished (waiting to settle or queued)."""
        return bool(self._cands) or bool(self._ready)

    def drain_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def close(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=2)
            except Exception:  # noqa: BLE001
                pass
            self._observer = None

    def frames(self, stop: threading.Event) -> Iterator[Frame | FrameRecord]:
        """Yield frames (and quarantine records) until ``stop`` is set."""
        self._start_observer()
        try:
            last_scan = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if not self._ready or now - last_scan >= self.poll_s:
                    self._scan()
                    last_scan = time.monotonic()
                while self._odd:
                    yield self._odd.popleft()
                if self._ready:
                    path = self._ready.popleft()
                    yield from self._read_file(path)
                    continue
                self._wake.wait(self.poll_s)
                self._wake.clear()
                # after an event give the writer a moment to finish the burst
        finally:
            self.close()

    # ------------------------------------------------------------------ watchdog
    def _start_observer(self) -> None:
        if not self.use_watchdog or self._observer is not None:
            return
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - polling still works
            log.warning("watchdog not installed: polling only")
            return

        source = self

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                kind = getattr(event, "event_type", "")
                if kind in ("opened", "closed_no_write"):
                    return  # our own reads (and other readers) must not wake the scanner
                if kind == "closed":
                    with source._closed_lock:
                        source._closed_paths.add(os.fsdecode(event.src_path))
                source._wake.set()

        try:
            obs = Observer()
            obs.schedule(_Wake(), str(self.directory), recursive=self.recursive)
            obs.daemon = True
            obs.start()
            self._observer = obs
        except Exception as exc:  # noqa: BLE001 - e.g. inotify limits: polling still works
            log.warning("filesystem events unavailable (%s): polling only", exc)

    # ------------------------------------------------------------------ scanning
    def _iter_files(self) -> Iterator[os.DirEntry]:
        return regular_files(self.directory, recursive=self.recursive,
                             not_a_file=self._not_a_file)

    def _scan(self) -> None:
        now = time.monotonic()
        with self._closed_lock:
            closed, self._closed_paths = self._closed_paths, set()
        present = set()
        for e in self._iter_files():
            path = e.path
            if not readers.is_supported(path):
                continue
            present.add(path)
            try:
                # a fresh stat, not the directory entry's: on Windows (NTFS) the cached size and
                # time of a file that is still open for writing lag behind
                st = os.stat(path)
            except OSError:
                continue
            version = content_version(st)
            if self._finished.get(path) == version or self._terminal(path, version):
                self._finished[path] = version
                self._cands.pop(path, None)
                continue
            c = self._cands.get(path)
            if c is None or c.version != version:
                if c is None:
                    self.stats["files_seen"] += 1
                if c is not None and c.queued:
                    # changed while queued: let it settle again
                    try:
                        self._ready.remove(path)
                    except ValueError:
                        pass
                c = _Candidate(st.st_size, st.st_mtime_ns, now, closed=path in closed)
                self._cands[path] = c
                if path.lower().endswith(STACK_SUFFIXES):
                    self._consider(path, c, now, readers)  # new slices as they appear
                continue
            c.stable += 1
            if path in closed:
                c.closed = True
            if c.queued:
                continue
            self._consider(path, c, now, readers)
        for gone in set(self._cands) - present:
            c = self._cands.pop(gone)
            if c.queued:
                try:
                    self._ready.remove(gone)
                except ValueError:
                    pass
        if len(self._ready) > 1:
            # acquisition order: oldest content first (mtime), name as the tie-breaker
            def key(p: str) -> tuple[int, str]:
                c = self._cands.get(p)
                return (c.mtime_ns if c is not None else 0, p)

            self._ready = deque(sorted(self._ready, key=key))

    def _consider(self, path: str, c: _Candidate, now: float, readers: Any) -> None:
        """Queue a settled file, or quarantine one that never completes."""
        age = now - c.first_seen
        if path.lower().endswith(STACK_SUFFIXES):
            # stacks grow in place and the reader returns only the slices that are complete
            # (header nz and file size agree), so each new version is read at once; a header
            # that declares more than the file holds waits below like any incomplete file
            settled = True
        else:
            settled = c.closed or (c.stable >= self.stable_polls and age >= self.min_age_s)
        if not settled:
            return
        try:
            # a writer on Windows may still hold the file without read sharing: not ready yet
            with open(path, "rb"):
                pass
        except OSError as exc:
            if c.incomplete_since is None:
                c.incomplete_since = now
            if now - c.incomplete_since >= self.quarantine_after_s:
                self._quarantine_pending(path, c, f"cannot open for reading: {exc}")
            return
        try:
            readers.check_complete(path)
        except IncompleteFile as exc:
            if c.incomplete_since is None:
                c.incomplete_since = now
            c.incomplete_reason = exc.reason
            if now - c.incomplete_since >= self.quarantine_after_s:
                self._quarantine_pending(path, c, f"incomplete for {self.quarantine_after_s:g} s: {exc.reason}")
            return
        except UnreadableFile as exc:
            self._quarantine_pending(path, c, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - a reader bug quarantines the file, not the monitor
            self._quarantine_pending(path, c, f"format check failed: {exc!r}")
            return
        c.queued = True
        self._ready.append(path)

    def _quarantine_pending(self, path: str, c: _Candidate, reason: str) -> None:
        """Queue the path for quarantine (emitted as a record in order with frames)."""
        c.queued = True
        c.incomplete_reason = reason
        c.incomplete_since = -1.0  # marker: quarantine when read
        self._ready.append(path)

    # ------------------------------------------------------------------ reading
    def _start_index(self, path: str, c: _Candidate) -> int:
        if path in self._next_slice:
            return self._next_slice[path]
        if not path.lower().endswith(STACK_SUFFIXES):
            return 0
        k = self.ledger.next_slice(path)
        self._next_slice[path] = k
        return k

    def _read_file(self, path: str) -> Iterator[Frame | FrameRecord]:
        c = self._cands.get(path)
        if c is None:
            return
        version = c.version
        # re-check the version right before reading: it may have changed since queued
        try:
            st = os.stat(path)
        except OSError:
            self._cands.pop(path, None)
            return
        if content_version(st) != version:
            c.queued = False
            return
        if c.incomplete_since == -1.0:
            yield self._quarantine(path, version, c.incomplete_reason)
            return
        t_arrival = time.time()
        digest = None
        if not path.lower().endswith(STACK_SUFFIXES):  # stacks grow: every version is new
            digest = content_digest(path, st.st_size)
            same = self.ledger.version_with_content(path, digest) if digest else None
            if same is not None and same != version:
                reason = f"same content as version {same} (touched or copied, not rewritten)"
                log.info("%s: %s", path, reason)
                self.ledger.file_unchanged(path, version, digest, reason)
                self._finish(path, version)
                return
        self.ledger.file_pending(path, version, content_hash=digest)
        start = self._start_index(path, c)
        if start == 0 and version in self.ledger.recorded_sources(path).get(path, ()):
            # recorded before a restart: never twice
            self.ledger.file_expect(path, version, 1)
            self._finish(path, version)
            return
        # a stack is read STACK_PART slices at a time: memory stays flat whatever its size
        part = STACK_PART if path.lower().endswith(STACK_SUFFIXES) else None
        while True:
            t_read = time.perf_counter()
            try:
                frames = readers.read_frames(path, start=start, t_arrival=t_arrival, limit=part)
            except IncompleteFile as exc:
                now = time.monotonic()
                if c.incomplete_since is None:
                    c.incomplete_since = now
                if now - c.incomplete_since >= self.quarantine_after_s:
                    yield self._quarantine(path, version, f"incomplete for {self.quarantine_after_s:g} s: {exc.reason}")
                else:
                    c.queued = False  # try again on a later scan
                return
            except UnreadableFile as exc:
                yield self._quarantine(path, version, exc.reason)
                return
            except Exception as exc:  # noqa: BLE001
                yield self._quarantine(path, version, f"reader failed: {exc!r}")
                return
            more = part is not None and len(frames) == part
            is_stack = (path.lower().endswith(STACK_SUFFIXES)
                        or any("#" in f.source_id for f in frames))
            total = start + len(frames) if is_stack else len(frames)
            if not more:  # the file's last part: done once every slice is recorded
                self.ledger.file_expect(path, version, total if is_stack else max(total, 1),
                                        stack=is_stack)
            if c.incomplete_since is not None and not frames:
                # a growing stack with no new complete slice yet: look again later
                c.queued = False
                return
            read_ms = (time.perf_counter() - t_read) * 1e3 / max(1, len(frames))
            for f in frames:
                f.metadata[FILE_VERSION_KEY] = version
                f.metadata[READ_MS_KEY] = read_ms
                self.stats["frames_read"] += 1
                yield f
                if is_stack:
                    _, _, idx = f.source_id.partition("#")
                    if idx.isdigit():
                        self._next_slice[path] = max(self._next_slice.get(path, 0), int(idx) + 1)
            if not more:
                break
            start = total
            frames = []  # let the part just yielded go
        if c.incomplete_since is not None:
            # stack still declares more than it holds: keep watching this version
            c.queued = False
            c.stable = 0
            return
        self._finish(path, version)
        self.stats["files_done"] += 1

    def _finish(self, path: str, version: str) -> None:
        self._finished[path] = version
        self._cands.pop(path, None)

    def _terminal(self, path: str, version: str) -> bool:
        """Did an earlier run finish this content version (done or quarantined)? One index
        lookup, made once per file (then ``_finished`` knows): start-up does not read the
        whole ``files`` table (1.8 s at a million files)."""
        return self.ledger.file_finished(path, version)

    def _not_a_file(self, path: str, kind: str, what: str) -> None:
        """A name with an image suffix that is not a regular file: recorded once as a skipped
        frame with the reason (never followed, never read), so it does not vanish unseen."""
        if not readers.is_supported(path) or path in self._odd_seen:
            return
        self._odd_seen.add(path)
        if self.ledger.recorded_sources(path).get(path):
            return  # recorded by an earlier run
        log.warning("skipped %s: %s", path, what)
        self._odd.append(TrackedRecord(seq=-1, source_id=path, status="skipped",
                                       t_arrival=time.time(), reason=what, file_version=kind))

    def _quarantine(self, path: str, version: str, reason: str) -> FrameRecord:
        log.warning("quarantined %s: %s", path, reason)
        self.ledger.file_pending(path, version)
        self._finish(path, version)
        self.stats["files_quarantined"] += 1
        self._events.append(Event("quarantine", f"{path}: {reason}", data={"path": path}))
        return TrackedRecord(
            seq=-1,
            source_id=path,
            status="quarantined",
            t_arrival=time.time(),
            reason=reason,
            file_version=version,
        )
