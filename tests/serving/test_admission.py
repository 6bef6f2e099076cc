"""Queue-aware admission on synthetic cost tables, with a virtual clock: no model, no threads.

The engine is simulated event by event: requests arrive (Poisson), the scheduler admits or
refuses them, a batch runs for exactly its predicted time, and the next starts when it ends.
With predictions that hold, an admitted request must never be late or shed.
"""

import math
import random

import pytest
from test_scheduler import TABLE, Clock, make  # sibling test module

from elastic.errors import BudgetInfeasible, Overloaded
from elastic.serving import LatencyProfile, Request
from elastic.serving.latency_model import OverheadModel


def simulate(s, rate_per_s, budgets, n=600, seed=0, min_accuracy=(None,)):
    """Drive scheduler `s` with Poisson arrivals; returns per-request outcomes."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        arrivals.append(Request(i, t, rng.choice(budgets), min_accuracy=rng.choice(min_accuracy)))
    outcome = {}  # id -> "rejected" | "shed" | (end time, subnet)
    now, busy_until, running = 0.0, None, None
    k = 0
    while k < len(arrivals) or s.has_waiting() or running is not None:
        next_arrival = arrivals[k].arrival if k < len(arrivals) else math.inf
        if running is not None and busy_until <= next_arrival:
            now = busy_until
            batch = running
            for rid in batch.request_ids:
                outcome[rid] = (now, batch.subnet)
            s.update_from_output(batch, s.predictor.predict_ms(batch.subnet, batch.size))
            running = None
        elif k < len(arrivals):
            now = next_arrival
            r = arrivals[k]
            k += 1
            try:
                for e in s.add_request(r, now):
                    outcome[e.request_id] = "shed"
            except (BudgetInfeasible, Overloaded):
                outcome[r.id] = "rejected"
        if running is None and s.has_waiting():
            out = s.schedule(now)
            for e in out.shed:
                outcome[e.request_id] = "shed"
            if out.batch is not None:
                running = out.batch
                busy_until = now + out.batch.predicted_ms / 1e3
    return arrivals, outcome


@pytest.mark.parametrize("policy", ["elastic", "static:0", "static:1"])
@pytest.mark.parametrize("rate", [100, 400, 1500, 4000])
def test_an_admitted_request_is_never_late_when_predictions_hold(policy, rate):
    s = make(policy, max_queue=256)
    arrivals, outcome = simulate(s, rate, [6, 10, 15, 25, 40, 80], seed=rate)
    admitted = [r for r in arrivals if outcome[r.id] != "rejected"]
    assert admitted, "nothing admitted: the test would prove nothing"
    late = [r.id for r in admitted if outcome[r.id] == "shed" or outcome[r.id][0] > r.deadline + 1e-9]
    assert late == []
    if rate >= 1500:  # overload: admission had to refuse some
        assert len(admitted) < len(arrivals)


def test_an_admitted_request_is_never_late_with_accuracy_floors():
    s = make("elastic", max_queue=256)
    arrivals, outcome = simulate(s, 800, [8, 15, 30, 60], seed=7, min_accuracy=(None, None, 0.65, 0.75))
    admitted = [r for r in arrivals if outcome[r.id] != "rejected"]
    assert len(admitted) > 100
    for r in admitted:
        assert outcome[r.id] != "shed", r
        end, subnet = outcome[r.id]
        assert end <= r.deadline + 1e-9, r
        if r.min_accuracy is not None:
            assert s.real_accuracy(subnet) >= r.min_accuracy


def test_elastic_serves_more_accurately_than_the_fastest_static_under_light_load():
    def mean_accuracy(policy):
        s = make(policy, max_queue=256)
        arrivals, outcome = simulate(s, 100, [15, 40, 80], seed=1)
        return sum(s.accuracy(o[1]) for o in outcome.values() if isinstance(o, tuple)) / len(arrivals)

    assert mean_accuracy("elastic") > mean_accuracy("static:0") + 0.1


def test_a_request_is_admitted_only_if_the_queue_ahead_lets_it_finish():
    s, c = make(max_batch_size=1), Clock()
    for _ in range(3):
        s.add_request(c.request(7.5), now=0.0)  # 2, 4, 6 ms on the fastest subnet
    with pytest.raises(Overloaded, match="queue ahead"):
        s.add_request(c.request(7.9), now=0.0)  # 4th in line: ends at 8 ms > 7.9 ms
    s.add_request(c.request(8.1), now=0.0)  # ends at 8 ms: admitted
    # an urgent one goes first (earliest deadline) when the others have room to wait
    s2, c2 = make(max_batch_size=1), Clock()
    for _ in range(3):
        s2.add_request(c2.request(100), now=0.0)
    s2.add_request(c2.request(3), now=0.0)
    assert s2.schedule(0.0).batch.request_ids == (3,)


def test_a_request_that_would_make_an_admitted_one_miss_is_refused():
    s, c = make(max_batch_size=1), Clock()
    s.add_request(c.request(4.5), now=0.0)
    s.add_request(c.request(4.5), now=0.0)  # 2 + 2 ms: both make 4.5 ms
    with pytest.raises(Overloaded, match="admitted request"):
        s.add_request(c.request(4.2), now=0.0)  # goes first; the second would end at 6 ms
    assert s.get_num_waiting() == 2


def test_a_best_effort_request_is_admitted_whatever_the_queue():
    s, c = make(max_batch_size=1), Clock()
    for _ in range(3):
        s.add_request(c.request(7.5), now=0.0)
    s.add_request(c.request(1.0, best_effort=True), now=0.0)
    assert s.get_num_waiting() == 4


def test_a_queued_request_is_moved_to_a_cheaper_subnet_when_that_saves_a_newcomer():
    alone, c = make(), Clock()
    alone.add_request(c.request(12), now=0.0)
    assert alone.schedule(0.0).batch.subnet == 2  # alone: the most accurate that fits, 10 ms

    s, c = make(), Clock()
    s.add_request(c.request(12), now=0.0)
    s.add_request(c.request(8, at=0.0), now=0.0)  # with the first on subnet 2 it would miss
    served = {}
    now = 0.0
    while s.has_waiting():
        batch = s.schedule(now).batch
        now += batch.predicted_ms / 1e3
        for rid in batch.request_ids:
            served[rid] = (batch.subnet, now)
        s.update_from_output(batch, TABLE[batch.subnet][1] if batch.size == 1 else batch.predicted_ms)
    assert served[0][0] != 2 and TABLE[served[0][0]][1] < TABLE[2][1]  # moved to a cheaper subnet
    assert served[0][1] <= 0.012 and served[1][1] <= 0.008  # and both make it


def test_the_running_batch_counts_as_observed():
    s, c = make(), Clock()
    s.add_request(c.request(40), now=0.0)
    s.schedule(0.0)  # subnet 2: busy until 10 ms
    with pytest.raises(BudgetInfeasible, match="running batch"):
        s.add_request(c.request(10, at=0.0), now=0.0)  # 10 ms wait + 2 ms
    s.add_request(c.request(12.5, at=0.0), now=0.0)


def test_overhead_enters_every_prediction():
    profile = LatencyProfile.from_table(TABLE)
    from test_scheduler import subnets

    from elastic.serving import BudgetScheduler

    s = BudgetScheduler(subnets(), profile, overhead=OverheadModel(per_batch_ms=1.0, per_request_ms=0.5))
    assert s.predict_ms(0, 1) == pytest.approx(2.0 + 1.5)
    assert s.predict_ms(0, 8) == pytest.approx(9.0 + 1.0 + 4.0)
    c = Clock()
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(3.2), now=0.0)  # the forward alone (2 ms) would fit


def test_overhead_model_fits_per_batch_and_per_request_costs():
    o = OverheadModel(alpha=0.1)
    for _ in range(200):
        for b in (1, 3, 8):
            o.observe(b, 0.3 + 0.05 * b)
    assert o.per_batch_ms == pytest.approx(0.3, abs=1e-6)
    assert o.per_request_ms == pytest.approx(0.05, abs=1e-6)
    for _ in range(200):
        o.observe(4, -1.0)  # clock noise: clamped at zero, never negative
    assert o.per_batch_ms >= 0 and o.per_request_ms >= 0


def test_shed_expired_removes_requests_at_their_latest_start_only():
    s, c = make(), Clock()
    s.add_request(c.request(12), now=0.0)  # fastest 2 ms: latest start 10 ms
    s.add_request(c.request(50), now=0.0)  # latest start 48 ms
    assert s.next_expiry() == pytest.approx(0.010)
    assert s.shed_expired(0.0099) == []
    shed = s.shed_expired(0.0101)
    assert [x.request_id for x in shed] == [0] and s.get_num_waiting() == 1
    assert s.next_expiry() == pytest.approx(0.048)


def test_caches_stay_bounded_under_many_distinct_accuracy_floors():
    s, c = make(max_queue=100_000), Clock()
    rng = random.Random(0)
    for k in range(20_000):
        floor = rng.uniform(0.0, 0.8)
        s.eligible(floor)
        s.add_request(c.request(1000, min_accuracy=floor), now=0.0)
        if k % 64 == 63:
            assert len(s.abort_all()) == 64
    assert len(s._eligible_cache) <= 256
    s.abort_all()
    assert s.next_expiry() is None and len(s._expiry) == 0


def test_the_measured_tail_replaces_the_profiles_quantile_after_enough_batches():
    profile = LatencyProfile.from_table(TABLE, tail=3.0)  # a pessimistic profiled p99
    from test_scheduler import subnets

    from elastic.serving import BudgetScheduler

    s = BudgetScheduler(subnets(), profile)
    c = Clock()
    assert s.predict_ms(0, 1) == pytest.approx(6.0)  # the profile's p99 until it has data
    rng = random.Random(0)
    for _ in range(64):
        s.add_request(c.request(1000), now=0.0)
        batch = s.schedule(0.0).batch
        median = TABLE[batch.subnet][1] if batch.size == 1 else profile.latency_ms(batch.subnet, batch.size, "p50")
        s.update_from_output(batch, median * rng.uniform(0.9, 1.1))  # the machine: ±10 %
    assert s.predictor.tail == pytest.approx(1.1, abs=0.05)
    assert s.predict_ms(0, 1) == pytest.approx(2.0 * s.predictor.correction(0) * s.predictor.tail)
    assert s.predict_ms(0, 1) < 3.0  # the measured spread, not the profile's 3x


def test_under_sustained_load_the_elastic_policy_moves_to_cheaper_subnets_once_a_backlog_forms():
    from elastic.serving import ElasticPolicy

    def first_batch(policy):
        s, c = make(policy, max_queue=256), Clock()
        for k in range(40):  # one request per ms, for 40 ms, while (say) a long batch runs
            s.add_request(c.request(200, at=k / 1e3), now=k / 1e3)
        return s.schedule(0.040).batch

    capped = first_batch(ElasticPolicy())  # 8 requests arrive every 8 ms: a batch may take 7.2
    uncapped = first_batch(ElasticPolicy(utilisation=math.inf))
    assert capped.subnet == 0 and capped.size == 8  # the fastest, full: the backlog drains
    assert TABLE[uncapped.subnet][8] > TABLE[capped.subnet][8]  # deadlines alone would allow more
