"""The per-request fast paths of the engine keep the plain behaviour they replace.

- `LatencyPredictor.predict_ms` (uncorrected rows built once, ratios moved by each
  observation) is always what a fresh predictor with the same history says, and the
  documented formula: profiled ms × correction (× measured tail); `predict_row` gives the
  same values a row at a time;
- a request's future (`HelpingFuture`) skips the notify and callback pass only when nobody
  waits: threads blocked in `result()`, `concurrent.futures.wait`, `as_completed` and done
  callbacks all still see the answer, and answering twice is still an error;
- a `submit_many` row is sliced only when it runs alone, as the same row.
"""

import random
import threading
from concurrent.futures import InvalidStateError, as_completed, wait

import pytest
import torch

from elastic.serving import LatencyProfile
from elastic.serving.engine import EngineCore
from elastic.serving.pending import HelpingFuture, Pending
from elastic.serving.predictor import COLD_TAIL_CAP, LatencyPredictor


def _profile() -> LatencyProfile:
    table = {0: {1: 1.0, 2: 1.6, 4: 2.8, 8: 5.0}, 1: {1: 2.0, 2: 3.1, 4: 5.5, 8: 9.9}}
    tails = {s: {b: 1.4 * ms for b, ms in row.items()} for s, row in table.items()}
    tails[1][8] = 99.0  # one outlier in the profiling run: capped at COLD_TAIL_CAP medians
    return LatencyProfile.from_table(table, p99_ms=tails, device="cpu")


def _formula(p: LatencyPredictor, subnet: int, batch: int) -> float:
    """The prediction as the predictor's docstring states it."""
    median = p.profile.latency_ms(subnet, batch, "p50")
    if p.tail is not None:
        return median * p.correction(subnet) * p.tail
    planned = p.profile.latency_ms(subnet, batch, p.quantile)
    if p.quantile != "p50":
        planned = min(planned, COLD_TAIL_CAP * median)
    return planned * p.correction(subnet)


@pytest.mark.parametrize("quantile", ["p50", "p99"])
def test_predictions_follow_every_observation(quantile):
    rng = random.Random(0)
    memo = LatencyPredictor(_profile(), quantile)
    history = []
    for _ in range(80):  # past TAIL_MIN: the measured tail takes over on the way
        for subnet, batch in ((0, 1), (1, 8), (0, 8), (1, 3)):
            fresh = LatencyPredictor(_profile(), quantile)
            for h in history:
                fresh.observe(*h)
            assert memo.predict_ms(subnet, batch) == fresh.predict_ms(subnet, batch)
            assert memo.predict_ms(subnet, batch) == _formula(memo, subnet, batch)
            assert memo.predict_row(subnet, 8)[batch] == memo.predict_ms(subnet, batch)  # one row at once
        h = (rng.choice([0, 1]), rng.choice([1, 2, 4, 8]), rng.uniform(0.5, 12.0))
        history.append(h)
        memo.observe(*h)


class _Idle:
    """An engine stand-in for futures nobody can help: `help` runs no step."""

    def on_engine_thread(self) -> bool:
        return False

    def help(self) -> None:
        pass


def test_a_thread_blocked_in_result_is_woken():
    future = HelpingFuture(_Idle())
    got = []
    waiter = threading.Thread(target=lambda: got.append(future.result(timeout=10)))
    waiter.start()
    while not future._condition._waiters:  # the waiter is inside result() now
        threading.Event().wait(0.001)
    future.set_result("answer")
    waiter.join(10)
    assert got == ["answer"]


def test_wait_as_completed_and_callbacks_see_answers():
    futures = [HelpingFuture(_Idle()) for _ in range(3)]
    called = []
    futures[0].add_done_callback(lambda f: called.append(f.result()))
    answerer = threading.Timer(0.05, lambda: [f.set_result(i) for i, f in enumerate(futures)])
    answerer.start()
    done, pending = wait(futures, timeout=10)
    assert len(done) == 3 and not pending
    assert sorted(f.result() for f in as_completed(futures, timeout=10)) == [0, 1, 2]
    assert called == [0]
    answerer.join()


def test_answering_twice_is_an_error_and_failures_still_raise():
    future = HelpingFuture(_Idle())
    future.set_result(1)
    with pytest.raises(InvalidStateError):
        future.set_result(2)
    failed = HelpingFuture(_Idle())
    failed.set_exception(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        failed.result()
    assert isinstance(failed.exception(), ValueError)


def test_a_submit_many_row_run_alone_is_its_row():
    base = torch.randn(5, 3, 4, 4)
    alone = Pending(None, None, True, None, base, 3)
    assert alone.sample().shape == (1, 3, 4, 4)
    assert torch.equal(alone.sample(), base[3:4])
    own = torch.randn(1, 3, 4, 4)
    assert Pending(None, own, False, None).sample() is own


def test_engine_futures_are_helping_futures_only_with_caller_runs():
    assert isinstance(EngineCore(None, None, lambda: 0.0)._new_future(), HelpingFuture)
    plain = EngineCore(None, None, lambda: 0.0, caller_runs=False)._new_future()
    assert not isinstance(plain, HelpingFuture) and plain.running()
