"""BudgetScheduler on synthetic cost tables: no model, no tensors, the clock driven by hand."""

import ast
import contextlib
import math
import random
from pathlib import Path

import pytest

from elastic.errors import BudgetInfeasible, ConfigError, Overloaded
from elastic.serving import BudgetScheduler, LatencyProfile, Request
from elastic.subnet import Subnet

# subnet -> batch -> ms; p99 == p50 (tail=1) keeps the arithmetic readable
TABLE = {
    0: {1: 2.0, 2: 3.0, 4: 5.0, 8: 9.0},  # fast, acc 0.6
    1: {1: 5.0, 2: 7.0, 4: 11.0, 8: 19.0},  # mid, acc 0.7
    2: {1: 10.0, 2: 14.0, 4: 22.0, 8: 38.0},  # slow, acc 0.8
    3: {1: 12.0, 2: 16.0, 4: 24.0, 8: 40.0},  # slower than 2 and worse: off the Pareto front
}
ACC = {0: 0.6, 1: 0.7, 2: 0.8, 3: 0.5}


def subnets(accuracy=ACC):
    return [Subnet(i, "stitch", f"s{i}", flops=(i + 1) * 1000, params=10, accuracy=accuracy.get(i)) for i in TABLE]


def make(policy="elastic", max_batch_size=8, max_queue=64, accuracy=ACC, **kw):
    profile = LatencyProfile.from_table(TABLE)
    return BudgetScheduler(subnets(accuracy), profile, policy, max_batch_size, max_queue, **kw)


class Clock:
    """Hands out request ids and arrival times."""

    def __init__(self):
        self.next_id = 0

    def request(self, budget_ms, at=0.0, **kw):
        r = Request(self.next_id, at, budget_ms, **kw)
        self.next_id += 1
        return r


def test_only_pareto_subnets_are_candidates():
    s = make()
    assert s.candidates == [0, 1, 2]


@pytest.mark.parametrize(("budget", "expected"), [(3, 0), (8, 1), (12, 2), (1000, 2), (math.inf, 2)])
def test_single_request_gets_the_most_accurate_subnet_that_meets_its_budget(budget, expected):
    s, c = make(), Clock()
    s.add_request(c.request(budget), now=0.0)
    out = s.schedule(now=0.0)
    assert out.batch.subnet == expected
    assert out.batch.request_ids == (0,)
    assert out.batch.predicted_ms == TABLE[expected][1]
    assert out.shed == []


@pytest.mark.parametrize("budget", [1.0, 0.0, -5.0, math.nan])
def test_infeasible_budget_is_rejected_at_once(budget):
    s, c = make(), Clock()
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(budget), now=0.0)
    assert s.get_num_waiting() == 0


def test_best_effort_admits_an_infeasible_budget_and_runs_it_fastest():
    s, c = make(), Clock()
    s.add_request(c.request(1.0, best_effort=True), now=0.0)
    out = s.schedule(now=0.0)
    assert out.shed == []
    assert out.batch.subnet == 0


def test_min_accuracy_restricts_the_subnets():
    s, c = make(), Clock()
    s.add_request(c.request(12, min_accuracy=0.75), now=0.0)
    assert s.schedule(0.0).batch.subnet == 2
    with pytest.raises(BudgetInfeasible, match="fastest"):
        s.add_request(c.request(8, min_accuracy=0.75), now=0.0)  # only subnet 2 qualifies: 10 ms
    with pytest.raises(BudgetInfeasible, match="min_accuracy"):
        s.add_request(c.request(1000, min_accuracy=0.95), now=0.0)


def test_batches_only_when_every_member_still_meets_its_deadline():
    s, c = make(), Clock()
    s.add_request(c.request(6), now=0.0)  # urgent: subnet 1 alone (5 ms) fits, 1 at batch 2 (7 ms) not
    s.add_request(c.request(100), now=0.0)
    first = s.schedule(now=0.0).batch
    assert (first.subnet, first.size) == (1, 1)
    s.update_from_output(first, exec_ms=5.0)
    second = s.schedule(now=0.005).batch
    assert (second.subnet, second.size) == (2, 1)


