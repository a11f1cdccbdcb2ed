"""Doubtful-segmentation flags: low confidence, count collapse, one alert per run of flagged frames."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from emstream.process.confidence import CONFIDENCE_LOW, SegmentationCheck, confidence_flag


def result(seq, count, confidence=None):
    return SimpleNamespace(seq=seq, summary=SimpleNamespace(count=count), confidence=confidence,
                           seg_flag=None)


def test_confidence_flag_only_below_the_threshold():
    assert confidence_flag(None) is None
    assert confidence_flag(float("nan")) is None
    assert confidence_flag(CONFIDENCE_LOW) is None
    assert confidence_flag(0.95) is None
    assert "low confidence 0.41" in confidence_flag(0.41)


def test_a_collapsed_count_is_flagged_and_raises_one_alert_per_run():
    check = SegmentationCheck(window=5)
    for k in range(6):
        r = result(k, 800 + k)
        assert check.check(r, 0.0) == [] and r.seg_flag is None
    r = result(6, 0)  # the classical baseline's zero-particle frame in a run of ~800
    alerts = check.check(r, 1.0)
    assert "count collapsed: 0 particles against a median of 80" in r.seg_flag
    assert [a.rule for a in alerts] == ["segmentation doubtful"] and alerts[0].builtin
    assert alerts[0].seq == 6 and alerts[0].severity == "warning"
    r = result(7, 12)
    assert check.check(r, 2.0) == [] and r.seg_flag  # still flagged, alert not repeated
    assert check.check(result(8, 790), 3.0) == []  # an unflagged frame re-arms
    r = result(9, 3)
    assert len(check.check(r, 4.0)) == 1 and r.seg_flag


def test_flagged_frames_do_not_become_the_reference():
    check = SegmentationCheck(window=3)
    for k in range(3):
        check.check(result(k, 100), 0.0)
    for k in range(3, 10):  # a long run of collapsed frames stays flagged
        r = result(k, 5)
        check.check(r, 0.0)
        assert r.seg_flag


def test_sparse_fields_and_gentle_changes_are_not_flagged():
    check = SegmentationCheck(window=5, min_reference=20)
    counts = [4, 0, 6, 1, 0, 3, 0, 0]  # a sparse field: zero is no collapse
    counts += [100, 90, 80, 70, 60, 50, 45, 40]  # coarsening: counts fall frame by frame
    for k, c in enumerate(counts):
        r = result(k, c)
        check.check(r, 0.0)
        assert r.seg_flag is None, (k, c)


@pytest.mark.parametrize("conf, flagged", [(0.3, True), (0.95, False), (None, False)])
def test_low_confidence_is_flagged_whatever_the_count(conf, flagged):
    check = SegmentationCheck()
    r = result(0, 50, conf)
    alerts = check.check(r, 0.0)
    assert bool(r.seg_flag) is flagged and bool(alerts) is flagged
