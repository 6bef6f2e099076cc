"""StreamSet: streams that join late, leave early and share batches each get exactly their solo output."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import elastic.streaming as es
from elastic.errors import ExecutionError, InvalidInput, StreamError


def strided_net() -> es.StreamingModule:
    torch.manual_seed(0)
    return es.Sequential(
        es.Conv1d(3, 4, 3, padding=1),
        es.convert(nn.GELU()),
        es.Conv1d(4, 4, 3, stride=2),
        es.AvgPool1d(2, stride=1),
        es.Residual(es.Conv1d(4, 4, 3, padding=1)),
    ).eval()


def encoder_net() -> es.StreamingModule:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return es.Sequential(es.Conv1d(3, 8, 1), es.RecyclingPositionalEncoding(8, 7), es.convert(enc, window=4)).eval()


def solo(module: es.StreamingModule, frames: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """One stream alone, batch 1: the output (or None) of each of its frames."""
    state = module.init_state(1, frames[0].shape)
    outs = []
    with torch.inference_mode():
        for f in frames:
            y, state = module.step(f.unsqueeze(0), state)
            outs.append(None if y is None else y[0])
    return outs


def assert_same_outputs(got: list, want: list) -> None:
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want, strict=True):
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [strided_net, encoder_net], ids=["strided_conv", "pe_encoder2"])
def test_join_late_leave_early_batched_equals_solo(make):
    module = make()
    rng = random.Random(0)
    streams = es.StreamSet(module, (3,), capacity=2)  # small: the pool has to grow
    ticks = 40
    plan = {}  # name -> (join tick, leave tick)
    for i in range(7):
        join = rng.randrange(0, 20)
        plan[f"s{i}"] = (join, rng.randrange(join + 14, ticks + 1))
    frames = {name: [] for name in plan}
    outputs = {name: [] for name in plan}
    batch_sizes = []
    for tick in range(ticks):
        for name, (join, leave) in plan.items():
            if tick == join:
                assert streams.open(name) == name
            if tick == leave:
                streams.close(name)
        sending = {}
        for name, (join, leave) in plan.items():
            if join <= tick < leave and rng.random() < 0.8:  # a stream may skip a tick
                frame = torch.randn(3)
                frames[name].append(frame)
                sending[name] = frame
        res = streams.step(sending)
        assert not res.errors and set(res.outputs) == set(sending)
        batch_sizes.append(res.batch_size)
        for name, y in res.outputs.items():
            outputs[name].append(y)
    assert max(batch_sizes) >= 4  # streams really shared batches
    for name in plan:
        assert_same_outputs(outputs[name], solo(module, frames[name]))
        assert any(y is not None for y in outputs[name])


def test_bad_frames_fail_only_their_stream():
    module = strided_net()
    streams = es.StreamSet(module, (3,))
    a, b = streams.open(), streams.open()
    good = {a: [], b: []}
    outs = {a: [], b: []}
    bad_frames = [torch.randn(4), torch.full((3,), float("nan")), "frame", torch.randn(1, 3)]
    for tick in range(12):
        fa, fb = torch.randn(3), torch.randn(3)
        send = {a: fa, b: fb}
        if tick % 3 == 1:
            send[b] = bad_frames[(tick // 3) % len(bad_frames)]
        res = streams.step(send)
        good[a].append(fa)
        outs[a].append(res.outputs[a])
        if tick % 3 == 1:
            assert isinstance(res.errors[b], InvalidInput) and b not in res.outputs
        else:
            good[b].append(fb)
            outs[b].append(res.outputs[b])
    # a never noticed; b's rejected frames left its state as it was
    assert_same_outputs(outs[a], solo(module, good[a]))
    assert_same_outputs(outs[b], solo(module, good[b]))


def test_unknown_and_closed_streams_are_typed_errors():
    streams = es.StreamSet(strided_net(), (3,))
    a = streams.open()
    with pytest.raises(StreamError):
        streams.open(a)
    res = streams.step({a: torch.randn(3), "ghost": torch.randn(3)})
    assert isinstance(res.errors["ghost"], StreamError) and a in res.outputs
    streams.close(a)
    with pytest.raises(StreamError):
        streams.close(a)
    assert isinstance(streams.step({a: torch.randn(3)}).errors[a], StreamError)


def test_a_failed_batch_fails_its_streams_and_moves_no_state(monkeypatch):
    module = strided_net()
    streams = es.StreamSet(module, (3,))
    a = streams.open()
    frames = [torch.randn(3) for _ in range(8)]
    outs = [streams.step({a: f}).outputs[a] for f in frames[:4]]

    def boom(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(module, "step_masked", boom)
    res = streams.step({a: torch.randn(3)})
    assert isinstance(res.errors[a], ExecutionError) and isinstance(res.errors[a].__cause__, RuntimeError)
    monkeypatch.undo()
    outs += [streams.step({a: f}).outputs[a] for f in frames[4:]]
    assert_same_outputs(outs, solo(module, frames))


def test_rows_are_reused_after_leaving():
    streams = es.StreamSet(strided_net(), (3,), capacity=2)
    a, b = streams.open(), streams.open()
    for _ in range(5):
        streams.step({a: torch.randn(3), b: torch.randn(3)})
    streams.close(a)
    c = streams.open()  # takes a's row, fresh
    frames = [torch.randn(3) for _ in range(6)]
    got = [streams.step({c: f, b: torch.randn(3)}).outputs[c] for f in frames]
    assert_same_outputs(got, solo(streams.module, frames))
    assert streams.streams == [b, c] and len(streams) == 2


def test_large_finite_frames_are_not_rejected():
    """The batched finite check sums the frames: an overflow to inf must not reject finite frames."""
    streams = es.StreamSet(es.convert(nn.ReLU()), (3,))
    a, b = streams.open(), streams.open()
    big = torch.full((3,), 3e38)
    res = streams.step({a: big, b: big.clone()})
    assert not res.errors
    torch.testing.assert_close(res.outputs[a], big, atol=0, rtol=0)
    res = streams.step({a: big, b: torch.tensor([1.0, float("inf"), -float("inf")])})
    assert set(res.errors) == {b} and isinstance(res.errors[b], InvalidInput) and a in res.outputs


class _ModeProbe(es.StreamingModule):
    """Records whether each step ran in inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    delay, receptive_field = 0, 1

    def step_masked(self, x, state, valid):
        self.modes.append(torch.is_inference_mode_enabled())
        return x, valid, state


def test_steps_run_in_inference_mode_whether_or_not_the_caller_is():
    probe = _ModeProbe()
    streams = es.StreamSet(probe, (2,))
    a = streams.open()
    streams.step({a: torch.randn(2)})
    with torch.inference_mode():
        streams.step({a: torch.randn(2)})
    with torch.no_grad():
        streams.step({a: torch.randn(2)})
    assert probe.modes == [True, True, True]
