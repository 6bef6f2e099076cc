"""Every executor gives the eager outputs; profiles are measured through the executor in use."""

import threading

import pytest
import torch

from elastic.builders.stages import run_in_stages
from elastic.errors import ConfigError
from elastic.serving import Result, Runtime, measure_latency
from elastic.serving.executor import EXECUTORS, EagerExecutor, Executor, make_executor, takes_check

SUBNETS = (0, 5, 20)  # an anchor and two stitched paths


def eager(model, subnet, x):
    with torch.inference_mode():
        return model(x, subnet=subnet)


# (name, options, subnets, batch sizes): "aot_eager" traces and runs the captured graph
# without code generation; inductor generates and compiles C++ (about half a minute per
# graph on two cores), so it checks one stitched subnet at two buckets.
CASES = [
    ("eager", {}, SUBNETS, (1, 3, 8)),
    ("process", {"rows": 2}, SUBNETS, (1, 3, 8)),  # buffers grow from 2 rows to 8
    ("traced", {}, SUBNETS, (1, 3, 8)),  # traced at 2 rows, run at others
    ("traced_staged", {}, SUBNETS, (1, 3, 8)),  # one graph per stage, chained
    pytest.param("compiled", {"backend": "aot_eager"}, (0, 20), (1, 3), marks=pytest.mark.slow),
    pytest.param("compiled", {"backend": "inductor"}, (20,), (1, 3), marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "options", "subnets", "batches"), CASES)
def test_every_executor_gives_the_eager_outputs(served_model, name, options, subnets, batches):
    executor = make_executor(name, served_model, "cpu", **options)
    for subnet in subnets:
        for b in batches:  # 3 is padded to the bucket of 4 by the compiled executor
            x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b))
            executor.warmup(subnet, b)
            torch.testing.assert_close(executor.run(subnet, x), eager(served_model, subnet, x), atol=1e-4, rtol=1e-4)
    executor.close()


def test_the_compiled_executor_pads_to_buckets_and_compiles_once_per_bucket(served_model):
    executor = make_executor("compiled", served_model, backend="aot_eager", buckets=(1, 4))
    assert [executor.bucket(b) for b in (1, 2, 3, 4, 5)] == [1, 4, 4, 4, 5]
    x = torch.randn(2, 3, 32, 32)
    assert executor.run(0, x).shape == (2, 10)
    assert set(executor._compiled) == {0}
    with pytest.raises(ConfigError):
        make_executor("compiled", served_model, buckets=(0,))


def test_the_runtime_serves_through_the_compiled_executor(served_model, served_profile):
    with Runtime(
        served_model, profile=served_profile, executor="compiled", executor_options={"backend": "aot_eager"}
    ) as rt:
        x = torch.randn(3, 32, 32)
        result = rt.infer(x, 60_000.0)
        assert isinstance(result, Result)
        torch.testing.assert_close(
            result.output, eager(served_model, result.subnet, x.unsqueeze(0))[0], atol=1e-4, rtol=1e-4
        )
        assert rt.executor.name == "compiled"


def test_the_runtime_serves_through_the_traced_executor(served_model, served_profile):
    with Runtime(served_model, profile=served_profile, executor="traced") as rt:
        x = torch.randn(3, 32, 32)
        result = rt.infer(x, 60_000.0)
        torch.testing.assert_close(
            result.output, eager(served_model, result.subnet, x.unsqueeze(0))[0], atol=1e-5, rtol=1e-5
        )
        assert rt.executor.name == "traced" and not rt.executor.untraceable


def test_a_traced_graph_shares_the_models_parameters(served_model):
    executor = make_executor("traced", served_model)
    x = torch.randn(2, 3, 32, 32)
    before = executor.run(0, x)
    weight = served_model.family[0].model.head.weight
    with torch.no_grad():
        weight.add_(1.0)  # a change to the model's own weights reaches the graph: nothing was copied
        try:
            changed = executor.run(0, x)
            torch.testing.assert_close(changed, eager(served_model, 0, x))
        finally:
            weight.sub_(1.0)
    assert not torch.allclose(changed, before)


@pytest.mark.parametrize("name", ["traced", "traced_staged"])
def test_a_traced_warmup_checks_every_size_up_to_its_batch(served_model, monkeypatch, name):
    # a live batch of an unchecked size would run twice (graph, then eager) and pay TorchScript's
    # first-run profiling, where no prediction expects it: warm-up does that work instead
    executor = make_executor(name, served_model)
    executor.warmup(5, 4)
    assert {(5, b) for b in range(1, 5)} <= executor._checked and (5, 5) not in executor._checked
    compared = []
    monkeypatch.setattr(executor, "_agreed", lambda subnet, x, y: compared.append(x.shape[0]) or y)
    for b in range(1, 5):
        x = torch.randn(b, 3, 32, 32)
        torch.testing.assert_close(executor.run(5, x), eager(served_model, 5, x))
    assert compared == []


