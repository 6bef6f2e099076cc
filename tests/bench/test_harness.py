"""Benchmark harness logic: arrivals, budgets and timing bookkeeping (no timing asserts)."""

import random
import statistics

import pytest

from elastic.bench.arrivals import BudgetDistribution, on_off, poisson
from elastic.bench.harness import interleaved, markdown_table, paired_ratio, summary


def test_poisson_rate_and_gaps():
    times = poisson(200.0, 50.0, random.Random(0))
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 50.0
    assert len(times) / 50.0 == pytest.approx(200.0, rel=0.05)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 200, rel=0.05)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.1)  # exponential


def test_on_off_keeps_the_mean_rate_but_bursts():
    rng = random.Random(1)
    times = on_off(100.0, 200.0, rng, duty=0.25, period_s=1.0)
    assert len(times) / 200.0 == pytest.approx(100.0, rel=0.15)
    per_tenth = [0] * 2000
    for t in times:
        per_tenth[int(t * 10)] += 1
    poisson_counts = [0] * 2000
    for t in poisson(100.0, 200.0, random.Random(1)):
        poisson_counts[int(t * 10)] += 1
    # burstiness: far more variance per 100 ms window than Poisson's
    assert statistics.pvariance(per_tenth) > 3 * statistics.pvariance(poisson_counts)
    assert poisson(0, 10, rng) == [] and on_off(0, 10, rng) == []
    with pytest.raises(ValueError):
        on_off(1.0, 1.0, rng, duty=0)


def test_budgets_are_log_uniform_within_bounds():
    dist = BudgetDistribution(2.0, 200.0)
    rng = random.Random(0)
    xs = [dist.sample(rng) for _ in range(20000)]
    assert min(xs) >= 2.0 and max(xs) <= 200.0
    assert statistics.median(xs) == pytest.approx(20.0, rel=0.05)  # geometric mean of the bounds


def test_interleaved_rotates_and_counts():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1)
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"]
    assert len(times["a"]) == len(times["b"]) == 4
    calls.clear()
    interleaved({"a": lambda: calls.append("a")}, repeats=2, warmup=1, before=lambda: calls.append("-"))
    assert calls == ["a", "-", "a", "-", "a"]  # before each timed call, not the warm-up
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == 2.0
    s = summary([0.001, 0.002, 0.003])
    assert s["median_ms"] == pytest.approx(2.0) and s["n"] == 3
    assert markdown_table(["x", "y"], [[1, 0.5]]).splitlines()[2] == "| 1 | 0.5 |"
