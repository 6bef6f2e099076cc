"""When a submit wakes the engine's worker, and that skipping a wake-up strands nobody.

While the worker holds a partial batch back to fill it (`batch_wait_ms`), a submit wakes it
only when the batch is now full or when the new request could not wait for the hold to
end (`EngineCore._hold_must_end`); otherwise the worker wakes by itself when the hold ends.
The rule is checked on a stand-in scheduler, and end to end with holds long enough (2 s)
that a request left waiting for the hold would visibly miss.

Once waiting callers run the batches (`CLAIM_STREAK` in a row), the idle worker polls the
queue every `POLL_S` instead, and a submit leaves it asleep when it looks (poll or hold end)
before the request must start (`EngineCore._looks_in_time`): checked on the stand-in, and end
to end by counting the worker's wake-ups.
"""

import math
import time
from concurrent.futures import wait

import pytest
import torch

from elastic.serving import Runtime
from elastic.serving.engine import EngineCore
from elastic.serving.intake import CLAIM_STREAK
from elastic.serving.request import Request

HOLD_MS = 2000.0  # the longest the worker holds a partial batch back, in these tests


class StubScheduler:
    """What `_hold_must_end` reads: the queue length, the batch cap, the front's slowest batch."""

    max_batch_size = 8

    def __init__(self, waiting: int):
        self.waiting = waiting

    def get_num_waiting(self) -> int:
        return self.waiting

    def best_within(self, batch: int, floor: float, max_ms: float) -> tuple[int, float]:
        return 1, 20.0  # the most accurate (slowest) subnet on the front: a full batch takes 20 ms


def engine_holding_until(t: float) -> EngineCore:
    engine = EngineCore(executor=None, metrics=None, clock=time.perf_counter)  # threads never started
    engine._hold_until = t
    return engine


@pytest.mark.parametrize(
    ("waiting", "budget_ms", "best_effort", "wakes"),
    [
        (8, math.inf, False, True),  # the batch is full: run it now
        (3, math.inf, False, False),  # no deadline: the hold's end is soon enough
        (3, 50.0, False, True),  # deadline 50 ms - 20 ms of service comes before the hold ends (100 ms)
        (3, 500.0, False, False),  # 500 ms - 20 ms: can wait for the hold
        (3, 50.0, True, False),  # best effort: waits for the hold like a request without deadline
    ],
)
def test_a_held_worker_is_woken_only_when_a_request_cannot_wait(waiting, budget_ms, best_effort, wakes):
    engine = engine_holding_until(0.100)
    request = Request(1, 0.0, budget_ms, best_effort=best_effort)
    assert engine._hold_must_end(StubScheduler(waiting), request) is wakes


def test_a_worker_not_holding_is_always_woken():
    engine = engine_holding_until(None)
    assert engine._hold_must_end(StubScheduler(1), Request(1, 0.0, math.inf)) is True


@pytest.fixture
def held(served_model, served_profile):
    runtime = Runtime(served_model, max_batch_size=8, policy="static:0", profile=served_profile, batch_wait_ms=HOLD_MS)
    yield runtime
    runtime.close(drain=True, timeout=60)


def sample(i: int) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))


def held_once(rt: Runtime) -> None:
    """Send one request and wait until the worker holds it back to fill a batch."""
    rt.submit(sample(0), math.inf)
    for _ in range(200):
        if rt._engine._hold_until is not None:
            return
        time.sleep(0.01)
    pytest.fail("the worker never held the batch back")


def test_requests_sent_during_a_hold_are_served_without_anyone_blocking(held):
    """Nobody calls result() (no caller runs the batch): the worker's own hold timeout serves them."""
    held_once(held)
    futures = [held.submit(sample(i), math.inf) for i in range(1, 4)]
    done, not_done = wait(futures, timeout=60)
    assert not not_done
    assert all(f.result().output.shape == (10,) for f in done)


def test_a_batch_filled_during_a_hold_runs_before_the_hold_ends(held):
    held_once(held)
    t0 = time.perf_counter()
    futures = [held.submit(sample(i), math.inf) for i in range(1, 8)]  # with the held one: 8
    done, not_done = wait(futures, timeout=HOLD_MS / 2e3)  # well before the 2 s hold ends
    assert not not_done, f"a full batch waited for the hold ({time.perf_counter() - t0:.2f} s)"
    assert {f.result().batch_size for f in done} == {8}


def test_a_request_that_cannot_wait_for_the_hold_wakes_the_worker(held):
    held_once(held)
    t0 = time.perf_counter()
    future = held.submit(sample(1), 500.0)  # the hold ends about 2 s after the first request
    # the scheduler then holds until just before its deadline (and may shed it there if the
    # wake-up is late: `Overloaded`), but the worker acts on it, not at the end of the 2 s hold
    done, _ = wait([future], timeout=HOLD_MS * 0.75 / 1e3)
    assert done, f"still waiting after {time.perf_counter() - t0:.2f} s: the worker slept through the hold"


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("grad", [False, True])
def test_the_sample_check_hands_on_no_autograd_history(served_model, grad, copy):
    from elastic.serving.admission import SampleCheck

    check = SampleCheck(served_model, torch.float32)
    x = torch.randn(3, 32, 32, requires_grad=grad)
    sample, squeeze = check(x * 1.0 if grad else x, copy=copy)  # a non-leaf when grad: it has history
    assert squeeze and sample.shape == (1, 3, 32, 32)
    assert not sample.requires_grad and sample.grad_fn is None
    if copy:
        assert sample.data_ptr() != x.data_ptr()
    batch = check.batch(torch.randn(2, 3, 32, 32, requires_grad=grad))
    assert not batch.requires_grad and batch.grad_fn is None


