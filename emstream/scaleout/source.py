"""The pipeline's source for ``emstream reprocess``: tasks out to a dask cluster, records back.

:class:`ClusterSource` plans the work (:func:`~emstream.scaleout.plan.plan_sources`), leaves out
what the session's ledger already holds (a rerun resumes), keeps at most ``max_in_flight`` tasks
on the cluster and yields the returned records in plan order: the pipeline numbers them and does
the sequential part (drift, tracks, frame state, rules) in its one thread, and the ledger is the
one writer. A task whose worker dies is retried by dask on another worker; one that killed
``distributed.scheduler.allowed-failures`` workers is quarantined with the reason, like a file
that cannot be read: every frame gets exactly one row.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from emstream.results import Event, FrameRecord
from emstream.scaleout.plan import FileTask, Missing, plan_sources
from emstream.scaleout.worker import SegmenterPlugin, SegmenterRecipe, process_task, quarantined
from emstream.sources.base import TrackedRecord
from emstream.sources.folder import content_digest

__all__ = ["ClusterSource", "Progress", "connect", "recipe_for"]

log = logging.getLogger(__name__)


def connect(scheduler: str | None = None, *, workers: int = 1, timeout_s: float = 10.0,
            dashboard: bool = True) -> tuple[Client, LocalCluster | None]:
    """A client of the cluster at ``scheduler`` (``tcp://HOST:8786``), or of an embedded
    ``LocalCluster`` of ``workers`` single-threaded worker processes on loopback.

    Raises
    ------
    ConnectionError
        the scheduler did not answer within ``timeout_s`` (said plainly, never a hang).
    """
    logging.getLogger("distributed").setLevel(max(logging.WARNING,
                                                  logging.getLogger("distributed").level))
    if scheduler:
        try:
            return Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"no dask scheduler answered at {scheduler} within "
                                  f"{timeout_s:g} s ({exc})") from exc
    try:
        import bokeh  # noqa: F401 - the dashboard needs it
        address = "127.0.0.1:0" if dashboard else None
    except ImportError:
        address = None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=address,
                           silence_logs=logging.ERROR)
    return Client(cluster, set_as_default=False), cluster


def recipe_for(segmenter: Any, backend: str, threads: int | None = None) -> SegmenterRecipe:
    """What the workers need to build the segmenter the client chose (its model's bytes)."""
    if getattr(segmenter, "name", "") == "classical":
        return SegmenterRecipe("classical", threads=threads)
    from emstream.backends.base import find_model

    files = find_model(getattr(segmenter, "model_path", None))
    blobs = {files.onnx.name: files.onnx.read_bytes()}
    side = files.onnx.with_suffix(".json")
    if side.is_file():
        blobs[side.name] = side.read_bytes()
    if files.weights is not None and backend == "torch":
        blobs[files.weights.name] = files.weights.read_bytes()
    return SegmenterRecipe("learned", backend, blobs, threads)


@dataclass
class Progress:
    """What the progress bar shows (updated by the source's thread)."""

    frames_total: int = 0  # frames planned (a file counts 1 until read; stacks by slice)
    frames_done: int = 0
    frames_skipped: int = 0  # already in the ledger (a rerun)
    tasks_retried: int = 0
    t_start: float = 0.0


class ClusterSource:
    """Frames of ``sources`` processed on a dask cluster, as terminal records in plan order.

    Parameters
    ----------
    sources : folders of frames and/or session folders.
    ledger : the output session's :class:`~emstream.sinks.ledger.Ledger` (what is done).
    client : a connected :class:`distributed.Client`.
    recipe : the segmenter to build on each worker (:func:`recipe_for`).
    pixel_size_nm : overrides every frame's calibration.
    paths : ``"shared"`` (workers read the files), ``"send"`` (the client sends each file's
        bytes) or ``"auto"`` (shared when every worker sees the first file).
    max_in_flight : tasks on the cluster at once (default: twice the worker threads, at least 4).
    """

    def __init__(self, sources: Sequence[str | os.PathLike[str]], ledger: Any, *, client: Client,
                 recipe: SegmenterRecipe, pixel_size_nm: float | None = None,
                 paths: str = "auto", max_in_flight: int | None = None, recursive: bool = False,
                 polarity: str = "auto", cluster: LocalCluster | None = None):
        if paths not in ("auto", "shared", "send"):
            raise ValueError(f"paths must be auto, shared or send, got {paths!r}")
        self.sources = [Path(s) for s in sources]
        self.ledger = ledger
        self.client = client
        self.cluster = cluster
        self.recipe = recipe
        self.pixel_size_nm = pixel_size_nm
        self.polarity = polarity
        plan, self.notes = plan_sources(self.sources, recursive=recursive)
        self.plan = self._still_to_do(plan)
        self.progress = Progress(frames_total=sum(_frames_of(t) for t in self.plan))
        threads = sum(self.client.nthreads().values()) or 1
        self.max_in_flight = max_in_flight or max(4, 2 * threads)
        self.paths = paths if paths != "auto" else self._paths_auto()
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._workers_ready = False

    # ------------------------------------------------------------------ public
    def describe(self) -> str:
        names = ", ".join(str(s) for s in self.sources)
        return f"reprocess {names} on dask {self.client.scheduler.address}"

    @property
    def dashboard(self) -> str | None:
        try:
            link = self.client.dashboard_link
        except Exception:  # noqa: BLE001 - a scheduler without a dashboard
            return None
        return link or None

    def drain_events(self) -> list[Event]:
        with self._lock:
            ev, self._events = self._events, []
        return ev

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def start_workers(self) -> None:
        """Ship the segmenter to every worker (once; :meth:`frames` does it if not done)."""
        if self.plan and not self._workers_ready:
            self.client.register_plugin(SegmenterPlugin(self.recipe), name=SegmenterPlugin.name)
        self._workers_ready = True

    def frames(self, stop: threading.Event) -> Iterator[FrameRecord]:
        """Yield every planned frame's terminal record, in plan order, until done or ``stop``."""
        self.start_workers()
        self.progress.t_start = time.time()
        todo = deque(enumerate(self.plan))
        running: dict[Any, tuple[int, FileTask]] = {}
        ready: dict[int, list[FrameRecord]] = {}
        nxt = 0
        pending = as_completed(loop=self.client.loop)
        while (todo or running or ready) and not stop.is_set():
            while todo and len(running) < self.max_in_flight:
                k, task = todo.popleft()
                if isinstance(task, Missing):
                    ready[k] = [TrackedRecord(seq=-1, source_id=task.path, status="quarantined",
                                              t_arrival=time.time(), reason=task.reason,
                                              file_version=task.version)]
                    continue
                fut = self._submit(task)
                running[fut] = (k, task)
                pending.add(fut)
            if nxt not in ready and running:
                fut = next(pending)
                k, task = running.pop(fut)
                ready[k] = self._collect(fut, task)
            while nxt in ready:
                records = ready.pop(nxt)
                self._expect(self.plan[nxt], records)
                for r in records:
                    self.progress.frames_done += 1
                    yield r
                nxt += 1
        for fut in running:
            fut.cancel()

    # ------------------------------------------------------------------ internals
    def _paths_auto(self) -> str:
        if self.cluster is not None:
            return "shared"  # the embedded cluster runs on this machine
        first = next((t.path for t in self.plan if isinstance(t, FileTask)), None)
        if first is None:
            return "shared"
        try:
            seen = self.client.run(os.path.isfile, first)
        except Exception:  # noqa: BLE001
            return "send"
        return "shared" if seen and all(seen.values()) else "send"

    def _submit(self, task: FileTask) -> Any:
        data = None
        if self.paths == "send":
            with open(task.path, "rb") as fh:  # read-only, as every watched file
                data = fh.read()
        return self.client.submit(process_task, task, data, pixel_size_nm=self.pixel_size_nm,
                                  polarity=self.polarity, pure=False,
                                  key=f"emstream-{os.getpid()}-{id(task):x}-{time.monotonic_ns()}")

    def _collect(self, fut: Any, task: FileTask) -> list[FrameRecord]:
        try:
            return list(fut.result())
        except KilledWorker as exc:
            self.progress.tasks_retried += 1
            reason = f"the worker processing it died repeatedly ({exc})"
        except Exception as exc:  # noqa: BLE001 - the cluster failed, not the file
            reason = f"dask task failed: {type(exc).__name__}: {exc}"
        log.warning("quarantined %s: %s", task.label, reason)
        with self._lock:
            self._events.append(Event("quarantine", f"{task.label}: {reason}",
                                      data={"path": task.path}))
        return quarantined(task, reason)

    def _expect(self, task: FileTask | Missing, records: list[FrameRecord]) -> None:
        """Tell the ledger how many frames the file holds once its last task is back."""
        if isinstance(task, Missing):
            self.ledger.file_pending(task.path, task.version)
            return
        if task.stack:
            if task.start + (task.count or 0) >= (task.total or 0):
                self.ledger.file_expect(task.path, task.version, int(task.total or 0), stack=True)
            return
        if not (len(records) == 1 and records[0].status == "quarantined"):
            self.ledger.file_expect(task.path, task.version, max(1, len(records)))

    def _still_to_do(self, plan: list[FileTask | Missing]) -> list[FileTask | Missing]:
        """Leave out what the ledger already holds (the rerun of an interrupted reprocess), and
        register the rest as pending, as the folder monitor does."""
        out: list[FileTask | Missing] = []
        known: dict[str, bool] = {}
        recorded: dict[str, int] = {}  # a stack's slices recorded before, asked once per stack
        for task in plan:
            if isinstance(task, Missing):
                if self.ledger.file_state(task.path, task.version) is None:
                    out.append(task)
                continue
            if task.path not in known:
                done = self.ledger.file_finished(task.path, task.version)
                if not done and not task.stack:
                    digest = content_digest(task.path, os.stat(task.path).st_size)
                    self.ledger.file_pending(task.path, task.version, content_hash=digest)
                    if task.version in self.ledger.recorded_sources(task.path).get(task.path, ()):
                        self.ledger.file_expect(task.path, task.version, 1)
                        done = True
                elif not done:
                    self.ledger.file_pending(task.path, task.version)
                known[task.path] = done
            if known[task.path]:
                continue
            if task.stack:
                if task.path not in recorded:
                    recorded[task.path] = self.ledger.next_slice(task.path)
                first = recorded[task.path]
                end = task.start + (task.count or 0)
                if end <= first:
                    continue  # these slices were recorded before the interruption
                if task.start < first:  # some were: the rest of the piece only
                    task = replace(task, start=first, count=end - first)
            out.append(task)
        return out


def _frames_of(task: FileTask | Missing) -> int:
    return 1 if isinstance(task, Missing) or task.count is None else task.count
