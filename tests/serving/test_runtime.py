"""Runtime on a small real StitchedNet: results, typed failures, shedding, draining, metrics.

Budgets here are generous (seconds) wherever the test is not about budgets, so the noisy
shared CPU cannot turn a correctness check into a timing check.
"""

import asyncio
import threading
import time
import urllib.request
from concurrent.futures import Future, wait

import pytest
import torch
from gate import patch_forward  # sibling helper module

from elastic.errors import BudgetInfeasible, ElasticError, ExecutionError, InvalidInput, Overloaded
from elastic.serving import LatencyProfile, Result, Runtime

GENEROUS_MS = 60_000.0
POISON = 777.0  # an input holding this value makes the patched forward raise


def sample(seed=0):
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def poison_forward(monkeypatch, model):
    original = model.forward

    def forward(x, subnet=0):
        if bool((x == POISON).any()):
            raise RuntimeError("injected forward failure")
        return original(x, subnet=subnet)

    patch_forward(monkeypatch, model, forward)


def count(rt, outcome):
    return rt.metrics.registry.get_sample_value("elastic_requests_total", {"outcome": outcome})


def test_result_matches_the_chosen_subnets_forward(rt, served_model):
    x = sample(1)
    result = rt.infer(x, GENEROUS_MS)
    assert isinstance(result, Result)
    assert result.subnet in rt.candidates
    assert result.output.shape == (10,)
    assert result.met_budget and result.latency_ms >= result.exec_ms > 0 and result.queue_ms >= 0
    with torch.inference_mode():
        expected = served_model(x.unsqueeze(0), subnet=result.subnet)[0]
    torch.testing.assert_close(result.output, expected, atol=1e-4, rtol=1e-4)
    assert rt.infer(x.unsqueeze(0), GENEROUS_MS).output.shape == (1, 10)


def test_generous_budget_gets_the_most_accurate_candidate(rt, served_model):
    best = max(rt.candidates, key=lambda s: served_model.subnets()[s].accuracy)
    assert rt.infer(sample(), GENEROUS_MS).subnet == best


def test_refusals_are_typed_and_immediate(rt):
    with pytest.raises(InvalidInput):
        rt.submit(torch.full((3, 32, 32), float("nan")), GENEROUS_MS)
    with pytest.raises(InvalidInput):
        rt.submit(torch.randn(3, 16, 16), GENEROUS_MS)
    with pytest.raises(InvalidInput, match="one sample per request"):
        rt.submit(torch.randn(2, 3, 32, 32), GENEROUS_MS)
    with pytest.raises(InvalidInput):
        rt.submit([[0.0]], GENEROUS_MS)
    for budget in (0, -1, 1e-6, float("nan"), "soon"):
        with pytest.raises(BudgetInfeasible):
            rt.submit(sample(), budget)
    with pytest.raises(BudgetInfeasible, match="min_accuracy"):
        rt.submit(sample(), GENEROUS_MS, min_accuracy=0.99)
    assert count(rt, "rejected") == 10
    assert rt.scheduler.get_num_waiting() == 0


def test_best_effort_runs_an_infeasible_budget_and_says_so(rt):
    result = rt.infer(sample(), 1e-6, best_effort=True)
    assert result.met_budget is False
    assert count(rt, "late") == 1


def test_min_accuracy_is_respected(rt, served_model):
    acc = {s.id: s.accuracy for s in served_model.subnets()}
    floor = sorted(acc[s] for s in rt.candidates)[-2]
    result = rt.infer(sample(), GENEROUS_MS, min_accuracy=floor)
    assert acc[result.subnet] >= floor


def test_failing_forward_fails_only_its_batch_and_the_worker_lives_on(rt, served_model, monkeypatch):
    poison_forward(monkeypatch, served_model)
    bad = torch.full((3, 32, 32), POISON)
    with pytest.raises(ExecutionError) as info:
        rt.infer(bad, GENEROUS_MS)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "injected" in str(info.value.__cause__)
    assert rt.infer(sample(), GENEROUS_MS).met_budget
    assert count(rt, "error") == 1 and count(rt, "ok") == 1


