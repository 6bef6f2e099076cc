"""The runtime's cheap per-request paths give what the plain paths gave (issue 9, overhead).

Each fast path cut from the hot path is checked against the slow one it replaced: the
sample check against `ElasticModel.check_input`, the output check against an element-wise
`isfinite`, inline requests that end up queued against the private copy a plain `submit`
takes, and the scrape-time gauges against the engine's state.
"""

import math
import threading
import time

import pytest
import torch
from gate import Gate  # sibling helper module

from elastic.errors import InvalidInput
from elastic.serving import Result, Runtime
from elastic.serving.admission import SampleCheck
from elastic.serving.executor import EagerExecutor

GENEROUS_MS = 60_000.0


def _refusal(fn, x):
    try:
        fn(x)
    except InvalidInput as e:
        return str(e)
    return None


def _bad_samples():
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    nan, pinf, ninf = x.clone(), x.clone(), x.clone()
    nan[1, 2, 3] = math.nan
    pinf[0, 0, 0] = math.inf
    ninf[2, 31, 31] = -math.inf
    both = x.clone()
    both[0, 0, 0], both[0, 0, 1] = math.inf, -math.inf  # a NaN sum, from infinities only
    return {
        "nan": nan,
        "+inf": pinf,
        "-inf": ninf,
        "+inf and -inf": both,
        "nan batched": nan.unsqueeze(0),
        "wrong width": torch.randn(3, 32, 31),
        "wrong channels": torch.randn(1, 4, 32, 32),
        "a batch of 2": torch.randn(2, 3, 32, 32),
        "empty batch": torch.randn(0, 3, 32, 32),
        "2-d": torch.randn(32, 32),
    }


@pytest.mark.parametrize("name", list(_bad_samples()))
def test_sample_check_refuses_what_check_input_refuses(served_model, name):
    x = _bad_samples()[name]
    check = SampleCheck(served_model, torch.float32)
    got = _refusal(check, x)
    assert got is not None, f"{name} was accepted"
    plain = _refusal(served_model.check_input, x.unsqueeze(0) if x.dim() == 3 else x)
    if plain is not None:  # the model's own message, word for word
        assert got == plain


def test_sample_check_accepts_finite_samples_whose_sum_overflows(served_model):
    huge = torch.full((3, 32, 32), 3e38)  # every element finite, the sum is inf
    assert not math.isfinite(huge.sum().item())
    sample, squeeze = SampleCheck(served_model, torch.float32)(huge)
    assert squeeze and sample.shape == (1, 3, 32, 32) and torch.equal(sample[0], huge)


def test_sample_check_copies_unless_told_not_to(served_model):
    x = torch.randn(3, 32, 32)
    check = SampleCheck(served_model, torch.float32)
    copied, _ = check(x)
    viewed, _ = check(x, copy=False)
    assert copied.data_ptr() != x.data_ptr() and viewed.data_ptr() == x.data_ptr()


def test_an_overriding_check_input_is_still_called(served_model, monkeypatch):
    calls = []

    class Strict(type(served_model)):
        def check_input(self, x):
            calls.append(tuple(x.shape))
            super().check_input(x)

    monkeypatch.setattr(served_model, "__class__", Strict)
    SampleCheck(served_model, torch.float32)(torch.randn(3, 32, 32))
    assert calls == [(1, 3, 32, 32)]


def test_an_inline_request_that_gets_queued_holds_its_own_copy(rt, served_model, monkeypatch):
    """`infer` passes its tensor uncopied; when the engine is busy and the request waits,
    the engine copies it, so a change to the caller's tensor meanwhile is not served."""
    gate = Gate(monkeypatch, served_model)  # the first forward blocks until released
    plug = rt.submit(torch.randn(3, 32, 32), GENEROUS_MS)
    assert gate.entered.wait(30)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(7))
    expected_input = x.clone()
    got: list[Result] = []
    caller = threading.Thread(target=lambda: got.append(rt.infer(x, GENEROUS_MS)))
    caller.start()
    deadline = time.monotonic() + 30
    while rt.scheduler.get_num_waiting() < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert rt.scheduler.get_num_waiting() == 1
    with rt._engine.lock:  # the submit that queued it has left its critical section (the copy is in it)
        pass
    x.fill_(1e3)  # the caller's tensor changes while its request waits
    gate.release.set()
    caller.join(60)
    assert isinstance(plug.result(timeout=60), Result) and len(got) == 1
    with torch.inference_mode():
        expected = gate.original(expected_input.unsqueeze(0), subnet=got[0].subnet)[0]
    torch.testing.assert_close(got[0].output, expected, rtol=1e-4, atol=1e-4)


