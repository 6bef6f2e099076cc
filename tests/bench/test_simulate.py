"""The load suite's simulator: the real scheduler on a virtual clock (synthetic tables, no model)."""

import math
import random

import pytest

from elastic.bench.arrivals import BudgetDistribution, on_off, poisson
from elastic.bench.outcomes import ANSWERED, BernoulliJudge, score
from elastic.bench.simulate import Z99, ServiceModel, simulate
from elastic.serving import LatencyProfile
from elastic.subnet import Subnet

BATCHES = (1, 2, 4, 8)


def table(base_ms: dict[int, float], per_item: float = 0.0) -> dict[int, dict[int, float]]:
    return {s: {b: ms + per_item * (b - 1) for b in BATCHES} for s, ms in base_ms.items()}


def subnets(acc: dict[int, float]) -> list[Subnet]:
    return [Subnet(s, "stitch", f"s{s}", flops=s + 1, params=1, accuracy=a) for s, a in acc.items()]


ACC = {0: 0.6, 1: 0.7, 2: 0.8}


def test_sparse_arrivals_are_answered_in_exactly_the_service_time():
    profile = LatencyProfile.from_table(table({0: 10.0}))  # p99 = p50: no spread
    service = ServiceModel(profile, per_request_ms=1.0, per_batch_ms=0.5)
    arrivals = [0.05 * k for k in range(20)]
    outcomes = simulate(
        subnets({0: 0.6}), service, "static:0", arrivals, [12.0] * 20, BernoulliJudge({0: 0.6}, 0), batch_wait_ms=0
    )
    assert [o.status for o in outcomes] == [ANSWERED] * 20
    assert all(o.latency_ms == pytest.approx(11.5) for o in outcomes)  # 10 forward + 1 + 0.5
    assert all(o.batch_size == 1 and o.on_time for o in outcomes)


def test_a_queue_is_batched_behind_the_running_batch():
    # one arrival, then seven together while it runs: they wait for it and go as one batch
    profile = LatencyProfile.from_table(table({0: 10.0}, per_item=1.0))
    service = ServiceModel(profile)
    arrivals = [0.0] + [0.001] * 7
    outcomes = simulate(
        subnets({0: 0.6}), service, "static:0", arrivals, [1000.0] * 8, BernoulliJudge({0: 0.6}, 0), batch_wait_ms=0
    )
    assert outcomes[0].latency_ms == pytest.approx(10.0) and outcomes[0].batch_size == 1
    for o in outcomes[1:]:
        assert o.batch_size == 7
        assert o.latency_ms == pytest.approx(10.0 - 1.0 + 16.0)  # waits 9 ms, then 10 + 6 × 1 ms


def test_low_load_gets_the_most_accurate_subnet_that_fits():
    profile = LatencyProfile.from_table(table({0: 2.0, 1: 4.0, 2: 8.0}))
    service = ServiceModel(profile)
    arrivals = [0.1 * k for k in range(30)]
    judge = BernoulliJudge(ACC, "s")
    loose = simulate(subnets(ACC), service, "elastic", arrivals, [50.0] * 30, judge)
    assert {o.subnet for o in loose} == {2}
    tight = simulate(subnets(ACC), service, "elastic", arrivals, [5.0] * 30, judge)
    assert {o.subnet for o in tight} == {1}  # 8 ms misses 5 ms; 4 ms is the best that fits


def test_every_request_ends_once_and_exact_predictions_keep_admitted_requests_on_time():
    # deterministic service equal to the prediction: admission is exact, so nothing admitted
    # is shed or late, and overload shows up as rejections at submit
    profile = LatencyProfile.from_table(table({0: 10.0}, per_item=2.0))  # capacity ~ 8 / 24 ms
    service = ServiceModel(profile)
    rng = random.Random(0)
    arrivals = poisson(1000.0, 1.0, rng)
    budgets = [rng.uniform(20.0, 100.0) for _ in arrivals]
    outcomes = simulate(
        subnets({0: 0.6}), service, "static:0", arrivals, budgets, BernoulliJudge({0: 0.6}, 0), batch_wait_ms=0
    )
    s = score(outcomes)
    assert s["requests"] == len(arrivals) == len(outcomes)
    assert s["rejected"] > s["requests"] // 2  # ~3× overloaded
    assert s["shed"] == 0 and s["late"] == 0
    assert s["answered"] == s["admitted"]
    # the worker cannot do more than one full batch per 24 ms
    assert s["answered"] <= 8 * (1.0 + 0.1) / 0.024


def test_same_seed_same_run_other_seed_other_forward_times():
    profile = LatencyProfile.from_table(table({0: 2.0, 1: 4.0, 2: 8.0}), tail=3.0)  # spread
    service = ServiceModel(profile, per_request_ms=0.1, per_batch_ms=0.2)
    rng = random.Random(1)
    arrivals = poisson(300.0, 1.0, rng)
    budgets = [rng.uniform(5.0, 60.0) for _ in arrivals]

    def run(seed):
        return simulate(subnets(ACC), service, "elastic", arrivals, budgets, BernoulliJudge(ACC, seed), seed=seed)

    assert run("a") == run("a")
    assert [o.latency_ms for o in run("a")] != [o.latency_ms for o in run("b")]


