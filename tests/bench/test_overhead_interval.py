"""The overhead bench's noise handling: a distribution-free interval of the median of the
paired per-round values, and a verdict that says "within noise" when it straddles the target."""

import math
import random

import pytest

from elastic.bench.stats import median_interval, verdict


@pytest.mark.parametrize(("n", "k"), [(6, 1), (10, 2), (25, 8), (100, 40)])
def test_the_interval_is_the_tabulated_order_statistics(n, k):
    # the binomial interval for a median: [x_(k), x_(n+1-k)], 1-indexed (Conover's table)
    median, lo, hi = median_interval(range(n))
    assert (lo, hi) == (k - 1, n - k)
    assert median == (n - 1) / 2


def test_it_covers_the_true_median_at_least_95_percent_of_the_time():
    # heavy-tailed rounds (a stalled round now and then), true median 0
    rng = random.Random(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        xs = [rng.gauss(0, 1) + (rng.expovariate(0.01) if rng.random() < 0.1 else 0) for _ in range(25)]
        _, lo, hi = median_interval(xs)
        true_median = _true_median_of_mixture()
        covered += lo <= true_median <= hi
    assert covered / trials >= 0.94  # >= 95 % by construction; 2000 trials leave ~0.5 % of noise


def _true_median_of_mixture() -> float:
    # median of 0.9 N(0, 1) + 0.1 (N(0, 1) + Exp(mean 100)): the x with P(X <= x) = 1/2; the
    # exponential part sits far above, so 0.9 Phi(x) + 0.1 * ~0 = 0.5 -> Phi(x) = 5/9
    lo, hi = -3.0, 3.0
    for _ in range(60):
        mid = (lo + hi) / 2
        cdf = 0.9 * 0.5 * (1 + math.erf(mid / math.sqrt(2)))
        lo, hi = (mid, hi) if cdf < 0.5 else (lo, mid)
    return (lo + hi) / 2


def test_too_few_rounds_give_the_whole_range_and_none_is_an_error():
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        median_interval([])


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(50.0, 90.0, "pass"), (50.0, 100.0, "pass"), (90.0, 130.0, "within noise"), (101.0, 300.0, "FAIL")],
)
def test_verdicts(lo, hi, expected):
    assert verdict(lo, hi, 100.0) == expected
