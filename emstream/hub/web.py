"""The hub's web page (aiohttp), served on loopback unless told otherwise; read-only.

Routes, all GET: ``/`` the page, ``/fragment`` the monitors (the page's script swaps them in
every two seconds), ``/api/state`` the same as JSON for scripts, ``/hub.js``. A strict
Content-Security-Policy allows only this server's own script; nothing on the page can send
anything to a microscope, because the hub has no way to.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from emstream.errors import ConfigError
from emstream.hub.state import FacilityState
from emstream.sources.zmq import is_loopback

__all__ = ["WebServer", "render_fragment", "render_page", "sparkline"]

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("emstream.hub", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
)
_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; connect-src 'self'; "
                                "style-src 'unsafe-inline'; img-src 'self' data:"),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def sparkline(points: list[list[float]], unit: str = "", width: int = 340, height: int = 70) -> str:
    """The D50 trend as an inline SVG (a polyline; a note when there are no points yet)."""
    pts = sorted((t, d) for t, d in points if math.isfinite(t) and math.isfinite(d))
    if len(pts) < 2:
        return (f'<svg class="trend" viewBox="0 0 {width} {height}"><text x="8" y="{height // 2}" '
                'fill="#9aa5b1" font-size="12">D50 trend: waiting for frames</text></svg>')
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    sx = (width - 50) / max(t1 - t0, 1e-9)
    sy = (height - 16) / (hi - lo)
    xy = " ".join(f"{45 + (t - t0) * sx:.1f},{height - 8 - (d - lo) * sy:.1f}" for t, d in pts)
    u = jinja2.filters.escape(unit)
    return (f'<svg class="trend" viewBox="0 0 {width} {height}">'
            f'<text x="2" y="12" fill="#52606d" font-size="10">{hi:.3g}</text>'
            f'<text x="2" y="{height - 4}" fill="#52606d" font-size="10">{lo:.3g} {u}</text>'
            f'<polyline fill="none" stroke="#1f4e79" stroke-width="1.6" points="{xy}"/></svg>')


def render_fragment(snapshot: dict[str, Any]) -> str:
    monitors = []
    for m in snapshot["monitors"]:
        m = dict(m)
        m["sparkline"] = sparkline(m["d50_trend"], m["last_frame"].get("unit") or "")
        monitors.append(m)
    return _env.get_template("monitors.html.j2").render(
        monitors=monitors, rejected=snapshot["rejected"],
        last_rejection=snapshot["last_rejection"],
        clock=time.strftime("%H:%M:%S", time.localtime(snapshot["t"])))


def render_page(snapshot: dict[str, Any]) -> str:
    return _env.get_template("hub.html.j2").render(fragment=render_fragment(snapshot))


def make_app(state: FacilityState) -> web.Application:
    script = resources.files("emstream.hub").joinpath("templates/hub.js").read_text("utf-8")

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=render_page(state.snapshot()), content_type="text/html",
                            headers=_HEADERS)

    async def fragment(_: web.Request) -> web.Response:
        return web.Response(text=render_fragment(state.snapshot()), content_type="text/html",
                            headers=_HEADERS)

    async def api(_: web.Request) -> web.Response:
        return web.json_response(state.snapshot(), headers=_HEADERS)

    async def js(_: web.Request) -> web.Response:
        return web.Response(text=script, content_type="application/javascript", headers=_HEADERS)

    app = web.Application()
    app.add_routes([web.get("/", page), web.get("/fragment", fragment),
                    web.get("/api/state", api), web.get("/hub.js", js)])
    return app


class WebServer:
    """Serves the page on ``host:port`` from a thread of its own (``port`` 0: any free one).

    Raises
    ------
    ConfigError
        a non-loopback ``host`` without ``allow_remote``, or a port that cannot be bound.
    """

    def __init__(self, state: FacilityState, host: str = "127.0.0.1", port: int = 8750, *,
                 allow_remote: bool = False) -> None:
        if not allow_remote and not is_loopback(host.strip("[]")):
            raise ConfigError(f"the hub page serves on loopback by default; {host} is not "
                              "(--web-allow-remote on a trusted network)")
        self.state, self.host, self.port = state, host, int(port)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hub-web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise ConfigError(f"cannot serve the hub page on {self.host}:{self.port}: "
                              f"{self._error}") from self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(make_app(self.state), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            self.port = int(self._runner.addresses[0][1])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