def test_storm_of_mixed_requests_from_32_threads(rt, served_model, monkeypatch):
    """32 threads x 100 requests: valid, NaN, wrong shape, budget <= 0, poisoned forward.

    A poisoned request fails its whole batch (valid neighbours included); poison is kept to
    one request in ten so that most batches hold none.
    """
    poison_forward(monkeypatch, served_model)
    threads, per_thread = 32, 100
    futures: list[tuple[str, Future]] = []
    raised: list[tuple[str, BaseException]] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def client(t):
        start.wait()
        for k in range(per_thread):
            kind = ("valid",) * 6 + ("nan", "shape", "budget", "poison")
            kind = kind[(t + k) % 10]
            x = sample(t * per_thread + k)
            budget = GENEROUS_MS
            if kind == "nan":
                x[0, 0, 0] = float("nan")
            elif kind == "shape":
                x = torch.randn(3, 31, 32)
            elif kind == "budget":
                budget = (0.0, -5.0)[k % 2]
            elif kind == "poison":
                x[1, 2, 3] = POISON
            try:
                f = rt.submit(x, budget, priority=k % 2)
                with lock:
                    futures.append((kind, f))
            except ElasticError as e:
                with lock:
                    raised.append((kind, e))
            except BaseException as e:  # anything untyped fails the test below
                with lock:
                    unexpected.append(e)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not any(w.is_alive() for w in workers)
    assert unexpected == []

    _, pending = wait([f for _, f in futures], timeout=300)
    assert not pending, f"{len(pending)} futures left pending"
    assert len(futures) + len(raised) == threads * per_thread

    for kind, e in raised:
        expected = {"nan": InvalidInput, "shape": InvalidInput, "budget": BudgetInfeasible}.get(kind)
        assert expected is not None and isinstance(e, expected), (kind, e)
    for kind, f in futures:
        assert kind in ("valid", "poison")
        error = f.exception()
        if kind == "poison":
            assert isinstance(error, ExecutionError) and error.__cause__ is not None
        elif error is not None:  # a valid request batched with a poisoned one fails with it
            assert isinstance(error, ExecutionError), error
        else:
            assert isinstance(f.result(), Result)
    n_valid_ok = sum(1 for kind, f in futures if kind == "valid" and f.exception() is None)
    assert n_valid_ok > 0

    total = sum(count(rt, o) for o in ("ok", "late", "rejected", "shed", "error"))
    assert total == threads * per_thread  # every request counted exactly once
    assert count(rt, "ok") + count(rt, "late") == n_valid_ok
    assert rt.infer(sample(), GENEROUS_MS).met_budget  # still serving


def test_close_with_drain_answers_everything_admitted(served_model, served_profile):
    rt = Runtime(served_model, max_batch_size=8, max_queue=1024, profile=served_profile)
    futures = [rt.submit(sample(i), GENEROUS_MS) for i in range(200)]
    rt.close(drain=True)
    assert all(f.done() for f in futures)
    assert all(isinstance(f.result(), Result) for f in futures)
    with pytest.raises(Overloaded, match="closed"):
        rt.submit(sample(), GENEROUS_MS)


