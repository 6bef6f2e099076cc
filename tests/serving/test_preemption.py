"""Preemption at stage boundaries (`serving/preemption.py`): a hand-held clock, synthetic tables.

Subnet 0 is fast (10 ms), subnet 1 slow (100 ms), both with boundaries every tenth of the
forward; planning at p50 = p99, no overhead, so every prediction below is exact arithmetic.
"""

import contextlib

import pytest

from elastic.errors import BudgetInfeasible, ConfigError
from elastic.serving import BudgetScheduler, LatencyProfile, Request
from elastic.serving.preemption import URGENT_ALPHA, check_stages, longest_stage
from elastic.subnet import Subnet

TENTHS = tuple(k / 10 for k in range(1, 10))
STAGES = {0: TENTHS, 1: TENTHS}


def make(stages=STAGES, policy="static:1", **kw) -> BudgetScheduler:
    subnets = [
        Subnet(0, "stitch", "fast", flops=1, params=1, accuracy=0.6),
        Subnet(1, "stitch", "slow", flops=2, params=1, accuracy=0.8),
    ]
    table = {0: {1: 10.0, 2: 12.0, 4: 16.0, 8: 24.0}, 1: {1: 100.0, 2: 110.0, 4: 130.0, 8: 170.0}}
    return BudgetScheduler(subnets, LatencyProfile.from_table(table), policy, quantile="p50", stages=stages, **kw)


def running_slow(sched: BudgetScheduler, budget_ms: float = 500.0):
    """A batch of one on the slow subnet, started at t = 0."""
    sched.add_request(Request(0, 0.0, budget_ms), 0.0)
    out = sched.schedule(0.0)
    assert out.batch is not None and out.batch.subnet == 1
    return out.batch


def test_a_tight_request_runs_inside_the_long_batch_at_its_next_boundary():
    sched = make(policy="elastic")
    slow = running_slow(sched)
    assert sched.stages_of(slow) == TENTHS
    assert sched.interrupt(0.010, 0).batch is None  # a boundary with nobody urgent: resume
    # at 15 ms: 85 ms of the slow batch left; a 30 ms budget cannot wait for it
    sched.add_request(Request(1, 0.015, 30.0), 0.015)
    assert sched.has_waiting() and sched.get_num_waiting() == 1
    assert sched.worker_free_at(0.015) == pytest.approx(0.110)  # the slow batch, 10 ms later
    out = sched.interrupt(0.020, 1)  # the boundary at 20 ms
    assert out.batch is not None and out.batch.request_ids == (1,) and out.batch.subnet == 0
    assert sched.stages_of(out.batch) == ()  # an urgent batch never pauses
    assert not sched.has_waiting()
    sched.update_from_output(out.batch, 10.0, 0.030)
    assert sched.worker_free_at(0.030) == pytest.approx(0.110)  # the slow batch goes on
    sched.update_from_output(slow, 100.0, 0.110)
    assert sched.worker_free_at(0.110) == pytest.approx(0.110)  # idle


def test_the_worker_takes_the_lock_at_a_boundary_only_when_an_urgent_batch_waits():
    sched = make(policy="elastic")
    running_slow(sched)
    assert sched.boundary(0, 0.010) is False  # nobody urgent: on, without `interrupt`
    assert sched._preempt.progress == (0.1, 0.010)  # the progress is published all the same
    # the next boundary is planned from it: 20 ms; a 30 ms budget at 15 ms runs there
    sched.add_request(Request(1, 0.015, 30.0), 0.015)
    assert sched.boundary(1, 0.020) is True
    out = sched.interrupt(0.020, 1)
    assert out.batch is not None and out.batch.request_ids == (1,)
    assert sched.boundary(2, 0.030) is False  # the urgent batch runs inside: nothing to ask