def test_forward_draws_follow_the_profiled_median_and_tail():
    profile = LatencyProfile.from_table({0: {1: 10.0}}, {0: {1: 30.0}})
    service = ServiceModel(profile)
    rng = random.Random(0)
    xs = sorted(service.forward_ms(0, 1, rng) for _ in range(20000))
    assert xs[10000] == pytest.approx(10.0, rel=0.03)
    assert xs[19800] == pytest.approx(30.0, rel=0.08)
    flat = ServiceModel(LatencyProfile.from_table({0: {1: 5.0}}))
    assert {flat.forward_ms(0, 1, rng) for _ in range(10)} == {5.0}


def test_every_cell_draws_with_the_machines_spread_not_its_own_p99():
    # three cells with p99 = 1.2 x p50 and one whose p99 one hiccup set at 4 x
    p50 = {0: {1: 10.0, 8: 20.0}, 1: {1: 10.0, 8: 20.0}}
    p99 = {0: {1: 12.0, 8: 24.0}, 1: {1: 40.0, 8: 24.0}}
    profile = LatencyProfile.from_table(p50, p99)
    shared = ServiceModel(profile)
    assert shared.sigma == pytest.approx(math.log(1.2) / Z99)
    rng = random.Random(0)
    xs = sorted(shared.forward_ms(1, 1, rng) for _ in range(20000))
    assert xs[10000] == pytest.approx(10.0, rel=0.03)
    assert xs[19800] == pytest.approx(12.0, rel=0.05)  # the machine's tail, not the cell's 40
    own = ServiceModel(profile, per_cell_spread=True)
    ys = sorted(own.forward_ms(1, 1, rng) for _ in range(20000))
    assert ys[19800] == pytest.approx(40.0, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_bursts_past_capacity_shed_no_more_under_elastic_than_on_the_fastest_subnet(seed):
    # on/off bursts at 1.25x what the fastest subnet serves in full batches, forwards drawn
    # with a spread: predictions go wrong, and then someone is late whatever runs. The
    # elastic policy runs the whole head on the fastest subnet there, the worker's best
    # rate, and sheds a fraction of what the static policy does (which splits batches for a
    # tight head); taking the fewest late of one plan chose small batches and shed more than
    # the static policy (21 against 18 admitted requests with seed 0, 264 against 260 with 1).
    per_item = {0: 0.025, 1: 0.05, 2: 0.15}
    p50 = {s: {b: ms + per_item[s] * (b - 1) for b in BATCHES} for s, ms in {0: 0.7, 1: 0.72, 2: 0.9}.items()}
    p99 = {s: {b: 1.4 * ms for b, ms in row.items()} for s, row in p50.items()}
    service = ServiceModel(LatencyProfile.from_table(p50, p99), per_batch_ms=0.13)
    capacity = 8 / ((p50[0][8] + 0.13) / 1e3)  # requests/s in full batches on subnet 0
    rng = random.Random(seed)
    arrivals = on_off(1.25 * capacity, 2.0, rng)
    budgets = [BudgetDistribution(1.66, 8.0).sample(rng) for _ in arrivals]
    assert len(arrivals) > 1_000  # bursts did happen
    scores = {
        policy: score(simulate(subnets(ACC), service, policy, arrivals, budgets, BernoulliJudge(ACC, seed), seed=seed))
        for policy in ("elastic", "static:0")
    }
    assert scores["elastic"]["shed"] <= scores["static:0"]["shed"] / 2
    # not below it by more than one draw's noise: the static policy's own score moves by up
    # to 0.4 points between refit cadences (refit_ms 0-50) on these arrivals; seed 0 at the
    # default 20 ms has elastic 0.02 points below it
    assert scores["elastic"]["effective_accuracy"] >= scores["static:0"]["effective_accuracy"] - 0.001


def test_preemption_serves_loose_requests_on_the_slow_subnet_and_keeps_everyone_on_time():
    # a slow accurate subnet and a fast one; exact predictions (no spread, no overhead)
    profile = LatencyProfile.from_table(table({0: 10.0, 1: 100.0}, per_item=2.0))
    service = ServiceModel(profile)
    rng = random.Random(1)
    arrivals = poisson(15.0, 20.0, rng)
    budgets = [rng.choice((25.0, 400.0)) for _ in arrivals]  # tight and loose, mixed
    acc = {0: 0.6, 1: 0.8}
    tenths = tuple(k / 10 for k in range(1, 10))
    runs = {
        name: score(simulate(subnets(acc), service, "elastic", arrivals, budgets, BernoulliJudge(acc, 0), stages=st))
        for name, st in (("plain", None), ("preempt", {0: tenths, 1: tenths}))
    }
    plain, preempt = runs["plain"], runs["preempt"]
    assert preempt["requests"] == plain["requests"] == len(arrivals)
    assert preempt["shed"] == 0 and preempt["late"] == 0 and preempt["answered"] == preempt["admitted"]
    assert preempt["rejected"] <= plain["rejected"]
    # without it the slow subnet's busy period would turn tight arrivals away, so the policy
    # keeps loose requests on the fast one; with it they get the slow, accurate one
    assert preempt["effective_accuracy"] > plain["effective_accuracy"] + 0.05