def test_close_without_drain_sheds_the_queue_with_a_typed_error(served_model, served_profile, monkeypatch):
    gate, entered = threading.Event(), threading.Event()
    original = served_model.forward

    def blocked_forward(x, subnet=0):
        entered.set()
        gate.wait(60)
        return original(x, subnet=subnet)

    patch_forward(monkeypatch, served_model, blocked_forward)
    rt = Runtime(served_model, max_batch_size=2, max_queue=1024, profile=served_profile, warm=False)
    running = rt.submit(sample(0), GENEROUS_MS)
    assert entered.wait(30)  # the worker holds request 0; the 200 below stay queued
    futures = [rt.submit(sample(i), GENEROUS_MS) for i in range(1, 201)]
    closer = threading.Thread(target=rt.close, kwargs=dict(drain=False))
    closer.start()
    _, pending = wait(futures, timeout=30)  # shed at once, while the forward still blocks
    assert not pending and not gate.is_set()
    for f in futures:
        with pytest.raises(Overloaded, match="closed without draining"):
            f.result()
    gate.set()
    closer.join(60)
    assert isinstance(running.result(timeout=60), Result)  # the running batch finished
    assert rt.metrics.registry.get_sample_value("elastic_shed_total", {"reason": "closed"}) == 200
    assert count(rt, "ok") == 1


def test_full_queue_sheds_load_and_priority_evicts(served_model, served_profile, monkeypatch):
    gate = threading.Event()
    entered = threading.Event()
    original = served_model.forward

    def blocked_forward(x, subnet=0):
        entered.set()
        gate.wait(60)
        return original(x, subnet=subnet)

    patch_forward(monkeypatch, served_model, blocked_forward)
    rt = Runtime(served_model, max_batch_size=1, max_queue=2, profile=served_profile, warm=False)
    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert entered.wait(30)  # the worker holds it in its forward; the queue is empty
        low = [rt.submit(sample(1), GENEROUS_MS), rt.submit(sample(2), GENEROUS_MS + 1)]
        with pytest.raises(Overloaded, match="queue full"):
            rt.submit(sample(3), GENEROUS_MS)
        high = rt.submit(sample(4), GENEROUS_MS, priority=5)
        with pytest.raises(Overloaded, match="evicted"):
            low[1].result(timeout=30)  # the latest deadline of the lowest priority goes
        gate.set()
        for f in (running, low[0], high):
            assert isinstance(f.result(timeout=60), Result)
        assert count(rt, "shed") == 1 and count(rt, "rejected") == 1
    finally:
        gate.set()
        rt.close()


def test_infer_async(rt, served_model, monkeypatch):
    gate, entered = threading.Event(), threading.Event()
    original = served_model.forward

    def blocked_forward(x, subnet=0):
        if not gate.is_set():
            entered.set()
            gate.wait(60)
        return original(x, subnet=subnet)

    patch_forward(monkeypatch, served_model, blocked_forward)
    plug = rt.submit(sample(99), GENEROUS_MS)
    assert entered.wait(30)

    async def main():
        tasks = [asyncio.ensure_future(rt.infer_async(sample(i), GENEROUS_MS)) for i in range(16)]
        await asyncio.sleep(0)  # every task has submitted: 16 requests queue behind the plug
        gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert isinstance(plug.result(timeout=60), Result)
    assert len(results) == 16 and all(isinstance(r, Result) for r in results)
    assert {r.request_id for r in results} == set(range(1, 17))
    assert max(r.batch_size for r in results) > 1  # queued together, batched together


def test_no_profile_no_serving(served_model):
    rt = Runtime(served_model)
    try:
        with pytest.raises(RuntimeError, match="profile"):
            rt.submit(sample(), GENEROUS_MS)
    finally:
        rt.close()


def test_profile_is_saved_beside_the_model_and_reused(served_model, tmp_path, monkeypatch):
    with Runtime(served_model, max_batch_size=4) as rt:
        first = rt.profile(sample(), batch_sizes=(1, 4), repeats=1, warmup=0, path=tmp_path)
    assert (tmp_path / "profile-cpu.json").is_file()
    assert first.device == "cpu" and first.batch_sizes == (1, 4)

    import elastic.serving.runtime as runtime_module

    def no_measuring(*args, **kwargs):
        raise AssertionError("the saved profile should have been reused")

    monkeypatch.setattr(runtime_module, "measure_latency", no_measuring)
    with Runtime(served_model, max_batch_size=4) as rt:
        again = rt.profile(sample(), batch_sizes=(1, 4), path=tmp_path)
        assert again.p50_ms == first.p50_ms
        assert isinstance(rt.infer(sample(), GENEROUS_MS), Result)
        with pytest.raises(AssertionError, match="reused"):
            rt.profile(sample(), batch_sizes=(1, 8), path=tmp_path)  # lacks batch 8: re-measure
    assert LatencyProfile.load(tmp_path, "cpu").batch_sizes == (1, 4)


