"""ActionsSink: log line, snapshot PNG (either arrival order), opt-in command hook without a shell."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from emstream.process.rules import RuleEngine, RuleSet
from emstream.results import FrameRecord
from emstream.sinks.actions import ActionsSink, render_snapshot
from emstream.sinks.base import Session
from tests.process.test_rules_helpers import disk_labels, result

try:
    from emstream.process.measure import measure
except ImportError:  # pragma: no cover
    measure = None

RULES = """
[[rules]]
name = "big ones"
particles.equivalent_diameter_nm = [15, 60]
actions = ["log", "snapshot", "command"]
command = ["{python}", "-c", "import sys; open('hook.txt', 'w').write(' '.join(sys.argv[1:]))", "{rule}", "{seq}", "{snapshot}"]
"""


def measured_frame(seq: int, shape=(200, 200)):
    from emstream.frame import Calibration

    labels = disk_labels([(50, 50, 6), (120, 130, 30), (160, 40, 4)], shape)
    raw = np.where(labels > 0, 300, 1000).astype(np.uint16) + np.random.default_rng(seq).integers(
        0, 80, shape
    ).astype(np.uint16)
    p = measure(labels, raw, Calibration((0.5, 0.5), "override"))
    r = result(seq, p, t=float(seq))
    r.frame.pixels = raw
    r.labels = labels
    return r


def test_snapshot_log_and_hook(tmp_path, artifacts_dir):
    if measure is None:
        import pytest

        pytest.skip("measure not available")
    rs = RuleSet.from_toml_text(RULES.replace("{python}", sys.executable.replace("\\", "/")))
    eng = RuleEngine(rs)
    sink = ActionsSink(tmp_path, rules=eng)
    sink.open(Session(tmp_path, "test", "classical"))
    r = measured_frame(3)
    (alert,) = eng.evaluate(r)
    assert alert.particle_labels == [2]
    # alert first, frame later: the snapshot waits for the frame
    sink.alert(alert)
    assert sink.snapshots == []
    sink.frame_done(FrameRecord(3, "sim/3", "ok", 3.0, result=r))
    (png,) = sink.snapshots
    assert png == tmp_path / "snapshots" / "alert_000003_big_ones.png"
    img = cv2.imread(str(png))
    assert img.shape[0] >= 600 and img.shape[2] == 3
    orange = (img[..., 2] > 200) & (img[..., 1] > 100) & (img[..., 1] < 180) & (img[..., 0] < 60)
    assert orange.sum() > 100  # the big particle is outlined
    (artifacts_dir / "alert_snapshot.png").write_bytes(png.read_bytes())

    assert sink.wait_commands(60)
    argv, rc, _ = sink.command_results[0]
    assert rc == 0
    written = (tmp_path / "hook.txt").read_text()
    assert written.startswith("big ones 3 ")  # the rule name stays ONE argument: no shell splitting
    assert len((tmp_path / "alerts.log").read_text().splitlines()) == 1
    sink.close()


def test_frame_first_then_alert_and_no_labels_fallback(tmp_path):
    r = result(5, None, t=5.0)
    from tests.process.test_rules_helpers import table

    r.particles = table(
        equivalent_diameter_nm=[20.0],
        bbox_min_y_px=[1],
        bbox_min_x_px=[1],
        bbox_max_y_px=[3],
        bbox_max_x_px=[3],
    )
    r.frame.pixels = np.arange(16, dtype=np.uint16).reshape(4, 4)
    sink = ActionsSink(tmp_path)
    sink.frame_done(FrameRecord(5, "s", "ok", 5.0, result=r))
    from emstream.results import Alert

    a = Alert("x/../../evil", "info", 5, "m", particle_labels=[1], actions=["snapshot"])
    a.snapshot = "../../outside.png"  # never honoured outside SESSION/snapshots
    sink.alert(a)
    (png,) = sink.snapshots
    assert (
        png.parent == (tmp_path / "snapshots").resolve() and png.name == "alert_000005_x_evil.png"
    )


def test_hook_timeout_and_concurrency_limit(tmp_path):
    rs = RuleSet.from_toml_text(
        '[[rules]]\nname = "slow"\nframe.count = [0, inf]\nactions = ["command"]\n'
        f'command = ["{sys.executable.replace(chr(92), "/")}", "-c", "import time; time.sleep(30)"]\n'
    )
    from emstream.results import Alert

    sink = ActionsSink(tmp_path, rules=rs, command_timeout_s=0.5, max_commands=1)
    sink.alert(Alert("slow", "info", 1, "m", actions=["command"]))
    sink.alert(Alert("slow", "info", 2, "m", actions=["command"]))  # skipped: one is running
    assert sink.wait_commands(30)
    results = sorted(sink.command_results, key=lambda x: x[2])
    assert [rc for _, rc, _ in results] == [None, None]
    assert any("skipped" in out for _, _, out in results)


def test_disabled_hooks_do_not_run(tmp_path):
    rs = RuleSet.from_toml_text(
        '[[rules]]\nname = "r"\nframe.count = [0, inf]\nactions = ["command"]\ncommand = ["definitely-not-a-program"]\n'
    )
    from emstream.results import Alert

    sink = ActionsSink(tmp_path, rules=rs, allow_commands=False)
    sink.alert(Alert("r", "info", 1, "m", actions=["command"]))
    assert sink.wait_commands(5) and sink.command_results == []


def test_render_uncalibrated_has_no_scale_bar_text_crash():
    r = result(1, None, nm_per_px=None)
    r.frame.pixels = np.zeros((50, 80), np.uint16)
    img = render_snapshot(r, caption="c")
    assert img.dtype == np.uint8 and img.ndim == 3


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_hook_timeout_ends_what_the_hook_started(tmp_path):
    """A hook that starts a child of its own: the timeout must end both (issue 21 item 8)."""
    import os
    import time

    from emstream.results import Alert

    script = tmp_path / "hook.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    exe = sys.executable.replace(chr(92), "/")
    rs = RuleSet.from_toml_text(
        '[[rules]]\nname = "slow"\nframe.count = [0, inf]\nactions = ["command"]\n'
        f'command = ["{exe}", "{script.as_posix()}"]\n')
    sink = ActionsSink(tmp_path, rules=rs, command_timeout_s=1.5)
    sink.alert(Alert("slow", "info", 1, "m", actions=["command"]))
    assert sink.wait_commands(30)
    pid = int((tmp_path / "child.pid").read_text())
    for _ in range(50):  # reaped by init shortly after the kill
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("the hook's child outlived the timeout")