def test_batches_a_backlog_when_that_serves_more_requests_accurately():
    s, c = make(), Clock()
    for _ in range(8):
        s.add_request(c.request(40), now=0.0)
    batch = s.schedule(0.0).batch
    assert (batch.subnet, batch.size) == (2, 8)  # 38 ms <= 40 ms for all eight

    s, c = make(), Clock()
    for _ in range(8):
        s.add_request(c.request(20), now=0.0)
    batch = s.schedule(0.0).batch
    assert (batch.subnet, batch.size) == (
        1,
        8,
    )  # 19 ms; subnet 2 alone would cost the others accuracy


def test_when_someone_is_late_whatever_runs_the_whole_head_runs_on_the_fastest_subnet():
    # the worker comes back 0.8 ms late to a queue planned on time (a stall). Now r0 (3 ms
    # budget) alone, 2 ms, leaves too little time for the seven behind it; all eight at
    # once, 9 ms, miss r0. Someone is late whatever runs: serving r0 alone first (the
    # fewest late of one plan, with smaller batches behind it) spends a batch's time on
    # one request; the head runs at the worker's best rate instead.
    s, c = make(), Clock()
    s.add_request(c.request(3.0), 0.0)
    for _ in range(7):
        s.add_request(c.request(10.5), 0.0)  # after r0 alone: 2 + 8 ms, on time
    out = s.schedule(0.0008)
    assert out.shed == []  # r0 could still make it alone
    assert (out.batch.subnet, out.batch.size) == (0, 8)  # ends at 9.8 ms: the seven on time, r0 late


def test_every_scheduled_batch_meets_all_its_members_deadlines():
    rng = random.Random(0)
    for policy in ("elastic", "slackfit", "static:1"):
        s, c = make(policy), Clock()
        now = 0.0
        deadlines = {}
        for _ in range(300):
            now += rng.expovariate(400)
            try:
                r = c.request(rng.choice([6, 10, 15, 25, 40, 80]), at=now)
                s.add_request(r, now)
                deadlines[r.id] = r.deadline
            except BudgetInfeasible:
                pass
            out = s.schedule(now)
            if out.batch:
                assert now + out.batch.predicted_ms / 1e3 <= min(deadlines[i] for i in out.batch.request_ids)
                now += out.batch.predicted_ms / 1e3
                s.update_from_output(out.batch, out.batch.predicted_ms)


def test_every_admitted_request_leaves_exactly_once():
    rng = random.Random(1)
    s, c = make(max_queue=16), Clock()
    admitted, left = set(), []
    now = 0.0
    for _ in range(500):
        now += rng.expovariate(2000)
        r = c.request(rng.choice([3, 8, 20, 60]), at=now, priority=rng.choice([0, 0, 1]))
        try:
            evicted = s.add_request(r, now)
            admitted.add(r.id)
            left += [e.request_id for e in evicted]
        except (BudgetInfeasible, Overloaded):
            pass
        if rng.random() < 0.3:
            out = s.schedule(now)
            left += [e.request_id for e in out.shed]
            if out.batch:
                left += out.batch.request_ids
                now += out.batch.predicted_ms / 1e3
                s.update_from_output(out.batch, out.batch.predicted_ms)
    left += [e.request_id for e in s.abort_all()]
    assert sorted(left) == sorted(admitted)


def test_queued_request_that_can_no_longer_make_it_is_shed():
    s, c = make(), Clock()
    s.add_request(c.request(12), now=0.0)
    out = s.schedule(now=0.011)  # 1 ms left, fastest needs 2 ms
    assert out.batch is None
    assert [(x.request_id, x.reason) for x in out.shed] == [(0, "deadline")]
    assert s.get_num_waiting() == 0


@pytest.mark.parametrize(("wake_ms", "shed"), [(0.0, True), (1.0, False)])
def test_a_request_is_not_shed_for_the_wake_up_it_was_admitted_with(wake_ms, shed):
    # overhead 1 ms per batch, of which `wake_ms` wakes the worker: the fastest service is
    # 2 + 1 = 3 ms, so a 3.2 ms budget is admitted to an idle worker with 0.2 ms to spare
    s, c = make(), Clock()
    for _ in range(50):
        s.observe_overhead(1, 1.0, wake_ms)
    s.add_request(c.request(3.2), now=0.0)
    # the worker looks 0.5 ms later, awake: a forward and what is left of the overhead
    # (1 ms less the wake-up) still end by the deadline unless all of it is still ahead
    out = s.schedule(now=0.0005)
    assert [x.request_id for x in out.shed] == ([0] if shed else [])
    assert (out.batch is None) is shed
    if not shed:
        assert out.batch.subnet == 0 and out.batch.request_ids == (0,)
    assert s.next_expiry() is None


