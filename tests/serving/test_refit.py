"""Grouped refits (serving/refit.py): what the forwards teach the latency model, folded together.

Synthetic cost table, the clock driven by hand: a scheduler that groups its refits must end
each group with exactly the model of one that folds after every batch, lag it by at most
`refit_ms` in between, and refit at once when a batch surprises it.
"""

import pytest

from elastic.errors import ConfigError
from elastic.serving import BudgetScheduler, LatencyProfile, Request
from elastic.subnet import Subnet

TABLE = {0: {1: 2.0, 2: 3.0, 4: 5.0, 8: 9.0}, 1: {1: 5.0, 2: 7.0, 4: 11.0, 8: 19.0}}
ACC = {0: 0.6, 1: 0.7}


def make(refit_ms: float) -> BudgetScheduler:
    subnets = [Subnet(i, "stitch", f"s{i}", flops=(i + 1) * 1000, params=10, accuracy=ACC[i]) for i in TABLE]
    return BudgetScheduler(subnets, LatencyProfile.from_table(TABLE), "static:0", refit_ms=refit_ms)


def model_state(s: BudgetScheduler) -> tuple:
    f, o = s.latency.forward, s.overhead
    return (f.shared, tuple(f._factors), f.tail, f.tail_quantile, o.per_batch_ms, o.per_request_ms, o.observations)


def run_batch(s: BudgetScheduler, rid: int, t: float, exec_ms: float, late: int = 0) -> float:
    """Admit one request at `t`, run it for `exec_ms`, report forward, overhead and outcome;
    returns the time it ended."""
    s.add_request(Request(rid, t, 100.0), now=t)
    return finish_batch(s, t, exec_ms, late, rid)


def finish_batch(s: BudgetScheduler, t: float, exec_ms: float, late: int = 0, rid: int = 0) -> float:
    batch = s.schedule(t).batch
    end = t + (exec_ms + 0.1) / 1e3
    s.update_from_output(batch, exec_ms, end)
    s.observe_overhead(1, 0.1 + 0.01 * rid)
    s.observe_outcomes(late, 1)
    return end


def test_a_group_ends_with_the_model_per_batch_folding_makes():
    every, grouped = make(0.0), make(5.0)
    t, refits_seen = 0.0, 0
    for rid in range(60):
        exec_ms = 2.0 * (1.0 + 0.3 * ((rid * 7) % 5) / 5)  # within 2x of the prediction: no surprise
        end = t + (exec_ms + 0.1) / 1e3
        for s in (every, grouped):
            s.add_request(Request(rid, t, 100.0), now=t)
            s.update_from_output(s.schedule(t).batch, exec_ms, end)
        if not grouped._unfit:  # refit at this batch's end: the same model, bit for bit
            refits_seen += 1
            assert model_state(grouped) == model_state(every)
        for s in (every, grouped):
            s.observe_overhead(1, 0.1 + 0.01 * rid)
            s.observe_outcomes(0, 1)
        t = end
    assert 10 <= refits_seen <= 30  # a refit every two or three batches of 2-3 ms


def test_between_refits_the_model_lags_by_at_most_refit_ms():
    s = make(5.0)
    before = model_state(s)
    end = run_batch(s, 0, 0.0, 2.5)
    assert model_state(s) == before  # kept, not folded: 2.6 ms < 5 ms
    assert len(s._unfit) == 3
    s.add_request(Request(1, end + 0.005, 100.0), now=end + 0.005)  # the oldest is due at admission
    assert s._unfit == [] and model_state(s) != before


@pytest.mark.parametrize("exec_ms", [4.5, 0.9])  # 2.25x and 0.45x the profiled 2 ms
def test_a_forward_far_off_its_prediction_refits_at_once(exec_ms):
    s = make(5.0)
    s.add_request(Request(0, 0.0, 100.0), now=0.0)
    batch = s.schedule(0.0).batch
    s.update_from_output(batch, exec_ms, 0.0001 + exec_ms / 1e3)
    assert s._unfit == []
    assert s.latency.forward.shared != 1.0


def test_a_forward_of_refit_ms_or_more_refits_at_its_own_end():
    s = make(1.5)  # the 2 ms profile, forwards within 2x of it: no surprise
    s.add_request(Request(0, 0.0, 100.0), now=0.0)
    s.update_from_output(s.schedule(0.0).batch, 1.6, 0.0017)
    assert s._unfit == []  # folded at its end, not at the next admission
    assert s.latency.forward.shared != 1.0
    s.add_request(Request(1, 0.002, 100.0), now=0.002)
    s.update_from_output(s.schedule(0.002).batch, 1.4, 0.0035)
    assert len(s._unfit) == 1  # shorter than refit_ms: kept


def test_a_refit_rebuilds_the_cached_predictions_at_once():
    s = make(5.0)
    s.add_request(Request(0, 0.0, 100.0), now=0.0)
    s.update_from_output(s.schedule(0.0).batch, 4.5, 0.0046)  # a surprise: refits at the batch's end
    built = s._fast_any
    assert built is not None  # rebuilt there, not left for the next decision
    s._fast_any = None
    assert s.fastest_at() == built  # what a rebuild from scratch makes
    assert built[1][1] == pytest.approx(s.predict_ms(0, 1))


def test_a_late_request_refits_at_once():
    s = make(5.0)
    run_batch(s, 0, 0.0, 2.0, late=1)
    assert s._unfit == []


def test_a_new_profile_folds_what_the_old_one_kept():
    s = make(5.0)
    run_batch(s, 0, 0.0, 2.0)
    s.set_profile(LatencyProfile.from_table(TABLE))
    assert s._unfit == []
    assert s.overhead.observations == 1  # the engine's overhead outlives the profile
    assert s.latency.forward.shared == 1.0  # the old profile's correction went with it


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "5"])
def test_refit_ms_must_be_a_finite_number_at_least_zero(bad):
    with pytest.raises(ConfigError, match="refit_ms"):
        make(bad)
