"""The ceilings: the no-queue bound (by hand, against sampled budgets) and the fluid bound (by
hand, and above every simulated schedule of a trace)."""

import math
import random

import pytest

from elastic.bench.arrivals import BudgetDistribution, poisson
from elastic.bench.bounds import fluid_bound, no_queue_bound
from elastic.bench.outcomes import BernoulliJudge
from elastic.bench.simulate import ServiceModel, simulate
from elastic.serving import LatencyProfile
from elastic.subnet import Subnet


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


# ---- the fluid bound ------------------------------------------------------------------


def service(table: dict[int, dict[int, float]], per_batch_ms: float = 0.0) -> ServiceModel:
    return ServiceModel(LatencyProfile.from_table(table), per_batch_ms=per_batch_ms)  # p99 = p50: no spread


def test_two_requests_share_one_worker_by_value_per_millisecond():
    # both arrive at 0 with 10 ms: B (0.5 in 2 ms) for both leaves 6 ms, which upgrades
    # 6/8 of one request to A (0.9 in 10 ms, +0.4 for 8 ms more): (2 × 0.5 + 0.75 × 0.4) / 2
    svc = service({0: {1: 10.0, 2: 12.0}, 1: {1: 2.0, 2: 4.0}})  # A's batch of 2 ends too late
    bound = fluid_bound([0.0, 0.0], [10.0, 10.0], {0: 0.9, 1: 0.5}, svc, max_batch=2)
    assert bound == pytest.approx((2 * 0.5 + 0.75 * 0.4) / 2)


def test_a_batch_that_fits_the_budget_lends_each_member_its_share():
    # A's batch of 2 (12 ms) fits 20 ms budgets: each request costs 6 ms, both get A
    svc = service({0: {1: 10.0, 2: 12.0}, 1: {1: 2.0, 2: 4.0}})
    assert fluid_bound([0.0, 0.0], [20.0, 20.0], {0: 0.9, 1: 0.5}, svc, max_batch=2) == pytest.approx(0.9)


def test_requests_far_apart_do_not_share_time_and_one_that_fits_nothing_counts_zero():
    svc = service({0: {1: 10.0}})
    bound = fluid_bound([0.0, 1.0, 2.0], [10.0, 10.0, 5.0], {0: 0.9}, svc, max_batch=1)
    assert bound == pytest.approx(2 * 0.9 / 3)


def test_the_runtime_cost_counts_as_worker_time():
    svc = service({0: {1: 10.0}}, per_batch_ms=1.0)  # 11 ms busy: no longer fits 10 ms
    assert fluid_bound([0.0], [10.0], {0: 0.9}, svc, max_batch=1) == 0.0


def _trace(seed: int, n: int = 120, rate: float = 300.0):
    rng = random.Random(seed)
    budgets = BudgetDistribution(6.0, 120.0)
    arrivals = poisson(rate, n / rate, rng)
    return arrivals, [budgets.sample(rng) for _ in arrivals]


@pytest.mark.parametrize("seed", range(3))
def test_no_simulated_schedule_beats_the_bound(seed):
    # forwards take exactly their median (no spread), so every policy's expected effective
    # accuracy (the accuracy of each answer in budget) must stay under the bound
    table = {
        0: {1: 2.0, 2: 2.5, 4: 3.5, 8: 5.0},
        1: {1: 5.0, 2: 6.5, 4: 9.0, 8: 14.0},
        2: {1: 12.0, 2: 15.0, 4: 22.0, 8: 35.0},
    }
    accuracy = {0: 0.6, 1: 0.75, 2: 0.85}
    svc = service(table, per_batch_ms=0.3)
    subnets = [Subnet(s, "stitch", f"s{s}", flops=s + 1, params=1, accuracy=a) for s, a in accuracy.items()]
    arrivals, budgets = _trace(seed)
    bound = fluid_bound(arrivals, budgets, accuracy, svc, max_batch=8)
    stages = {s: (0.25, 0.5, 0.75) for s in accuracy}
    for policy in ("elastic", "slackfit", "static:0", "static:1", "static:2"):
        for pauses in (None, stages):
            outcomes = simulate(subnets, svc, policy, arrivals, budgets, BernoulliJudge(accuracy, seed), stages=pauses)
            expected = sum(accuracy[o.subnet] for o in outcomes if o.on_time) / len(outcomes)
            assert 0 < expected <= bound + 1e-9, (policy, pauses is not None)
    # one subnet alone is a smaller problem; a coarser grid only widens windows
    assert fluid_bound(arrivals, budgets, {2: 0.85}, svc, max_batch=8) <= bound
    assert fluid_bound(arrivals, budgets, accuracy, svc, max_batch=8, resolution_ms=4.0) >= bound - 1e-9