def test_the_overhead_model_keeps_the_wake_up_apart():
    from elastic.serving.latency_model import OverheadModel

    model = OverheadModel()
    for k in range(400):  # every other batch woke the worker for 0.3 ms of its 0.5 ms
        model.observe(1 + k % 4, 0.5 if k % 2 else 0.2, 0.3 if k % 2 else 0.0)
    assert model.wake_ms == pytest.approx(0.15, rel=0.05)
    assert model.wake_part(1) == model.wake_ms < model.ms(1)
    model = OverheadModel()
    model.observe(1, 0.1, 5.0)  # a wake-up longer than the overhead it is part of counts as all of it
    assert model.wake_ms == pytest.approx(0.1) and model.wake_part(1) == pytest.approx(model.ms(1))


def test_earliest_deadline_first_within_a_priority():
    s, c = make(max_batch_size=1), Clock()
    for budget in (50, 10, 30):
        s.add_request(c.request(budget), now=0.0)
    order = []
    while s.has_waiting():
        batch = s.schedule(0.0).batch
        order.append(batch.request_ids[0])
        s.update_from_output(batch, 0.0)
    assert order == [1, 2, 0]


def test_higher_priority_goes_first():
    s, c = make(max_batch_size=1), Clock()
    s.add_request(c.request(10), now=0.0)
    s.add_request(c.request(50, priority=1), now=0.0)
    assert s.schedule(0.0).batch.request_ids == (1,)


def test_full_queue_raises_overloaded_or_evicts_a_lower_priority_request():
    s, c = make(max_queue=2), Clock()
    s.add_request(c.request(100), now=0.0)
    s.add_request(c.request(200), now=0.0)
    with pytest.raises(Overloaded):
        s.add_request(c.request(100), now=0.0)
    evicted = s.add_request(c.request(100, priority=1), now=0.0)
    assert [(e.request_id, e.reason) for e in evicted] == [(1, "evicted")]  # latest deadline goes
    assert s.get_num_waiting() == 2


def test_eviction_takes_the_lowest_priority_latest_deadline_latest_arrival():
    rng = random.Random(3)
    for _ in range(20):
        s, c = make(max_queue=12), Clock()
        queued = []
        while len(queued) < 12:
            r = c.request(rng.choice([50.0, 80.0, 120.0]), at=0.0, priority=rng.choice([0, 1, 2]), best_effort=True)
            s.add_request(r, now=0.0)
            queued.append(r)
        expected = max(queued, key=lambda r: (-r.priority, r.deadline, r.id))
        (evicted,) = s.add_request(c.request(60.0, priority=3, best_effort=True), now=0.0)
        assert evicted.request_id == expected.id


def test_admission_counts_the_running_batch():
    s, c = make(), Clock()
    s.add_request(c.request(12), now=0.0)
    running = s.schedule(0.0).batch  # subnet 2, 10 ms
    with pytest.raises(BudgetInfeasible, match="running batch"):
        s.add_request(c.request(5, at=0.001), now=0.001)  # 9 ms wait + 2 ms > 5 ms
    s.update_from_output(running, 10.0)
    s.add_request(c.request(5, at=0.010), now=0.010)


def test_a_batch_past_its_prediction_counts_as_long_again_as_it_has_overrun():
    s, c = make(), Clock()
    s.add_request(c.request(12), now=0.0)
    running = s.schedule(0.0).batch  # subnet 2, predicted to end at 10 ms
    assert s.worker_free_at(0.004) == pytest.approx(0.010)  # within its prediction: the predicted end
    assert s.worker_free_at(0.012) == pytest.approx(0.014)  # 2 ms over: 2 ms more
    # 4 ms over at 14 ms: the worker is expected at 18 ms, so a 5 ms budget (due at 19 ms)
    # cannot fit the fastest subnet's 2 ms; taking the overrun as over would admit it
    with pytest.raises(BudgetInfeasible, match="running batch"):
        s.add_request(c.request(5, at=0.014), now=0.014)
    s.add_request(c.request(6.5, at=0.014), now=0.014)  # due at 20.5 ms: 18 + 2 fits
    s.update_from_output(running, 18.0, now=0.018)
    assert s.worker_free_at(0.018) == 0.018  # nothing runs


