"""Frame summaries, quantiles, bootstrap CIs and size histograms."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emstream.process.measure import measure
from emstream.process.stats import SizeHistogram, bootstrap_ci, log_bin_edges, quantiles, summarize
from emstream.results import empty_particle_table

finite = st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False)


def test_summarize_empty_is_nan():
    s = summarize(empty_particle_table(), valid_area_px=1000, unit="nm")
    assert s.count == 0 and s.coverage == 0.0 and s.unit == "nm"
    for k in ("mean_diameter", "std_diameter", "d10", "d50", "d90", "min_diameter", "max_diameter"):
        assert math.isnan(getattr(s, k))


def test_summarize_from_measured_table():
    lab = np.zeros((100, 100), np.int32)
    lab[10:20, 10:20] = 1  # 100 px
    lab[50:70, 50:70] = 2  # 400 px
    t = measure(lab, None, None)
    s = summarize(t, valid_area_px=8000, unit="px")
    assert s.count == 2
    assert s.coverage == pytest.approx(500 / 8000)
    d = np.sqrt(4 * np.array([100, 400]) / np.pi)
    assert s.mean_diameter == pytest.approx(d.mean())
    assert s.min_diameter == pytest.approx(d[0]) and s.max_diameter == pytest.approx(d[1])
    assert s.d50 == pytest.approx(d.mean())
    assert s.as_dict()["count"] == 2


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 200), elements=finite))
def test_quantiles_monotone_and_bounded(v):
    qs = quantiles(v, (0.0, 0.1, 0.5, 0.9, 1.0))
    assert np.all(np.diff(qs) >= -1e-9 * max(1.0, abs(qs).max()))
    assert qs[0] == v.min() and qs[-1] == v.max()


def test_quantiles_ignore_nan_and_reject_bad_levels():
    assert quantiles([1.0, np.nan, 3.0], (0.5,))[0] == 2.0
    assert np.isnan(quantiles([], (0.5,))[0])
    with pytest.raises(ValueError):
        quantiles([1.0], (1.5,))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(20, 300),
    mu=st.floats(1.0, 4.0),
    sigma=st.floats(0.05, 0.6),
)
def test_bootstrap_ci_contains_sample_statistic(seed, n, mu, sigma):
    v = np.random.default_rng(seed).lognormal(mu, sigma, n)
    lo, hi = bootstrap_ci(v, np.median, n=300, seed=seed)
    assert lo <= np.median(v) <= hi
    lo, hi = bootstrap_ci(v, np.mean, n=300, seed=seed)
    assert lo <= np.mean(v) <= hi
    assert lo < hi


def test_bootstrap_ci_is_deterministic_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(10, 2, 30)
    big = rng.normal(10, 2, 3000)
    assert bootstrap_ci(small, seed=4) == bootstrap_ci(small, seed=4)
    w_small = np.subtract(*bootstrap_ci(small, np.mean)[::-1])
    w_big = np.subtract(*bootstrap_ci(big, np.mean)[::-1])
    assert w_big < w_small / 4
    # a quantile statistic through partial
    lo, hi = bootstrap_ci(big, partial(np.quantile, q=0.9))
    assert lo < np.quantile(big, 0.9) < hi
    assert all(math.isnan(x) for x in bootstrap_ci([]))


@settings(max_examples=40, deadline=None)
@given(st.lists(arrays(np.float64, st.integers(0, 50), elements=st.floats(0.01, 2000)), max_size=12))
def test_histogram_total_equals_count(frames):
    h = SizeHistogram(log_bin_edges(0.5, 500, 40), window=5)
    for f in frames:
        h.add(f)
    n = sum(len(f) for f in frames)
    assert h.total == n
    assert h.counts.sum() + h.underflow + h.overflow == n
    assert h.frames == len(frames)
    assert h.recent.sum() <= h.counts.sum()
    last5 = [f for f in frames[-5:]]
    inside = sum(int(np.count_nonzero((f >= 0.5) & (f <= 500))) for f in last5)
    assert h.recent.sum() == inside


def test_histogram_merge_and_quantiles():
    edges = np.linspace(0, 100, 101)
    a, b = SizeHistogram(edges), SizeHistogram(edges)
    rng = np.random.default_rng(0)
    va, vb = rng.uniform(10, 90, 5000), rng.uniform(10, 90, 3000)
    a.add(va)
    b.add(vb)
    a.merge(b)
    assert a.total == 8000 and a.frames == 2
    q = a.quantiles((0.1, 0.5, 0.9))
    assert q == pytest.approx(np.quantile(np.concatenate([va, vb]), (0.1, 0.5, 0.9)), abs=1.5)
    assert np.all(np.isnan(SizeHistogram(edges).quantiles()))
    with pytest.raises(ValueError):
        a.merge(SizeHistogram(np.linspace(0, 50, 11)))
    with pytest.raises(ValueError):
        SizeHistogram([3.0, 2.0])


def test_histogram_recent_window_forgets_old_frames():
    h = SizeHistogram(np.array([0.0, 10.0, 20.0]), window=2)
    h.add([5.0, 5.0])
    h.add([15.0])
    h.add([15.0, 15.0])
    assert h.counts.tolist() == [2, 3]
    assert h.recent.tolist() == [0, 3]
    h.reset_recent()
    assert h.recent.tolist() == [0, 0]
