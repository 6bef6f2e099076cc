"""The runtime against careless and hostile callers (issue 11's serving cases), on a real model.

Each case: a typed `elastic.errors` error at the call, naming the bad field, nothing else in
the queue or batch affected, and no future ever left pending.
"""

import contextlib
import math
import socket
import threading
import urllib.request
from concurrent.futures import wait

import pytest
import torch
from gate import Gate, patch_forward  # sibling helper module

from elastic.errors import (
    BudgetInfeasible,
    ConfigError,
    ElasticError,
    ExecutionError,
    InvalidInput,
    Overloaded,
    ReentrantCall,
)
from elastic.serving import Result, Runtime

GENEROUS_MS = 60_000.0


def sample(seed=0):
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def count(rt, outcome):
    return rt.metrics.registry.get_sample_value("elastic_requests_total", {"outcome": outcome})


def engine_threads():
    return [t for t in threading.enumerate() if t.name.startswith("elastic-runtime")]


# ---- dtype: one bad sample never poisons a batch --------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_a_sample_of_another_dtype_is_refused_and_poisons_nothing(rt, dtype):
    futures = [rt.submit(sample(i), GENEROUS_MS) for i in range(6)]
    with pytest.raises(InvalidInput, match="dtype"):
        rt.submit(sample(9).to(dtype), GENEROUS_MS)
    assert all(isinstance(f.result(timeout=60), Result) for f in futures)
    assert count(rt, "ok") == 6 and count(rt, "rejected") == 1


# ---- argument types at submit --------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        (dict(priority=float("nan")), InvalidInput, "priority"),
        (dict(priority=None), InvalidInput, "priority"),
        (dict(priority=1.5), InvalidInput, "priority"),
        (dict(priority=True), InvalidInput, "priority"),
        (dict(budget_ms="50"), BudgetInfeasible, "budget_ms"),
        (dict(budget_ms=True), BudgetInfeasible, "budget_ms"),
        (dict(budget_ms=None), BudgetInfeasible, "budget_ms"),
        (dict(best_effort="no"), InvalidInput, "best_effort"),
        (dict(best_effort=1), InvalidInput, "best_effort"),
        (dict(min_accuracy="high"), InvalidInput, "min_accuracy"),
        (dict(min_accuracy=float("nan")), InvalidInput, "min_accuracy"),
        (dict(min_accuracy=1.5), InvalidInput, "min_accuracy"),
        (dict(x=torch.randn(3, 32, 32, device="meta")), InvalidInput, "meta"),
        (dict(x=torch.randn(3, 32, 32).to_sparse()), InvalidInput, "dense"),
        (dict(x="an image"), InvalidInput, "x must be a torch.Tensor"),
    ],
)
def test_malformed_arguments_raise_a_typed_error_naming_the_field(rt, kwargs, error, field):
    args = dict(x=sample(), budget_ms=GENEROUS_MS) | kwargs
    x, budget = args.pop("x"), args.pop("budget_ms")
    with pytest.raises(error, match=field):
        rt.submit(x, budget, **args)
    assert rt.scheduler.get_num_waiting() == 0 and count(rt, "rejected") == 1
    assert isinstance(rt.infer(sample(), GENEROUS_MS), Result)  # and the runtime serves on


@contextlib.contextmanager
def two_queued(served_model, served_profile, monkeypatch, max_queue):
    """A runtime whose worker is held inside a forward, with two requests queued behind it;
    on leaving, the worker is let go and all three must be answered."""
    gate = Gate(monkeypatch, served_model)
    rt = Runtime(served_model, max_batch_size=1, max_queue=max_queue, profile=served_profile, warm=False)
    try:
        plug = rt.submit(sample(0), GENEROUS_MS)
        assert gate.entered.wait(30)
        queued = [rt.submit(sample(i), GENEROUS_MS) for i in (1, 2)]
        yield rt
        assert rt.scheduler.get_num_waiting() == 2  # nothing the test did changed the queue
        gate.release.set()
        assert all(isinstance(f.result(timeout=60), Result) for f in [plug, *queued])
    finally:
        gate.release.set()
        rt.close()


