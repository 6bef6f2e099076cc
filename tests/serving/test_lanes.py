"""Lanes: one runtime, several engines over one set of weights, requests routed by budget.

- `LaneRouter`: tight budgets to lane 0 first, the others to the other lanes first, least
  loaded first within a class; no split for one lane or when none is set;
- `Runtime(lanes=2)`: every request answered once with the chosen subnet's own forward, ids
  unique across lanes; a lane that refuses passes the request on, and a request every lane
  refuses is raised and counted once; close drains every lane.
"""

import contextlib
import math

import pytest
import torch

from elastic.errors import BudgetInfeasible, ConfigError, Overloaded
from elastic.serving import Result, Runtime
from elastic.serving.lanes import LaneRouter, default_split_ms

GENEROUS_MS = 60_000.0


def sample(i: int = 0) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))


def test_router_splits_by_budget_and_balances_within_a_class():
    r = LaneRouter(3, split_ms=20.0)
    assert r.order(5.0, [9, 0, 0]) == [0, 1, 2]  # tight: the fast lane first, however loaded
    assert r.order(50.0, [0, 4, 1]) == [2, 1, 0]  # loose: the other lanes, least loaded first
    assert r.order(20.0, [0, 0, 0]) == [1, 2, 0]  # at the split: loose
    unsplit = LaneRouter(2)
    assert unsplit.order(5.0, [3, 1]) == [1, 0] and unsplit.order(5.0, [1, 1]) == [0, 1]
    assert LaneRouter(1, split_ms=20.0).order(5.0, [7]) == [0]
    assert default_split_ms(4.5) == 18.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError):
            LaneRouter(2, split_ms=bad)
    with pytest.raises(ConfigError):
        LaneRouter(0)


def test_runtime_rejects_a_bad_lane_count(served_model, served_profile):
    with pytest.raises(ConfigError, match="lanes"):
        Runtime(served_model, profile=served_profile, lanes=0)


def _routed(rt: Runtime) -> list[int]:
    """Spy: the lane of every engine `submit` call, in order."""
    calls: list[int] = []
    for k, engine in enumerate(rt._engines):
        submit = engine.submit

        def spy(*args, _k=k, _submit=submit, **kw):
            calls.append(_k)
            return _submit(*args, **kw)

        engine.submit = spy
    return calls


def test_two_lanes_route_by_budget_and_answer_with_the_subnets_forward(served_model, served_profile):
    with Runtime(served_model, max_queue=1024, profile=served_profile, lanes=2) as rt:
        assert [e.scheduler is not None for e in rt._engines] == [True, True]
        assert rt._router.split_ms == pytest.approx(default_split_ms(rt.scheduler.fastest(None, 1)[1]))
        routed = _routed(rt)
        tight = 0.9 * rt._router.split_ms  # one at a time: nothing queued, nobody refuses
        results = [rt.infer(sample(i), tight if i % 2 else GENEROUS_MS) for i in range(20)]
        assert routed == [1, 0] * 10  # loose to the other lane, tight to the fast lane
        assert len({r.request_id for r in results}) == 20
        with torch.inference_mode():
            for i, r in enumerate(results):
                assert torch.allclose(r.output, served_model(sample(i)[None], subnet=r.subnet)[0], atol=1e-5)


def test_two_lanes_under_a_burst_end_every_request_once(served_model, served_profile):
    with Runtime(served_model, max_queue=1024, profile=served_profile, lanes=2) as rt:
        futures = []
        for i in range(200):
            with contextlib.suppress(BudgetInfeasible, Overloaded):  # refused at once: typed
                futures.append(rt.submit(sample(i % 7), 10.0 if i % 2 else GENEROUS_MS))
        ended = {"ok": 0, "shed": 0}
        for f in futures:
            try:
                f.result(timeout=60)
                ended["ok"] += 1
            except Overloaded:
                ended["shed"] += 1
        ids = [f.request_id for f in futures]
        assert len(set(ids)) == len(ids) and ended["ok"] >= 100  # every loose request at least
        reg = rt.metrics.registry
        answered = sum(reg.get_sample_value("elastic_requests_total", {"outcome": o}) or 0 for o in ("ok", "late"))
        assert answered == ended["ok"]


def test_a_refusing_lane_passes_the_request_on_and_a_refusal_counts_once(served_model, served_profile, monkeypatch):
    with Runtime(served_model, profile=served_profile, lanes=2) as rt:
        routed = _routed(rt)
        reg = rt.metrics.registry
        with pytest.raises(BudgetInfeasible):  # a budget no lane can meet: offered to both, counted once
            rt.submit(sample(), 1e-6)
        assert routed == [0, 1]
        assert reg.get_sample_value("elastic_rejections_total", {"reason": "infeasible"}) == 1.0

        def full(request, now):
            raise Overloaded("queue full (test)")

        monkeypatch.setattr(rt._engines[1].scheduler, "add_request", full)
        assert isinstance(rt.infer(sample(), GENEROUS_MS), Result)  # loose: lane 1 refused, lane 0 served
        assert routed[2:] == [1, 0]
        assert reg.get_sample_value("elastic_rejections_total", {"reason": "overloaded"}) in (None, 0.0)
        monkeypatch.setattr(rt._engines[0].scheduler, "add_request", full)
        with pytest.raises(Overloaded, match="test"):
            rt.submit(sample(), GENEROUS_MS)
        assert reg.get_sample_value("elastic_rejections_total", {"reason": "overloaded"}) == 1.0


def test_close_drains_every_lane(served_model, served_profile):
    rt = Runtime(served_model, max_queue=1024, profile=served_profile, lanes=2, lane_split_ms=5.0)
    futures = [rt.submit(sample(i), 1.0 if i % 2 else GENEROUS_MS, best_effort=True) for i in range(60)]
    rt.close(drain=True)
    assert all(isinstance(f.result(), Result) for f in futures)
    with pytest.raises(Overloaded, match="closed"):
        rt.submit(sample(), GENEROUS_MS)
