"""The demand estimate (arrival rate, budgets, arrivals a busy period blocks) and how the
elastic policy prices a long batch with it, on a virtual clock and a synthetic cost table."""

import math
import random

import pytest

from elastic.bench.outcomes import BernoulliJudge, score
from elastic.bench.simulate import ServiceModel, simulate
from elastic.serving import BudgetScheduler, ElasticPolicy, LatencyProfile, Request
from elastic.serving.demand import Demand
from elastic.serving.scheduler import concave_hull
from elastic.subnet import Subnet


def brute_blocked(busy_ms, service_ms, budgets, gap_ms):
    """λ · E[clamp(T + c − β, 0, T)] by direct numerical integration over the busy period."""
    steps = 2000
    du = busy_ms / steps
    hurt = 0.0
    for k in range(steps):
        u = (k + 0.5) * du  # time left of the busy period when the request arrives
        hurt += sum(b < u + service_ms for b in budgets) / len(budgets) * du
    return hurt / gap_ms


def test_blocked_integrates_the_budget_distribution_over_the_busy_period():
    rng = random.Random(0)
    d = Demand(rate_window=16, budget_window=64, refresh=1)
    t = 0.0
    budgets = []
    for _ in range(64):
        t += 0.002  # an arrival every 2 ms
        b = math.exp(rng.uniform(math.log(5), math.log(200)))
        budgets.append(b)
        d.record(t, b)
    gap = d.gap_ms()
    assert gap == pytest.approx(2.0 / math.log(2))  # median gap / ln 2: all gaps are 2 ms
    for busy in (0.5, 3.0, 12.0, 40.0, 400.0):
        assert d.blocked(busy, 4.0) == pytest.approx(brute_blocked(busy, 4.0, budgets, gap), rel=2e-3, abs=1e-6)
    # longer busy periods block more, and faster-than-linearly (convex)
    values = [d.blocked(x, 4.0) for x in (5.0, 10.0, 15.0, 20.0)]
    assert values == sorted(values)
    assert values[2] - values[1] >= values[1] - values[0]


def test_gap_is_unknown_until_five_arrivals_and_ignores_idle_periods_between_bursts():
    d = Demand(rate_window=16)
    t = 0.0
    for _ in range(4):
        d.record(t, 10.0)
        t += 0.001
        assert d.gap_ms() is None
    assert d.blocked(10.0, 1.0) == 0.0  # no rate yet: no price
    d.record(t, 10.0)
    assert d.gap_ms() == pytest.approx(1.0 / math.log(2))
    for k in range(40):  # bursts of 8 arrivals 1 ms apart, 1 s of silence between them
        t += 1.0 if k % 8 == 0 else 0.001
        d.record(t, 10.0)
    assert d.gap_ms() == pytest.approx(1.0 / math.log(2))  # the in-burst rate, not the mean rate


def test_best_effort_budgets_are_never_blocked():
    d = Demand(rate_window=4, refresh=1)
    for k in range(8):
        d.record(k * 0.01, math.inf)
    assert d.gap_ms() is not None
    assert d.blocked(1e6, 1.0) == 0.0


def test_concave_hull_drops_points_under_the_chords():
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    ys = [0.5, 0.7, 0.72, 0.9, 0.95]  # (3, 0.72) lies under the chord from (2, .7) to (4, .9)
    assert concave_hull(xs, ys) == [0, 1, 3, 4]
    assert concave_hull([1.0], [0.5]) == [0]


def two_subnets(slow_ms=30.0):
    table = {0: {1: 1.0, 8: 2.0}, 1: {1: slow_ms, 8: 2 * slow_ms}}
    subnets = [Subnet(0, "anchor", "fast", 1, 1, 0.70), Subnet(1, "anchor", "slow", 2, 2, 0.80)]
    return subnets, LatencyProfile.from_table(table)


def decide(policy, gap_s, tight_share, seed=0):
    """The subnet chosen for one loose request after a history of arrivals every `gap_s`,
    `tight_share` of them with 5 ms budgets (the rest 1 s); the queue is empty before it."""
    subnets, profile = two_subnets()
    s = BudgetScheduler(subnets, profile, policy, max_batch_size=8)
    rng = random.Random(seed)
    now = 0.0
    for k in range(64):
        r = Request(k, now, 5.0 if rng.random() < tight_share else 1000.0)
        s.add_request(r, now)
        out = s.schedule(now)
        if out.batch is not None:
            s.update_from_output(out.batch, profile.latency_ms(out.batch.subnet, out.batch.size, "p50"))
        now += gap_s
    while s.has_waiting():  # drain what is left, then time passes
        out = s.schedule(now)
        if out.batch is not None:
            s.update_from_output(out.batch, 1.0)
    s.add_request(Request(64, now, 1000.0), now)
    return s.schedule(now).batch.subnet


def test_a_long_batch_is_priced_by_the_tight_arrivals_it_would_turn_away():
    # many tight requests arriving often: 30 ms on the accurate subnet would turn several
    # away (each worth 0.70), more than the 0.10 it gains: the fast subnet
    assert decide(ElasticPolicy(), gap_s=0.004, tight_share=0.5) == 0
    # the same history without pricing: the most accurate subnet that meets the deadline
    assert decide(ElasticPolicy(blocking_price=0.0), gap_s=0.004, tight_share=0.5) == 1
    # rare arrivals, or no tight budgets: the long batch costs nobody anything
    assert decide(ElasticPolicy(), gap_s=1.0, tight_share=0.5) == 1
    assert decide(ElasticPolicy(), gap_s=0.004, tight_share=0.0) == 1


def test_pricing_beats_not_pricing_in_a_simulated_mixed_load():
    """Virtual clock: tight and loose budgets mixed, at a rate where the slow subnet's busy
    periods would block the tight ones; the priced policy delivers more correct answers in
    budget and turns fewer requests away (same arrivals, budgets and draws for all), and is
    within half a point of the best fixed subnet (which the unpriced one is far below)."""
    subnets, profile = two_subnets(slow_ms=30.0)
    rng = random.Random(1)
    arrivals, t = [], 0.0
    for _ in range(3000):
        t += rng.expovariate(60.0)
        arrivals.append(t)
    budgets = [math.exp(rng.uniform(math.log(3.0), math.log(300.0))) for _ in arrivals]
    service = ServiceModel(profile)
    results = {}
    contenders = {"priced": ElasticPolicy(), "unpriced": ElasticPolicy(blocking_price=0.0), "static": "static:0"}
    for name, policy in contenders.items():
        outcomes = simulate(
            subnets, service, policy, arrivals, budgets, BernoulliJudge({0: 0.7, 1: 0.8}, "x"), seed="x"
        )
        results[name] = score(outcomes)
    assert results["priced"]["rejected"] < results["unpriced"]["rejected"]
    assert results["unpriced"]["effective_accuracy"] < results["static"]["effective_accuracy"] - 0.05
    assert results["priced"]["effective_accuracy"] > results["unpriced"]["effective_accuracy"]
    assert results["priced"]["effective_accuracy"] >= results["static"]["effective_accuracy"] - 0.005