def test_online_correction_moves_predictions_toward_observed_latency():
    s, c = make(ewma_alpha=0.5), Clock()
    assert s.predict_ms(1, 1) == 5.0
    for _ in range(12):
        s.add_request(c.request(1000), now=0.0)
        batch = s.schedule(0.0).batch
        assert batch.subnet == 2
        ratio = s.update_from_output(batch, exec_ms=20.0)  # twice the profile
    assert ratio == pytest.approx(1.0, abs=0.01)
    assert s.predict_ms(2, 1) == pytest.approx(20.0, rel=0.01)
    assert s.predict_ms(1, 1) == pytest.approx(10.0, rel=0.01)  # unobserved: the global correction
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(15, min_accuracy=0.75), now=0.0)  # was feasible at 10 ms

    for _ in range(12):
        s.add_request(c.request(1000), now=0.0)
        batch = s.schedule(0.0).batch
        s.update_from_output(batch, exec_ms=0.5 * TABLE[batch.subnet][1])
    assert s.predict_ms(2, 1) == pytest.approx(5.0, rel=0.05)


def _slow_burst(s, c, batches=40, ratio=5.0, t0=0.0):
    """Run `batches` batch-1 forwards of subnet 0 at `ratio` times the profile, back to back
    from `t0`; returns when the last one ended."""
    t = t0
    for _ in range(batches):
        s.add_request(c.request(1000, at=t), now=t)
        batch = s.schedule(t).batch
        t += ratio * TABLE[batch.subnet][1] / 1e3
        s.update_from_output(batch, ratio * TABLE[batch.subnet][1], now=t)
    return t


def test_a_stale_correction_that_refuses_an_idle_engine_every_request_is_dropped():
    # a burst of forwards at 5x the profile: the machine factor and the measured tail put
    # the fastest subnet's batch of one past a 6 ms budget (profile: 2 ms)
    s, c = make("static:0", stale_s=0.1), Clock()
    told: list[int] = []
    s.on_forget = lambda: told.append(s.forgotten)
    end = _slow_burst(s, c)
    assert s.predict_ms(0, 1) > 6.0
    # fresh evidence holds: refused, and the correction stays
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(6, at=end + 0.05), now=end + 0.05)
    assert s.forgotten == 0 and s.predictor.corrected
    # nothing has run for longer than stale_s: the engine would otherwise refuse forever
    s.add_request(c.request(6, at=end + 0.2), now=end + 0.2)
    assert s.forgotten == 1 and not s.predictor.corrected and told == [1]
    assert s.predict_ms(0, 1) == TABLE[0][1]
    # a budget even the profile cannot meet is still refused
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(1.5, at=end + 0.2), now=end + 0.2)


def test_a_stale_correction_is_kept_while_a_batch_runs_or_requests_wait():
    s, c = make("static:0", stale_s=0.1), Clock()
    end = _slow_burst(s, c)
    later = end + 1.0
    s.add_request(c.request(1000, at=later), now=later)  # one waits: the engine is not idle
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(6, at=later), now=later)
    running = s.schedule(later).batch  # it runs: not idle either
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(6, at=later), now=later)
    assert s.forgotten == 0 and s.predictor.corrected
    s.update_from_output(running, 5 * TABLE[0][1], now=later + 0.01)  # renewed evidence
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(6, at=later + 0.05), now=later + 0.05)
    assert s.forgotten == 0


