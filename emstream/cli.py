"""The ``emstream`` command line.

Exit codes: 0 ok, 1 runtime failure, 2 usage error (bad flag, bad rules file, missing file).
Commands owned by other parts of the code base are imported lazily inside each command, so a
missing optional piece gives a clear message instead of breaking the whole command line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from emstream import __version__
from emstream.errors import ConfigError, EmstreamError

app = typer.Typer(
    name="emstream",
    help="Real-time nanoparticle monitor for (environmental) TEM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
engine_app = typer.Typer(help="Build or inspect the TensorRT engine / model.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")

out = Console()
err = Console(stderr=True)
log = logging.getLogger("emstream")


class Policy(str, Enum):
    all = "all"
    latest = "latest"


class SegmenterKind(str, Enum):
    auto = "auto"
    learned = "learned"
    classical = "classical"


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    torch = "torch"


class Protocol(str, Enum):
    emstream = "emstream"
    dectris = "dectris"


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _missing(what: str, exc: BaseException) -> typer.Exit:
    return _fail(f"{what} is not available in this installation ({exc})", 1)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"emstream {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --------------------------------------------------------------------------- shared options
SessionDirOpt = Annotated[
    Path | None,
    typer.Option("--session-dir", help="Session folder (default ./sessions/<timestamp>/); reused to resume."),
]
ExitIdleOpt = Annotated[
    float | None,
    typer.Option("--exit-when-idle", metavar="SECONDS", min=0.0,
                 help="Stop once no new frame has come for this long and every frame is terminal."),
]
def _positive_pixel_size(value: float | None) -> float | None:
    if value is not None and not (0.0 < value < float("inf")):
        raise typer.BadParameter(f"the pixel size must be a positive number of nm, got {value:g}")
    return value


PixelSizeOpt = Annotated[
    float | None,
    typer.Option("--pixel-size", metavar="NM", callback=_positive_pixel_size,
                 help="Override the pixel size (nm/px, > 0)."),
]
SegmenterOpt = Annotated[SegmenterKind, typer.Option("--segmenter", help="Segmenter to use.")]
BackendOpt = Annotated[Backend, typer.Option("--backend", help="Inference backend (learned segmenter).")]
RulesOpt = Annotated[
    Path | None, typer.Option("--rules", exists=True, dir_okay=False, help="Alert rules (TOML).")
]
PublishOpt = Annotated[
    str | None, typer.Option("--publish", metavar="ENDPOINT", help="Publish summaries and alerts (ZMQ PUB).")
]
PublishKeysOpt = Annotated[Path | None, typer.Option(
    "--publish-curve-keys", exists=True, dir_okay=False,
    help="This monitor's CURVE secret certificate: encrypts --publish (needed off loopback).")]
PublishAllowOpt = Annotated[Path | None, typer.Option(
    "--publish-curve-allow", exists=True, file_okay=False,
    help="Folder of subscriber public certificates allowed to read --publish.")]
PolicyOpt = Annotated[Policy, typer.Option("--policy", help="Live streams: process all or only the latest.")]
GuiOpt = Annotated[
    bool | None,
    typer.Option("--gui/--headless", help="Force the window or the terminal view (default: window if a display exists)."),
]
ScreenshotOpt = Annotated[
    Path | None, typer.Option("--screenshot", help="Save the window as PNG when the run ends.")
]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Write the HTML report at the end.")]
def _states_option(value: str) -> str:
    from emstream.process.quality import STATES

    wanted = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in wanted if x not in STATES]
    if bad or not wanted:
        raise typer.BadParameter(f"unknown state(s) {', '.join(bad) or '(none given)'}; "
                                 f"states are {', '.join(STATES)}")
    return ",".join(wanted)


IncludeStatesOpt = Annotated[str, typer.Option(
    "--include-states", metavar="STATES", callback=_states_option,
    help="Frame states whose particles the size statistics, trends and rules use "
         "(comma-separated; default ok,moved).")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, max=64, help="Frames processed in parallel (default: by core count).")
]


@dataclass
class RunOptions:
    """Everything the monitoring commands share."""

    session_dir: Path | None = None
    exit_when_idle: float | None = None
    pixel_size: float | None = None
    segmenter: str = "auto"
    backend: str = "auto"
    rules: Path | None = None
    publish: str | None = None
    policy: str = "all"
    gui: bool | None = None
    screenshot: Path | None = None
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    include_states: str = "ok,moved"
    publish_curve_keys: Path | None = None
    publish_curve_allow: Path | None = None
    record: Path | None = None

    @property
    def trusted_states(self) -> tuple[str, ...]:
        return tuple(self.include_states.split(","))

    def as_config(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


# --------------------------------------------------------------------------- running a session
def _build_segmenter(opts: RunOptions) -> Any:
    from emstream.pipeline import make_segmenter

    try:
        return make_segmenter(kind=opts.segmenter, backend=opts.backend)
    except (EmstreamError, ImportError) as exc:
        raise _fail(f"segmenter: {exc}") from exc


def _build_rules(opts: RunOptions) -> Any:
    if opts.rules is None:
        return None
    from emstream.rules_file import RulesFile

    try:
        return RulesFile(opts.rules)
    except ConfigError as exc:
        raise _fail(f"rules: {exc}", 2) from exc


def _build_watchdog() -> Any:
    from emstream.process.watchdog import Watchdog

    return Watchdog()


def _extra_sinks(opts: RunOptions, session_dir: Path, rules: Any) -> list[Any]:
    from emstream.sinks.actions import ActionsSink
    from emstream.sinks.publish import Publisher

    sinks: list[Any] = []
    if opts.publish:
        try:
            sinks.append(Publisher(opts.publish, rules=rules, curve_keys=opts.publish_curve_keys,
                                   curve_allow=opts.publish_curve_allow))
        except EmstreamError as exc:
            raise _fail(f"--publish: {exc}", 2) from exc
    if opts.record is not None:
        from emstream.sinks.record import FrameRecorder

        sinks.append(FrameRecorder(opts.record))
    # Snapshots, the alert log and command hooks of the rules that ask for them.
    sinks.append(ActionsSink(session_dir, rules=rules))
    return sinks


def _want_gui(opts: RunOptions) -> bool:
    if opts.gui is False:
        if opts.screenshot is not None:
            raise _fail("--screenshot saves the window, and --headless shows the terminal view "
                        "instead: drop --headless (without a display the window is drawn "
                        "offscreen)", 2)
        return False
    try:
        from emstream.gui import display_available
    except ImportError as exc:
        if opts.gui or opts.screenshot is not None:
            raise _missing("the live window (--gui, --screenshot)", exc) from exc
        return False
    if display_available() and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        from emstream.gui import window_problem

        why = window_problem()  # a Qt plugin that cannot load would abort this process
        if why is not None:
            if opts.gui:
                raise _fail(f"--gui: {why}")
            err.print(f"[yellow]{why}[/]: showing the terminal view instead")
            return False
    if opts.gui:
        return True
    if not display_available() and opts.screenshot is not None:
        # asked for a screenshot: draw the window without a screen rather than ignore it
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        err.print("no display: the window is drawn offscreen for --screenshot")
        return True
    return bool(display_available())


def _write_report(session_dir: Path, include_states: tuple[str, ...]) -> None:
    """The report and the exports, written when a session ends."""
    from emstream.sinks.export import export_session
    from emstream.sinks.report import write_report

    try:
        err.print(f"report: {write_report(session_dir, include_states)}")
        export_session(session_dir)
    except Exception as exc:  # noqa: BLE001 - the session is recorded either way
        err.print(f"[yellow]report not written:[/] {exc}")


class _Handle:
    """What the GUI gets back from ``start(sinks)``."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def stop(self) -> None:
        self.pipeline.stop()

    @property
    def stats(self) -> Any:
        return self.pipeline.stats

    @property
    def finished(self) -> bool:
        return self.pipeline.finished

    def wait_idle(self, seconds: float) -> bool:
        return self.pipeline.wait_idle(seconds)

    def join(self, timeout: float | None = None) -> bool:
        return self.pipeline.join(timeout)

    def add_listener(self, fn: Any) -> None:
        self.pipeline.add_listener(fn)