def test_metrics_record_requests_batches_and_selections(rt):
    for i in range(5):
        rt.infer(sample(i), GENEROUS_MS)
    with pytest.raises(InvalidInput):
        rt.infer(torch.randn(3, 1, 1), GENEROUS_MS)
    reg = rt.metrics.registry
    assert count(rt, "ok") == 5 and count(rt, "rejected") == 1
    assert reg.get_sample_value("elastic_rejections_total", {"reason": "invalid"}) == 1
    assert reg.get_sample_value("elastic_request_latency_seconds_count") == 5
    assert reg.get_sample_value("elastic_batch_size_sum") == 5
    selected = sum(reg.get_sample_value("elastic_subnet_selections_total", {"subnet": str(s)}) for s in rt.candidates)
    assert selected == 5
    assert reg.get_sample_value("elastic_slo_attainment") == 1.0
    assert 0.5 <= reg.get_sample_value("elastic_effective_accuracy") <= 0.9
    assert reg.get_sample_value("elastic_prediction_error_ratio_count") == reg.get_sample_value(
        "elastic_batch_size_count"
    )


def test_serve_metrics_binds_loopback(rt):
    port = rt.serve_metrics(port=0)
    assert rt.serve_metrics() == port
    assert rt.metrics._server.server_address[0] == "127.0.0.1"
    rt.infer(sample(), GENEROUS_MS)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'elastic_requests_total{outcome="ok"} 1.0' in body
    assert "# HELP elastic_effective_accuracy" in body


def test_two_runtimes_keep_separate_metrics(served_model, served_profile):
    with (
        Runtime(served_model, profile=served_profile) as a,
        Runtime(served_model, profile=served_profile) as b,
    ):
        a.infer(sample(), GENEROUS_MS)
        assert count(a, "ok") == 1 and count(b, "ok") == 0


def test_admitted_request_whose_deadline_passes_in_the_queue_is_shed(served_model, served_profile, monkeypatch):
    gate, entered = threading.Event(), threading.Event()
    original = served_model.forward

    def blocked_forward(x, subnet=0):
        entered.set()
        gate.wait(60)
        return original(x, subnet=subnet)

    patch_forward(monkeypatch, served_model, blocked_forward)
    rt = Runtime(served_model, max_batch_size=1, profile=served_profile, warm=False)
    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert entered.wait(30)
        doomed = rt.submit(sample(1), 1000.0)  # admitted: the worker should be free by then
        time.sleep(1.3)  # ... but it is not, and the budget runs out in the queue
        gate.set()
        with pytest.raises(Overloaded, match=r"shed \(deadline\): budget .* can no longer be met"):
            doomed.result(timeout=60)
        assert isinstance(running.result(timeout=60), Result)
        assert rt.metrics.registry.get_sample_value("elastic_shed_total", {"reason": "deadline"}) == 1
    finally:
        gate.set()
        rt.close()


def test_a_scheduler_failure_fails_the_queue_and_the_worker_lives_on(rt, monkeypatch):
    original = rt.scheduler.schedule
    calls = []

    def broken(now, **kwargs):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("injected scheduler bug")
        return original(now, **kwargs)

    monkeypatch.setattr(rt.scheduler, "schedule", broken)
    with pytest.raises(ExecutionError, match="scheduler failed"):
        rt.infer(sample(), GENEROUS_MS)
    assert isinstance(rt.infer(sample(), GENEROUS_MS), Result)
    assert count(rt, "error") == 1 and count(rt, "ok") == 1
