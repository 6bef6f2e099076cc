"""`Runtime(preempt=True)`: a real StitchedNet pauses a long batch between two blocks for an
urgent request, and both answers equal the model's own forward; by default (`preempt=None`)
a runtime preempts exactly when its executor and model can pause."""

import threading
from concurrent.futures import wait

import pytest
import torch

from elastic.errors import BudgetInfeasible, ConfigError, Overloaded
from elastic.serving import LatencyProfile, Runtime
from elastic.serving.traced_executor import StagedTracedExecutor

SLOW_MS = 2000.0  # the profile says subnet 1 (an anchor) takes this long, subnet 0 1 ms


def profile() -> LatencyProfile:
    return LatencyProfile.from_table(
        {0: {1: 1.0, 2: 1.2, 4: 1.6, 8: 2.4}, 1: {1: SLOW_MS, 2: SLOW_MS, 4: SLOW_MS, 8: SLOW_MS}}
    )


class BlockGate:
    """Holds the worker inside the first block of anchor 1 until released."""

    def __init__(self, monkeypatch, block):
        self.entered, self.release = threading.Event(), threading.Event()
        original, self.calls = block.forward, 0

        def forward(x):
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                self.release.wait(60)
            return original(x)

        monkeypatch.setattr(block, "forward", forward)


class GatedStages(StagedTracedExecutor):
    """The staged traced executor, holding the worker at subnet 1's first stage boundary
    (before the engine sees it) until released."""

    def __init__(self, model):
        super().__init__(model)
        self.entered, self.release = threading.Event(), threading.Event()

    def run_stages(self, subnet, x):
        stages = super().run_stages(subnet, x)
        if subnet == 1 and not self.entered.is_set():
            next(stages)
            self.entered.set()
            self.release.wait(60)
            yield
        return (yield from stages)


def serve(model, preempt: bool, executor="eager") -> Runtime:
    return Runtime(
        model, policy="elastic", profile=profile(), warm=False, caller_runs=False, preempt=preempt, executor=executor
    )


def tight_inside_slow(rt: Runtime, x: torch.Tensor, entered: threading.Event, release: threading.Event):
    """A loose request on the slow subnet 1, held inside its batch (`entered`) while a tight
    one arrives, then released: both results and the order they were answered in."""
    slow = rt.submit(x[0], 10_000.0)  # loose: the most accurate subnet, 1
    assert entered.wait(30)
    # due in 1.5 s: the slow batch is predicted to end at 2 s, its first block boundary
    # at about 2 s / depth
    tight = rt.submit(x[1], 1500.0)
    assert not tight.done()
    done: list[str] = []
    tight.add_done_callback(lambda f: done.append("tight"))
    slow.add_done_callback(lambda f: done.append("slow"))
    release.set()
    return tight.result(30), slow.result(30), done


@pytest.mark.parametrize("preempt", [True, False])
def test_a_tight_request_runs_between_two_blocks_of_a_long_batch(tiny_stitched, monkeypatch, preempt):
    model = tiny_stitched
    assert len(model.stage_fractions(1)) == model.family[1].depth - 1
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = [model(x[:1], 1)[0], model(x[1:], 0)[0]]
    gate = BlockGate(monkeypatch, model.family[1].blocks[0])
    with serve(model, preempt) as rt:
        if not preempt:
            slow = rt.submit(x[0], 10_000.0)
            assert gate.entered.wait(30)
            with pytest.raises(BudgetInfeasible, match="until the running batch ends"):
                rt.submit(x[1], 1500.0)
            gate.release.set()
            assert slow.result(30).subnet == 1
            return
        urgent, paused, done = tight_inside_slow(rt, x, gate.entered, gate.release)
    assert urgent.subnet == 0 and paused.subnet == 1
    assert done == ["tight", "slow"]  # answered inside the slow batch, before it resumed
    # the slow batch's forward time leaves out the pause: an identity of the clock readings
    # (its wall time covers its own forward and the urgent batch's), not a speed claim
    assert paused.exec_ms + urgent.exec_ms <= paused.latency_ms
    torch.testing.assert_close(paused.output, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(urgent.output, expected[1], rtol=0, atol=0)


def test_the_staged_traced_executor_pauses_a_long_batch_for_a_tight_request(tiny_stitched):
    model = tiny_stitched
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = [model(x[:1], 1)[0], model(x[1:], 0)[0]]
    executor = GatedStages(model)
    for subnet in (0, 1):  # traced now, not inside the slow batch (a trace takes a second or two)
        executor.warmup(subnet, 1)
    with serve(model, True, executor) as rt:
        assert rt.preempts
        urgent, paused, done = tight_inside_slow(rt, x, executor.entered, executor.release)
    assert (urgent.subnet, paused.subnet) == (0, 1) and done == ["tight", "slow"]
    torch.testing.assert_close(paused.output, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(urgent.output, expected[1], rtol=1e-5, atol=1e-5)
    assert not executor.untraceable


def test_preempt_needs_an_executor_that_can_pause(tiny_stitched):
    with pytest.raises(ConfigError, match="cannot"):
        Runtime(tiny_stitched, profile=profile(), executor="compiled", preempt=True, warm=False)


def test_by_default_a_runtime_preempts_where_executor_and_model_can_pause(tiny_stitched):
    with Runtime(tiny_stitched, profile=profile(), warm=False) as rt:
        assert rt.preempts  # eager executor, a stitched model with block boundaries
        assert rt.scheduler.block_fraction() < 1.0  # a long batch is priced by one stage
    with Runtime(tiny_stitched, profile=profile(), warm=False, preempt=False) as rt:
        assert not rt.preempts and rt.scheduler.block_fraction() == 1.0
    with Runtime(tiny_stitched, profile=profile(), executor="compiled", warm=False) as rt:
        assert not rt.preempts  # the executor runs a forward as one call: no error, no pausing


def test_by_default_a_model_that_cannot_pause_does_not_preempt(tiny_stitched, monkeypatch):
    monkeypatch.setattr(tiny_stitched, "stage_fractions", lambda subnet: ())  # as a SortedNet
    with Runtime(tiny_stitched, profile=profile(), warm=False) as rt:
        assert not rt.preempts
    with Runtime(tiny_stitched, profile=profile(), warm=False, preempt=True) as rt:
        assert rt.preempts  # asked for: a preempting scheduler, though nothing pauses


def test_two_lanes_that_preempt_end_every_request_once(tiny_stitched):
    # a smoke test of the two options together: a mixed load (budgets no subnet meets, and
    # loose ones) on two lanes that may pause their batches; every request is answered,
    # refused at submit or shed, exactly once, and closing waits for nothing
    x = torch.randn(16, 3, 32, 32)
    ended: list[int] = []
    refused = 0
    with torch.inference_mode(), serve_lanes(tiny_stitched) as rt:
        futures = []
        for i in range(60):
            try:
                future = rt.submit(x[i % 16], (5.0, 1_500.0, 5_000.0)[i % 3])
            except (BudgetInfeasible, Overloaded):
                refused += 1
                continue
            future.add_done_callback(lambda f, i=i: ended.append(i))
            futures.append(future)
        assert not wait(futures, timeout=60).not_done
    assert len(ended) == len(set(ended)) == len(futures) == 60 - refused


def serve_lanes(model) -> Runtime:
    return Runtime(model, policy="elastic", profile=profile(), warm=False, lanes=2, preempt=True)