def _loaded_burst(s, c, batches=30, ratio=3.0, gap_s=0.0005, t0=0.0):
    """Forwards of subnet 0 at `ratio` times the profile while requests (loose budgets)
    arrive every `gap_s`, as in an on/off burst; returns when the last batch ended."""
    t = arrive = t0

    def arrivals_until(end):
        nonlocal arrive
        while arrive <= end:  # a full queue refuses some
            with contextlib.suppress(Overloaded):
                s.add_request(c.request(1000, at=arrive), now=arrive)
            arrive += gap_s

    for _ in range(batches):
        arrivals_until(t)
        batch = s.schedule(t).batch
        forward_ms = ratio * s.profile.latency_ms(0, batch.size, "p50")
        end = t + forward_ms / 1e3
        arrivals_until(end)  # these arrive while it runs
        s.update_from_output(batch, forward_ms, now=end)
        t = end
    s.abort_all()
    return t


def test_the_next_burst_is_planned_with_what_the_last_one_measured():
    # a burst whose forwards ran 3x the profile (requests arriving while they ran), then a
    # quiet second: the next burst's first request arrives alone and is planned as a forward
    # alone, but the requests that follow it arrive while it runs, and are planned at what
    # the last burst measured, not at the profile's speed: a 5 ms budget is refused
    s, c = make("static:0"), Clock()
    end = _loaded_burst(s, c)
    later = end + 1.0
    s.add_request(c.request(5, at=later), now=later)  # alone
    assert not s.predictor.loaded and s.predict_ms(0, 1) < 5.0
    assert s.schedule(later).batch is not None
    nxt = later + 0.0005
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(5, at=nxt), now=nxt)
    assert s.predictor.loaded and s.predict_ms(0, 1) == pytest.approx(3 * TABLE[0][1], rel=0.05)


def test_a_batch_is_judged_against_the_state_it_was_planned_in():
    # a batch planned alone (quiet), during which requests start to arrive (loaded): the
    # observed / predicted ratio it reports (the prediction-error metric) is against the quiet
    # prediction it ran on, not the loaded one current when it ends
    s, c = make("static:0"), Clock()
    end = _loaded_burst(s, c)
    later = end + 1.0
    s.add_request(c.request(50, at=later), now=later)
    batch = s.schedule(later).batch
    quiet_ms = s.predictor.predict_ms(0, batch.size)
    for k in (1, 2):
        t = later + k * 0.0005
        s.add_request(c.request(1000, at=t), now=t)
    assert s.predictor.loaded and s.predictor.predict_ms(0, batch.size) > 2 * quiet_ms
    assert s.update_from_output(batch, quiet_ms, now=later + quiet_ms / 1e3) == pytest.approx(1.0)


def test_a_burst_refused_whole_on_a_stale_loaded_correction_is_served_again():
    # a burst measured forwards at 5x the profile; the machine has since recovered, but only
    # a batch planned while requests arrive renews the loaded state's correction: a burst of
    # 8 ms requests, every one predicted past its budget, would be refused whole, this burst
    # and every one after. Once nothing has renewed that correction for `stale_s`, the state
    # the engine is in is forgotten, and the burst is served from the profile again
    s, c = make("static:0"), Clock()
    end = _loaded_burst(s, c, ratio=5.0)
    t, stop = end + 1.0, end + 2.0
    running, running_end, served_loaded = None, 0.0, 0
    while t < stop:
        if running is not None and running_end <= t:
            s.update_from_output(running, s.profile.latency_ms(0, running.size, "p50"), now=running_end)
            running = None
        with contextlib.suppress(BudgetInfeasible, Overloaded):
            s.add_request(c.request(8, at=t), now=t)
            served_loaded += s.predictor.loaded
        if running is None:
            running = s.schedule(t).batch
            if running is not None:
                running_end = t + s.profile.latency_ms(0, running.size, "p50") / 1e3
        t += 0.0005
    assert served_loaded > 100
    assert s.forgotten == 1


def test_a_stream_of_requests_no_subnet_can_serve_forgets_each_state_once():
    # after a burst, a stream of 1 ms requests (the fastest forward takes 2 ms alone): all
    # refused, whatever the correction. The first, alone, forgets the quiet state; the rest
    # arrive while requests arrive and forget the loaded one; after that nothing is left to
    # forget (one log line and one counted reset each, not one per refused request)
    s, c = make("static:0"), Clock()
    end = _loaded_burst(s, c)
    t = end + 1.0
    for _ in range(2000):
        with pytest.raises(BudgetInfeasible):
            s.add_request(c.request(1, at=t), now=t)
        t += 0.0005
    assert s.forgotten == 2


