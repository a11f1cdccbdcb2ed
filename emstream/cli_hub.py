"""``emstream hub``: a read-only view of every monitor's published summaries (terminal + web).

Registered on the main CLI (:mod:`emstream.cli`); the work itself is :mod:`emstream.hub`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from emstream.cli import _fail, _missing, err
from emstream.errors import ConfigError

__all__ = ["register"]


def _named(items: list[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` or bare ``VALUE`` (named ``m1``, ``m2`` ... for endpoints)."""
    out: dict[str, str] = {}
    for k, item in enumerate(items, start=1):
        name, sep, value = item.partition("=")
        if not sep:
            if what != "endpoint":
                raise _fail(f"--curve-server {item!r}: expected NAME=FILE", 2)
            name, value = f"m{k}", item
        name = name.strip()
        if not name or name in out:
            raise _fail(f"{what} {item!r}: empty or repeated name", 2)
        out[name] = value.strip()
    return out


def hub(
    endpoints: Annotated[list[str], typer.Argument(
        metavar="[NAME=]ENDPOINT...", help="Monitors' --publish endpoints, e.g. "
        "tem1=tcp://127.0.0.1:5556.")],
    web: Annotated[str, typer.Option("--web", metavar="HOST:PORT",
                                     help="Serve the page here (loopback by default).")
                   ] = "127.0.0.1:8750",
    no_web: Annotated[bool, typer.Option("--no-web", help="Terminal view only.")] = False,
    web_allow_remote: Annotated[bool, typer.Option(
        "--web-allow-remote", help="Serve the page on a non-loopback address.")] = False,
    curve_keys: Annotated[Path | None, typer.Option(
        "--curve-keys", exists=True, dir_okay=False,
        help="The hub's CURVE secret certificate (for monitors not on loopback).")] = None,
    curve_server: Annotated[list[str] | None, typer.Option(
        "--curve-server", metavar="NAME=FILE",
        help="A monitor's public certificate (repeat per non-loopback monitor).")] = None,
    exit_after: Annotated[float | None, typer.Option(
        "--exit-after", metavar="SECONDS", min=0.0, help="Stop after this long.")] = None,
) -> None:
    """Read-only facility view: every monitor's latest frame, D50 trend, alerts and whether it
    is alive, in the terminal and on a web page."""
    try:
        from rich.live import Live

        from emstream.hub.state import FacilityState
        from emstream.hub.subscriber import Subscriber
        from emstream.hub.terminal import monitors_table
    except ImportError as exc:
        raise _missing("the hub (install emstream[hub])", exc) from exc
    monitors = _named(endpoints, "endpoint")
    servers = _named(curve_server or [], "curve-server")
    unknown = set(servers) - set(monitors)
    if unknown:
        raise _fail(f"--curve-server for unknown monitor(s): {', '.join(sorted(unknown))}", 2)
    state = FacilityState(monitors)
    try:
        sub = Subscriber(state, monitors, curve_keys=curve_keys, curve_servers=servers)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from exc
    server = None
    try:
        if not no_web:
            try:
                from emstream.hub.web import WebServer
            except ImportError as exc:
                raise _missing("the hub page (install emstream[hub]; or --no-web)", exc) from exc
            host, _, port = web.rpartition(":")
            if not port.isdigit():
                raise _fail(f"--web {web!r}: expected HOST:PORT", 2)
            try:
                server = WebServer(state, host.strip("[]") or "127.0.0.1", int(port),
                                   allow_remote=web_allow_remote).start()
            except ConfigError as exc:
                raise _fail(str(exc), 2) from exc
            err.print(f"hub page: {server.url}")
        sub.start()
        err.print(f"hub: reading {len(monitors)} monitor(s): "
                  + ", ".join(f"{n}={e}" for n, e in monitors.items()), highlight=False)
        stop = threading.Event()
        deadline = None if exit_after is None else time.monotonic() + exit_after
        try:
            if err.is_terminal:
                with Live(monitors_table(state.snapshot()), console=err,
                          refresh_per_second=1) as live:
                    while not stop.wait(1.0) and (deadline is None or time.monotonic() < deadline):
                        live.update(monitors_table(state.snapshot()))
            else:
                last = 0.0
                while not stop.wait(0.5) and (deadline is None or time.monotonic() < deadline):
                    if time.monotonic() - last >= 30:
                        last = time.monotonic()
                        err.print(monitors_table(state.snapshot()))
        except KeyboardInterrupt:
            pass
        err.print(monitors_table(state.snapshot()))
    finally:
        if server is not None:
            server.close()
        sub.close()


def register(app: typer.Typer) -> None:
    app.command()(hub)
