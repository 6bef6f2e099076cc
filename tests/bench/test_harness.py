"""Benchmark harness logic: arrivals, budgets, metrics and timing bookkeeping (no timing asserts)."""

import random
import statistics

import pytest

from elastic.bench.arrivals import BudgetDistribution, on_off, poisson
from elastic.bench.harness import interleaved, markdown_table, paired_ratio, summary
from elastic.bench.load_metrics import RequestRecord, summarize


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


def test_summarize_counts_late_and_shed_as_wrong():
    records = [
        RequestRecord(10, "ok", 5, True, 1, 2),
        RequestRecord(10, "ok", 6, False, 1, 2),
        RequestRecord(10, "late", 15, True, 0, 1),
        RequestRecord(10, "rejected"),
        RequestRecord(10, "shed"),
        RequestRecord(10, "error"),
    ]
    s = summarize(records)
    assert s["requests"] == 6
    assert s["slo_attainment"] == pytest.approx(2 / 6)
    assert s["admitted_slo_attainment"] == pytest.approx(2 / 4)
    assert s["effective_accuracy"] == pytest.approx(1 / 6)
    assert s["served_accuracy"] == pytest.approx(2 / 3)
    assert (s["rejected"], s["shed"], s["errors"], s["late"]) == (1, 1, 1, 1)
    assert s["mean_batch"] == pytest.approx(5 / 3)
    assert s["per_subnet"] == {0: 1, 1: 2}
    assert s["p50_ms"] == 6 and s["p99_ms"] == 15
    assert summarize([])["slo_attainment"] is None


def test_interleaved_rotates_and_counts():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1)
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"]
    assert len(times["a"]) == len(times["b"]) == 4
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == 2.0
    s = summary([0.001, 0.002, 0.003])
    assert s["median_ms"] == pytest.approx(2.0) and s["n"] == 3
    assert markdown_table(["x", "y"], [[1, 0.5]]).splitlines()[2] == "| 1 | 0.5 |"