@pytest.mark.parametrize("stale_s", [0, -1.0, math.nan, True, "0.5"])
def test_a_bad_stale_s_is_a_config_error(stale_s):
    with pytest.raises(ConfigError, match="stale_s"):
        make(stale_s=stale_s)


def test_failed_batch_does_not_move_predictions():
    s, c = make(), Clock()
    s.add_request(c.request(1000), now=0.0)
    batch = s.schedule(0.0).batch
    assert s.update_from_output(batch, None) is None
    assert s.predict_ms(batch.subnet, 1) == TABLE[batch.subnet][1]


def test_without_accuracies_flops_stand_in_and_min_accuracy_cannot_be_met():
    s, c = make(accuracy={}), Clock()
    assert not s.accuracy_known
    assert s.candidates == [0, 1, 2, 3]  # more FLOPs, more "accuracy": all on the front
    s.add_request(c.request(1000), now=0.0)
    assert s.schedule(0.0).batch.subnet == 3
    with pytest.raises(BudgetInfeasible, match="no candidate has a measured accuracy"):
        s.add_request(c.request(1000, min_accuracy=0.1), now=0.0)


def test_p50_planning_uses_the_median_table():
    profile = LatencyProfile.from_table(TABLE, tail=2.0)
    p99 = BudgetScheduler(subnets(), profile, quantile="p99")
    p50 = BudgetScheduler(subnets(), profile, quantile="p50")
    assert p99.predict_ms(2, 1) == 20.0
    assert p50.predict_ms(2, 1) == 10.0


def test_scheduler_side_modules_do_not_import_torch():
    serving = Path(__file__).parents[2] / "serving"
    for name in ("scheduler", "policies", "profile", "predictor", "latency_model", "request", "output", "interface"):
        tree = ast.parse((serving / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & {"torch", "numpy"}, name


def test_best_within_an_unbounded_window_is_the_most_accurate_with_a_finite_latency():
    from elastic.serving.latency_model import OverheadModel

    profile = LatencyProfile.from_table(TABLE)
    s = BudgetScheduler(subnets(), profile, overhead=OverheadModel(per_batch_ms=0.5, per_request_ms=0.25))
    assert s.best_within(8, -math.inf, math.inf) == (2, pytest.approx(38.0 + 0.5 + 2.0))
    assert s.best_within(1, -math.inf, 1.0) is None


def test_best_within_an_expected_bound_leaves_out_the_measured_tail():
    s = make()
    forward = s.latency.forward
    for k in range(64):  # residuals 1.0 and 1.5: the measured tail is 1.5 / the machine factor
        forward.observe(0, 1, TABLE[0][1] * (1.5 if k % 4 == 0 else 1.0))
    assert forward.tail is not None and forward.tail > 1.2
    expected_1 = TABLE[1][1] * forward.shared  # subnet 1 at batch 1, on average
    planned_1 = s.predict_ms(1, 1)
    assert planned_1 == pytest.approx(expected_1 * forward.tail)
    window = (expected_1 + planned_1) / 2  # its mean fits, its planning margin does not
    assert s.best_within(1, -math.inf, window)[0] == 0
    assert s.best_within(1, -math.inf, window, expected=True) == (1, planned_1)


def test_a_hold_ends_earlier_by_how_late_the_last_holds_woke():
    s, c = make(policy="static:2", batch_wait_ms=50.0), Clock()
    s.add_request(c.request(40, at=0.0), now=0.0)
    # 40 ms deadline - 10 ms (batch 1) - 4 ms (one more request's service): start by 26 ms
    assert s.schedule(0.0).wait_until == pytest.approx(0.026)
    batch = s.schedule(0.029).batch  # the worker woke 3 ms after the hold's end
    s.update_from_output(batch, 10.0, 0.039)
    s.add_request(c.request(40, at=1.0), now=1.0)
    assert s.schedule(1.0).wait_until == pytest.approx(1.023)  # 3 ms earlier: the late wake-up's margin
    s.add_request(c.request(40, at=1.001), now=1.001)  # an arrival ends the hold early: not lateness
    assert s.schedule(1.001, hold=False).batch.request_ids == (1, 2)
    assert max(s._wake_late) == pytest.approx(0.003)
