"""The live tracker: identities, drift-corrected linking, ends, events, restarts, bounded memory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emstream.process.track import HISTORY, Tracker, TrackSettings, TrackState, growth_rate

SHAPE = (512, 512)


def table(yx, d, touch=None, **columns) -> dict[str, np.ndarray]:
    """A particle table; ``columns``: more of them (``solidity``, ``aspect_ratio``)."""
    yx = np.asarray(yx, float).reshape(-1, 2)
    d = np.asarray(d, float)
    return {
        "centroid_y_px": yx[:, 0], "centroid_x_px": yx[:, 1],
        "area_px": math.pi * d**2 / 4,
        "touches_border": np.zeros(len(d), bool) if touch is None else np.asarray(touch, bool),
        **{k: np.asarray(v, float) for k, v in columns.items()},
    }


def grid(n=5, spacing=80.0, start=60.0):
    g = np.array([(start + i * spacing, start + j * spacing) for i in range(n) for j in range(n)])
    return g


def run(tracker, frames, t0=0.0, dt=0.5):
    steps = []
    for k, (yx, d, *touch) in enumerate(frames):
        steps.append(tracker.update(k, t0 + k * dt, table(yx, d, *touch), shape=SHAPE))
    return steps


def test_identities_survive_drift_and_small_motion():
    base = grid()
    d = np.full(len(base), 12.0)
    rng = np.random.default_rng(0)
    frames = [(base + (3.0 * k, -2.0 * k) + rng.normal(0, 0.3, base.shape), d) for k in range(20)]
    steps = run(Tracker(), frames)
    first = steps[0].track_ids
    assert len(set(first.tolist())) == len(base)
    for s in steps[1:]:
        assert np.array_equal(s.track_ids, first)
    assert np.allclose(steps[-1].drift.total, (57.0, -38.0), atol=0.5)


def test_a_particle_missed_for_two_frames_keeps_its_track():
    base = grid(3)
    d = np.full(len(base), 12.0)
    frames = [(base, d)] * 3 + [(base[1:], d[1:])] * 2 + [(base, d)] * 3
    steps = run(Tracker(TrackSettings(memory=2)), frames)
    assert steps[-1].track_ids[0] == steps[0].track_ids[0]


def test_size_gate_keeps_a_nucleus_from_taking_a_big_particles_identity():
    big = np.array([[200.0, 200.0]])
    frames = [(big, [30.0])] * 4
    # the big one is missed while a small one appears right next to where it was
    frames += [(np.array([[204.0, 203.0]]), [6.0])]
    steps = run(Tracker(), frames)
    assert steps[-1].track_ids[0] != steps[0].track_ids[0]


def test_coalescence_of_two_tracks_into_one_that_goes_on():
    a, b = np.array([200.0, 200.0]), np.array([200.0, 224.0])
    frames = [(np.array([a, b, [400, 400]]), [24.0, 20.0, 15.0])] * 10
    merged_d = math.sqrt(24.0**2 + 20.0**2)  # area conserved
    frames += [(np.array([[200.0, 208.0], [400, 400]]), [merged_d, 15.0])] * 10
    steps = run(Tracker(), frames)
    ids_a, ids_b = steps[0].track_ids[:2].tolist()
    events = [e for s in steps for e in s.events]
    coal = [e for e in events if e.kind == "coalescence"]
    assert len(coal) == 1
    ev = coal[0]
    assert ev.seq == 10  # the frame the merged particle was first seen
    assert set(ev.tracks) == {ids_a, ids_b}
    assert ev.data["into"] == ids_a  # the larger one goes on
    ended = {s.track_id: s for st in steps for s in st.summaries}
    assert ended[ids_b].ended == "merged" and ended[ids_b].merged_into == ids_a


def test_two_that_end_where_one_begins_coalesce_into_the_new_track():
    a, b = np.array([200.0, 180.0]), np.array([200.0, 220.0])  # too far for either to link on
    frames = [(np.array([a, b]), [30.0, 30.0])] * 10
    frames += [(np.array([[200.0, 200.0]]), [30.0 * math.sqrt(2)])] * 10
    steps = run(Tracker(TrackSettings(search_diameters=0.3)), frames)
    coal = [e for s in steps for e in s.events if e.kind == "coalescence"]
    assert len(coal) == 1
    new_id = int(steps[10].track_ids[0])
    assert coal[0].data["into"] == new_id
    assert set(coal[0].tracks) == set(steps[0].track_ids.tolist())


def test_nucleation_is_called_once_confirmed_and_dated_to_its_first_frame():
    base = grid(3)
    d = np.full(len(base), 12.0)
    frames = [(base, d)] * 4
    nucleus = np.array([[300.0, 120.0]])  # empty space, far from every particle
    frames += [(np.vstack([base, nucleus]), np.append(d, 5.0))] * 10
    steps = run(Tracker(), frames)
    nuc = [e for s in steps for e in s.events if e.kind == "nucleation"]
    assert len(nuc) == 1 and nuc[0].seq == 4
    assert [s.summaries for s in steps]  # noqa: B015


def test_a_fragment_flickering_in_and_out_of_a_particle_is_no_coalescence():
    big = np.array([[200.0, 200.0]])
    whole = (big, [40.0])
    cut = (np.array([[196.0, 196.0], [212.0, 212.0]]), [34.0, 20.0])  # the segmenter cuts it
    frames = [whole] * 10 + [cut, whole] * 8 + [whole] * 12
    steps = run(Tracker(), frames)
    assert not [e for s in steps for e in s.events if e.kind in ("coalescence", "nucleation")]


def test_flicker_is_transient_and_makes_no_event():
    base = grid(3)
    d = np.full(len(base), 12.0)
    blip = np.vstack([base, [[300.0, 120.0]]])
    frames = [(base, d)] * 3 + [(blip, np.append(d, 6.0))] + [(base, d)] * 6
    steps = run(Tracker(), frames)
    assert not [e for s in steps for e in s.events]
    ended = [s for st in steps for s in st.summaries if s.ended != "active"]
    assert [s.ended for s in ended] == ["transient"]


def test_leaving_the_field_is_told_apart_from_being_lost():
    frames = []
    for k in range(12):
        yx = np.array([[200.0, 470.0 + 6 * k], [200.0, 200.0]])  # one walks out of the field
        keep = yx[:, 1] < SHAPE[1] - 6
        touch = yx[keep][:, 1] > SHAPE[1] - 14
        frames.append((yx[keep], np.full(keep.sum(), 12.0), touch))
    steps = run(Tracker(TrackSettings(search_diameters=1.0)), frames)
    kinds = [e.kind for s in steps for e in s.events]
    assert kinds == ["left_field"]


def test_restart_goes_on_without_renumbering():
    base = grid(3)
    d = np.full(len(base), 12.0)
    tr = Tracker()
    steps = run(tr, [(base + (k, 0), d) for k in range(5)])
    last = steps[-1]
    state = TrackState(seq=4, track_ids=last.track_ids, yx=base + (4, 0), d=d,
                       drift=last.drift.total, next_id=int(last.track_ids.max()) + 1,
                       open_tracks=tr.finish())
    resumed = Tracker(state=state)
    step = resumed.update(5, 2.5, table(base + (5, 0), d), shape=SHAPE)
    assert np.array_equal(step.track_ids, last.track_ids)
    assert np.allclose(step.drift.total, (5, 0), atol=0.05)
    step = resumed.update(6, 3.0, table(np.vstack([base + (6, 0), [[300.0, 120.0]]]),
                                        np.append(d, 6.0)), shape=SHAPE)
    assert step.track_ids[-1] == state.next_id  # new tracks number on
    rows = {r.track_id: r for r in resumed.finish()}
    assert rows[int(last.track_ids[0])].frames_seen == 7
    assert rows[int(last.track_ids[0])].first_seq == 0


def test_growth_rate_is_robust_and_summaries_are_in_the_frames_unit():
    t = np.arange(20) * 0.5
    d = 10 + 0.2 * t
    d[5] = 40.0  # one missegmented frame
    assert growth_rate(t, d) == pytest.approx(0.2, abs=1e-6)
    assert math.isnan(growth_rate(t[:2], d[:2]))
    tr = Tracker()
    for k in range(10):
        tr.update(k, k * 1.0, table([[100.0, 100.0 + k]], [20.0 + k]), shape=SHAPE,
                  unit="nm", unit_per_px=0.5)
    (row,) = tr.finish()
    assert row.unit == "nm"
    assert row.growth_rate == pytest.approx(0.5, rel=1e-3)  # 1 px/s of diameter = 0.5 nm/s
    assert row.d_start == pytest.approx(10.0) and row.d_end == pytest.approx(14.5)
    assert row.began == "present_at_start" and row.ended == "active"


def test_memory_is_bounded_over_a_long_session():
    tr = Tracker()
    rng = np.random.default_rng(1)
    base = grid(4)
    d = np.full(len(base), 10.0)
    for k in range(3 * HISTORY + 50):
        extra = rng.uniform(20, 490, (3, 2))  # short-lived flicker, ended and dropped
        yx = np.vstack([base, extra]) if k % 2 else base
        dd = np.append(d, [6.0] * 3) if k % 2 else d
        tr.update(k, k * 0.1, table(yx, dd), shape=SHAPE)
    assert len(tr._tracks) <= len(base) + 3 * (tr.settings.memory + 2)
    assert all(len(t.hist_t) <= HISTORY for t in tr._tracks.values())
    assert len(tr._recent) == tr.settings.memory + 2


def test_empty_frames_are_fine():
    tr = Tracker()
    s = tr.update(0, 0.0, table(np.zeros((0, 2)), []), shape=SHAPE)
    assert s.track_ids.shape == (0,)
    s = tr.update(1, 0.5, table([[100.0, 100.0]], [10.0]), shape=SHAPE)
    assert s.track_ids.tolist() == [1]


def test_gap_closing_finds_a_lost_track_again_without_a_false_nucleation():
    base = grid(3)
    d = np.full(len(base), 12.0)
    frames = [(base, d)] * 5 + [(base[1:], d[1:])] * 6 + [(base, d)] * 5  # missed for 6 frames
    steps = run(Tracker(TrackSettings(memory=2, gap_frames=20)), frames)
    assert steps[-1].track_ids[0] == steps[0].track_ids[0]
    assert not [e for s in steps for e in s.events]
    said = [r.ended for st in steps for r in st.summaries if r.track_id == steps[0].track_ids[0]]
    assert said[-1] == "lost"  # said while it was gone; its row is replaced when it ends again


def test_a_particle_gone_longer_than_the_gap_is_a_new_track():
    base = grid(3)
    d = np.full(len(base), 12.0)
    frames = [(base, d)] * 5 + [(base[1:], d[1:])] * 30 + [(base, d)] * 5
    steps = run(Tracker(TrackSettings(gap_frames=20)), frames)
    assert steps[-1].track_ids[0] != steps[0].track_ids[0]


def test_touching_pair_joined_for_a_few_frames_then_split_is_no_coalescence():
    a, b = np.array([200.0, 200.0]), np.array([200.0, 224.0])
    pair = (np.array([a, b]), [24.0, 20.0])
    joined = (np.array([[200.0, 208.0]]), [math.sqrt(24.0**2 + 20.0**2)])
    frames = [pair] * 10 + [joined] * 4 + [pair] * 10
    steps = run(Tracker(), frames)
    assert not [e for s in steps for e in s.events if e.kind == "coalescence"]
    assert set(steps[-1].track_ids.tolist()) == set(steps[0].track_ids.tolist())


def run_outlines(tracker, frames, dt=0.5):
    """``run`` for frames of (yx, d, solidity, aspect ratio)."""
    return [tracker.update(k, k * dt, table(yx, d, solidity=sol, aspect_ratio=ar), shape=SHAPE)
            for k, (yx, d, sol, ar) in enumerate(frames)]


def test_a_joined_pair_that_rounds_up_is_one_coalescence_dated_to_the_round_outline():
    """A touching pair the segmenter never separated: one outline with a neck (concave,
    elongated), then the merged particle (convex, ~0.88 of the pair's area: volume conserved)."""
    other = ([400.0, 400.0], 15.0, 0.99, 1.05)
    pair_d, round_d = 40.0, 40.0 * math.sqrt(0.88)
    frames = [([[200.0, 200.0], other[0]], [pair_d, other[1]], [0.89, 0.99], [1.8, 1.05])] * 12
    frames += [([[200.0, 200.0], other[0]], [round_d, other[1]], [0.99, 0.99], [1.4, 1.05])] * 10
    steps = run_outlines(Tracker(), frames)
    coal = [e for s in steps for e in s.events if e.kind == "coalescence"]
    assert len(coal) == 1
    ev = coal[0]
    tid = int(steps[0].track_ids[0])
    assert ev.seq == 12 and ev.tracks == [tid]
    assert ev.data["into"] == tid and ev.data["merged"] == [] and ev.data["rounded"]
    assert ev.data["area_after_px"] / ev.data["area_before_px"] == pytest.approx(0.88, rel=0.01)
    assert "rounded up" in ev.message()
    # the same frames without the shape columns (or with the rule off): nothing to see
    assert not [e for s in run(Tracker(), [(f[0], f[1]) for f in frames]) for e in s.events]
    off = run_outlines(Tracker(TrackSettings(neck_frames=0)), frames)
    assert not [e for s in off for e in s.events]


@pytest.mark.parametrize("case", ["short_neck", "split_again", "round_to_start", "no_gain",
                                  "flicker", "shallow_not_round", "shallow_not_long"])
def test_outlines_that_are_not_a_pair_rounding_up_make_no_event(case):
    pair, after = (40.0, 0.89, 1.8), (40.0 * math.sqrt(0.88), 0.99, 1.4)
    if case == "short_neck":  # 3 frames of a neck are not enough
        seq = [pair] * 3 + [after] * 10
    elif case == "split_again":  # area halves: the segmenter cut the pair (not a merger)
        seq = [pair] * 10 + [(40.0 * math.sqrt(0.5), 0.99, 1.4)] * 10
    elif case == "round_to_start":  # a round particle, rough outline: no neck (aspect) and
        seq = [(40.0, 0.89, 1.1)] * 10 + [(40.0 * math.sqrt(0.88), 0.97, 1.1)] * 10  # not round
    elif case == "shallow_not_round":  # a shallow neck is a pair only if it rounds up fully
        seq = [(40.0, 0.95, 1.8)] * 10 + [(40.0 * math.sqrt(0.88), 0.98, 1.4)] * 10
    elif case == "shallow_not_long":  # ... and is elongated
        seq = [(40.0, 0.95, 1.1)] * 10 + [(40.0 * math.sqrt(0.88), 0.995, 1.05)] * 10
    elif case == "no_gain":  # still concave afterwards
        seq = [pair] * 10 + [(40.0 * math.sqrt(0.88), 0.90, 1.4)] * 10
    else:  # a rough outline flickering between concave and convex, frame to frame
        seq = [pair if k % 2 else (40.0 * math.sqrt(0.88), 0.97, 1.4) for k in range(30)]
    frames = [([[200.0, 200.0]], [d], [s], [a]) for d, s, a in seq]
    steps = run_outlines(Tracker(), frames)
    assert not [e for s in steps for e in s.events if e.kind == "coalescence"]


@pytest.mark.parametrize("case", ["shallow", "short", "cut_once", "gaps", "loose_last"])
def test_an_outline_that_rounds_up_fully_needs_only_a_loose_neck(case):
    """Where the outline rounds up fully (solidity >= ROUND_SOLIDITY in every round frame), the
    neck may be shallow (a large particle and a small one), short (two elongated particles side
    by side), broken for one frame (the segmenter cut the pair apart, or the neck filling just
    before the merge), and the outline missing for two frames (joined to a neighbour); a partial
    rounding needs the strict neck."""
    other = ([400.0, 400.0], 15.0, 0.99, 1.05)
    neck = {"shallow": (40.0, 0.95, 1.8), "short": (40.0, 0.84, 1.2),
            "loose_last": (40.0, 0.95, 1.8)}.get(case, (40.0, 0.89, 1.8))
    seq = [neck] * 12
    if case == "cut_once":
        seq[9] = (40.0 * math.sqrt(0.6), 0.99, 1.1)  # the larger particle alone for a frame
    elif case == "loose_last":  # the neck already filling on the last frame before the merge
        seq[11] = (40.0, 0.963, 1.75)
    seq += [(40.0 * math.sqrt(0.88), 0.995, 1.4)] * 10
    missing = {8, 10} if case == "gaps" else set()

    def frames(rows):
        return [([[200.0, 200.0], other[0]], [d, other[1]], [sol, other[2]], [ar, other[3]])
                if k not in missing else ([other[0]], [other[1]], [other[2]], [other[3]])
                for k, (d, sol, ar) in enumerate(rows)]

    coal = [e for s in run_outlines(Tracker(), frames(seq)) for e in s.events
            if e.kind == "coalescence"]
    assert len(coal) == 1 and coal[0].seq == 12 and coal[0].data["rounded"]
    partly = seq[:12] + [(40.0 * math.sqrt(0.88), 0.975, 1.4)] * 10
    assert not [e for s in run_outlines(Tracker(), frames(partly)) for e in s.events
                if e.kind == "coalescence"]


def test_a_rounding_waits_for_a_coalescence_to_confirm_and_is_called_if_that_fails():
    """The segmenter joins a pair, splits it for one frame, joins it again and the product
    rounds up: the partner's second end is a coalescence to confirm when the rounding is seen.
    It fails (the partner was back for one frame only), and the rounding is then called."""
    a, b = [200.0, 200.0], [200.0, 224.0]
    pair_d = math.sqrt(24.0**2 + 20.0**2)
    apart = ([a, b], [24.0, 20.0], [0.99, 0.99], [1.05, 1.05])
    joined = ([[200.0, 210.0]], [pair_d], [0.89], [1.8])
    frames = [apart] * 10 + [joined] * 5 + [apart] + [joined]
    frames += [([[200.0, 210.0]], [pair_d * math.sqrt(0.88)], [0.995], [1.3])] * 10
    coal = [e for s in run_outlines(Tracker(), frames) for e in s.events
            if e.kind == "coalescence"]
    assert len(coal) == 1 and coal[0].data["rounded"] and coal[0].seq == 17


def test_a_pair_joined_at_its_neck_then_rounding_up_is_one_coalescence_not_two():
    """The segmenter separates the pair until the neck forms (two tracks end into one: called
    then) and the product then rounds up: the same merger, one event."""
    a, b = np.array([200.0, 200.0]), np.array([200.0, 224.0])
    frames = [([a, b], [24.0, 20.0], [0.99, 0.99], [1.05, 1.05])] * 10
    joined_d = math.sqrt(24.0**2 + 20.0**2)
    frames += [([[200.0, 209.0]], [joined_d], [0.88], [1.8])] * 8
    frames += [([[200.0, 209.0]], [joined_d * math.sqrt(0.9)], [0.99], [1.3])] * 10
    steps = run_outlines(Tracker(), frames)
    coal = [e for s in steps for e in s.events if e.kind == "coalescence"]
    assert len(coal) == 1 and coal[0].seq == 10 and not coal[0].data.get("rounded")


def test_rough_round_particles_never_round_up():
    """200 frames of 25 particles whose outlines are measured with noise (solidity 0.9-1,
    aspect ratio 1-1.35, area +-8 %): no coalescence."""
    rng = np.random.default_rng(3)
    base = grid()
    frames = [(base, 24.0 * np.sqrt(rng.uniform(0.92, 1.08, len(base))),
               rng.uniform(0.90, 1.0, len(base)), rng.uniform(1.0, 1.35, len(base)))
              for _ in range(200)]
    steps = run_outlines(Tracker(), frames)
    assert not [e for s in steps for e in s.events if e.kind == "coalescence"]


def test_a_merger_in_the_first_frames_of_a_session_counts():
    """Tracks seen in every frame since the session began are established before they have
    lasted ``nucleation_frames`` (a pair sintering when the monitor starts)."""
    a, b = np.array([200.0, 200.0]), np.array([200.0, 224.0])
    frames = [(np.array([a, b]), [24.0, 20.0])] * 5
    frames += [(np.array([[200.0, 208.0]]), [math.sqrt(24.0**2 + 20.0**2)])] * 12
    steps = run(Tracker(), frames)
    coal = [e for s in steps for e in s.events if e.kind == "coalescence"]
    assert len(coal) == 1 and coal[0].seq == 5
    # the same tracks starting mid-session, after an empty frame: too young to count
    steps = run(Tracker(), [(np.zeros((0, 2)), [])] + frames)
    assert not [e for s in steps for e in s.events if e.kind == "coalescence"]