def run_session(
    make_source: Any,
    opts: RunOptions,
    *,
    command: str,
    until: Any = None,
    title: str = "emstream",
    view: Any = None,
) -> int:
    """Open a session, run a source through the pipeline until done, print the summary.

    ``make_source(ledger)`` builds the source; ``until(pipeline)`` (optional) blocks until the
    run should end (default: ``--exit-when-idle``, the source's end, or Ctrl+C); ``view(stats)``
    (optional) is the terminal view's context manager (default: :class:`~emstream.console.LiveView`).
    A source with a ``segmenter`` attribute brings its own (``emstream reprocess``).
    """
    from emstream.config import new_session_dir, versions, write_config
    from emstream.console import LiveView, print_summary
    from emstream.pipeline import Pipeline
    from emstream.sinks.base import Session
    from emstream.sinks.ledger import Ledger

    # everything that can refuse the command is checked before a session folder exists, or the
    # folder is removed again: a refused command leaves nothing behind
    rules = _build_rules(opts)
    gui = _want_gui(opts)
    fresh = opts.session_dir is None or not Path(opts.session_dir).exists()
    session_dir = new_session_dir(opts.session_dir)
    opts.session_dir = session_dir
    ledger = Ledger(session_dir)

    def refuse(exc: typer.Exit) -> typer.Exit:
        ledger.close()
        if fresh:
            shutil.rmtree(session_dir, ignore_errors=True)
        return exc

    try:
        source = make_source(ledger)
    except ConfigError as exc:
        raise refuse(_fail(str(exc), 2)) from exc
    except EmstreamError as exc:
        raise refuse(_fail(str(exc))) from exc
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise refuse(_fail(str(exc), 2)) from exc
    except Exception as exc:  # e.g. the port is taken: a runtime failure, said plainly
        raise refuse(_fail(f"cannot open the source: {exc}")) from exc
    try:
        segmenter = getattr(source, "segmenter", None) or _build_segmenter(opts)
    except BaseException:
        close = getattr(source, "close", None)
        if callable(close):
            close()
        refuse(typer.Exit(1))
        raise
    sinks = [ledger, *_extra_sinks(opts, session_dir, rules)]
    desc = source.describe() if hasattr(source, "describe") else str(source)
    backend = getattr(segmenter, "name", "?")
    vers = versions()
    flags = opts.as_config()
    config = {
        "command": command,
        "source": desc,
        **{k: v for k, v in flags.items() if k not in ("segmenter", "backend")},
        "segmenter_requested": opts.segmenter,
        "backend_requested": opts.backend,
        "segmenter": backend,  # what actually ran, e.g. "unet-s@onnxruntime:CPUExecutionProvider"
        "model": getattr(segmenter, "info", None) or getattr(segmenter, "model_path", None),
        "t_start": time.time(),
        "versions": vers,
    }
    write_config(session_dir, config)
    session = Session(session_dir=session_dir, source=desc, backend=backend, config=config,
                      versions=vers, t_start=time.time())
    err.print(f"session: {session_dir}   source: {desc}   segmenter: {backend}")

    def build(extra: list[Any]) -> Any:
        return Pipeline(
            source, segmenter, [*sinks, *extra], session=session, rules=rules,
            watchdog=_build_watchdog(), policy=opts.policy, pixel_size_nm=opts.pixel_size,
            workers=opts.workers, trusted_states=opts.trusted_states,
        )

    pipeline_box: list[Any] = []
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001
        stop_requested.set()
        for p in pipeline_box:
            p.stop()

    old = None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        old = signal.signal(signal.SIGTERM, on_signal)

    def wait_done(p: Any) -> None:
        if until is not None:
            until(p)
        elif opts.exit_when_idle is not None:
            p.wait_idle(opts.exit_when_idle)
        else:
            while not p.finished and not stop_requested.is_set():
                time.sleep(0.2)

    rc = 0
    try:
        if gui:
            from emstream.gui.app import run_monitor_window

            def start(extra_sinks: list[Any]) -> _Handle:
                p = build(list(extra_sinks))
                pipeline_box.append(p)
                p.start()
                if opts.exit_when_idle is not None or until is not None:
                    threading.Thread(target=lambda: (wait_done(p), p.stop()), daemon=True).start()
                return _Handle(p)

            kwargs: dict[str, Any] = {}
            if opts.exit_when_idle is not None or until is not None:
                kwargs["exit_when"] = "finished"
            rc = int(run_monitor_window(
                start,
                stats=lambda: pipeline_box[0].stats if pipeline_box else None,
                screenshot=opts.screenshot, title=title, rules=rules, **kwargs,
            ) or 0)
            for p in pipeline_box:
                p.stop()
                p.join(timeout=60)
        else:
            p = build([])
            pipeline_box.append(p)
            p.start()
            try:
                with (view or (lambda s: LiveView(s, title=title)))(lambda: p.stats):
                    wait_done(p)
            except KeyboardInterrupt:
                err.print("interrupted: finishing the frames already read …")
            p.stop()
            p.join(timeout=120)
        p = pipeline_box[0] if pipeline_box else None
        if p is not None and p.error is not None:
            err.print(f"[red]source failed:[/] {p.error}")
            rc = 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        ledger.close()  # idempotent; normally closed by its sink thread
    if pipeline_box:
        from emstream.sinks.ledger import connect_readonly

        try:
            con = connect_readonly(session_dir)
            counts = dict(con.execute("SELECT status, COUNT(*) FROM frames GROUP BY status").fetchall())
            con.close()
        except Exception:  # noqa: BLE001
            counts = None
        print_summary(pipeline_box[0].stats, session_dir=session_dir, t_start=session.t_start,
                      counts=counts, console=err)
    if opts.report and pipeline_box:
        _write_report(session_dir, opts.trusted_states)
    return rc


