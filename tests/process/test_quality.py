"""Frame state (issue 22): each kind of trouble recognised from the frame, judged against the
session's own good frames, with no false alarms on in-focus frames at any dose."""

from __future__ import annotations

import numpy as np
import pytest

from emstream.process.quality import STATES, QualityMonitor, StateAlerts, measure_quality
from emstream.sources.simulate import script
from emstream.sources.simulate.scene import Microscope, SceneConfig


def run(mode: str, dose: float, text: str, n: int = 40, seed: int = 3, size: int = 1024):
    scope = Microscope(SceneConfig(shape=(size, size), mode=mode, dose=dose, t0=0.0), seed=seed)
    events = script.parse_script(text)
    mon = QualityMonitor()
    got, want = [], []
    prev = None
    for k in range(n):
        script.before_frame(events, scope, k)
        f = scope.next_frame()
        want.append(script.apply(events, scope, f, k))
        off = np.array(f.stage_offset_px)
        step = None if prev is None else tuple(off - prev)
        prev = off
        got.append(mon.judge(f.image, f.valid, particles=len(f.particles), drift_step_px=step).state)
    return got, want


@pytest.mark.parametrize("mode", ["bf", "haadf"])
def test_every_scripted_state_is_recognised(mode):
    text = ("defocus:8-10,smear:12-14,blank:16-17,dim:19-20,jump:22,saturate:24-25,"
            "empty:27-29")
    got, want = run(mode, 400.0, text, n=32)
    assert got == want, list(zip(range(32), want, got, strict=True))
    assert set(want) == set(STATES)


@pytest.mark.parametrize("mode", ["bf", "haadf"])
@pytest.mark.parametrize("dose", [10.0, 100.0, 1000.0])
def test_no_false_alarm_on_in_focus_frames(mode, dose):
    got, _ = run(mode, dose, "", n=30, seed=11)
    assert got == ["ok"] * 30


def test_figures_are_dose_independent_and_bounded():
    scope = Microscope(SceneConfig(shape=(512, 512), mode="bf", dose=400.0, t0=0.0), seed=2)
    f = scope.next_frame()
    q = measure_quality(f.image, f.valid)
    assert set(q) >= {"dose", "saturated_share", "focus", "anisotropy", "blur_deg", "structure"}
    assert 0 <= q["anisotropy"] <= 1 and 0 <= q["blur_deg"] < 180 and q["saturated_share"] == 0


def test_state_alerts_fire_once_per_run_and_rearm():
    a = StateAlerts()
    fired = [x.rule for k, st in enumerate(["ok", "out_of_focus", "out_of_focus", "out_of_focus",
                                             "out_of_focus", "ok", "out_of_focus", "out_of_focus",
                                             "out_of_focus", "moved"])
             for x in a.check(k, st, {"focus_ratio": 0.2}, float(k))]
    assert fired == ["focus lost", "focus lost", "field moved"]


def test_script_is_validated():
    with pytest.raises(ValueError, match="unknown script effect"):
        script.parse_script("melt:3")
    with pytest.raises(ValueError, match="N <= M"):
        script.parse_script("defocus:9-3")
    assert script.state_at(script.parse_script("blank:2-3"), 3) == "beam_off"


def _table(areas, aspect=None, solidity=None):
    n = len(areas)
    return {"area_px": np.asarray(areas, float),
            "aspect_ratio": np.asarray(aspect if aspect is not None else [1.2] * n, float),
            "solidity": np.asarray(solidity if solidity is not None else [0.95] * n, float)}


def test_scene_says_what_the_frame_shows():
    """Issue 22 item 5: rods, a film, aggregates or nothing are named, not counted as particles."""
    from emstream.process.quality import scene_of

    assert scene_of(_table([]), 0.0) == "none"
    assert scene_of(_table([50, 60, 70, 55]), 0.1) == "particles"
    assert scene_of(_table([400, 380, 30], aspect=[6, 5, 1.1]), 0.1) == "rods"
    assert scene_of(_table([90000, 40, 30]), 0.8) == "film"
    assert scene_of(_table([5000, 4000, 50, 60, 40], solidity=[0.4, 0.5, 0.9, 0.9, 0.9]),
                    0.3) == "aggregates"