def test_a_graph_that_differs_from_eager_is_dropped_for_the_eager_forward(served_model, caplog):
    executor = make_executor("traced", served_model)
    (graph,) = executor.trace(5)

    class Off(torch.nn.Module):  # what a trace that took another Python branch would compute
        def forward(self, x):
            return graph(x) + 1.0

    executor._graphs[5] = [Off()]
    x = torch.randn(3, 3, 32, 32)
    with caplog.at_level("WARNING", logger="elastic.serving.traced_executor"):
        torch.testing.assert_close(executor.run(5, x), eager(served_model, 5, x))
    assert executor.untraceable == {5} and "differs from its eager forward" in caplog.text
    torch.testing.assert_close(executor.run(5, x[:1]), eager(served_model, 5, x[:1]))  # eager from now on
    assert (5, 1) not in executor._checked  # and not compared with itself
    with pytest.raises(ConfigError, match="trace_batch"):
        make_executor("traced", served_model, trace_batch=0)


@pytest.mark.parametrize("subnet", SUBNETS)
def test_the_staged_traced_executor_pauses_where_the_eager_forward_does(served_model, subnet, drain):
    executor = make_executor("traced_staged", served_model)
    assert executor.pausable and len(executor.trace(subnet)) == len(served_model.stage_fractions(subnet)) + 1 > 1
    for b in (1, 3):  # the first batch of a size is compared with eager, the second is not
        x = torch.randn(b, 3, 32, 32)
        with torch.inference_mode():
            for _ in range(2):
                y, pauses = drain(executor.run_stages(subnet, x))
                torch.testing.assert_close(y, eager(served_model, subnet, x), atol=1e-5, rtol=1e-5)
                assert pauses == len(served_model.stage_fractions(subnet))
    assert not executor.untraceable


def test_a_staged_graph_that_differs_from_eager_is_dropped_for_the_eager_staged_forward(served_model, caplog, drain):
    executor = make_executor("traced_staged", served_model)
    graphs = executor.trace(20)

    class Off(torch.nn.Module):
        def forward(self, x):
            return graphs[-1](x) + 1.0

    executor._graphs[20] = [*graphs[:-1], Off()]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode(), caplog.at_level("WARNING", logger="elastic.serving.traced_executor"):
        y, _ = drain(executor.run_stages(20, x))
        torch.testing.assert_close(y, eager(served_model, 20, x))
        assert executor.untraceable == {20} and "differs from its eager forward" in caplog.text
        y, pauses = drain(executor.run_stages(20, x[:1]))  # the eager staged forward from now on
    torch.testing.assert_close(y, eager(served_model, 20, x[:1]))
    assert pauses == len(served_model.stage_fractions(20))


def test_a_model_that_lists_no_stage_pieces_runs_its_pausing_subnets_eagerly(served_model, monkeypatch, caplog, drain):
    # a model with a staged forward of its own that does not list its stages
    pieces = type(served_model).stage_pieces
    staged = lambda self, x, subnet=0, check=True: run_in_stages(x, pieces(self, subnet))  # noqa: E731
    monkeypatch.setattr(type(served_model), "forward_stages", staged)
    monkeypatch.setattr(type(served_model), "stage_pieces", lambda self, subnet=0: None)
    executor = make_executor("traced_staged", served_model)
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level("WARNING", logger="elastic.serving.traced_executor"):
        torch.testing.assert_close(executor.run(5, x), eager(served_model, 5, x))
    assert executor.untraceable == {5} and "lists no stage pieces" in caplog.text
    with torch.inference_mode():
        y, pauses = drain(executor.run_stages(5, x))
    torch.testing.assert_close(y, eager(served_model, 5, x))
    assert pauses == len(served_model.stage_fractions(5))


def test_the_runtime_pauses_batches_under_the_staged_traced_executor(served_model, served_profile):
    with Runtime(served_model, profile=served_profile, executor="traced_staged") as rt:
        assert rt.preempts  # the executor can pause
        x = torch.randn(3, 32, 32)
        result = rt.infer(x, 60_000.0)
        torch.testing.assert_close(
            result.output, eager(served_model, result.subnet, x.unsqueeze(0))[0], atol=1e-5, rtol=1e-5
        )


class CountingExecutor(EagerExecutor):
    """The eager forward, counting what ran through it."""

    name = "counting"

    def __init__(self, model, device="cpu"):
        super().__init__(model, device)
        self.runs: list[tuple[int, int]] = []
        self.warmed: list[tuple[int, int]] = []

    def run(self, subnet, x):
        self.runs.append((subnet, x.shape[0]))
        return super().run(subnet, x)

    def warmup(self, subnet, batch):
        self.warmed.append((subnet, batch))
        super().warmup(subnet, batch)


def test_profiles_are_measured_through_the_executor(served_model):
    counting = CountingExecutor(served_model)
    profile = measure_latency(
        served_model, torch.zeros(3, 32, 32), (1, 2), "cpu", repeats=2, warmup=0, subnets=[0, 1], executor=counting
    )
    assert sorted(counting.warmed) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert len(counting.runs) == 4 * 2 + 4  # timed runs + the warmups' own runs
    assert profile.meta["executor"] == "counting"


