"""``emstream reprocess``: re-analyse recorded frames on a dask cluster into one session.

Registered on the main CLI (:mod:`emstream.cli`); the work itself is :mod:`emstream.scaleout`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from emstream.cli import (  # noqa: F401 - the option defaults
    Backend,
    BackendOpt,
    IncludeStatesOpt,
    PixelSizeOpt,
    ReportOpt,
    RulesOpt,
    RunOptions,
    SegmenterKind,
    SegmenterOpt,
    _fail,
    _missing,
    err,
    run_session,
)

__all__ = ["register"]


class _ReprocessView:
    """A progress bar (frames, frames/s, ETA) on a terminal; a plain line every 10 s elsewhere."""

    def __init__(self, source: Any, stats: Any):
        self.source, self.stats = source, stats
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Progress | None = None

    def _figures(self) -> tuple[int, int, float, str]:
        p = self.source.progress
        s = self.stats()
        total = max(p.frames_total, p.frames_done)
        dt = time.time() - p.t_start if p.t_start else 0.0
        rate = p.frames_done / dt if dt > 0 else 0.0
        extra = (f"quarantined {s.quarantined}  not ok {s.not_ok}  alerts {s.alerts}"
                 + (f"  retried {p.tasks_retried}" if p.tasks_retried else ""))
        return p.frames_done, total, rate, extra

    def _run(self) -> None:
        last_line = 0.0
        while not self._stop.wait(0.25):
            done, total, rate, extra = self._figures()
            if self._bar is not None:
                self._bar.update(self._task, completed=done, total=total,
                                 rate=f"{rate:.2f} frames/s", extra=extra)
            elif time.monotonic() - last_line >= 10.0:
                last_line = time.monotonic()
                eta = (total - done) / rate if rate > 0 else float("nan")
                err.print(f"reprocess: {done}/{total} frames, {rate:.2f} frames/s, "
                          f"ETA {eta:.0f} s, {extra}", highlight=False)

    def __enter__(self) -> _ReprocessView:
        if err.is_terminal:
            self._bar = Progress(
                TextColumn("reprocess"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), TextColumn("{task.fields[extra]}"), console=err)
            self._bar.__enter__()
            self._task = self._bar.add_task("frames", total=self.source.progress.frames_total,
                                            rate="", extra="")
        self._thread = threading.Thread(target=self._run, name="reprocess-view", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        done, total, rate, extra = self._figures()
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
            self._bar.__exit__(*exc)
        err.print(f"reprocess: {done}/{total} frames at {rate:.2f} frames/s ({extra})",
                  highlight=False)


def reprocess(
    sources: Annotated[list[Path], typer.Argument(
        exists=True, file_okay=False, help="Folders of frames and/or session folders.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False,
                                      help="Session folder to write (a rerun resumes it).")],
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, max=256,
        help="Worker processes of the embedded cluster (default: one per core).")] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", metavar="ADDRESS",
        help="A running dask scheduler (tcp://HOST:8786) instead of the embedded cluster.")] = None,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", min=0.5, help="Give up on the scheduler after this long, s.")] = 10.0,
    paths: Annotated[str, typer.Option(
        "--paths", help="auto, shared (workers read the files) or send (the client sends "
                        "each file).")] = "auto",
    in_flight: Annotated[int | None, typer.Option(
        "--in-flight", min=1, help="Tasks on the cluster at once (default: 2 per worker "
                                   "thread).")] = None,
    recursive: Annotated[bool, typer.Option(help="Also read sub-folders.")] = False,
    pixel_size: PixelSizeOpt = None,
    segmenter: SegmenterOpt = SegmenterKind.auto,
    backend: BackendOpt = Backend.auto,
    rules: RulesOpt = None,
    report: ReportOpt = True,
    include_states: IncludeStatesOpt = "ok,moved",
) -> None:
    """Re-analyse recorded frames (folders, or the files a session saw) on a dask cluster into
    one session: same ledger, report and exports as a live one."""
    if paths not in ("auto", "shared", "send"):
        raise _fail(f"--paths must be auto, shared or send, got {paths!r}", 2)
    workers = workers or os.cpu_count() or 1
    try:
        from emstream.scaleout.source import ClusterSource, connect, recipe_for
    except ImportError as exc:
        raise _missing("reprocess (install emstream[cluster])", exc) from exc
    from emstream.pipeline import make_segmenter

    opts = RunOptions(out, None, pixel_size, segmenter.value, backend.value, rules, None, "all",
                      False, None, report,
                      extra={"reprocess": [str(s) for s in sources], "scheduler": scheduler,
                             "cluster_workers": None if scheduler else workers, "paths": paths})
    opts.include_states = include_states
    box: list[Any] = []

    def make(ledger: Any) -> Any:
        seg = make_segmenter(kind=opts.segmenter, backend=opts.backend)
        client, cluster = connect(scheduler, workers=workers, timeout_s=connect_timeout)
        try:
            threads = None if scheduler else 1
            src = ClusterSource(sources, ledger, client=client, cluster=cluster,
                                recipe=recipe_for(seg, opts.backend, threads),
                                pixel_size_nm=pixel_size, paths=paths, max_in_flight=in_flight,
                                recursive=recursive)
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise
        src.segmenter = seg
        for note in src.notes:
            err.print(f"[yellow]{note}[/]")
        workers_now = client.nthreads()
        if not workers_now:
            err.print("[yellow]the scheduler has no workers yet: the tasks wait until one "
                      "joins (dask worker ADDRESS)[/]")
        err.print(f"dask: {client.scheduler.address}, {len(workers_now)} worker(s), "
                  f"{sum(workers_now.values())} thread(s); files read by "
                  f"{'the workers' if src.paths == 'shared' else 'the client, sent to the workers'}"
                  f"; {len(src.plan)} task(s) to do")
        if src.dashboard:
            err.print(f"dask dashboard: {src.dashboard}")
        box.append(src)
        return src

    rc = run_session(make, opts, command="reprocess", title="emstream reprocess",
                     view=lambda stats: _ReprocessView(box[0], stats))
    raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    app.command()(reprocess)