# --------------------------------------------------------------------------- commands
@app.command()
def watch(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to watch.")],
    session_dir: SessionDirOpt = None,
    exit_when_idle: ExitIdleOpt = None,
    pixel_size: PixelSizeOpt = None,
    segmenter: SegmenterOpt = SegmenterKind.auto,
    backend: BackendOpt = Backend.auto,
    rules: RulesOpt = None,
    publish: PublishOpt = None,
    publish_curve_keys: PublishKeysOpt = None,
    publish_curve_allow: PublishAllowOpt = None,
    policy: PolicyOpt = Policy.all,
    gui: GuiOpt = None,
    screenshot: ScreenshotOpt = None,
    report: ReportOpt = True,
    workers: WorkersOpt = None,
    include_states: IncludeStatesOpt = "ok,moved",
    recursive: Annotated[bool, typer.Option(help="Also watch sub-folders.")] = False,
    poll: Annotated[float, typer.Option(min=0.05, help="Rescan interval, s.")] = 0.5,
    min_age: Annotated[float, typer.Option(min=0.0, help="A file must be unchanged this long, s.")] = 1.0,
    quarantine_after: Annotated[
        float, typer.Option(min=0.0, help="Quarantine a file still incomplete after this long, s.")
    ] = 30.0,
) -> None:
    """Process every image saved into DIRECTORY (exactly once per file version)."""
    from emstream.sources.folder import FolderSource

    opts = RunOptions(session_dir, exit_when_idle, pixel_size, segmenter.value, backend.value, rules,
                      publish, policy.value, gui, screenshot, report,
                      extra={"watch": str(directory), "poll_s": poll, "min_age_s": min_age,
                             "quarantine_after_s": quarantine_after, "recursive": recursive})
    opts.workers = workers
    opts.include_states = include_states
    opts.publish_curve_keys, opts.publish_curve_allow = publish_curve_keys, publish_curve_allow

    def make(ledger: Any) -> Any:
        return FolderSource(directory, ledger, poll_s=poll, min_age_s=min_age,
                            quarantine_after_s=quarantine_after, recursive=recursive)

    raise typer.Exit(run_session(make, opts, command="watch", title=f"emstream watch {directory}"))