@pytest.mark.parametrize(("budget_ms", "admitted"), [(40.0, True), (24.0, False)])
def test_an_urgent_plan_made_while_the_worker_passed_a_boundary_is_made_again(budget_ms, admitted):
    """The worker publishes a boundary without the lock: one passed while admission planned
    for it would leave the request waiting a stage longer than planned. Admission checks
    the progress after committing and plans again from the boundary after."""
    sched = make(policy="elastic")
    running_slow(sched)
    pre = sched._preempt
    plan = pre.next_boundary

    def worker_passes_boundary_0_while_planning(now):
        at = plan(now)  # planned from the start: boundary 0 at 10 ms
        if pre.progress == (0.0, 0.0):
            assert sched.boundary(0, 0.0105) is False  # no urgent request yet: it goes on
        return at

    pre.next_boundary = worker_passes_boundary_0_while_planning
    # at 5 ms: boundary 0 at 10 ms, then boundary 1 at 20.5 ms (10 ms of forward after
    # 10.5); with 10 ms of urgent batch a 24 ms budget (due at 29 ms) fits only the first, 40 ms both
    try:
        sched.add_request(Request(1, 0.005, budget_ms), 0.005)
    except BudgetInfeasible:
        assert not admitted
    else:
        assert admitted
    assert bool(pre.urgent) is admitted
    assert sched.boundary(1, 0.0205) is admitted  # the request waits for the boundary after


def test_without_stages_the_same_request_is_refused():
    sched = make(stages=None, policy="elastic")
    running_slow(sched)
    with pytest.raises(BudgetInfeasible, match="until the running batch ends"):
        sched.add_request(Request(1, 0.015, 30.0), 0.015)


def test_an_urgent_request_is_refused_when_the_paused_batch_would_miss():
    sched = make(policy="elastic")
    running_slow(sched, budget_ms=105.0)  # 5 ms of slack: no room for a 10 ms urgent batch
    with pytest.raises(BudgetInfeasible):
        sched.add_request(Request(1, 0.015, 30.0), 0.015)
    assert not sched.has_waiting()


def test_an_urgent_request_is_refused_when_a_queued_request_would_miss():
    sched = make(policy="elastic")
    running_slow(sched)
    # queued: due at 115 ms; planned after the slow batch on the fast subnet, it ends at 110
    sched.add_request(Request(1, 0.001, 114.0), 0.001)
    with pytest.raises(BudgetInfeasible):  # a 10 ms urgent batch would end it at 120
        sched.add_request(Request(2, 0.015, 30.0), 0.015)
    assert sched.get_num_waiting() == 1
    sched.add_request(Request(3, 0.016, 1000.0), 0.016)  # a loose one still queues behind


def test_urgent_requests_share_one_batch_and_the_paused_batch_waits_for_it():
    sched = make(policy="elastic")
    running_slow(sched)
    sched.add_request(Request(1, 0.012, 30.0), 0.012)
    sched.add_request(Request(2, 0.013, 30.0), 0.013)
    assert sched.worker_free_at(0.013) == pytest.approx(0.112)  # 100 + a batch of two (12 ms)
    out = sched.interrupt(0.020, 1)
    assert out.batch.request_ids == (1, 2) and out.batch.predicted_ms == pytest.approx(12.0)


def test_a_stalled_batch_sheds_its_urgent_requests_at_their_deadline():
    sched = make(policy="elastic")
    running_slow(sched)
    sched.add_request(Request(1, 0.015, 30.0), 0.015)
    assert sched.next_expiry() == pytest.approx(0.035)  # latest start: 45 ms - 10 ms
    assert sched.shed_expired(0.030) == []
    shed = sched.shed_expired(0.036)  # the boundary never came
    assert [s.request_id for s in shed] == [1] and shed[0].reason == "deadline"
    assert not sched.has_waiting()
    assert sched.worker_free_at(0.036) == pytest.approx(0.100)  # its batch no longer delays anyone