def test_nan_priority_cannot_jump_the_queue_or_evict(served_model, served_profile, monkeypatch):
    with (
        two_queued(served_model, served_profile, monkeypatch, max_queue=2) as rt,
        pytest.raises(InvalidInput, match="priority"),
    ):
        rt.submit(sample(3), GENEROUS_MS, priority=float("nan"))


# ---- finiteness, checked once a request is admitted -------------------------------------------
def non_finite(value: float) -> torch.Tensor:
    bad = sample(3)
    bad[1, 2, 3] = value
    return bad


def test_a_non_finite_sample_is_refused_after_admission_and_leaves_the_queue_as_it_was(
    served_model, served_profile, monkeypatch
):
    """The sum that tests finiteness runs only once the scheduler has admitted the request
    (a refusal then costs no tensor operation); a sample that fails it is taken out again
    before anyone sees it: refused as invalid, never counted as admitted."""
    with two_queued(served_model, served_profile, monkeypatch, max_queue=8) as rt:
        with pytest.raises(InvalidInput, match="NaN|finite"):
            rt.submit(non_finite(float("nan")), GENEROUS_MS)
        assert len(rt._engine._pending) == 2
        assert rt.metrics.registry.get_sample_value("elastic_rejections_total", {"reason": "invalid"}) == 1
    assert count(rt, "ok") == 3 and count(rt, "rejected") == 1


def test_a_non_finite_sample_never_evicts_from_a_full_queue(served_model, served_profile, monkeypatch):
    with (
        two_queued(served_model, served_profile, monkeypatch, max_queue=2) as rt,
        pytest.raises(InvalidInput),
    ):
        rt.submit(non_finite(float("inf")), GENEROUS_MS, priority=5)  # would evict a priority-0 request


