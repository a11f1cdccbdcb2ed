"""Rules file validation (errors name file, line and field) and rule evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emstream.errors import ConfigError
from emstream.process.rules import RuleEngine, RuleSet, snapshot_name
from tests.process.test_rules_helpers import result, table

ISSUE_EXAMPLE = """\
[[rules]]
name = "large particles"
severity = "warning"                        # info | warning | critical
particles.equivalent_diameter_nm = [15, 40] # ranges over measured fields; either bound may be omitted
particles.roundness = [0.7, 1.0]
min_count = 1        # matching particles needed in one frame
for_frames = 2       # consecutive frames before it fires (debounce)
clear_frames = 3     # consecutive non-matching frames before it can fire again (hysteresis)
cooldown_s = 30
actions = ["banner", "sound", "snapshot", "publish"]

[[rules]]
name = "crowded"
frame.coverage = [0.35, 1.0]                # frame-level conditions: count, coverage, D50, …
frame.d50_change_vs_baseline = [0.2, 1.0]   # relative change against the first N frames
for_frames = 3
"""


def test_issue_example_parses_exactly():
    rs = RuleSet.from_toml_text(ISSUE_EXAMPLE)
    large, crowded = rs.rules
    assert large.name == "large particles" and large.severity == "warning"
    assert (
        large.particles["equivalent_diameter_nm"].lo,
        large.particles["equivalent_diameter_nm"].hi,
    ) == (15, 40)
    assert large.particles["roundness"].lo == 0.7
    assert (large.min_count, large.for_frames, large.clear_frames, large.cooldown_s) == (
        1,
        2,
        3,
        30.0,
    )
    assert large.actions == ("banner", "sound", "snapshot", "publish")
    assert large.line == 1
    assert crowded.frame["coverage"].lo == 0.35
    assert crowded.frame["d50_change_vs_baseline"].hi == 1.0
    assert crowded.for_frames == 3 and crowded.severity == "warning"
    assert crowded.line == 12
    assert rs.baseline_frames == 10


def test_open_bounds_tables_and_inf():
    rs = RuleSet.from_toml_text(
        """
