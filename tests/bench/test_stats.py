"""Interval statistics of the load suite: t critical values, intervals, coverage, pairing."""

import math
import random

import pytest

from elastic.bench.stats import mean_interval, paired_difference, t_critical_95


def test_t_critical_values_match_the_table_and_approach_the_normal():
    assert t_critical_95(1) == pytest.approx(12.706)
    assert t_critical_95(2) == pytest.approx(4.303)
    assert t_critical_95(4) == pytest.approx(2.776)
    assert t_critical_95(30) == pytest.approx(2.042)
    assert t_critical_95(60) == pytest.approx(2.000, abs=0.002)  # published: 2.000
    assert t_critical_95(120) == pytest.approx(1.980, abs=0.002)  # published: 1.980
    values = [t_critical_95(df) for df in range(1, 500)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > 1.959964
    with pytest.raises(ValueError):
        t_critical_95(0)


def test_mean_interval_by_hand():
    iv = mean_interval([1.0, 2.0, 3.0])  # sd = 1
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.half_width == pytest.approx(4.303 / math.sqrt(3))
    assert iv.lo == pytest.approx(2.0 - iv.half_width) and iv.hi == pytest.approx(2.0 + iv.half_width)
    one = mean_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.half_width)
    assert mean_interval([0.5, 0.5, 0.5]).half_width == 0.0
    with pytest.raises(ValueError):
        mean_interval([])


def test_t_interval_covers_the_true_mean_95_percent_of_the_time_with_three_seeds():
    rng = random.Random(0)
    trials, hits = 4000, 0
    for _ in range(trials):
        iv = mean_interval([rng.gauss(10.0, 3.0) for _ in range(3)])
        hits += iv.lo <= 10.0 <= iv.hi
    assert hits / trials == pytest.approx(0.95, abs=0.012)


def test_paired_difference_cancels_the_shared_part():
    shared = [0.2, 0.9, 0.5, 0.1]  # what the seed does to both contenders
    a = [s + 0.05 for s in shared]
    b = list(shared)
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.05) and d.half_width == pytest.approx(0.0, abs=1e-12)
    # unpaired, the seeds' spread swamps the gap
    assert mean_interval(a).half_width > 0.3
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