def test_the_worker_s_wake_up_is_reported_apart_from_the_rest_of_the_overhead(served_model, served_profile):
    """Each request finds the worker asleep (nobody blocks in `result()`, so nobody runs the
    step in its place): the submit wakes it, and that wake-up reaches the overhead model as
    its own part (`OverheadModel.wake_ms`), which shedding leaves out. Folded after every
    batch (`refit_ms=0`), so the model holds every batch read below."""
    runtime = Runtime(served_model, max_batch_size=8, policy="static:0", profile=served_profile, refit_ms=0)
    try:
        for i in range(12):
            future = runtime.submit(sample(i), math.inf)
            done, _ = wait([future], timeout=60)
            assert done
            time.sleep(0.005)  # the worker goes back to sleep
        overhead = runtime._engine.scheduler.overhead
        assert overhead.observations >= 10
        assert 0.0 < overhead.wake_ms <= overhead.ms(1)
    finally:
        runtime.close(drain=True, timeout=60)


# ---- callers run the batches: the idle worker polls, and submits leave it asleep ---------------


def engine_polling_until(t: float | None, claims: int = CLAIM_STREAK) -> EngineCore:
    engine = EngineCore(executor=None, metrics=None, clock=time.perf_counter)  # threads never started
    engine._poll_until = t
    engine._claims = claims
    return engine


@pytest.mark.parametrize(
    ("budget_ms", "best_effort", "claims", "poll_until", "asleep"),
    [
        (math.inf, False, CLAIM_STREAK, 0.100, True),  # no deadline: the next poll is soon enough
        (500.0, False, CLAIM_STREAK, 0.100, True),  # must start by 480 ms; the worker looks at 100 ms
        (50.0, False, CLAIM_STREAK, 0.100, False),  # must start by 30 ms: wake it
        (50.0, True, CLAIM_STREAK, 0.100, True),  # best effort: waits for the poll
        (math.inf, False, CLAIM_STREAK - 1, 0.100, False),  # callers have not run enough batches
        (math.inf, False, CLAIM_STREAK, None, False),  # the worker waits untimed: only a wake-up reaches it
    ],
)
def test_a_submit_leaves_the_worker_asleep_only_when_it_looks_in_time(
    budget_ms, best_effort, claims, poll_until, asleep
):
    engine = engine_polling_until(poll_until, claims)
    request = Request(1, 0.0, budget_ms, best_effort=best_effort)
    assert engine._looks_in_time(StubScheduler(1), request) is asleep


def test_a_hold_ending_in_time_counts_as_looking():
    engine = engine_polling_until(None)
    engine._hold_until = 0.100
    assert engine._looks_in_time(StubScheduler(8), Request(1, 0.0, math.inf))  # a full batch: a caller runs it
    assert not engine._looks_in_time(StubScheduler(8), Request(1, 0.0, 50.0))


class CountingWakeUps:
    """Counts the worker's wake-ups (`notify` on its condition), passing them on."""

    def __init__(self, engine: EngineCore):
        self.count = 0
        self._notify = engine._work.notify
        engine._work.notify = self

    def __call__(self, n: int = 1) -> None:
        self.count += 1
        self._notify(n)


@pytest.fixture
def callers_run(served_model, served_profile):
    """A runtime whose last batches its callers ran (`infer`), its worker now polling."""
    runtime = Runtime(served_model, max_batch_size=8, policy="static:0", profile=served_profile)
    for i in range(CLAIM_STREAK + 1):
        runtime.infer(sample(i), math.inf)
    engine = runtime._engine
    for _ in range(500):  # the worker, asleep since before the streak, polls once it next looks
        with engine._lock:
            if engine._poll_until is not None:
                break
            engine._work.notify()
        time.sleep(0.002)
    else:
        pytest.fail("the worker never polled")
    yield runtime
    runtime.close(drain=True, timeout=60)


def test_requests_a_caller_waits_on_run_without_waking_the_worker(callers_run):
    wakeups = CountingWakeUps(callers_run._engine)
    futures = [callers_run.submit(sample(i), math.inf) for i in range(8)]
    assert [f.result().batch_size for f in futures] == [8] * 8
    assert wakeups.count == 0


def test_a_request_nobody_waits_on_is_served_at_the_worker_s_next_poll(callers_run):
    """Nobody calls result(): the poll serves it, and the worker, serving, wakes on submits again."""
    wakeups = CountingWakeUps(callers_run._engine)
    future = callers_run.submit(sample(0), math.inf)
    done, _ = wait([future], timeout=60)
    assert done and wakeups.count == 0
    assert callers_run._engine._claims == 0
    second = callers_run.submit(sample(1), math.inf)
    done, _ = wait([second], timeout=60)
    assert done and wakeups.count == 1


def test_a_request_that_cannot_wait_for_the_poll_wakes_the_worker(callers_run):
    engine = callers_run._engine
    wakeups = CountingWakeUps(engine)
    with engine._lock:  # as if the worker's next look were 10 s away
        engine._poll_until = time.perf_counter() + 10.0
    future = callers_run.submit(sample(0), 500.0)  # must start within 0.5 s
    wait([future], timeout=60)
    assert wakeups.count == 1
