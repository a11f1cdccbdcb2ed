"""tools/evaluate_tracking.py: IDF1, event matching, and truth an observer could not see."""

from __future__ import annotations

import pytest

from .test_train_smoke import load_tool


@pytest.fixture(scope="module")
def et():
    return load_tool("evaluate_tracking")


def test_idf1_is_one_for_kept_identities_and_drops_when_a_track_swaps(et):
    kept = [(("a", 0), 1)] * 10 + [(("b", 0), 2)] * 10
    assert et.idf1(kept, 20, 20) == pytest.approx(1.0)
    # b's track takes over a's identity half way: a's best track covers 5 of its 10 frames
    swapped = [(("a", 0), 1)] * 5 + [(("a", 0), 2)] * 5 + [(("b", 0), 2)] * 10
    assert et.idf1(swapped, 20, 20) == pytest.approx(2 * 15 / 40)
    assert et.idf1(kept, 20, 40) == pytest.approx(2 * 20 / 60)  # 20 false detections
    assert et.idf1([], 5, 5) == 0.0


def test_events_match_one_to_one_within_the_window_and_the_distance(et):
    truth = [{"kind": "coalescence", "seq": 10, "y": 100.0, "x": 100.0, "d_px": 10.0,
              "window": (6, 13)}]
    near = {"kind": "coalescence", "seq": 8, "y": 105.0, "x": 104.0}
    assert et.match_events([near], truth)[0] == 1
    assert et.match_events([near, dict(near, seq=9)], truth)[0] == 1  # one truth, one match
    assert et.match_events([dict(near, seq=14)], truth)[0] == 0  # after the window
    assert et.match_events([dict(near, x=120.0)], truth)[0] == 0  # 20 px > 1.5 d + 3


def test_visible_only_scores_fewer_truth_particles_and_the_tracker_alone_stays_right(et):
    """On the simulator's own labels the tracker is near perfect either way; scoring only what an
    observer could see leaves out the faint nuclei of a grainy bright-field session."""
    from emstream.process.track import TrackSettings

    kw = dict(seed=3, mode="bf", frames=12, segmenter=None, settings=TrackSettings(),
              use_truth=True, size=384)
    every = et.run_session(**kw)
    seen = et.run_session(**kw, visible_only=True)
    assert 0 < seen["truth_detections"] < every["truth_detections"]
    assert seen["predicted_detections"] < every["predicted_detections"]
    assert seen["idf1"] > 0.97 and every["idf1"] > 0.97