[[rules]]
name = "big"
particles.equivalent_diameter_nm = {min = 15}
particles.aspect_ratio = [-inf, 2]
particles.touches_border = false
[[rules]]
name = "small"
[rules.particles]
equivalent_diameter_nm = {max = 5}
"""
    )
    big, small = rs.rules
    r = big.particles["equivalent_diameter_nm"]
    assert r.lo == 15 and math.isinf(r.hi)
    assert math.isinf(big.particles["aspect_ratio"].lo)
    assert big.particles["touches_border"].hi == 0
    assert small.particles["equivalent_diameter_nm"].hi == 5


@pytest.mark.parametrize(
    "old,new,line,field",
    [
        ("for_frames = 3", "for_frame = 3", 16, "for_frame"),
        (
            "particles.roundness = [0.7, 1.0]",
            "particles.roundnes = [0.7, 1.0]",
            5,
            "particles.roundnes",
        ),
        ("frame.coverage = [0.35, 1.0]", "frame.coverage = [1.35, 1.0]", 14, "frame.coverage"),
        ('"snapshot", "publish"]', '"snapshot", "pubish"]', 10, "actions"),
        ('severity = "warning" ', 'severity = "urgent" ', 3, "severity"),
        ("cooldown_s = 30", "cooldown_s = -1", 9, "cooldown_s"),
        ("for_frames = 2 ", "for_frames = 0 ", 7, "for_frames"),
        (
            "particles.roundness = [0.7, 1.0]",
            "particles.roundness = [0.7]",
            5,
            "particles.roundness",
        ),
        (
            "particles.roundness = [0.7, 1.0]",
            "particles.roundness = [0.7, nan]",
            5,
            "particles.roundness",
        ),
        (
            "particles.roundness = [0.7, 1.0]",
            "particles.roundness = {min = 0.7, mx = 1}",
            5,
            "particles.roundness",
        ),
        (
            "frame.d50_change_vs_baseline",
            "frame.d5O_change_vs_baseline",
            15,
            "frame.d5O_change_vs_baseline",
        ),
        ('name = "crowded"', 'name = "large particles"', 13, "name"),
    ],
)
def test_errors_name_file_line_and_field(old, new, line, field):
    assert old in ISSUE_EXAMPLE
    with pytest.raises(ConfigError) as ei:
        RuleSet.from_toml_text(ISSUE_EXAMPLE.replace(old, new, 1), "lab/rules.toml")
    msg = str(ei.value)
    assert msg.startswith(f"lab/rules.toml:{line}: "), msg
    assert f".{field}:" in msg, msg


def test_syntax_error_names_file_and_line():
    with pytest.raises(ConfigError, match=r"^r\.toml:3: TOML syntax error"):
        RuleSet.from_toml_text('[[rules]]\nname = "x"\nparticles.area_px = [1, \n', "r.toml")


def test_other_validation_errors():
    for text, match in [
        ('[[rules]]\nname = "x"\n', "at least one"),
        ('[[rules]]\nseverity = "info"\nframe.count = [1, 2]\n', "name"),
        ('[[rules]]\nname = "x"\nframe.count = [1, 2]\ncommand = ["echo"]\n', "opted in"),
        ('[[rules]]\nname = "x"\nframe.count = [1, 2]\nactions = ["command"]\n', "command ="),
        ("baseline_frames = 0\n", "baseline_frames"),
        ("rulez = []\n", "did you mean 'rules'"),
        ('[[rules]]\nname = "x"\nparticles.label = "big"\n', "expected"),
    ]:
        with pytest.raises(ConfigError, match=match):
            RuleSet.from_toml_text(text)


def test_particle_rule_fires_after_for_frames_with_matching_labels():
    rs = RuleSet.from_toml_text(ISSUE_EXAMPLE)
    eng = RuleEngine(rs)
    big = table(equivalent_diameter_nm=[5.0, 20.0, 30.0, 50.0], roundness=[1.0, 0.9, 0.5, 1.0])
    small = table(equivalent_diameter_nm=[5.0, 6.0], roundness=[1.0, 1.0])
    assert eng.evaluate(result(0, small)) == []
    assert eng.evaluate(result(1, big)) == []  # debounce: 1 of 2
    (alert,) = eng.evaluate(result(2, big))
    assert alert.rule == "large particles" and alert.seq == 2 and alert.severity == "warning"
    assert alert.particle_labels == [2]  # 30 nm is not round enough, 50 nm too big
    assert alert.actions == ["banner", "sound", "snapshot", "publish"]
    assert alert.snapshot == "snapshots/alert_000002_large_particles.png"
    assert alert.t == 2.0 and "1 particle" in alert.message
    assert eng.last["large particles"].count == 1
    np.testing.assert_array_equal(eng.matching(big), [False, True, False, False])
    assert eng.evaluate(result(3, big)) == []  # disarmed


def test_frame_only_rule_without_particles_and_count_zero():
    eng = RuleEngine(RuleSet.from_toml_text('[[rules]]\nname = "empty"\nframe.count = [0, 0]\n'))
    (a,) = eng.evaluate(result(0, table(equivalent_diameter_nm=[]), count=0))
    assert a.particle_labels == [] and a.rule == "empty"


def test_baseline_change_rule():
    rs = RuleSet.from_toml_text(
        'baseline_frames = 3\n[[rules]]\nname = "growth"\nframe.d50_change_vs_baseline = [0.2, inf]\n'
    )
    eng = RuleEngine(rs)
    # The baseline is 10 nm; a jump before the baseline exists cannot match.
    fired = [bool(eng.evaluate(result(i, d50=d))) for i, d in enumerate([10, 10, 10, 11, 12.5, 13])]
    assert fired == [False, False, False, False, True, False]
    assert eng.last["growth"].matched  # 13 is still +30 %, but the rule is disarmed


def test_uncalibrated_frames_do_not_fire_nm_rules_and_say_so_once(caplog):
    rs = RuleSet.from_toml_text(
        '[[rules]]\nname = "big"\nparticles.equivalent_diameter_nm = [15, 40]\n'
        '[[rules]]\nname = "big px"\nparticles.equivalent_diameter_nm = [15, 40]\nuncalibrated = "pixels"\n'
        '[[rules]]\nname = "round"\nparticles.roundness = [0.5, 1]\n'
    )
    eng = RuleEngine(rs)
    p = table(equivalent_diameter_nm=[20.0], roundness=[0.9])
    fired = {a.rule for a in eng.evaluate(result(0, p, nm_per_px=None))}
    assert fired == {"big px", "round"}
    assert eng.last["big"].skipped == "uncalibrated"
    eng.evaluate(result(1, p, nm_per_px=None))
    assert len(eng.notes) == 1 and "big" in eng.notes[0]
    assert eng.matching(p, unit="px")[0]


def test_nan_values_never_match():
    eng = RuleEngine(
        RuleSet.from_toml_text('[[rules]]\nname = "r"\nparticles.solidity = [-inf, inf]\n')
    )
    p = table(solidity=[float("nan")])
    assert eng.evaluate(result(0, p)) == []


def test_snapshot_name_is_sanitised():
    assert snapshot_name(7, "../../etc/passwd x") == "snapshots/alert_000007_etc_passwd_x.png"
    assert snapshot_name(None, "///") == "snapshots/alert_none_rule.png"


def test_adopt_state_keeps_rules_from_refiring():
    text = '[[rules]]\nname = "r"\nframe.count = [1, inf]\nclear_frames = 2\n'
    a = RuleEngine(RuleSet.from_toml_text(text))
    assert a.evaluate(result(0, count=3))
    b = RuleEngine(RuleSet.from_toml_text(text.replace("clear_frames = 2", "clear_frames = 1")))
    b.adopt_state(a)
    assert b.evaluate(result(1, count=3)) == []
    assert b.state("r")["fired"] == 1