@app.command()
def listen(
    endpoint: Annotated[str, typer.Argument(help="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555.")],
    session_dir: SessionDirOpt = None,
    exit_when_idle: ExitIdleOpt = None,
    pixel_size: PixelSizeOpt = None,
    segmenter: SegmenterOpt = SegmenterKind.auto,
    backend: BackendOpt = Backend.auto,
    rules: RulesOpt = None,
    publish: PublishOpt = None,
    publish_curve_keys: PublishKeysOpt = None,
    publish_curve_allow: PublishAllowOpt = None,
    policy: PolicyOpt = Policy.all,
    protocol: Annotated[Protocol, typer.Option("--protocol", help="Wire protocol.")] = Protocol.emstream,
    sub: Annotated[bool, typer.Option("--sub", help="SUB socket instead of PULL (gaps counted).")] = False,
    bind: Annotated[bool, typer.Option("--bind", help="Bind instead of connect.")] = False,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Permit a non-loopback endpoint.")] = False,
    max_frame_mb: Annotated[float, typer.Option("--max-frame-mb", min=0.001, help="Reject larger messages.")] = 256.0,
    curve_keys: Annotated[Path | None, typer.Option("--curve-keys", help="This side's CURVE secret certificate.")] = None,
    curve_allow: Annotated[Path | None, typer.Option("--curve-allow", help="Folder of allowed client public certificates.")] = None,
    record: Annotated[Path | None, typer.Option(
        "--record", file_okay=False,
        help="Keep every processed frame as a TIFF here (for reprocess or replay).")] = None,
    gui: GuiOpt = None,
    screenshot: ScreenshotOpt = None,
    report: ReportOpt = True,
    workers: WorkersOpt = None,
    include_states: IncludeStatesOpt = "ok,moved",
) -> None:
    """Process frames arriving over ZeroMQ (emstream v1 or DECTRIS SIMPLON)."""
    from emstream.sources.zmq import StreamSource

    opts = RunOptions(session_dir, exit_when_idle, pixel_size, segmenter.value, backend.value, rules,
                      publish, policy.value, gui, screenshot, report,
                      extra={"listen": endpoint, "protocol": protocol.value, "sub": sub, "bind": bind,
                             "record": str(record) if record else None})
    opts.record = record
    opts.workers = workers
    opts.include_states = include_states
    opts.publish_curve_keys, opts.publish_curve_allow = publish_curve_keys, publish_curve_allow

    def make(ledger: Any) -> Any:
        source = StreamSource(endpoint, protocol=protocol.value,
                              pattern="sub" if sub else "pull", bind=bind,
                              allow_remote=allow_remote, max_frame_bytes=int(max_frame_mb * 2**20),
                              curve_keys=curve_keys, curve_allow=curve_allow)
        # a restarted listener knows where each series stood: frames lost meanwhile are gaps
        source.resume_sequences(ledger.stream_positions(source.endpoint))
        return source

    raise typer.Exit(run_session(make, opts, command="listen", title=f"emstream listen {endpoint}"))