class _Recording(torch.Tensor):
    """A sample that records every tensor function called on it, attribute reads aside."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name != "__get__":  # `x.shape`, `x.dtype`: reads, no tensor operation
            cls.calls.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_refused_request_runs_no_tensor_operation(rt):
    """Each tensor operation on the caller's thread lets go of the interpreter lock, which
    a forward on the worker then waits to take back: a refusal runs none."""
    x = sample().as_subclass(_Recording)
    _Recording.calls.clear()
    with pytest.raises(BudgetInfeasible):
        rt.submit(x, 1e-6)
    assert set(_Recording.calls) <= {"is_floating_point", "dim"}, _Recording.calls
    _Recording.calls.clear()
    assert isinstance(rt.infer(x, GENEROUS_MS), Result)
    assert "sum" in _Recording.calls  # admitted: its finiteness is checked


# ---- constructor validation leaves no thread --------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(policy="static:9999"),
        dict(policy="bogus"),
        dict(quantile="p42"),
        dict(ewma_alpha=0),
        dict(ewma_alpha=1.5),
        dict(max_batch_size=2.5),
        dict(max_batch_size=0),
        dict(max_batch_size=True),
        dict(max_queue=0),
        dict(metrics_window=0),
        dict(worker_threads=0),
        dict(batch_wait_ms=-1),
        dict(stale_s=0),
        dict(executor="bogus"),
    ],
)
def test_a_bad_setting_raises_config_error_and_leaves_no_thread(served_model, served_profile, kwargs):
    before = engine_threads()
    with pytest.raises(ConfigError):
        Runtime(served_model, profile=served_profile, **kwargs)
    assert engine_threads() == before


def test_each_lane_drops_stale_corrections_after_stale_s_and_the_metrics_count_them(served_model, served_profile):
    with Runtime(served_model, profile=served_profile, lanes=2, stale_s=0.25) as rt:
        schedulers = [e.scheduler for e in rt._engines]
        assert [s.stale_s for s in schedulers] == [0.25, 0.25]
        for s in schedulers:
            s.on_forget()  # what `BudgetScheduler._forget` calls
        assert rt.metrics.registry.get_sample_value("elastic_latency_resets_total") == 2.0


def test_a_profile_lacking_the_static_subnet_leaves_no_thread(served_model, served_profile):
    before = engine_threads()
    missing = next(s.id for s in served_model.subnets() if s.id not in served_profile.p50_ms)
    with pytest.raises(ValueError, match="lacks"):
        Runtime(served_model, policy=f"static:{missing}", profile=served_profile)
    assert engine_threads() == before


# ---- dead worker --------------------------------------------------------------------------
class Fatal(BaseException):
    """Not an Exception: what a forward may raise that a plain `except Exception` misses."""


def test_a_base_exception_in_forward_fails_everything_pending_and_refuses_new_work(
    served_model, served_profile, monkeypatch
):
    gate = Gate(monkeypatch, served_model)
    original = served_model.forward

    def forward(x, subnet=0):
        original(x, subnet=subnet)  # blocks the first time (the gate)
        raise Fatal("the forward pulled the rug")

    patch_forward(monkeypatch, served_model, forward)
    rt = Runtime(served_model, max_batch_size=2, profile=served_profile, warm=False)
    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert gate.entered.wait(30)
        queued = [rt.submit(sample(i), GENEROUS_MS) for i in range(1, 6)]
        gate.release.set()
        done, pending = wait([running, *queued], timeout=60)
        assert not pending
        for f in done:
            error = f.exception()
            assert isinstance(error, ExecutionError) and "worker died" in str(error)
        assert isinstance(running.exception().__cause__, Fatal)
        assert isinstance(rt.dead, Fatal)
        with pytest.raises(Overloaded, match="worker died"):
            rt.submit(sample(), GENEROUS_MS)
        assert count(rt, "error") == 6
    finally:
        gate.release.set()
        rt.close(timeout=30)


def test_an_error_inside_the_error_handler_still_fails_every_request(served_model, served_profile, monkeypatch):
    gate = Gate(monkeypatch, served_model)
    original = served_model.forward

    def forward(x, subnet=0):
        original(x, subnet=subnet)
        raise RuntimeError("injected forward failure")

    patch_forward(monkeypatch, served_model, forward)
    rt = Runtime(served_model, max_batch_size=2, profile=served_profile, warm=False)

    def broken(*args, **kwargs):
        raise IndexError("metrics are broken too")

    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert gate.entered.wait(30)
        queued = [rt.submit(sample(i), GENEROUS_MS) for i in range(1, 4)]
        monkeypatch.setattr(rt.metrics, "failed", broken)
        gate.release.set()
        _, pending = wait([running, *queued], timeout=60)
        assert not pending
        assert all(isinstance(f.exception(), ExecutionError) for f in [running, *queued])
        with pytest.raises(Overloaded):
            rt.submit(sample(), GENEROUS_MS)
    finally:
        gate.release.set()
        rt.close(timeout=30)


def test_close_after_a_dead_worker_leaves_nothing_pending(served_model, served_profile, monkeypatch):
    def forward(x, subnet=0):
        raise Fatal("dead on arrival")

    patch_forward(monkeypatch, served_model, forward)
    rt = Runtime(served_model, profile=served_profile, warm=False)
    futures = []
    for i in range(20):
        with contextlib.suppress(Overloaded):  # refused once the worker died
            futures.append(rt.submit(sample(i), GENEROUS_MS))
    rt.close(timeout=30)
    assert futures and all(f.done() for f in futures)
    assert all(isinstance(f.exception(), ExecutionError) for f in futures)


# ---- stalled forward: deadlines hold while a batch runs ----------------------------------------
def test_a_stalled_forward_sheds_queued_requests_at_their_deadlines(served_model, served_profile, monkeypatch):
    gate = Gate(monkeypatch, served_model)
    rt = Runtime(served_model, max_batch_size=8, max_queue=512, profile=served_profile, warm=False)
    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert gate.entered.wait(30)
        doomed = [rt.submit(sample(i), 300.0) for i in range(1, 65)]
        # the forward is still stalled: only the watchdog can have failed them
        _, pending = wait(doomed, timeout=30)
        assert not pending and not gate.release.is_set()
        for f in doomed:
            with pytest.raises(Overloaded, match="can no longer be met"):
                f.result()
        assert rt.metrics.registry.get_sample_value("elastic_shed_total", {"reason": "deadline"}) == 64
        gate.release.set()
        assert isinstance(running.result(timeout=60), Result)
    finally:
        gate.release.set()
        rt.close()


def test_infer_timeout_withdraws_a_queued_request(served_model, served_profile, monkeypatch):
    gate = Gate(monkeypatch, served_model)
    rt = Runtime(served_model, max_batch_size=1, profile=served_profile, warm=False)
    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert gate.entered.wait(30)
        with pytest.raises(Overloaded, match="timeout"):
            rt.infer(sample(1), GENEROUS_MS, timeout=0.05)
        assert rt.scheduler.get_num_waiting() == 0
        assert rt.metrics.registry.get_sample_value("elastic_shed_total", {"reason": "timeout"}) == 1
        gate.release.set()
        assert isinstance(running.result(timeout=60), Result)
    finally:
        gate.release.set()
        rt.close()


# ---- callbacks ------------------------------------------------------------------------------
def test_a_done_callback_calling_infer_gets_reentrant_call_and_the_worker_lives_on(rt, served_model, monkeypatch):
    gate = Gate(monkeypatch, served_model)  # the callback is attached before the result exists
    seen = []
    done = threading.Event()

    def callback(future):
        try:
            rt.infer(sample(5), GENEROUS_MS)
        except BaseException as e:  # noqa: BLE001 - we want to see exactly what it raised
            seen.append(e)
        try:
            seen.append(rt.submit(sample(6), GENEROUS_MS))  # submit from a callback is fine
        finally:
            done.set()

    future = rt.submit(sample(1), GENEROUS_MS)
    assert gate.entered.wait(30)
    future.add_done_callback(callback)
    gate.release.set()
    assert done.wait(60)
    assert isinstance(seen[0], ReentrantCall)
    assert isinstance(seen[1].result(timeout=60), Result)
    assert isinstance(rt.infer(sample(2), GENEROUS_MS, timeout=60), Result)


# ---- close ----------------------------------------------------------------------------------
def test_close_that_times_out_still_stops_the_metrics_server(served_model, served_profile, monkeypatch):
    gate = Gate(monkeypatch, served_model)
    rt = Runtime(served_model, max_batch_size=1, profile=served_profile, warm=False)
    port = rt.serve_metrics()
    try:
        running = rt.submit(sample(0), GENEROUS_MS)
        assert gate.entered.wait(30)
        queued = rt.submit(sample(1), GENEROUS_MS)
        rt.close(timeout=0.1)
        assert rt.metrics._server is None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
        with pytest.raises(Overloaded):
            queued.result(timeout=10)  # shed when the close timed out
        gate.release.set()
        assert isinstance(running.result(timeout=60), Result)  # the running batch still answers
    finally:
        gate.release.set()


# ---- metrics ----------------------------------------------------------------------------------
def test_an_infinite_budget_does_not_poison_the_budget_histogram(rt):
    rt.infer(sample(), math.inf)
    rt.infer(sample(), 1000.0)
    total = rt.metrics.registry.get_sample_value("elastic_request_budget_seconds_sum")
    assert math.isfinite(total) and total == pytest.approx(1.0)


def test_a_busy_metrics_port_raises_config_error(rt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="metrics"):
            rt.serve_metrics(port=taken.getsockname()[1])


# ---- outputs ----------------------------------------------------------------------------------
def test_non_finite_outputs_fail_the_request_not_its_neighbours(rt, served_model, monkeypatch):
    gate = Gate(monkeypatch, served_model)
    plug = rt.submit(sample(0), GENEROUS_MS)
    assert gate.entered.wait(30)
    huge = torch.full((3, 32, 32), 1e38)
    futures = [rt.submit(sample(i), GENEROUS_MS) for i in range(1, 4)] + [rt.submit(huge, GENEROUS_MS)]
    gate.release.set()
    assert isinstance(plug.result(timeout=60), Result)
    with pytest.raises(ExecutionError, match="non-finite"):
        futures[-1].result(timeout=60)
    assert all(isinstance(f.result(timeout=60), Result) for f in futures[:-1])
    assert all(torch.isfinite(f.result().output).all() for f in futures[:-1])


def test_every_error_raised_is_typed(rt):
    for bad in (dict(budget_ms=-1), dict(budget_ms="x"), dict(priority="1"), dict(min_accuracy=2)):
        args = dict(budget_ms=GENEROUS_MS) | bad
        with pytest.raises(ElasticError):
            rt.submit(sample(), args.pop("budget_ms"), **args)