def test_a_queued_request_holds_its_own_copy(rt, served_model, monkeypatch):
    """`submit` checks the caller's tensor without copying it and the engine copies it once
    admitted: a change to the caller's tensor after `submit` returns is not served."""
    gate = Gate(monkeypatch, served_model)  # the first forward blocks until released
    plug = rt.submit(torch.randn(3, 32, 32), GENEROUS_MS)
    assert gate.entered.wait(30)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(11))
    expected_input = x.clone()
    future = rt.submit(x, GENEROUS_MS)
    x.fill_(1e3)  # the caller reuses its tensor while the request waits
    gate.release.set()
    assert isinstance(plug.result(timeout=60), Result)
    got = future.result(timeout=60)
    with torch.inference_mode():
        expected = gate.original(expected_input.unsqueeze(0), subnet=got.subnet)[0]
    torch.testing.assert_close(got.output, expected, rtol=1e-4, atol=1e-4)


def test_a_refused_request_leaves_nothing_behind(rt):
    """A refusal is raised before the engine creates a future, copies the sample or queues
    anything: the next request is served as if the refused one never came."""
    from elastic.errors import BudgetInfeasible

    with pytest.raises(BudgetInfeasible):
        rt.submit(torch.randn(3, 32, 32), 1e-6)
    engine = rt._engine
    assert not engine._pending and rt.scheduler.get_num_waiting() == 0
    assert isinstance(rt.submit(torch.randn(3, 32, 32), GENEROUS_MS).result(timeout=60), Result)


class _HugeOutputs(EagerExecutor):
    """Logits whose row sums overflow while every element is finite."""

    pausable = False  # every forward through `run`

    def run(self, subnet, x):
        y = super().run(subnet, x)
        return torch.full_like(y, 3e38)


def test_finite_outputs_whose_sum_overflows_are_answered(served_model, served_profile):
    executor = _HugeOutputs(served_model)
    with Runtime(served_model, max_batch_size=8, profile=served_profile, executor=executor) as runtime:
        futures = [runtime.submit(torch.randn(3, 32, 32), GENEROUS_MS) for _ in range(4)]
        results = [f.result(timeout=60) for f in futures]
        assert all(torch.equal(r.output, torch.full((10,), 3e38)) for r in results)
        single = runtime.infer(torch.randn(1, 3, 32, 32), GENEROUS_MS)
        assert single.output.shape == (1, 10)


def test_outputs_keep_their_shapes_and_rows(rt, served_model):
    xs = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    squeezed = [rt.submit(xs[i], GENEROUS_MS, best_effort=True) for i in range(3)]
    kept = [rt.submit(xs[i : i + 1], GENEROUS_MS, best_effort=True) for i in range(3, 5)]
    results = [f.result(timeout=60) for f in squeezed + kept]
    with torch.inference_mode():
        for i, r in enumerate(results):
            want = served_model(xs[i : i + 1], subnet=r.subnet)
            got = r.output if i >= 3 else r.output.unsqueeze(0)
            assert r.output.shape == ((10,) if i < 3 else (1, 10))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_scrape_time_gauges_follow_the_engine(rt, served_model, monkeypatch):
    reg = rt.metrics.registry
    assert reg.get_sample_value("elastic_queue_depth") == 0
    assert reg.get_sample_value("elastic_effective_accuracy") == 0
    gate = Gate(monkeypatch, served_model)  # the first forward blocks until released
    plug = rt.submit(torch.randn(3, 32, 32), GENEROUS_MS)
    assert gate.entered.wait(30)
    waiting = [rt.submit(torch.randn(3, 32, 32), GENEROUS_MS) for _ in range(3)]
    assert reg.get_sample_value("elastic_queue_depth") == rt.scheduler.get_num_waiting() == 3
    gate.release.set()
    for f in [plug, *waiting]:
        f.result(timeout=60)
    time.sleep(rt.refit_ms / 1e3)  # what the batches taught is due: the next admission folds it
    rt.infer(torch.randn(3, 32, 32), GENEROUS_MS)  # folds the last batch's overhead in
    assert reg.get_sample_value("elastic_queue_depth") == 0
    assert reg.get_sample_value("elastic_slo_attainment") == 1.0
    accuracies = {s.id: s.accuracy for s in served_model.subnets()}
    assert min(accuracies.values()) <= reg.get_sample_value("elastic_effective_accuracy") <= 1.0
    o = rt.scheduler.overhead
    assert reg.get_sample_value("elastic_overhead_per_batch_seconds") == pytest.approx(o.per_batch_ms / 1e3)
    assert reg.get_sample_value("elastic_overhead_per_request_seconds") == pytest.approx(o.per_request_ms / 1e3)
    for sid in rt.candidates:  # what the scheduler applies now, observed or not
        got = reg.get_sample_value("elastic_latency_correction", {"subnet": str(sid)})
        assert got == pytest.approx(rt.scheduler.predictor.correction(sid))
    assert any(
        reg.get_sample_value("elastic_latency_correction", {"subnet": str(sid)}) != 1.0 for sid in rt.candidates
    )  # forwards ran: the corrections moved off their start
