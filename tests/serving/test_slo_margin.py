"""The planning margin follows the SLO (`TailQuantile`, serving/slo_margin.py): the quantile
of the forwards' spread every batch is planned at rises while admitted requests end late
more often than aimed for, falls while they end late less often, and reaches the
predictor, the scheduler and the engine's outcome reports."""

import math
import time
from concurrent.futures import Future

import pytest

from elastic.errors import ConfigError
from elastic.serving import BudgetScheduler, LatencyProfile, Request, Runtime
from elastic.serving.output import ShedRequest
from elastic.serving.pending import Pending
from elastic.serving.predictor import TAIL_MIN, TAIL_QUANTILE, LatencyPredictor
from elastic.serving.slo_margin import BOUNDS, WINDOW, TailQuantile
from elastic.subnet import Subnet


def test_the_quantile_rises_while_more_end_late_than_aimed_for_and_falls_while_fewer_do():
    up = TailQuantile(slo=0.99, start=0.8)
    assert up.aim == pytest.approx(0.005)
    assert up.observe(0, 0) == 0.8  # nothing ended: nothing learned
    quantiles = [up.observe(1, 50) for _ in range(5)]  # 2 % late, four times the aim
    assert all(b > a for a, b in zip([0.8, *quantiles], quantiles, strict=False))
    assert up.late_share > up.aim

    down = TailQuantile(slo=0.99, start=0.95)
    quantiles = [down.observe(0, 50) for _ in range(10)]  # never late: the margin is wasted
    assert all(b < a for a, b in zip([0.95, *quantiles], quantiles, strict=False))


def test_on_target_it_stays_and_it_never_leaves_its_bounds():
    steady = TailQuantile(slo=0.99, start=0.9)
    for _ in range(100):
        steady.observe(1, 200)  # exactly the aim (0.5 %)
    assert steady.quantile == pytest.approx(0.9)
    assert steady.late_share == pytest.approx(0.005)

    late, early = TailQuantile(0.99), TailQuantile(0.99)
    for _ in range(50):
        late.observe(WINDOW, WINDOW)
        early.observe(0, WINDOW)
    assert late.quantile == pytest.approx(BOUNDS[1])
    assert early.quantile == pytest.approx(BOUNDS[0])


@pytest.mark.parametrize("slo", [0, 1, 1.5, -0.1, True, "0.99", math.nan])
def test_a_bad_slo_target_is_a_config_error(slo):
    with pytest.raises(ConfigError, match="slo_target"):
        TailQuantile(slo)


def test_the_measured_tail_is_the_quantile_the_predictor_is_told():
    profile = LatencyProfile.from_table({0: {1: 1.0}}, device="cpu")
    ratios = [1.0 + k / 100 for k in range(TAIL_MIN * 2)]  # observed / expected median, spread out

    def tail_at(quantile: float | None) -> float:
        p = LatencyPredictor(profile, "p99", alpha=1e-9)  # the machine factor stays at 1
        if quantile is not None:
            p.tail_quantile = quantile
        for r in ratios:
            p.observe(0, 1, r)
        return p.tail

    ordered = sorted(ratios)
    assert tail_at(None) == pytest.approx(ordered[int(TAIL_QUANTILE * len(ordered))], rel=1e-6)
    assert tail_at(0.5) == pytest.approx(ordered[int(0.5 * len(ordered))], rel=1e-6)
    assert tail_at(0.5) < tail_at(None)


def _scheduler(**kwargs) -> BudgetScheduler:
    subnets = [Subnet(s, "stitch", f"s{s}", flops=s + 1, params=1, accuracy=0.5 + 0.1 * s) for s in range(3)]
    profile = LatencyProfile.from_table({s: {1: 1.0 + s, 2: 1.8 * (1.0 + s)} for s in range(3)}, device="cpu")
    return BudgetScheduler(subnets, profile, "elastic", max_batch_size=2, **kwargs)


def test_the_scheduler_hands_the_outcomes_quantile_to_its_predictor_and_keeps_it_across_profiles():
    sched = _scheduler()
    assert sched.tail_control.slo == 0.99
    assert sched.latency.forward.tail_quantile == TAIL_QUANTILE
    for _ in range(10):
        sched.observe_outcomes(0, 100)  # nobody late: margin to spare
    lowered = sched.tail_control.quantile
    assert lowered < TAIL_QUANTILE
    assert sched.latency.forward.tail_quantile == lowered
    sched.set_profile(sched.profile)  # a new latency model: the quantile learned stays
    assert sched.latency.forward.tail_quantile == lowered
    for _ in range(50):
        sched.observe_outcomes(10, 100)  # 10 % late: back up, but never past the fixed start
    assert sched.latency.forward.tail_quantile == pytest.approx(TAIL_QUANTILE)

    fixed = _scheduler(slo_target=None)
    fixed.observe_outcomes(0, 100)
    assert fixed.tail_control is None
    assert fixed.latency.forward.tail_quantile == TAIL_QUANTILE


def test_the_engine_reports_late_answers_and_deadline_sheds_not_best_effort_or_other_sheds(
    served_model, served_profile, monkeypatch
):
    offset = [0.0]
    # preempt=False: every forward goes through `executor.run`, which the test slows
    rt = Runtime(served_model, profile=served_profile, clock=lambda: time.perf_counter() + offset[0], preempt=False)
    try:
        engine = rt._engine
        seen: list[tuple[int, int]] = []
        real = engine.scheduler.observe_outcomes
        monkeypatch.setattr(
            engine.scheduler, "observe_outcomes", lambda late, n: (seen.append((late, n)), real(late, n))
        )
        run = engine.executor.run

        def slow(subnet, x):  # the forward "takes" 10 s on the runtime's clock
            offset[0] += 10.0
            return run(subnet, x)

        monkeypatch.setattr(engine.executor, "run", slow)
        x = served_model_input(served_model)
        assert not rt.infer(x, 5_000.0).met_budget
        rt.infer(x, 60_000.0, best_effort=True)  # folds the first batch's outcome when submitted
        assert seen == [(1, 1)]
        monkeypatch.setattr(engine.executor, "run", run)
        rt.infer(x, 60_000.0)  # the best-effort one is not counted: the SLO is not its promise
        assert seen == [(1, 1)]

        def shed(reason: str, best_effort: bool = False) -> tuple[Pending, ShedRequest]:
            future: Future = Future()
            future.set_running_or_notify_cancel()
            request = Request(99, 0.0, 10.0, best_effort=best_effort)
            return Pending(request, None, True, future), ShedRequest(99, reason)

        engine._shed([shed("deadline"), shed("deadline", best_effort=True), shed("evicted"), shed("timeout")])
        assert seen[-1] == (1, 1)  # only the one that could no longer make its deadline
        assert engine.scheduler.tail_control.observed == 2
    finally:
        rt.close()


def served_model_input(model):
    import torch

    return torch.zeros(*model.input_size())
