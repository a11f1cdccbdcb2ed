"""The terminal live view (rich) and the summary table printed when a session ends."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from emstream.results import clock_ahead


def _fmt(v: float, spec: str = ".1f", unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:{spec}}{unit}"


def stats_table(stats: Any, *, title: str = "emstream") -> Table:
    """One table with the live figures an operator glances at."""
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column(no_wrap=True)
    t.add_row("source", str(stats.source))
    t.add_row("backend", str(stats.backend))
    t.add_row(
        "frames",
        f"in {stats.frames_in}  processed [green]{stats.processed}[/]  "
        f"quarantined [yellow]{stats.quarantined}[/]  skipped [magenta]{stats.skipped}[/]",
    )
    t.add_row("rate", f"{_fmt(stats.fps, '.2f')} frames/s   queue {stats.queue_depth}")
    lag = _fmt(stats.lag_s, ".2f", " s")
    if clock_ahead(stats.lag_s):
        lag += "  [yellow](acquisition clock ahead of this computer's)[/]"
    t.add_row("lag", lag)
    t.add_row("particles", f"{stats.particles}   D50 {_fmt(stats.d50, '.1f', ' ' + stats.unit)}")
    seg = f"confidence {_fmt(getattr(stats, 'confidence', float('nan')), '.2f')}"
    if getattr(stats, "flagged", 0):
        seg += f"   [yellow]{stats.flagged} flagged[/] ({stats.last_flag})"
    t.add_row("segmentation", seg)
    if getattr(stats, "not_ok", 0):
        t.add_row("frame state", f"[yellow]{stats.not_ok} not ok[/], left out of the statistics "
                  f"({stats.last_state})")
    drift = getattr(stats, "drift", None)
    if drift is not None:
        ev = getattr(stats, "track_events", {}) or {}
        t.add_row("tracking", f"drift {drift[0]:+.1f}, {drift[1]:+.1f} {stats.unit}   "
                  + "  ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(ev.items())))
    if stats.timings_ms:
        t.add_row(
            "stage ms",
            "  ".join(f"{k} {v:.0f}" for k, v in stats.timings_ms.items()),
        )
    if getattr(stats, "alerts", 0):
        t.add_row("alerts", f"[red]{stats.alerts}[/]")
    return t


def progress_line(stats: Any) -> str:
    """One plain line of the live figures (for logs and scripts without a terminal)."""
    line = (f"emstream: {stats.processed} processed, {stats.quarantined} quarantined, "
            f"{stats.skipped} skipped; {_fmt(stats.fps, '.2f')} frames/s; lag "
            f"{_fmt(stats.lag_s, '.1f', ' s')}; last frame {stats.particles} particles, D50 "
            f"{_fmt(stats.d50, '.1f', ' ' + stats.unit)}")
    if getattr(stats, "alerts", 0):
        line += f"; {stats.alerts} alerts"
    return line


class LiveView:
    """Refreshes :func:`stats_table` a few times a second while a session runs.

    ``with LiveView(lambda: pipeline.stats): pipeline.wait_idle(...)``. Prints nothing when
    the console is not a terminal (scripts, tests), unless ``force`` is set.
    """

    def __init__(
        self,
        stats: Callable[[], Any],
        *,
        console: Console | None = None,
        refresh_per_second: float = 4.0,
        force: bool = False,
        title: str = "emstream",
        line_every_s: float = 10.0,
    ):
        self.stats = stats
        self.console = console or Console(stderr=True)
        self.enabled = force or self.console.is_terminal
        self.title = title
        self._live: Live | None = None
        self._rps = refresh_per_second
        #: without a terminal, a plain progress line this often (0: none)
        self.line_every_s = line_every_s
        self._thread: threading.Thread | None = None

    def _render(self) -> Table:
        return stats_table(self.stats(), title=self.title)

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=self._rps,
                transient=True,
            )
            self._live.__enter__()
        elif self.line_every_s:
            # not a terminal (a script, a service log): one plain line now and then instead
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._lines, name="emstream-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def _lines(self) -> None:
        last = None
        while not self._stop.wait(self.line_every_s):
            line = progress_line(self.stats())
            if line != last:
                print(line, file=sys.stderr, flush=True)
                last = line

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2)
            self._thread = None


def summary_table(stats: Any, *, session_dir: Any = None, elapsed_s: float | None = None,
                  counts: dict[str, int] | None = None) -> Table:
    """The end-of-session summary."""
    t = Table(title="session summary", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if session_dir is not None:
        t.add_row("session", str(session_dir))
    t.add_row("source", str(stats.source))
    t.add_row("backend", str(stats.backend))
    t.add_row("frames in", str(stats.frames_in))
    c = counts or {"ok": stats.processed, "quarantined": stats.quarantined, "skipped": stats.skipped}
    t.add_row("ok", str(c.get("ok", 0)))
    t.add_row("quarantined", str(c.get("quarantined", 0)))
    t.add_row("skipped", str(c.get("skipped", 0)))
    if elapsed_s is not None:
        t.add_row("elapsed", f"{elapsed_s:.1f} s")
    t.add_row("last particles / D50", f"{stats.particles} / {_fmt(stats.d50, '.1f', ' ' + stats.unit)}")
    ev = getattr(stats, "track_events", None)
    if getattr(stats, "drift", None) is not None:
        t.add_row("tracking events", ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in
                                               sorted((ev or {}).items())) or "none")
    if getattr(stats, "flagged", 0):
        t.add_row("doubtful segmentation", f"{stats.flagged} frames flagged (ledger: frames.seg_flag)")
    if getattr(stats, "alerts", 0):
        t.add_row("alerts", str(stats.alerts))
    return t


def print_summary(stats: Any, *, session_dir: Any = None, t_start: float | None = None,
                  counts: dict[str, int] | None = None, console: Console | None = None) -> None:
    console = console or Console()
    elapsed = time.time() - t_start if t_start else None
    console.print(summary_table(stats, session_dir=session_dir, elapsed_s=elapsed, counts=counts))
