"""Streams through a Runtime: the runtime encodes every frame (its scheduler picks the subnet), the
StreamServer steps the continual head in each stream's push order, batched across streams.

Real parts: the tiny StitchedNet of the serving tests behind a real `Runtime`, a real continual
head. One test drives the ordering with a hand-held runtime (futures the test resolves out of
order), the way the scheduler tests drive a clock: out-of-order completion cannot be forced on
a real engine.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import torch
from gate import patch_forward  # sibling helper module
from test_streams import solo  # sibling test module: one stream stepped alone
from torch import nn

import elastic.streaming as es
from elastic.errors import BudgetInfeasible, ConfigError, ExecutionError, InvalidInput, Overloaded
from elastic.serving import ElasticPolicy, LatencyProfile, Runtime
from elastic.serving.request import Result
from elastic.serving.streams import StreamServer, close_streams, open_stream

CLASSES = 10  # the tiny StitchedNet's outputs: the head's frames


def make_head() -> es.StreamingModule:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(CLASSES, 2, 16, dropout=0.0, activation="gelu", batch_first=True)
    return es.Sequential(
        es.Conv1d(CLASSES, CLASSES, 2),
        es.RecyclingPositionalEncoding(CLASSES, 7),
        es.convert(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), window=3),
    ).eval()


def encoded(model, frames, subnet):
    with torch.inference_mode():
        return [model(f.unsqueeze(0), subnet=subnet)[0] for f in frames]


def assert_same(got, want):
    """As test_streams' check, at 1e-5: frames encoded in runtime batches vs one by one."""
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want, strict=True):
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def wait_until(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_streams_through_a_static_runtime_each_get_their_solo_output(served_model, served_profile):
    """Several streams from threads, one runtime: every stream's outputs are stepping its own encoded
    frames alone; the continual steps of different streams share batches."""
    head = make_head()
    n_streams, n_frames = 4, 8
    frames = {i: [torch.randn(3, 32, 32) for _ in range(n_frames)] for i in range(n_streams)}
    gate, entered = threading.Event(), threading.Event()
    inner = head.step_masked

    def held(*args):  # hold the worker in its first batch so every stream's next frame is ready together
        entered.set()
        gate.wait(30)
        return inner(*args)

    with Runtime(served_model, max_batch_size=8, policy="static:5", profile=served_profile) as rt:
        head.step_masked = held
        streams = [rt.open_stream(head, budget_ms=1e6, stream_id=f"cam{i}") for i in range(n_streams)]
        server = streams[0]._server
        futures = {i: [streams[i].push(frames[i][0])] for i in range(n_streams)}
        assert entered.wait(30)
        for i in range(n_streams):
            futures[i] += [streams[i].push(f) for f in frames[i][1:]]
        wait_until(lambda: all(q.pending and q.pending[0].ready() for q in server._queues.values()))
        gate.set()
        outs = {i: [f.result(60) for f in futures[i]] for i in range(n_streams)}
        assert all(s.subnets == [5] * n_frames for s in streams)
        assert server.steps == n_streams * n_frames and server.batches < server.steps
        close_streams(rt)
    head.step_masked = inner
    for i in range(n_streams):
        assert_same(outs[i], solo(head, encoded(served_model, frames[i], 5)))


def test_elastic_policy_picks_a_subnet_per_frame_and_reports_it(served_model):
    """The runtime's elastic policy chooses each frame's subnet from its budget; the stream reports them
    in order, and its outputs are stepping the frames each encoded by its own subnet."""
    profile = LatencyProfile.from_table({0: {1: 1.0, 8: 2.0}, 2: {1: 1e6, 8: 2e6}})
    cheap, best = 0, 2  # accuracies rise with FLOPs: anchor 2 is the most accurate
    head = make_head()
    frames = [torch.randn(3, 32, 32) for _ in range(6)]
    budgets = [100.0, 100.0, 100.0, 1e9, 1e9, 1e9]  # only the cheap subnet makes 100 ms by the profile
    # the default busy-period price: one client waits for each frame, so nothing ever
    # arrives while a batch runs and the 1e6 ms subnet is not priced out
    policy = ElasticPolicy()
    with Runtime(served_model, max_batch_size=4, profile=profile, policy=policy) as rt:
        stream = open_stream(rt, head)
        outs = [stream.push(f, budget_ms=b).result(60) for f, b in zip(frames, budgets, strict=True)]
        used = stream.subnets
        close_streams(rt)
    assert used == [cheap] * 3 + [best] * 3
    feats = [encoded(served_model, [f], s)[0] for f, s in zip(frames, used, strict=True)]
    assert_same(outs, solo(head, feats))


def test_refused_and_failed_encodings_are_typed_errors_and_skipped(served_model, served_profile, monkeypatch):
    """A frame the runtime refuses (BudgetInfeasible) or whose encoding fails (ExecutionError) resolves with
    that error; the stream skips it (its state does not move) and the other stream is unaffected."""
    head = make_head()
    fa = [torch.randn(3, 32, 32) for _ in range(7)]
    fb = [torch.randn(3, 32, 32) for _ in range(7)]
    forward = served_model.forward
    broken = threading.Event()

    def failing(x, subnet):
        if broken.is_set():
            raise RuntimeError("encoder died")
        return forward(x, subnet)

    patch_forward(monkeypatch, served_model, failing)
    with Runtime(served_model, max_batch_size=4, policy="static:0", profile=served_profile, warm=False) as rt:
        a, b = open_stream(rt, head, budget_ms=1e6), open_stream(rt, head, budget_ms=1e6)
        out_a, out_b, kept_a = [], [], []
        for t in range(7):
            if t == 2:
                refused = a.push(fa[t], budget_ms=1e-6)  # no subnet finishes in 1 ns
                assert isinstance(refused.exception(10), BudgetInfeasible)
            elif t == 4:
                broken.set()
                failed = a.push(fa[t])
                assert isinstance(failed.exception(30), ExecutionError)
                broken.clear()
            else:
                out_a.append(a.push(fa[t]).result(30))
                kept_a.append(fa[t])
            out_b.append(b.push(fb[t]).result(30))
        with pytest.raises(InvalidInput):
            a.push(torch.randn(3, 16, 16))  # not the encoder's input: raised at push
        assert a.skipped == 2 and b.skipped == 0
        assert len(a.subnets) == 5
        close_streams(rt)
    assert_same(out_a, solo(head, encoded(served_model, kept_a, 0)))
    assert_same(out_b, solo(head, encoded(served_model, fb, 0)))


def test_closing_drains_or_fails_every_future(served_model, served_profile):
    head = make_head()
    frames = [torch.randn(3, 32, 32) for _ in range(6)]
    with Runtime(served_model, max_batch_size=4, policy="static:0", profile=served_profile) as rt:
        s = open_stream(rt, head, budget_ms=1e6)
        drained = [s.push(f) for f in frames]
        close_streams(rt, drain=True)  # steps every pushed frame (their encodings still run), then stops
        assert all(f.done() for f in drained)
        assert_same([f.result() for f in drained], solo(head, encoded(served_model, frames, 0)))
        with pytest.raises(Overloaded):
            s.push(frames[0])

        s2 = open_stream(rt, head, budget_ms=1e6)  # a fresh server for the module
        pending = [s2.push(f) for f in frames]
        close_streams(rt, drain=False)
        outcomes = [f.exception(30) for f in pending]  # every future ended: an output or Overloaded
        assert all(e is None or isinstance(e, Overloaded) for e in outcomes)


def test_one_server_per_module_and_options_fixed(served_model, served_profile):
    head, other = make_head(), make_head()
    with Runtime(served_model, max_batch_size=4, policy="static:0", profile=served_profile) as rt:
        a = open_stream(rt, head, max_batch_size=8)
        b = open_stream(rt, head)
        c = open_stream(rt, other)
        assert a._server is b._server and c._server is not a._server
        assert a._server.streams.frame_shape == (CLASSES,)  # found from the runtime's model
        with pytest.raises(ConfigError):
            open_stream(rt, head, max_batch_size=4)
        close_streams(rt)
        assert a.closed and c.closed


class HandRuntime:
    """A runtime whose encodings the test resolves, in any order (the `submit` contract only)."""

    def __init__(self) -> None:
        self.futures: list[Future] = []

    def submit(self, x, budget_ms):
        future: Future = Future()
        self.futures.append((future, x))
        return future

    def finish(self, i: int, subnet: int = 0) -> None:
        future, x = self.futures[i]
        future.set_result(Result(output=x * 1.0, subnet=subnet, queue_ms=0, exec_ms=0, latency_ms=0, met_budget=True))


def test_a_streams_steps_run_in_push_order_when_encodings_finish_out_of_order():
    head = es.Sequential(es.Conv1d(2, 2, 3), es.Conv1d(2, 2, 2)).eval()
    rt = HandRuntime()
    frames = [torch.randn(2) for _ in range(6)]
    with StreamServer(head, (2,), runtime=rt) as server:
        s = server.open_stream(budget_ms=1e6)
        futures = [s.push(f) for f in frames]
        for i in (3, 5, 1, 4):  # later frames end first: none can be stepped before frame 0
            rt.finish(i, subnet=i)
        time.sleep(0.05)
        assert not any(f.done() for f in futures)
        rt.futures[2][0].set_exception(Overloaded("shed"))  # a shed frame fails at once, out of order
        assert isinstance(futures[2].exception(10), Overloaded)
        rt.finish(0, subnet=0)
        got = [futures[i].result(10) for i in (0, 1, 3, 4, 5)]
        assert s.subnets == [0, 1, 3, 4, 5] and s.skipped == 1
    assert_same(got, solo(head, [frames[i] for i in (0, 1, 3, 4, 5)]))


def test_closing_the_runtime_drains_its_streams_first(served_model, served_profile):
    head = make_head()
    frames = [torch.randn(3, 32, 32) for _ in range(5)]
    rt = Runtime(served_model, max_batch_size=4, policy="static:0", profile=served_profile)
    s = rt.open_stream(head, budget_ms=1e6)
    pushed = [s.push(f) for f in frames]
    rt.close()  # drains: every frame is encoded and stepped before the engine stops
    assert s.closed
    assert_same([f.result(0) for f in pushed], solo(head, encoded(served_model, frames, 0)))
