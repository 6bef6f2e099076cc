"""StreamServer: batched steps across streams, each stream exactly its solo output; typed errors; close semantics."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import elastic.streaming as es
from elastic.errors import ExecutionError, InvalidInput, Overloaded, StreamError
from elastic.serving.streams import StreamServer


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_net() -> es.StreamingModule:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True)
    return es.Sequential(
        es.Conv1d(3, 8, 3, padding=1),
        es.convert(nn.ReLU()),
        es.Conv1d(8, 8, 2, stride=2),
        es.RecyclingPositionalEncoding(8, 9),
        es.convert(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), window=4),
    ).eval()


def solo(module, frames):
    state = module.init_state(1, frames[0].shape)
    outs = []
    with torch.inference_mode():
        for f in frames:
            y, state = module.step(f.unsqueeze(0), state)
            outs.append(None if y is None else y[0])
    return outs


def assert_same(got, want):
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want, strict=True):
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-6, rtol=0)


def test_concurrent_streams_batched_each_get_their_solo_output():
    net = make_net()
    n_streams, n_frames = 6, 14
    frames = {i: [torch.randn(3) for _ in range(n_frames)] for i in range(n_streams)}
    results: dict[int, list] = {}
    with StreamServer(net, (3,), max_batch_size=4) as server:
        barrier = threading.Barrier(n_streams)

        def client(i: int) -> None:
            start = i % 3  # streams join at different frames of the run
            with server.open_stream(f"cam{i}") as stream:
                barrier.wait()
                futures = [stream.push(f) for f in frames[i][start:]]
                results[i] = [f.result(timeout=30) for f in futures]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n_streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.steps == sum(n_frames - i % 3 for i in range(n_streams))
        assert server.batches < server.steps  # steps of different streams shared batches
        assert server.open_streams == []
    for i in range(n_streams):
        assert_same(results[i], solo(net, frames[i][i % 3 :]))


def test_bad_frame_is_a_typed_error_for_that_stream_only():
    net = make_net()
    with StreamServer(net, (3,)) as server:
        a, b = server.open_stream(), server.open_stream()
        fa = [torch.randn(3) for _ in range(10)]
        fb = [torch.randn(3) for _ in range(10)]
        out_a, out_b = [], []
        for t in range(10):
            out_a.append(a.push(fa[t]))
            if t == 3:
                with pytest.raises(InvalidInput):
                    b.push(torch.randn(5))
                with pytest.raises(InvalidInput):
                    b.push(torch.tensor([0.0, float("inf"), 1.0]))
            out_b.append(b.push(fb[t]))
        assert_same([f.result(10) for f in out_a], solo(net, fa))
        assert_same([f.result(10) for f in out_b], solo(net, fb))


def test_closed_streams_and_servers_raise_typed_errors():
    server = StreamServer(make_net(), (3,))
    s = server.open_stream("x")
    with pytest.raises(StreamError):
        server.open_stream("x")
    s.close()
    assert s.closed
    with pytest.raises(StreamError):
        s.push(torch.randn(3))
    server.close()
    with pytest.raises(Overloaded):
        server.open_stream()


def test_close_without_drain_resolves_every_future():
    gate, entered = threading.Event(), threading.Event()
    net = make_net()
    inner = net.step_masked

    def slow(*args):
        entered.set()
        gate.wait(10)
        return inner(*args)

    net.step_masked = slow  # hold the worker in its first batch
    server = StreamServer(net, (3,), max_batch_size=1)
    s = server.open_stream()
    futures = [s.push(torch.randn(3)) for _ in range(5)]
    assert entered.wait(10)  # the first frame is running
    closer = threading.Thread(target=server.close, kwargs={"drain": False})
    closer.start()
    gate.set()
    closer.join(10)
    outcomes = [f.exception(10) for f in futures]
    assert outcomes[0] is None  # the running batch finished
    assert all(isinstance(e, Overloaded) for e in outcomes[1:])


def test_stream_close_drains_its_queue_then_leaves():
    net = make_net()
    with StreamServer(net, (3,)) as server:
        s = server.open_stream()
        frames = [torch.randn(3) for _ in range(8)]
        futures = [s.push(f) for f in frames]
        s.close(drain=True)
        assert_same([f.result(10) for f in futures], solo(net, frames))
        assert s.id not in server.streams


def test_failed_step_is_an_execution_error_and_the_server_goes_on():
    net = make_net()
    server = StreamServer(net, (3,))
    s = server.open_stream()
    inner = net.step_masked
    net.step_masked = lambda *a: (_ for _ in ()).throw(RuntimeError("kernel died"))
    with pytest.raises(ExecutionError):
        s.push(torch.randn(3)).result(10)
    net.step_masked = inner
    frames = [torch.randn(3) for _ in range(6)]
    assert_same([s.push(f).result(10) for f in frames], solo(net, frames))  # the failed frame left no trace
    server.close()


def test_a_cancelled_frame_is_not_stepped():
    net = make_net()
    gate = threading.Event()
    inner = net.step_masked

    def held(*args):
        gate.wait(10)
        return inner(*args)

    net.step_masked = held
    with StreamServer(net, (3,), max_batch_size=1) as server:
        s = server.open_stream()
        frames = [torch.randn(3) for _ in range(6)]
        first = s.push(frames[0])  # the worker holds this batch until the gate opens
        dropped = s.push(torch.randn(3))
        assert dropped.cancel()  # still queued, so it can be cancelled
        rest = [s.push(f) for f in frames[1:]]
        gate.set()
        got = [first.result(10)] + [f.result(10) for f in rest]
    net.step_masked = inner
    assert_same(got, solo(net, frames))


def test_elastic_encoder_picks_a_subnet_per_stream_and_step(served_model):
    """Streams with an elastic frame encoder: a loose budget gets the most accurate subnet, a budget no
    subnet makes gets the fastest, and each stream's outputs equal stepping its own encoded frames."""
    from elastic.serving import LatencyProfile

    enc = served_model
    ids = [0, 1, 2]  # the three anchors, cheapest first
    table = {sid: {1: 1.0 + 10 * i, 8: 2.0 + 20 * i} for i, sid in enumerate(ids)}
    profile = LatencyProfile.from_table(table)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(10, 2, 16, dropout=0.0, batch_first=True)
    head = es.Sequential(
        es.Conv1d(10, 10, 2), es.convert(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), window=3)
    ).eval()
    frames = {name: [torch.randn(3, 32, 32) for _ in range(6)] for name in ("loose", "tight")}
    with StreamServer(head, (10,), encoder=enc, profile=profile, encoder_input_shape=(3, 32, 32)) as server:
        loose = server.open_stream("loose", budget_ms=1e6)
        tight = server.open_stream("tight", budget_ms=1e-3)
        futures = {s.id: [s.push(f) for f in frames[s.id]] for s in (loose, tight)}
        outs = {sid: [f.result(60) for f in fs] for sid, fs in futures.items()}
        with pytest.raises(InvalidInput):
            loose.push(torch.randn(10))  # the encoder's input shape, not the head's
        used = {"loose": loose.subnets, "tight": tight.subnets}
    best = max(ids, key=lambda sid: enc.subnets()[sid].accuracy)
    assert used["loose"] == [best] * 6 and used["tight"] == [ids[0]] * 6
    for name in ("loose", "tight"):
        with torch.inference_mode():
            feats = [enc(f.unsqueeze(0), subnet=s)[0] for f, s in zip(frames[name], used[name], strict=True)]
        assert_same(outs[name], solo(head, feats))