@app.command()
def replay(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Recorded folder.")],
    speed: Annotated[float, typer.Option(min=0.0, help="Pace relative to acquisition (2 = twice as fast).")] = 1.0,
    as_fast_as_possible: Annotated[bool, typer.Option("--as-fast-as-possible", help="No pacing.")] = False,
    session_dir: SessionDirOpt = None,
    exit_when_idle: ExitIdleOpt = None,
    pixel_size: PixelSizeOpt = None,
    segmenter: SegmenterOpt = SegmenterKind.auto,
    backend: BackendOpt = Backend.auto,
    rules: RulesOpt = None,
    publish: PublishOpt = None,
    publish_curve_keys: PublishKeysOpt = None,
    publish_curve_allow: PublishAllowOpt = None,
    policy: PolicyOpt = Policy.all,
    gui: GuiOpt = None,
    screenshot: ScreenshotOpt = None,
    report: ReportOpt = True,
    workers: WorkersOpt = None,
    include_states: IncludeStatesOpt = "ok,moved",
) -> None:
    """Feed a recorded folder through the pipeline at its original pace (or faster)."""
    from emstream.sources.replay import ReplaySource

    opts = RunOptions(session_dir, exit_when_idle, pixel_size, segmenter.value, backend.value, rules,
                      publish, policy.value, gui, screenshot, report,
                      extra={"replay": str(directory), "speed": None if as_fast_as_possible else speed})
    opts.workers = workers
    opts.include_states = include_states
    opts.publish_curve_keys, opts.publish_curve_allow = publish_curve_keys, publish_curve_allow

    def make(ledger: Any) -> Any:  # noqa: ARG001
        return ReplaySource(directory, speed=None if as_fast_as_possible or speed == 0 else speed)

    raise typer.Exit(run_session(make, opts, command="replay", title=f"emstream replay {directory}"))


