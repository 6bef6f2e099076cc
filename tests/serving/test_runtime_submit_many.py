"""`Runtime.submit_many`: a stacked batch sent in one call is served as that many requests.

Each sample must end exactly as it would through `submit`: the same outputs (equal to the
model's own forward on that row), its own typed error when the scheduler refuses it, and
the same metrics; a malformed call queues nothing.
"""

import math

import pytest
import torch
from gate import Gate  # sibling helper module

from elastic.errors import BudgetInfeasible, InvalidInput, Overloaded
from elastic.serving import Result, Runtime
from elastic.serving.batch_run import stack_members
from elastic.serving.pending import Pending

GENEROUS_MS = 60_000.0


def count(rt, outcome):
    return rt.metrics.registry.get_sample_value("elastic_requests_total", {"outcome": outcome})


def batch(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_every_row_is_answered_with_its_own_forward(rt, served_model, n):
    xs = batch(n)
    futures = rt.submit_many(xs, GENEROUS_MS)
    assert len(futures) == n
    results = [f.result(timeout=60) for f in futures]
    assert all(isinstance(r, Result) and r.output.shape == (10,) for r in results)
    assert len({r.request_id for r in results}) == n
    assert all(r.batch_size <= 8 for r in results)
    with torch.inference_mode():
        for i, r in enumerate(results):
            torch.testing.assert_close(r.output, served_model(xs[i : i + 1], subnet=r.subnet)[0], rtol=1e-4, atol=1e-4)
    assert count(rt, "ok") + count(rt, "late") == n


def test_the_batch_is_copied_at_the_call(rt, served_model, monkeypatch):
    gate = Gate(monkeypatch, served_model)  # the first forward blocks until released
    plug = rt.submit(batch(1)[0], GENEROUS_MS)
    assert gate.entered.wait(30)
    xs = batch(4, seed=1)
    expected = xs.clone()
    futures = rt.submit_many(xs, GENEROUS_MS)
    xs.zero_()  # the caller reuses its buffer while the requests wait
    gate.release.set()
    plug.result(timeout=60)
    results = [f.result(timeout=60) for f in futures]
    with torch.inference_mode():
        for i, r in enumerate(results):
            torch.testing.assert_close(
                r.output, gate.original(expected[i : i + 1], subnet=r.subnet)[0], rtol=1e-4, atol=1e-4
            )


@pytest.mark.parametrize(
    "xs, match",
    [
        (torch.randn(3, 32, 32), "stacked batch"),
        (torch.randn(0, 3, 32, 32), "expected shape"),
        (torch.randn(2, 3, 32, 31), "expected shape"),
        (torch.randn(2, 3, 32, 32, dtype=torch.float64), "dtype"),
        ([torch.randn(3, 32, 32)], "torch.Tensor"),
    ],
)
def test_a_malformed_batch_queues_nothing(rt, xs, match):
    with pytest.raises(InvalidInput, match=match):
        rt.submit_many(xs, GENEROUS_MS)
    assert rt.scheduler.get_num_waiting() == 0
    rejected = rt.metrics.registry.get_sample_value("elastic_rejections_total", {"reason": "invalid"})
    n = xs.shape[0] if isinstance(xs, torch.Tensor) and xs.dim() == 4 and xs.shape[0] > 0 else 1
    assert rejected == n


def test_non_finite_rows_are_named(rt):
    xs = batch(5)
    xs[1, 0, 0, 0] = math.nan
    xs[3, 2, 5, 5] = -math.inf
    with pytest.raises(InvalidInput, match=r"rows \[1, 3\]"):
        rt.submit_many(xs, GENEROUS_MS)
    assert rt.scheduler.get_num_waiting() == 0 and count(rt, "rejected") == 5


def test_finite_rows_whose_sum_overflows_are_served(rt):
    xs = torch.full((2, 3, 32, 32), 3e38)
    futures = rt.submit_many(xs, GENEROUS_MS, best_effort=True)
    for f in futures:  # the forward may overflow: then a typed error, never a hang
        try:
            f.result(timeout=60)
        except Exception as e:  # noqa: BLE001
            assert type(e).__name__ == "ExecutionError"


def test_bad_options_refuse_the_whole_call(rt):
    with pytest.raises(BudgetInfeasible):
        rt.submit_many(batch(3), "soon")
    with pytest.raises(InvalidInput, match="priority"):
        rt.submit_many(batch(3), GENEROUS_MS, priority=1.5)
    assert rt.scheduler.get_num_waiting() == 0


def test_requests_the_scheduler_refuses_fail_alone(served_model, served_profile, monkeypatch):
    """A full queue refuses the rows beyond it: their futures fail with `Overloaded`,
    the others are served."""
    with Runtime(served_model, max_batch_size=2, max_queue=3, profile=served_profile) as rt:
        gate = Gate(monkeypatch, served_model)  # the first forward blocks until released
        plug = rt.submit(batch(1)[0], GENEROUS_MS)
        assert gate.entered.wait(30)
        futures = rt.submit_many(batch(5), GENEROUS_MS, best_effort=True)
        refused = [f for f in futures if f.done()]
        assert len(refused) == 2
        for f in refused:
            with pytest.raises(Overloaded, match="queue full"):
                f.result()
        gate.release.set()
        plug.result(timeout=60)
        assert all(isinstance(f.result(timeout=60), Result) for f in futures[:3])
        assert rt.metrics.registry.get_sample_value("elastic_rejections_total", {"reason": "overloaded"}) == 2


def test_an_impossible_budget_fails_every_row(rt):
    futures = rt.submit_many(batch(3), 1e-6)
    for f in futures:
        with pytest.raises(BudgetInfeasible):
            f.result(timeout=1)
    assert count(rt, "rejected") == 3


def test_a_closed_runtime_refuses_the_call(served_model, served_profile):
    rt = Runtime(served_model, profile=served_profile)
    rt.close()
    with pytest.raises(Overloaded, match="closed"):
        rt.submit_many(batch(2), GENEROUS_MS)
    assert count(rt, "rejected") == 2


def test_consecutive_rows_are_sliced_not_stacked():
    base = torch.randn(6, 3, 4, 4)
    members = [Pending(None, base[i : i + 1], True, None, base, i) for i in (2, 3, 4)]
    x = stack_members(members)
    assert x.data_ptr() == base[2].data_ptr() and torch.equal(x, base[2:5])
    mixed = [members[0], Pending(None, torch.randn(1, 3, 4, 4), True, None), members[1]]
    torch.testing.assert_close(stack_members(mixed), torch.cat([m.x for m in mixed]))
    gap = [members[0], members[2]]
    assert torch.equal(stack_members(gap), torch.cat([base[2:3], base[4:5]]))
