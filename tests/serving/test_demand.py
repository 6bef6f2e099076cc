"""The demand estimate (arrival rate, budgets, arrivals a busy period blocks) and how the
elastic policy prices a long batch with it, on a virtual clock and a synthetic cost table."""

import contextlib
import math
import random

import pytest

from elastic.bench.outcomes import BernoulliJudge, score
from elastic.bench.simulate import ServiceModel, simulate
from elastic.errors import ElasticError
from elastic.serving import BudgetScheduler, ElasticPolicy, LatencyProfile, Request
from elastic.serving.cost_table import concave_hull
from elastic.serving.demand import Demand, busy_charge
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
        t += 0.002  # an arrival every 2 ms, each during a busy period of 2 ms
        b = math.exp(rng.uniform(math.log(5), math.log(200)))
        budgets.append(b)
        d.record(t, b, busy=True)
        d.busy_ended(2.0)
    gap = d.busy_gap_ms()
    assert gap == pytest.approx(2.0)
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


@pytest.mark.parametrize("window", [1, 2, 5, 64])
def test_the_gap_is_the_median_of_the_gaps_in_the_window_as_arrivals_slide_through_it(window):
    # kept sorted as arrivals come and go; the same value as sorting the window's gaps afresh
    rng = random.Random(window)
    d = Demand(rate_window=window)
    times, t = [], 0.0
    for _ in range(300):
        t += rng.choice([0.0, 1e-4, rng.expovariate(500.0), rng.expovariate(2.0)])  # ties and spreads
        d.record(t, 10.0)
        times = [*times, t][-window:]
        gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
        if len(times) < min(5, window) or not gaps or gaps[len(gaps) // 2] <= 0:
            expected = None
        else:
            expected = gaps[len(gaps) // 2] * 1e3 / math.log(2)
        assert d.gap_ms() == expected


def test_best_effort_budgets_are_never_blocked():
    d = Demand(rate_window=4, refresh=1)
    for k in range(8):
        d.record(k * 0.01, math.inf, busy=True)
        d.busy_ended(10.0)
    assert d.busy_gap_ms() == pytest.approx(10.0)
    assert d.blocked(1e6, 1.0) == 0.0


def test_the_blocking_rate_counts_only_arrivals_while_a_batch_runs():
    d = Demand(refresh=1)
    t = 0.0
    for _ in range(3):  # a closed loop: each request arrives after the last answer
        d.record(t, 5.0, busy=False)
        d.busy_ended(4.0)
        t += 0.001
    assert d.busy_gap_ms() is None  # fewer than 4 busy periods: unknown
    for _ in range(300):
        d.record(t, 5.0, busy=False)
        d.busy_ended(4.0)
        t += 0.001
    assert d.gap_ms() == pytest.approx(1.0 / math.log(2))  # 1 ms between arrivals...
    assert d.busy_gap_ms() == math.inf  # ...but none while a batch runs
    assert d.blocked(100.0, 1.0) == 0.0
    # open-loop arrivals start: 2 per 4 ms busy period; the old idle periods drop out of
    # the estimate as soon as 16 busy-time arrivals are in (8 periods), not after 256
    for _ in range(8):
        d.record(t, 5.0, busy=True)
        d.record(t, 5.0, busy=True)
        d.busy_ended(4.0)
    assert d.busy_gap_ms() == pytest.approx(2.0)
    assert d.blocked(100.0, 1.0) > 0.0


def test_a_burst_during_the_first_batches_is_priced_by_its_arrival_rate():
    d = Demand()  # default refresh: 32 arrivals between rebuilds of the budget sample
    rng = random.Random(1)
    budgets = [math.exp(rng.uniform(math.log(5), math.log(500))) for _ in range(10)]
    for k, b in enumerate(budgets[:5]):  # a burst while the first batch runs: no busy period ended yet
        d.record(0.001 * k, b, busy=True)
    gap = d.gap_ms()
    assert gap == pytest.approx(1.0 / math.log(2))
    assert d.busy_gap_ms() == gap  # the arrival rate stands in for the busy-time rate
    assert d.blocked(40.0, 2.0) == pytest.approx(brute_blocked(40.0, 2.0, budgets[:5], gap), rel=2e-3)
    for k, b in enumerate(budgets[5:], start=5):
        d.record(0.001 * k, b, busy=True)
    # the sample doubles while it is small instead of waiting for 32 more arrivals
    assert d.blocked(40.0, 2.0) == pytest.approx(brute_blocked(40.0, 2.0, budgets, d.gap_ms()), rel=2e-3)


def test_concave_hull_drops_points_under_the_chords():
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    ys = [0.5, 0.7, 0.72, 0.9, 0.95]  # (3, 0.72) lies under the chord from (2, .7) to (4, .9)
    assert concave_hull(xs, ys) == [0, 1, 3, 4]
    assert concave_hull([1.0], [0.5]) == [0]


def two_subnets(slow_ms=30.0):
    table = {0: {1: 1.0, 8: 2.0}, 1: {1: slow_ms, 8: 2 * slow_ms}}
    subnets = [Subnet(0, "anchor", "fast", 1, 1, 0.70), Subnet(1, "anchor", "slow", 2, 2, 0.80)]
    return subnets, LatencyProfile.from_table(table)


def decide(policy, gap_s, tight_share, seed=0, closed=False):
    """The subnet chosen for one loose request after a history of 64 arrivals every
    `gap_s` on a virtual clock, `tight_share` of them with 5 ms budgets (the rest 1 s),
    each batch running for its profiled latency; `closed`: each request is sent `gap_s`
    after the previous one is answered (one client waiting for each answer)."""
    subnets, profile = two_subnets()
    s = BudgetScheduler(subnets, profile, policy, max_batch_size=8)
    rng = random.Random(seed)
    running = None  # (batch, end)
    answered = 0.0  # when the last batch ended

    def advance(until):
        nonlocal running, answered
        while running is not None and running[1] <= until:
            batch, end = running
            answered = end
            s.update_from_output(batch, profile.latency_ms(batch.subnet, batch.size, "p50"), end)
            running = None
            start(end)

    def start(at):
        nonlocal running
        if running is None and s.has_waiting():
            batch = s.schedule(at, hold=False).batch
            if batch is not None:
                running = (batch, at + profile.latency_ms(batch.subnet, batch.size, "p50") / 1e3)

    now = 0.0
    for k in range(64):
        advance(now)
        with contextlib.suppress(ElasticError):  # turned away: still part of the demand
            s.add_request(Request(k, now, 5.0 if rng.random() < tight_share else 1000.0), now)
        start(now)
        if closed:
            advance(float("inf"))
            now = max(now, answered)
        now += gap_s
    advance(float("inf"))
    s.add_request(Request(64, now, 1000.0), now)
    return s.schedule(now, hold=False).batch.subnet


def test_a_long_batch_is_priced_by_the_tight_arrivals_it_would_turn_away():
    # many tight requests arriving often: 30 ms on the accurate subnet would turn several
    # away (each worth 0.70), more than the 0.10 it gains: the fast subnet
    assert decide(ElasticPolicy(), gap_s=0.004, tight_share=0.5) == 0
    # the same history without pricing: the most accurate subnet that meets the deadline
    assert decide(ElasticPolicy(blocking_price=0.0), gap_s=0.004, tight_share=0.5) == 1
    # rare arrivals, or no tight budgets: the long batch costs nobody anything
    assert decide(ElasticPolicy(), gap_s=1.0, tight_share=0.5) == 1
    assert decide(ElasticPolicy(), gap_s=0.004, tight_share=0.0) == 1
    # one client that waits for each answer never arrives during a batch: nothing to price
    assert decide(ElasticPolicy(), gap_s=0.004, tight_share=0.5, closed=True) == 1


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


def batch_after(busy_arrivals_per_ms, budget_ms):
    """The first batch for 16 loose (1 s) requests after 64 arrivals with `budget_ms` at
    `busy_arrivals_per_ms` while batches ran: (subnet, size)."""
    subnets = [Subnet(0, "anchor", "fast", 1, 1, 0.70), Subnet(1, "anchor", "slow", 2, 2, 0.80)]
    profile = LatencyProfile.from_table({0: {1: 1.0, 8: 2.0}, 1: {1: 1.5, 8: 6.0}})
    s = BudgetScheduler(subnets, profile, ElasticPolicy(), max_batch_size=8)
    t = 0.0
    for _ in range(64):  # one arrival per busy period, each 1 / rate ms long
        s.demand.record(t, budget_ms, busy=True)
        s.demand.busy_ended(1.0 / busy_arrivals_per_ms)
        t += 1e-3 / busy_arrivals_per_ms
    for k in range(16):
        s.add_request(Request(k, t, 1000.0), t)
    batch = s.schedule(t, hold=False).batch
    return batch.subnet, batch.size


def test_in_saturation_worker_time_is_priced_by_the_answers_it_displaces():
    # arrivals at the fast subnet's full-batch throughput (8 per 2 ms) with 6 ms budgets:
    # the slow batch and the queue behind it outlast their budgets: the fast subnet, full
    # batch (without the saturation charge the policy served a batch of 1 here: the queue
    # behind it, counted in whole batches, looked no longer than behind a full one)
    assert batch_after(4.0, 6.0) == (0, 8)
    # rare arrivals: idle time absorbs the slow batch; the most accurate subnet
    assert batch_after(0.01, 6.0) == (1, 8)
    # the same rate, but budgets far longer than the backlog (a burst of loose requests):
    # displaced arrivals only wait, none is lost; the most accurate subnet
    assert batch_after(4.0, 60_000.0) == (1, 8)
    s = BudgetScheduler(*two_subnets(), ElasticPolicy())
    for k in range(64):
        s.demand.record(k * 1e-4, 8.0, busy=True)
        s.demand.busy_ended(0.1)
    theta = s.displaced_per_ms()
    assert theta > 0
    # the displaced answers are `Demand.blocked` over the batch plus the queue, at rate theta
    weight = s.saturation_weight(theta)
    assert weight == pytest.approx(theta * s.demand.busy_gap_ms())
    after = s.predict_ms(0, 1) + s.overhead_ms(1)
    blocked = s.blocked_curve()
    charge = busy_charge(blocked, weight, 5.0, rest_ms=1.0, fluid_ms=3.0)
    assert charge == pytest.approx(s.demand.blocked(6.0, after) + weight * s.demand.blocked(8.0, after))
    assert s.saturation_weight(0.0) == 0.0
    assert busy_charge(blocked, 0.0, 5.0, 1.0, 3.0) == pytest.approx(s.demand.blocked(6.0, after))


def test_the_charge_curve_is_busy_charge_over_the_blocked_curve_bit_for_bit():
    # the policy prices batches with `charge_curve` (both curves in one call); it must be
    # the same number as `busy_charge` over `blocked_curve`, or decisions could differ
    s = BudgetScheduler(*two_subnets(), ElasticPolicy())
    rng = random.Random(3)
    for k in range(64):
        s.demand.record(k * 1e-4, rng.uniform(0.5, 12.0), busy=True)
        s.demand.busy_ended(0.1)
    blocked = s.blocked_curve()
    for weight in (0.0, 0.37, 2.5):
        charge = s.charge_curve(weight)
        for _ in range(500):
            ms, rest, fluid = rng.uniform(-1.0, 8.0), rng.uniform(-2.0, 20.0), rng.uniform(-2.0, 20.0)
            assert charge(ms, rest, fluid) == busy_charge(blocked, weight, ms, rest, fluid)
    fresh = BudgetScheduler(*two_subnets(), ElasticPolicy())  # no rate known yet: no charge
    assert fresh.charge_curve(1.0)(5.0, 1.0, 3.0) == 0.0


@pytest.mark.parametrize("depth", [8, 40])
def test_pricing_only_the_batch_sizes_that_can_win_gives_the_same_decisions(monkeypatch, depth):
    # the policy prices batch sizes from the highest bound (members × accuracy: charges are
    # never negative) down and stops at the first bound that cannot beat the best key;
    # pricing every size must pick the same (subnet, size) in every state of a loaded queue
    from elastic.bench.scheduler import synthetic
    from elastic.serving.fronts_decision import OnFronts

    subnets, profile = synthetic(30)
    s = BudgetScheduler(subnets, profile, ElasticPolicy(), max_batch_size=8, max_queue=10_000)
    rng = random.Random(depth)
    now, running, compared = 0.0, None, 0
    for k in range(600):
        best_effort = rng.random() < 0.1
        floor = rng.choice([None, None, None, 0.6, 0.75])
        with contextlib.suppress(ElasticError):
            s.add_request(Request(k, now, rng.uniform(5.0, 300.0), floor, best_effort=best_effort), now)
        if s.get_num_waiting() < depth:
            continue
        if running is not None:
            s.update_from_output(running, profile.latency_ms(running.subnet, running.size, "p50"), now)
        decisions = []
        for prune in (True, False):
            monkeypatch.setattr(OnFronts, "prune", prune)
            decisions.append(s.policy.choose(s._reqs, now, s, 8))
        assert decisions[0] == decisions[1]
        compared += 1
        running = s.schedule(now).batch
        now += rng.uniform(0.0002, 0.002)
    assert compared > 50


def test_best_priced_finds_the_best_hull_point_or_top():
    # against a brute force over every hull point between the floor and `top`, and `top`:
    # the binary search, and the search's start at the first point whose members × accuracy
    # beats top's priced value (a charge is never negative), give the best of them
    from elastic.bench.scheduler import synthetic

    subnets, profile = synthetic(40)
    s = BudgetScheduler(subnets, profile, ElasticPolicy(), max_batch_size=8)
    rng = random.Random(0)
    for _ in range(400):
        b = rng.randint(1, 8)
        ids, acc, hull = s._front_ids[b], s._front_acc[b], s._front_hull[b]
        top = rng.choice(ids)
        members = rng.randint(0, b)
        floor = rng.choice([-math.inf, rng.uniform(0.5, 0.9)])
        price = rng.uniform(0.1, 2.0)
        scale, knee = rng.uniform(0.001, 0.2), rng.uniform(0.0, 20.0)

        def charge(ms, scale=scale, knee=knee):  # convex, never negative
            return scale * max(0.0, ms - knee) ** 2

        def value(j, members=members, price=price, charge=charge, b=b, ids=ids, acc=acc):
            return members * acc[j] - price * charge(s.predict_ms(ids[j], b))

        j_top = ids.index(top)
        options = [j for j in hull if j <= j_top and acc[j] >= floor] + [j_top]
        best = max(value(j) for j in options)
        sid, ms = s.best_priced(b, floor, top, members, price, charge)
        assert value(ids.index(sid)) == pytest.approx(best, abs=1e-12)
        assert ms == pytest.approx(s.predict_ms(sid, b))
    top = s._front_ids[3][-1]
    assert s.best_priced(3, -math.inf, top, 2, 0.0, charge)[0] == top  # no price: top
