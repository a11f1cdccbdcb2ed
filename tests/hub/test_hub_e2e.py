"""emstream hub end to end (issue 23 item 4): three real monitors (`emstream demo --publish`
processes), the hub's subscriber and web page, a real headless Chromium screenshot; a monitor
killed and restarted; a non-loopback endpoint without keys refused; CURVE on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("aiohttp")

from emstream.cli import main  # noqa: E402
from emstream.errors import ConfigError  # noqa: E402
from emstream.hub.state import FacilityState  # noqa: E402
from emstream.hub.subscriber import Subscriber  # noqa: E402
from emstream.hub.web import WebServer  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _monitor(port: int, tmp, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emstream", "demo", "--headless", "--frames", "400", "--fps", "3",
         "--seed", str(port % 97),
         "--size", "320", "--segmenter", "classical", "--no-report",
         "--publish", f"tcp://127.0.0.1:{port}", "--session-dir", str(tmp / name)],
        stdout=subprocess.DEVNULL, stderr=(tmp / f"{name}.log").open("wb"),
        start_new_session=True)


def _wait(pred, timeout: float, what: str, state) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred(state.snapshot()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: {json.dumps(state.snapshot())[:2000]}")


def _statuses(snap) -> dict[str, str]:
    return {m["name"]: m["status"] for m in snap["monitors"]}


@pytest.mark.timeout(400)
def test_hub_shows_three_monitors_and_survives_one_dying(tmp_path, artifacts_dir):
    ports = {f"tem{k}": _port() for k in (1, 2, 3)}
    procs = {n: _monitor(p, tmp_path, n) for n, p in ports.items()}
    state = FacilityState({n: f"tcp://127.0.0.1:{p}" for n, p in ports.items()}, alive_s=3.0)
    sub = Subscriber(state, {n: f"tcp://127.0.0.1:{p}" for n, p in ports.items()}).start()
    web = WebServer(state, "127.0.0.1", 0).start()
    try:
        _wait(lambda s: all(m["status"] == "alive" and len(m["d50_trend"]) >= 6
                            for m in s["monitors"]), 180, "three monitors alive", state)
        # the web page and its JSON, over real HTTP
        with urllib.request.urlopen(web.url + "api/state", timeout=10) as r:
            api = json.loads(r.read())
        assert {m["name"] for m in api["monitors"]} == set(ports)
        with urllib.request.urlopen(web.url, timeout=10) as r:
            html = r.read().decode()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert all(n in html for n in ports) and "<svg" in html
        req = urllib.request.Request(web.url + "api/state", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)  # read-only: nothing accepts a write
        assert e.value.code == 405
        exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
        if exe is not None:
            shot = artifacts_dir / "hub_three_monitors.png"
            shot.unlink(missing_ok=True)
            subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--hide-scrollbars",
                            "--window-size=1200,520", "--virtual-time-budget=3000",
                            f"--screenshot={shot}", web.url], capture_output=True, timeout=120)
            import cv2

            img = cv2.imread(str(shot))
            assert img is not None and img.shape[:2] == (520, 1200)
            b, g, r = (int(v) for v in img[25, 600])
            assert b > r  # the header band drew: a page, not a blank
        # one monitor dies: shown silent, the others stay alive; it comes back: alive again
        os.killpg(procs["tem2"].pid, signal.SIGKILL)
        procs["tem2"].wait(10)
        _wait(lambda s: _statuses(s) == {"tem1": "alive", "tem2": "silent", "tem3": "alive"},
              30, "tem2 silent", state)
        procs["tem2"] = _monitor(ports["tem2"], tmp_path, "tem2b")
        _wait(lambda s: _statuses(s)["tem2"] == "alive" and s["monitors"][1]["processed"] >= 2,
              120, "tem2 back", state)
        assert state.snapshot()["rejected"] == 0
    finally:
        web.close()
        sub.close()
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


def test_non_loopback_endpoint_without_keys_is_refused(tmp_path):
    state = FacilityState({"far": "tcp://192.0.2.10:5556"})
    with pytest.raises(ConfigError, match="not on loopback"):
        Subscriber(state, {"far": "tcp://192.0.2.10:5556"})
    assert main(["hub", "far=tcp://192.0.2.10:5556", "--no-web", "--exit-after", "0"]) == 2
    assert main(["hub", "tcp://127.0.0.1:5556", "--web", "0.0.0.0:0", "--exit-after", "0"]) == 2


def test_hub_command_runs_and_prints_the_table(capfd):
    from emstream.cli import main

    assert main(["hub", "tem1=tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557", "--web",
                 "127.0.0.1:0", "--exit-after", "0.5"]) == 0
    said = capfd.readouterr().err
    assert "hub page: http://127.0.0.1:" in said and "tem1" in said and "m2" in said
    assert "waiting" in said


def test_curve_publisher_and_hub(tmp_path):
    """A monitor publishing with CURVE and an allow-list; the hub with its keys reads it, a
    subscriber without the keys reads nothing."""
    import zmq
    import zmq.auth

    from emstream.sinks.base import Session
    from emstream.sinks.publish import Publisher

    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    _, mon_secret = zmq.auth.create_certificates(keys, "monitor")
    hub_public, hub_secret = zmq.auth.create_certificates(keys, "hub")
    shutil.copy(hub_public, allowed)
    pub = Publisher("tcp://127.0.0.1:0", curve_keys=mon_secret, curve_allow=allowed,
                    heartbeat_s=0.1)
    ep = pub.endpoint
    pub.open(Session(tmp_path, "test", "x"))
    with pytest.raises(ConfigError, match="not a loopback address"):
        Publisher("tcp://0.0.0.0:0")  # off loopback without CURVE: refused
    good = FacilityState({"tem": ep})
    bad = FacilityState({"tem": ep})
    sub = Subscriber(good, {"tem": ep}, curve_keys=hub_secret,
                     curve_servers={"tem": keys / "monitor.key"}).start()
    plain = Subscriber(bad, {"tem": ep}).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and good.snapshot()["monitors"][0]["status"] != "alive":
            pub.flush()  # heartbeats
            time.sleep(0.1)
        assert good.snapshot()["monitors"][0]["status"] == "alive"
        assert bad.snapshot()["monitors"][0]["status"] == "waiting"
    finally:
        sub.close()
        plain.close()
        pub.close()
