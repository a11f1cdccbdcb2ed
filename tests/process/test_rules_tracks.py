"""Rules on tracks and tracking events: validation, counting windows, debounce, units."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emstream.errors import ConfigError
from emstream.frame import Calibration, Frame
from emstream.process.rules import RuleEngine, RuleSet
from emstream.process.track import TrackSummary
from emstream.results import Event, FrameResult, FrameSummary, empty_particle_table


def result(seq: int, t: float, unit: str = "nm") -> FrameResult:
    cal = Calibration((0.5, 0.5), "file") if unit == "nm" else Calibration.none()
    frame = Frame(pixels=np.zeros((8, 8), np.uint16), source_id=f"f{seq}", t_acq=t, t_arrival=t,
                  calibration=cal, seq=seq)
    return FrameResult(frame=frame, particles=empty_particle_table(),
                       summary=FrameSummary(count=0, coverage=0.0, unit=unit), backend="test")


def summary(tid: int, rate: float, seen: int = 20) -> TrackSummary:
    return TrackSummary(track_id=tid, first_seq=0, last_seq=seen - 1, frames_seen=seen,
                        t_first=0.0, t_last=seen * 0.5, d_start=5.0, d_end=5.0 + rate * seen * 0.5,
                        growth_rate=rate, mean_speed=0.1, began="nucleated", ended="active",
                        unit="nm")


def coalescence(seq: int, ids=(1, 2)) -> Event:
    return Event("coalescence", "merge", data={"seq": seq, "tracks": list(ids), "into": ids[0]})


def engine(text: str) -> RuleEngine:
    return RuleEngine(RuleSet.from_toml_text(text))


def test_track_rule_fires_on_enough_matching_tracks_and_names_them():
    eng = engine('''
[[rules]]
name = "fast growers"
tracks.growth_rate_nm_per_s = [0.5, 10]
tracks.frames_seen = {min = 10}
min_count = 2
''')
    assert eng.evaluate_tracks(result(0, 0.0), [], [summary(1, 0.7), summary(2, 0.1)]) == []
    (a,) = eng.evaluate_tracks(result(1, 0.5), [], [summary(1, 0.7), summary(3, 2.0)])
    assert a.rule == "fast growers" and "#1" in a.message and "#3" in a.message
    # not re-fired while still matching (disarmed until a non-matching frame)
    assert eng.evaluate_tracks(result(2, 1.0), [], [summary(1, 0.7), summary(3, 2.0)]) == []
    # per-frame rules ignore it
    assert eng.evaluate(result(3, 1.5)) == []


def test_track_rules_in_nm_do_not_fire_on_uncalibrated_frames():
    eng = engine('[[rules]]\nname = "g"\ntracks.growth_rate_nm_per_s = {min = 0.5}\n')
    assert eng.evaluate_tracks(result(0, 0.0, unit="px"), [], [summary(1, 3.0)]) == []


def test_event_rule_counts_within_the_window():
    eng = engine('''
[[rules]]
name = "sintering burst"
events.kind = "coalescence"
events.count = [3, inf]
events.window_s = 10
''')
    fired = []
    for k in range(12):
        evs = [coalescence(k)] if k in (0, 4, 13) else []
        fired += eng.evaluate_tracks(result(k, float(k)), evs, [])
    assert fired == []  # two in 10 s
    fired = eng.evaluate_tracks(result(12, 12.0), [coalescence(12), coalescence(12, (5, 6))], [])
    assert len(fired) == 1 and "3 coalescence events in 10 s" in fired[0].message
    assert "#5" in fired[0].message


def test_event_rule_without_window_matches_the_frames_own_events():
    eng = engine('[[rules]]\nname = "any nucleation"\nevents.kind = "nucleation"\n')
    ev = Event("nucleation", "n", data={"seq": 3, "tracks": [9]})
    assert eng.evaluate_tracks(result(0, 0.0), [], []) == []
    assert len(eng.evaluate_tracks(result(1, 1.0), [ev], [])) == 1
    assert eng.evaluate_tracks(result(2, 2.0), [coalescence(2)], []) == []


@pytest.mark.parametrize("body, message", [
    ('tracks.growth_rate = [0, 1]', "unknown track field"),
    ('events.kind = "merger"', "must be one of coalescence"),
    ('events.kind = "coalescence"\nevents.span = 3', "unknown events key"),
    ('events.kind = "coalescence"\nevents.window_s = -1', "seconds"),
    ('tracks.frames_seen = [5, 1]', "lower bound"),
    ('tracks.frames_seen = {min = 5}\nframe.count = [1, inf]', "one family"),
])
def test_bad_track_and_event_rules_are_refused_with_the_line(body, message):
    with pytest.raises(ConfigError, match=message):
        RuleSet.from_toml_text(f'[[rules]]\nname = "r"\n{body}\n')


def test_describe_says_what_a_track_rule_checks():
    rs = RuleSet.from_toml_text('[[rules]]\nname = "b"\nevents.kind = "coalescence"\n'
                                'events.count = [2, inf]\nevents.window_s = 30\n')
    assert rs.rules[0].describe() == "coalescence events ≥ 2 in 30 s"
    assert math.isinf(rs.rules[0].event_count.hi)


def test_alert_text_is_in_words_with_the_unit_only_for_lengths():
    """Issue 21 item 16: no internal field names, no "(nm)" after a unitless roundness."""
    from emstream.results import PARTICLE_COLUMNS

    res = result(0, 0.0)
    n = 3
    res.particles = {c: np.zeros(n, dtype=dt) for c, (dt, _) in PARTICLE_COLUMNS.items()}
    res.particles["equivalent_diameter_nm"][:] = [20.0, 25.0, 3.0]
    res.particles["roundness"][:] = [0.9, 0.9, 0.9]
    eng = engine('[[rules]]\nname = "big"\nparticles.equivalent_diameter_nm = [15, 40]\n'
                 'particles.roundness = {min = 0.6}\n\n'
                 '[[rules]]\nname = "round"\nparticles.roundness = {min = 0.6}\n')
    big, rnd = eng.evaluate(res)
    assert big.message == ("big: 2 particles with equivalent diameter 15–40, roundness ≥ 0.6 (nm) "
                           "(frame 0)")
    assert rnd.message == "round: 3 particles with roundness ≥ 0.6 (frame 0)"