@app.command()
def simulate(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write frames into.")] = None,
    zmq: Annotated[str | None, typer.Option("--zmq", metavar="ENDPOINT", help="Send over ZeroMQ instead.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Number of frames.")] = 100,
    fps: Annotated[float, typer.Option(min=0.01, help="Frames per second.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    inject_bad: Annotated[bool, typer.Option("--inject-bad", help="Also write zero-byte, truncated and corrupt files.")] = False,
    modes: Annotated[str | None, typer.Option(help="Comma-separated write modes (whole,chunked,temp_rename,mrc_stack).")] = None,
    size: Annotated[int, typer.Option(min=64, max=8192, help="Frame size (px, square).")] = 1024,
    imaging: Annotated[str, typer.Option(help="bf (bright-field TEM) or haadf (STEM).")] = "bf",
    script: Annotated[str | None, typer.Option(
        help="Scripted trouble, e.g. defocus:40-59,blank:80-84,jump:100 (effects: defocus, "
             "smear, blank, dim, saturate, empty, jump).")] = None,
) -> None:
    """Run the synthetic E-TEM microscope (writes files with a manifest, or sends frames)."""
    if (out_dir is None) == (zmq is None):
        raise _fail("give exactly one of --out DIR or --zmq ENDPOINT", 2)
    if imaging not in ("bf", "haadf"):
        raise _fail(f"--imaging must be bf or haadf, got {imaging!r}", 2)
    from emstream.sources.simulate import SceneConfig, run_simulate

    config = SceneConfig(shape=(size, size), fps=fps, mode=imaging)
    done = [0]

    def progress(rec: dict[str, Any]) -> None:
        if rec.get("status", "ok") != "ok":
            return
        done[0] += 1
        if done[0] % 10 == 0:
            err.print(f"simulated {done[0]} …")

    kwargs: dict[str, Any] = {"out": out_dir, "zmq": zmq, "frames": frames, "fps": fps, "seed": seed,
                              "inject_bad": inject_bad, "config": config, "on_frame": progress,
                              "script": script}
    if modes:
        kwargs["modes"] = tuple(m.strip() for m in modes.split(",") if m.strip())
    try:
        result = run_simulate(**kwargs)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ValueError, ConfigError) as exc:
        raise _fail(str(exc), 2) from exc
    if result is not None:
        err.print(f"simulated {frames} frames → {result}")


@app.command()
def demo(
    frames: Annotated[int, typer.Option(min=1, help="Frames the simulator writes before the demo ends.")] = 120,
    fps: Annotated[float, typer.Option(min=0.1, help="Simulated frames per second.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    size: Annotated[int, typer.Option(min=64, max=8192, help="Frame size (px, square).")] = 512,
    inject_bad: Annotated[bool, typer.Option("--inject-bad", help="Also write bad files (quarantined).")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Keep the simulated frames here (default: a temporary folder).")] = None,
    session_dir: SessionDirOpt = None,
    segmenter: SegmenterOpt = SegmenterKind.auto,
    backend: BackendOpt = Backend.auto,
    rules: RulesOpt = None,
    publish: PublishOpt = None,
    publish_curve_keys: PublishKeysOpt = None,
    publish_curve_allow: PublishAllowOpt = None,
    gui: GuiOpt = None,
    screenshot: ScreenshotOpt = None,
    report: ReportOpt = True,
    workers: WorkersOpt = None,
    include_states: IncludeStatesOpt = "ok,moved",
    script: Annotated[str | None, typer.Option(
        help="Scripted trouble for the simulated microscope, e.g. defocus:40-59,blank:80-84 "
             "(see simulate --script).")] = None,
) -> None:
    """Simulated microscope + folder monitor in one process, with a live view."""
    from emstream.sources.simulate.script import parse_script

    try:
        parse_script(script)
    except ValueError as exc:
        raise _fail(f"--script: {exc}", 2) from exc
    from emstream.sources.folder import FolderSource
    from emstream.sources.simulate.scene import SceneConfig
    from emstream.sources.simulate.writers import write_session

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="emstream-demo-")
        acq = Path(tmp.name)
    else:
        acq = Path(out_dir)
        acq.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    sim_error: list[BaseException] = []

    def simulate_thread() -> None:
        try:
            write_session(acq, frames=frames, fps=fps, seed=seed, stop=stop, inject_bad=inject_bad,
                          config=SceneConfig(shape=(size, size), fps=fps, ramp_frames=frames),
                          script=script)
        except BaseException as exc:  # noqa: BLE001
            sim_error.append(exc)

    sim = threading.Thread(target=simulate_thread, name="simulator", daemon=True)
    if rules is None:  # the embedded example rules, so the demo shows target alerts too
        rules = acq / "demo_rules.toml"
        rules.write_bytes(resources.files("emstream").joinpath("demo_rules.toml").read_bytes())
    opts = RunOptions(session_dir, None, None, segmenter.value, backend.value, rules, publish, "all",
                      gui, screenshot, report,
                      extra={"demo": {"frames": frames, "fps": fps, "seed": seed, "size": size,
                                     "inject_bad": inject_bad, "folder": str(acq)}})
    opts.workers = workers
    opts.include_states = include_states
    opts.publish_curve_keys, opts.publish_curve_allow = publish_curve_keys, publish_curve_allow

    def make(ledger: Any) -> Any:
        sim.start()
        return FolderSource(acq, ledger, poll_s=0.2, min_age_s=0.3, quarantine_after_s=5.0)

    def until(p: Any) -> None:
        try:
            while sim.is_alive():
                if p.finished:
                    return
                sim.join(0.2)
            p.wait_idle(1.5)
        finally:
            stop.set()

    try:
        rc = run_session(make, opts, command="demo", until=until, title="emstream demo")
    finally:
        stop.set()
        sim.join(timeout=10)
    if sim_error:
        err.print(f"[red]simulator failed:[/] {sim_error[0]!r}")
        rc = rc or 1
    rc = max(rc, _check_demo_counts(acq, opts.session_dir))
    if tmp is not None:
        tmp.cleanup()
    raise typer.Exit(rc)


def manifest_counts(folder: Path) -> dict[str, int] | None:
    """Frames per expected status in the simulator's manifest (``None`` without a manifest)."""
    m = folder / "simulator-manifest.jsonl"
    if not m.exists():
        return None
    counts = {"ok": 0, "quarantined": 0}
    for line in m.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "event" in rec or rec.get("status") not in counts:
            continue
        counts[rec["status"]] += 1
    return counts


def _check_demo_counts(acq: Path, session_dir: Path | None) -> int:
    """Compare the session's ledger with what the simulator says it wrote; 1 on mismatch."""
    if session_dir is None:
        return 0
    from emstream.sinks.ledger import connect_readonly

    want = manifest_counts(acq)
    if want is None:
        return 0
    try:
        con = connect_readonly(session_dir)
        got = dict(con.execute("SELECT status, COUNT(*) FROM frames GROUP BY status").fetchall())
        con.close()
    except Exception as exc:  # noqa: BLE001
        err.print(f"[red]cannot read the ledger:[/] {exc}")
        return 1
    got = {k: int(got.get(k, 0)) for k in want}
    if got == want:
        err.print(f"[green]ledger matches the simulator:[/] {got['ok']} frames ok, "
                  f"{got['quarantined']} quarantined")
        return 0
    err.print(f"[red]ledger does not match the simulator:[/] ledger {got} vs simulator {want}")
    return 1


@app.command()
def analyze(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Image files.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON here ('-' = stdout).")] = None,
    pixel_size: PixelSizeOpt = None,
    segmenter: SegmenterOpt = SegmenterKind.auto,
    backend: BackendOpt = Backend.auto,
) -> None:
    """Segment and measure files once and write the particle table as JSON."""
    from emstream.frame import Calibration
    from emstream.pipeline import frame_problem, make_segmenter, process_frame
    from emstream.process.confidence import confidence_flag
    from emstream.sources.readers import read_frames

    try:
        seg = make_segmenter(kind=segmenter.value, backend=backend.value)
    except (EmstreamError, ImportError) as exc:
        raise _fail(f"segmenter: {exc}") from exc
    override = None
    if pixel_size is not None:
        override = Calibration((pixel_size, pixel_size), "override", f"--pixel-size {pixel_size:g} nm")
    result: dict[str, Any] = {}
    failures = 0
    names = [f.name for f in files]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True,
                        disable=len(files) < 2)
    progress.start()
    task = progress.add_task("analyze", total=len(files))
    from emstream.process.quality import QualityMonitor, scene_of

    for path in files:
        progress.update(task, advance=1, description=path.name[:40])
        key = path.name if names.count(path.name) == 1 else str(path)
        try:
            frames = read_frames(path, t_arrival=time.time())
        except EmstreamError as exc:
            failures += 1
            result[key] = {"error": getattr(exc, "reason", str(exc))}
            err.print(f"[yellow]{path}:[/] {getattr(exc, 'reason', exc)}")
            continue
        for k, frame in enumerate(frames):
            if override is not None:
                frame.calibration = override
            fkey = key if len(frames) == 1 else f"{key}#{k}"
            problem = frame_problem(frame)
            if problem is None:
                try:
                    res = process_frame(frame, seg, keep_labels=False)
                except Exception as exc:  # noqa: BLE001 - named below, never a traceback
                    problem = f"processing failed: {type(exc).__name__}: {exc}"
            if problem is not None:
                failures += 1
                result[fkey] = {"error": problem}
                err.print(f"[yellow]{fkey}:[/] {problem}")
                continue
            # files are not a session: each is judged on its own (saturation, an empty field);
            # focus and dose are judged against a session, in watch / listen
            judged = QualityMonitor().judge(frame.pixels, res.valid, particles=res.summary.count)
            res.state, res.quality = judged.state, judged.quality
            res.quality["scene"] = scene_of(res.particles, res.summary.coverage)
            if res.quality["scene"] != "particles":
                err.print(f"[yellow]{fkey}:[/] shows {res.quality['scene']}, not separable "
                          "particles: its sizes are not particle sizes")
            if res.state != "ok":
                err.print(f"[yellow]{fkey}:[/] frame state {res.state}")
            res.seg_flag = confidence_flag(res.confidence)
            if res.seg_flag:
                err.print(f"[yellow]{fkey}:[/] {res.seg_flag}: check its particles")
            result[fkey] = frame_json(res)
    progress.stop()
    text = json.dumps(result, indent=1, allow_nan=False)
    if json_out is None or str(json_out) == "-":
        sys.stdout.write(text + "\n")
    else:
        tmp = json_out.with_name(f".{json_out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, json_out)
        err.print(f"wrote {json_out} ({len(result)} images, {failures} failed)")
    raise typer.Exit(1 if failures else 0)


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v


def frame_json(res: Any) -> dict[str, Any]:
    """The ``analyze --json`` object for one frame (contract in DESIGN.md)."""
    cal = res.frame.calibration
    p = res.particles
    n = len(p["label"])
    cols = {k: v.tolist() for k, v in p.items()}
    particles = []
    for i in range(n):
        d = {"centroid_yx_px": [cols["centroid_y_px"][i], cols["centroid_x_px"][i]]}
        for k, vals in cols.items():
            d[k] = _clean(vals[i])
        particles.append(d)
    s = res.summary
    return {
        "shape": list(res.frame.shape),
        "nm_per_px": list(cal.nm_per_px) if cal.nm_per_px is not None else None,
        "calibration": cal.source,
        "calibration_detail": cal.detail,
        "unit": res.unit,
        "backend": res.backend,
        "count": int(s.count),
        "confidence": _clean(res.confidence),
        "segmentation_scale": _clean(res.seg_scale),
        "segmentation_view": res.seg_view,
        "flag": res.seg_flag,
        "state": res.state,
        "quality": {k: _clean(v) for k, v in (res.quality or {}).items()},
        "summary": {k: _clean(v) for k, v in s.as_dict().items()},
        "particles": particles,
    }


@app.command()
def report(
    session: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Session folder.")],
    imagej: Annotated[bool, typer.Option("--imagej", help="CSV with ImageJ column headers.")] = False,
    include_states: IncludeStatesOpt = "ok,moved",
) -> None:
    """Write the HTML report and the CSV/Parquet exports of a session."""
    wanted = tuple(include_states.split(","))
    from emstream.sinks.export import export_session
    from emstream.sinks.ledger import ledger_path
    from emstream.sinks.report import write_report

    if not ledger_path(session).exists():
        raise _fail(f"{session} is not a session folder (no ledger.sqlite)", 2)
    try:
        out.print(f"report: {write_report(session, wanted)}")
        for p in export_session(session, imagej=imagej):
            out.print(f"export: {p}")
    except EmstreamError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def view(
    session: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Session folder.")],
    screenshot: ScreenshotOpt = None,
) -> None:
    """Re-open a finished session in the window for review."""
    try:
        from emstream.gui import display_available, window_problem
        from emstream.gui.app import view_session
    except ImportError as exc:
        raise _missing("the window (install emstream[gui])", exc) from exc
    if screenshot is not None and not display_available():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    why = window_problem() if display_available() else "no display to open the window on"
    if why is not None:
        raise _fail(f"{why}; the session's report is {session / 'report.html'} "
                    f"(emstream report {session} writes it)")
    raise typer.Exit(int(view_session(session, screenshot=screenshot) or 0))


@engine_app.command("info")
def engine_info_cmd(
    model: Annotated[Path | None, typer.Option(help="ONNX model (default: the shipped one).")] = None,
) -> None:
    """Model, hash and cached engines."""
    from emstream.backends import engine_info

    try:
        info = engine_info(model)
    except EmstreamError as exc:
        raise _fail(str(exc)) from exc
    out.print_json(json.dumps(info, default=str))


@engine_app.command("build")
def engine_build_cmd(
    model: Annotated[Path | None, typer.Option(help="ONNX model (default: the shipped one).")] = None,
) -> None:
    """Build (or rebuild) the TensorRT engine for this GPU."""
    from emstream.backends import engine_build

    try:
        path = engine_build(model)
    except EmstreamError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"engine: {path}")


@app.command()
def doctor() -> None:
    """What is installed and usable here, with reasons."""
    from rich.table import Table

    from emstream.config import versions
    from emstream.pipeline import make_segmenter

    t = Table(title=f"emstream {__version__} doctor")
    t.add_column("component")
    t.add_column("status")
    t.add_column("detail")

    def row(name: str, ok: bool | None, detail: str) -> None:
        mark = "[green]ok[/]" if ok else ("[yellow]–[/]" if ok is None else "[red]no[/]")
        t.add_row(name, mark, detail)

    for k, v in versions().items():
        row(k, True, v)
    try:
        import psutil

        row("cpu", True, f"{os.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM")
    except ImportError:
        row("cpu", True, f"{os.cpu_count()} logical cores")
    try:
        from emstream.backends import backend_report

        for b in backend_report():
            row(f"backend {b.get('name')}", bool(b.get("available")), str(b.get("detail", "")))
        auto = make_segmenter("auto")
        row("segmenter auto", True, f"→ {auto.name}" + (
            "" if auto.name != "classical" else
            " (the shipped model is not the automatic default or cannot run here;"
            " --segmenter learned runs it)"))
    except ImportError as exc:
        row("backends", False, f"backend report unavailable: {exc}")
    except Exception as exc:  # noqa: BLE001
        row("backends", False, f"backend report failed: {exc!r}")
    try:
        from emstream.gui import display_available, window_problem

        if display_available():
            why = window_problem()  # actually start Qt (in a child process)
            row("display", why is None, "window available" if why is None
                else f"{why}; demo and watch fall back to the terminal view")
        else:
            row("display", False, "no display: the terminal view is used (--gui with "
                "QT_QPA_PLATFORM=offscreen renders anyway)")
    except ImportError as exc:
        row("display", False, f"GUI not installed: {exc}")
    try:
        from emstream.sources.readers import SUPPORTED_SUFFIXES, format_report

        row("watched suffixes", True, " ".join(sorted(SUPPORTED_SUFFIXES)))
        for f in format_report():
            row(f"reader {f['name']}", bool(f["available"]), str(f["detail"]))
    except ImportError as exc:
        row("file readers", False, str(exc))
    for command, module, extra in (("reprocess", "distributed", "cluster"),
                                   ("hub page", "aiohttp", "hub")):
        try:
            mod = __import__(module)
            row(command, True, f"{module} {getattr(mod, '__version__', '')}".strip())
        except ImportError:
            row(command, False, f"{module} not installed (pip install emstream[{extra}])")
    try:
        import tensorrt  # type: ignore[import-not-found]

        row("tensorrt", True, tensorrt.__version__)
    except ImportError:
        row("tensorrt", False, "TensorRT Python package not installed (comes from NVIDIA); other backends are used")
    out.print(t)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="emstream")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        err.print(str(code))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# commands in their own modules (one per command family)
from emstream.cli_reprocess import register as _register_reprocess  # noqa: E402

_register_reprocess(app)
from emstream.cli_hub import register as _register_hub  # noqa: E402

_register_hub(app)
