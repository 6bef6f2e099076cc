"""`Runtime(..., executor="onnxruntime")`: the cases tests/serving/test_runtime.py runs with
torch, served from an ONNX export: results equal to the eager forward, typed refusals of bad
input and budgets, a failing batch that fails only itself, a mixed storm from many threads
where every request ends once, draining on close, metrics."""

import threading
from concurrent.futures import Future, wait

import pytest
import torch

from elastic.errors import BudgetInfeasible, ElasticError, ExecutionError, InvalidInput, Overloaded
from elastic.serving import Result, Runtime, measure_latency
from elastic.serving.onnx_executor import OnnxRuntimeExecutor

pytestmark = pytest.mark.slow  # the session fixture exports six subnets (seconds each)

GENEROUS_MS = 60_000.0
POISON = 777.0


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rt(small_model, exported):
    runtime = Runtime(
        small_model,
        max_batch_size=8,
        max_queue=4096,
        executor="onnxruntime",
        executor_options={"export_dir": exported[0]},
    )
    runtime.profile(sample(), batch_sizes=(1, 2, 4, 8), repeats=2, warmup=1)
    yield runtime
    runtime.close(drain=True, timeout=60)


def sample(seed=0):
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def count(rt, outcome):
    return rt.metrics.registry.get_sample_value("elastic_requests_total", {"outcome": outcome})


def poison_executor(monkeypatch, executor):
    original = executor.run

    def run(subnet, x):
        if bool((x == POISON).any()):
            raise RuntimeError("injected onnxruntime failure")
        return original(subnet, x)

    monkeypatch.setattr(executor, "run", run)


def test_runtime_uses_the_onnxruntime_executor_and_its_profile(rt, exported):
    assert isinstance(rt.executor, OnnxRuntimeExecutor)
    assert sorted(rt.executor._sessions) == [e["id"] for e in exported[1]["subnets"]]  # profiled through it
    assert set(rt.candidates) <= set(rt.executor.subnet_ids) and rt.candidates


def test_result_matches_the_chosen_subnets_torch_forward(rt, small_model):
    for seed in range(4):
        x = sample(seed)
        result = rt.infer(x, GENEROUS_MS)
        assert isinstance(result, Result) and result.subnet in rt.candidates
        assert result.output.shape == (10,) and result.met_budget
        with torch.inference_mode():
            expected = small_model(x.unsqueeze(0), subnet=result.subnet)[0]
        torch.testing.assert_close(result.output, expected, atol=1e-4, rtol=0)
    assert rt.infer(sample().unsqueeze(0), GENEROUS_MS).output.shape == (1, 10)


def test_generous_budget_gets_the_most_accurate_candidate(rt, small_model):
    best = max(rt.candidates, key=lambda s: small_model.subnets()[s].accuracy)
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


def test_best_effort_and_min_accuracy(rt, small_model):
    result = rt.infer(sample(), 1e-6, best_effort=True)
    assert result.met_budget is False and count(rt, "late") == 1
    acc = {s.id: s.accuracy for s in small_model.subnets()}
    floor = sorted(acc[s] for s in rt.candidates)[-2]
    assert acc[rt.infer(sample(), GENEROUS_MS, min_accuracy=floor).subnet] >= floor


def test_failing_run_fails_only_its_batch_and_the_worker_lives_on(rt, monkeypatch):
    poison_executor(monkeypatch, rt.executor)
    with pytest.raises(ExecutionError) as info:
        rt.infer(torch.full((3, 32, 32), POISON), GENEROUS_MS)
    assert "injected onnxruntime failure" in str(info.value.__cause__)
    assert rt.infer(sample(), GENEROUS_MS).met_budget
    assert count(rt, "error") == 1 and count(rt, "ok") == 1


def test_storm_of_mixed_requests_from_8_threads(rt, monkeypatch):
    poison_executor(monkeypatch, rt.executor)
    threads, per_thread = 8, 40
    futures: list[tuple[str, Future]] = []
    raised: list[tuple[str, BaseException]] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def client(t):
        start.wait()
        for k in range(per_thread):
            kind = (("valid",) * 6 + ("nan", "shape", "budget", "poison"))[(t + k) % 10]
            x, budget = sample(t * per_thread + k), GENEROUS_MS
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
            except BaseException as e:
                with lock:
                    unexpected.append(e)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert unexpected == [] and not any(w.is_alive() for w in workers)
    _, pending = wait([f for _, f in futures], timeout=300)
    assert not pending
    assert len(futures) + len(raised) == threads * per_thread
    for kind, e in raised:
        expected = {"nan": InvalidInput, "shape": InvalidInput, "budget": BudgetInfeasible}[kind]
        assert isinstance(e, expected), (kind, e)
    for kind, f in futures:
        error = f.exception()
        if kind == "poison":
            assert isinstance(error, ExecutionError)
        elif error is not None:  # batched with a poisoned request
            assert isinstance(error, ExecutionError), error
    assert sum(1 for kind, f in futures if kind == "valid" and f.exception() is None) > 0
    total = sum(count(rt, o) for o in ("ok", "late", "rejected", "shed", "error"))
    assert total == threads * per_thread


def test_close_with_drain_answers_everything_admitted(rt):
    futures = [rt.submit(sample(i), GENEROUS_MS) for i in range(100)]
    rt.close(drain=True)
    assert all(isinstance(f.result(), Result) for f in futures)
    with pytest.raises(Overloaded, match="closed"):
        rt.submit(sample(), GENEROUS_MS)


def test_partial_export_serves_from_a_profile_of_its_subnets(small_model, exported, export_copy):
    """An export of some subnets: profile those through the executor and serve among them."""
    import json

    from elastic.checkpoint import MANIFEST
    from elastic.export.onnx import manifest_digest

    manifest = json.loads((export_copy / MANIFEST).read_text())
    manifest["subnets"] = [e for e in manifest["subnets"] if e["id"] in (0, 3, 5)]
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (export_copy / MANIFEST).write_text(json.dumps(manifest))
    executor = OnnxRuntimeExecutor(small_model, export_dir=export_copy)
    profile = measure_latency(
        small_model, sample(), (1, 4), "cpu", repeats=2, warmup=1, subnets=executor.subnet_ids, executor=executor
    )
    with Runtime(small_model, max_batch_size=4, executor=executor, profile=profile) as rt:
        assert set(rt.candidates) <= {0, 3, 5}
        result = rt.infer(sample(), GENEROUS_MS)
        assert result.subnet in (0, 3, 5)