def test_the_runtime_profiles_on_its_worker_through_its_executor(served_model):
    counting = CountingExecutor(served_model)
    with Runtime(served_model, max_batch_size=2, executor=counting) as rt:
        rt.profile(torch.zeros(3, 32, 32), batch_sizes=(1, 2), repeats=1, warmup=0)
        assert counting.warmed and rt.latency_profile.meta["executor"] == "counting"
        assert isinstance(rt.infer(torch.randn(3, 32, 32), 60_000.0), Result)


def test_executor_registry_and_errors(served_model):
    assert {"eager", "compiled", "traced"} <= set(EXECUTORS)
    instance = EagerExecutor(served_model)
    assert make_executor(instance, served_model) is instance
    assert isinstance(make_executor("eager", served_model), Executor)
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("bogus", served_model)


def test_the_eager_executor_leaves_the_input_check_to_the_runtime(served_model, monkeypatch):
    # the runtime checks every sample at submit, so the engine's forwards skip the model's
    # second pass over the batch (plain and staged); called directly, the model still checks
    checks = []
    monkeypatch.setattr(type(served_model), "check_input", lambda self, x: checks.append(tuple(x.shape)))
    x = torch.randn(2, 3, 32, 32)
    executor = EagerExecutor(served_model)
    y = executor.run(20, x)
    with torch.inference_mode():
        staged, pauses = executor.run_stages(20, x), 0
        while True:
            try:
                next(staged)
                pauses += 1
            except StopIteration as stop:
                torch.testing.assert_close(stop.value, y)
                break
    assert pauses == len(served_model.stage_fractions(20)) > 0
    assert checks == []
    served_model(x, subnet=20)
    assert checks == [(2, 3, 32, 32)]


def test_the_eager_staged_forward_builds_each_subnets_stages_once(served_model, monkeypatch, drain):
    # the same logits and pauses as the model's own staged forward, batch after batch, with
    # the stage functions built once per subnet; a staged forward patched in later runs as is
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = {s: drain(served_model.forward_stages(x, s)) for s in (20, 5)}
    built = []
    pieces = type(served_model).stage_pieces
    monkeypatch.setattr(type(served_model), "stage_pieces", lambda self, s=0: built.append(s) or pieces(self, s))
    executor = EagerExecutor(served_model)
    with torch.inference_mode():
        for subnet in (20, 5, 20, 5):
            y, pauses = drain(executor.run_stages(subnet, x))
            assert torch.equal(y, expected[subnet][0]) and pauses == expected[subnet][1] > 0
        assert built == [20, 5]

        def whole(x, subnet=0):
            return served_model.forward(x, subnet=subnet) + 1.0
            yield  # unreachable: never pauses

        monkeypatch.setattr(served_model, "forward_stages", whole)
        y, pauses = drain(executor.run_stages(20, x))
    torch.testing.assert_close(y, served_model(x, subnet=20) + 1.0)
    assert pauses == 0 and built == [20, 5]


def test_a_forward_without_the_check_keyword_is_not_told_to_skip_it(served_model, monkeypatch):
    # one patched in after the executor was built included: its signature is read per function
    x = torch.randn(1, 3, 32, 32)
    executor = EagerExecutor(served_model)
    executor.run(20, x)
    seen = []

    def older(x, subnet=0):  # no `check` keyword
        seen.append(subnet)
        return torch.zeros(x.shape[0], 10)

    monkeypatch.setattr(served_model, "forward", older)
    executor.run(20, x)
    assert seen == [20]
    assert not takes_check(older) and takes_check(type(served_model).forward)


class _Recording(EagerExecutor):
    """Records (thread, subnet, batch) of every forward."""

    def __init__(self, model, fail: bool = False):
        super().__init__(model)
        self.runs: list[tuple[str, int, int]] = []
        self.fail = fail

    def run(self, subnet, x):
        self.runs.append((threading.current_thread().name, subnet, x.shape[0]))
        if self.fail:
            raise RuntimeError("this model cannot run")
        return super().run(subnet, x)


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_runtime_given_a_profile_warms_every_candidate_on_each_worker_first(served_model, served_profile, lanes):
    executor = _Recording(served_model)
    with Runtime(served_model, max_batch_size=4, profile=served_profile, executor=executor, lanes=lanes) as rt:
        warmed = set(executor.runs)  # all before the constructor returned
        workers = {e._worker.name for e in rt._engines}
        assert warmed == {(w, sid, b) for w in workers for sid in rt.candidates for b in (1, 4)}
    cold = _Recording(served_model)
    with Runtime(served_model, max_batch_size=4, profile=served_profile, executor=cold, warm=False):
        assert cold.runs == []


def test_a_model_that_cannot_warm_up_fails_the_constructor_and_leaves_no_thread(served_model, served_profile):
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="cannot run"):
        Runtime(served_model, profile=served_profile, executor=_Recording(served_model, fail=True))
    assert set(threading.enumerate()) - before == set()  # close() joined the worker and the watchdog
