"""Property tests of the rule state machine: debounce, hysteresis and cool-down exactly as specified."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.draw import disk

from emstream.frame import Calibration
from emstream.process.measure import measure
from emstream.process.rules import RuleEngine, RuleSet
from tests.process.test_rules_helpers import result


def engine(for_frames: int, clear_frames: int, cooldown_s: float) -> RuleEngine:
    return RuleEngine(
        RuleSet.from_toml_text(
            f'[[rules]]\nname = "r"\nframe.count = [1, inf]\nfor_frames = {for_frames}\n'
            f"clear_frames = {clear_frames}\ncooldown_s = {cooldown_s}\n"
        )
    )


def run(matches, times, for_frames, clear_frames, cooldown_s) -> list[bool]:
    eng = engine(for_frames, clear_frames, cooldown_s)
    return [
        bool(eng.evaluate(result(i, count=int(m), t=t)))
        for i, (m, t) in enumerate(zip(matches, times, strict=True))
    ]


sequences = st.integers(1, 80).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.floats(0.05, 5.0), min_size=n, max_size=n),
    )
)


@settings(max_examples=300, deadline=None)
@given(
    seq=sequences,
    for_frames=st.integers(1, 5),
    clear_frames=st.integers(1, 5),
    cooldown_s=st.sampled_from([0.0, 1.0, 4.0, 12.5]),
)
def test_fires_exactly_as_specified(seq, for_frames, clear_frames, cooldown_s):
    matches, gaps = seq
    times = np.cumsum(gaps).tolist()
    fired = run(matches, times, for_frames, clear_frames, cooldown_s)

    fire_idx = [i for i, f in enumerate(fired) if f]
    # 1. never before for_frames consecutive matching frames
    for i in fire_idx:
        assert i >= for_frames - 1 and all(matches[i - for_frames + 1 : i + 1])
    # 2. between two firings: clear_frames consecutive non-matching frames AND the cool-down
    for a, b in zip(fire_idx, fire_idx[1:], strict=False):
        longest, cur = 0, 0
        for m in matches[a + 1 : b]:
            cur = 0 if m else cur + 1
            longest = max(longest, cur)
        assert longest >= clear_frames
        assert times[b] - times[a] >= cooldown_s
    # 3. exactly: it fires on every frame where the spec says it may (oracle from the trace)
    run_len, armed, last_t, clear = 0, True, None, 0
    for i, m in enumerate(matches):
        if m:
            run_len, clear = run_len + 1, 0
        else:
            run_len, clear = 0, clear + 1
            if clear >= clear_frames:
                armed = True
        cooled = last_t is None or times[i] - last_t >= cooldown_s
        expect = bool(m and run_len >= for_frames and armed and cooled)
        assert fired[i] == expect, (i, matches[: i + 1])
        if expect:
            armed, last_t = False, times[i]


@settings(max_examples=100, deadline=None)
@given(for_frames=st.integers(1, 6), first=st.integers(0, 30), clear_frames=st.integers(1, 4))
def test_first_alert_exactly_for_frames_after_first_match(for_frames, first, clear_frames):
    matches = [False] * first + [True] * 10
    fired = run(matches, list(range(len(matches))), for_frames, clear_frames, 0.0)
    assert fired.index(True) == first + for_frames - 1
    assert sum(fired) == 1  # still matching: no second alert without clearing


def _disk_frame(
    rng: np.random.Generator, *, target: bool, shape=(160, 160)
) -> tuple[np.ndarray, np.ndarray]:
    """Small particles (2–5 nm at 0.5 nm/px) everywhere; one or two 20–30 nm ones when ``target``."""
    labels = np.zeros(shape, np.int32)
    k = 0
    occupied = np.zeros(shape, bool)

    def place(r_px: float) -> None:
        nonlocal k
        for _ in range(50):
            cy, cx = (
                rng.uniform(r_px + 2, shape[0] - r_px - 2),
                rng.uniform(r_px + 2, shape[1] - r_px - 2),
            )
            rr, cc = disk((cy, cx), r_px, shape=shape)
            grown = np.zeros(shape, bool)
            rr2, cc2 = disk((cy, cx), r_px + 2, shape=shape)
            grown[rr2, cc2] = True
            if not (grown & occupied).any():
                k += 1
                labels[rr, cc] = k
                occupied[grown] = True
                return

    if target:  # first, so there is always room for them
        for _ in range(int(rng.integers(1, 3))):
            place(rng.uniform(20.0, 30.0))  # 20–30 nm diameter
    for _ in range(int(rng.integers(3, 8))):
        place(rng.uniform(2.0, 5.0))  # radius px -> 2–5 nm diameter at 0.5 nm/px
    raw = np.where(labels > 0, 200, 1000).astype(np.uint16)
    return labels, raw


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.integers(0, 12),
    for_frames=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    flicker=st.booleans(),
)
def test_scripted_session_targets_appear_at_known_frame(first, for_frames, seed, flicker):
    """Measured frames (drawn disks + the real ``measure``): the alert fires within for_frames of
    the targets' first appearance and never before."""
    rng = np.random.default_rng(seed)
    cal = Calibration((0.5, 0.5), "override")
    eng = RuleEngine(
        RuleSet.from_toml_text(
            '[[rules]]\nname = "targets"\nparticles.equivalent_diameter_nm = [15, 40]\n'
            f"particles.roundness = {{min = 0.6}}\nfor_frames = {for_frames}\n"
        )
    )
    n = first + for_frames + 4
    visible = [i >= first for i in range(n)]
    if flicker and first + 1 < n:
        visible[first + 1] = False  # a one-frame dropout just after they appear
    alerts_at = []
    for i in range(n):
        labels, raw = _disk_frame(rng, target=visible[i])
        p = measure(labels, raw, cal)
        r = result(i, p, t=float(i))
        r.summary.count = len(p["label"])
        if eng.evaluate(r):
            alerts_at.append(i)
            assert eng.matching(p).sum() >= 1
    # first index where for_frames consecutive visible frames end
    expect = next(
        i for i in range(n) if i >= for_frames - 1 and all(visible[i - for_frames + 1 : i + 1])
    )
    assert alerts_at and alerts_at[0] == expect
    assert alerts_at[0] >= first
    if not flicker:
        assert alerts_at[0] <= first + for_frames - 1
