"""The no-queue bound, by hand and against sampled budgets."""

import math
import random

import pytest

from elastic.bench.arrivals import BudgetDistribution
from elastic.bench.bounds import no_queue_bound


def test_the_ceiling_rises_at_each_more_accurate_subnet_that_fits():
    budgets = BudgetDistribution(1.0, 100.0)
    accuracy = {0: 0.6, 1: 0.8, 2: 0.7}  # subnet 2: slower and worse than 1, never the choice
    latency = {0: 1.0, 1: 10.0, 2: 20.0}
    bound = no_queue_bound(accuracy, latency, budgets)
    assert bound["per_request"] == pytest.approx(0.6 + 0.2 * 0.5)  # half the budgets are >= 10 ms
    assert bound["static"][1] == pytest.approx(0.4)
    assert bound["static"][2] == pytest.approx(0.7 * math.log(5) / math.log(100))
    assert bound["best_static"] == 0
    assert bound["gap"] == pytest.approx(0.1)


def test_the_bound_is_the_mean_over_sampled_budgets():
    rng = random.Random(0)
    budgets = BudgetDistribution(3.0, 400.0)
    accuracy = {s: rng.uniform(0.5, 0.9) for s in range(8)}
    latency = {s: rng.uniform(1.0, 500.0) for s in range(8)}  # some below lo, some above hi
    bound = no_queue_bound(accuracy, latency, budgets)
    draws = [budgets.sample(rng) for _ in range(200_000)]
    sampled = sum(max((accuracy[s] for s in accuracy if latency[s] <= b), default=0.0) for b in draws) / len(draws)
    assert bound["per_request"] == pytest.approx(sampled, abs=0.005)
    for s in accuracy:
        assert bound["static"][s] == pytest.approx(
            accuracy[s] * sum(latency[s] <= b for b in draws) / len(draws), abs=0.005
        )


def test_only_subnets_with_an_accuracy_and_a_latency_count():
    with pytest.raises(ValueError, match="no subnet"):
        no_queue_bound({0: 0.5}, {1: 2.0}, BudgetDistribution(1.0, 10.0))