def test_a_withdrawn_urgent_request_shrinks_its_batch():
    sched = make(policy="elastic")
    running_slow(sched)
    sched.add_request(Request(1, 0.012, 30.0), 0.012)
    sched.add_request(Request(2, 0.013, 30.0), 0.013)
    assert sched.remove(1)
    assert sched.worker_free_at(0.014) == pytest.approx(0.110)
    assert sched.interrupt(0.020, 1).batch.request_ids == (2,)


def test_past_its_last_boundary_a_batch_takes_no_urgent_request():
    sched = make(policy="elastic")
    running_slow(sched)
    with pytest.raises(BudgetInfeasible):  # due at 109 ms; the last boundary (90 ms) is past
        sched.add_request(Request(1, 0.095, 14.0), 0.095)


def test_a_pending_urgent_batch_runs_first_when_the_paused_batch_ends():
    sched = make(policy="elastic")
    slow = running_slow(sched)
    sched.add_request(Request(1, 0.015, 1000.0), 0.015)  # queued behind the slow batch
    sched.add_request(Request(2, 0.085, 20.0), 0.085)  # due at 105 ms: urgent, for the 90 ms boundary
    assert [r.id for r in sched.waiting()] == [2, 1]  # urgent requests come first
    sched.update_from_output(slow, 100.0, 0.088)  # it ended before the boundary came
    out = sched.schedule(0.088)
    assert out.batch.request_ids == (2,) and sched.stages_of(out.batch) == ()
    assert sched.worker_free_at(0.088) == pytest.approx(0.098)
    assert sched.get_num_waiting() == 1


def test_abort_all_sheds_urgent_requests_too():
    sched = make(policy="elastic")
    running_slow(sched)
    sched.add_request(Request(1, 0.015, 30.0), 0.015)
    sched.add_request(Request(2, 0.016, 1000.0), 0.016)
    assert sorted(s.request_id for s in sched.abort_all()) == [1, 2]
    assert not sched.has_waiting()


def test_the_policy_prices_a_pausable_batch_by_one_stage():
    assert make().block_fraction() == pytest.approx(0.1)
    assert make(stages=None).block_fraction() == 1.0
    assert make(stages={0: TENTHS, 1: ()}).block_fraction() == 1.0  # one candidate cannot pause


def test_the_wait_a_pausable_batch_costs_follows_how_often_the_urgent_path_admits():
    # a tight arrival the running batch would make late waits for one stage when admitted as
    # urgent, and for the whole batch when refused: the expected share moves with the tries
    sched = make(policy="elastic")
    assert sched.block_fraction() == pytest.approx(0.1)  # no try yet: one stage
    running_slow(sched)  # 100 ms on the slow subnet from t = 0, boundaries every 10 ms
    for k in range(1, 40):  # the boundaries' urgent batches are full after 8: refused from then on
        with contextlib.suppress(BudgetInfeasible):
            sched.add_request(Request(k, 0.001 * k, 40.0), 0.001 * k)
    assert len(sched.waiting()) == 8  # the first eight, as one urgent batch
    share = (1 - URGENT_ALPHA) ** 31  # 8 tries admitted, then 31 refused
    assert sched.block_fraction() == pytest.approx(0.1 + 0.9 * (1 - share))
    # cached per candidate set, and computed again for a new one
    sched = make(stages={0: (0.5,), 1: TENTHS}, policy="elastic")
    assert sched.block_fraction() == 0.5 and sched._block[0] is sched.candidates
    sched.set_profile(LatencyProfile.from_table({0: {1: 10.0}, 1: {1: 5.0}}))  # 1 now dominates 0
    assert sched.candidates == [1] and sched.block_fraction() == pytest.approx(0.1)
    assert make(stages=None).block_fraction() == 1.0


def test_stage_boundaries_are_checked():
    assert check_stages({3: [0.25, 0.5]}) == {3: (0.25, 0.5)}
    assert longest_stage((0.25, 0.5)) == 0.5 and longest_stage(()) == 1.0
    for bad in ([0.0, 0.5], [0.5, 1.0], [0.6, 0.4], [0.5, 0.5]):
        with pytest.raises(ConfigError):
            check_stages({0: bad})
