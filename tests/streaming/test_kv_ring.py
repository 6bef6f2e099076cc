"""The key/value rings of the continual layers: every write path (in place, out of place, masked) is exact.

Under inference the rings are written in place (the single-output layer at batch 1 on the CPU through
the host-side count, otherwise one `scatter_` per ring); with grad on, with masked rows, or for an inference-mode state
stepped outside inference mode it is written out of place. A step consumes the slot of the token that
leaves the window, so the state it was given can still be stepped again (a retry), and a batch that
fails after the write moves no stream.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from stepping import assert_steps_match_forward
from test_stream_set import assert_same_outputs, solo
from torch import nn

import elastic.streaming as es
import elastic.streaming.transformer_layer as tl
from elastic.errors import ExecutionError


def _layer(window: int = 5, activation: str = "relu", norm_first: bool = False) -> es.SingleOutputEncoderLayer:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation, norm_first=norm_first)
    return es.SingleOutputEncoderLayer(layer, window).eval()


def _encoder2(window: int = 5, activation: str = "relu", norm_first: bool = False) -> es.TransformerEncoder:
    """Two layers: the first retroactive (its input and q/k/v rings take the same write paths)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation, norm_first=norm_first)
    return es.convert(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), window=window).eval()


MODES = {
    # (context the state is built in, context the steps run in)
    "inference": (torch.inference_mode, torch.inference_mode),  # in place
    "no_grad": (torch.no_grad, torch.no_grad),  # in place on a normal tensor
    "grad": (contextlib.nullcontext, contextlib.nullcontext),  # out of place
    "inference_state_no_grad": (torch.inference_mode, torch.no_grad),  # out of place: inference tensors are read-only
}


@pytest.mark.parametrize("make", [_layer, _encoder2], ids=["single_output", "encoder2"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("activation,norm_first", [("relu", False), ("gelu", True)])
def test_every_write_path_equals_forward(make, batch, mode, activation, norm_first):
    module = make(activation=activation, norm_first=norm_first)
    x = torch.randn(batch, 16, 13)
    with torch.no_grad():
        ref = module(x)
    build, run = MODES[mode]
    with build():
        state = module.init_state(batch, (16,))
    outs = []
    with run():
        for t in range(x.shape[2]):
            y, state = module.step(x[:, :, t], state)
            if y is not None:
                outs.append(y.detach())
    assert len(outs) == ref.shape[2]
    torch.testing.assert_close(torch.stack(outs, dim=2), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [_layer, _encoder2], ids=["single_output", "encoder2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_masked_rows_keep_their_window(make, batch):
    """A strided conv in front: the layer sees a frame every other step (valid mask), out of place."""
    torch.manual_seed(0)
    net = es.Sequential(es.Conv1d(16, 16, 3, stride=2), make(window=4)).eval()
    assert_steps_match_forward(net, torch.randn(batch, 16, 21))


@pytest.mark.parametrize("make", [_layer, _encoder2], ids=["single_output", "encoder2"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_step_can_be_retried_from_the_state_it_was_given(make, batch):
    module = make(window=4)
    frames = [torch.randn(batch, 16) for _ in range(9)]
    discarded = torch.randn(batch, 16)
    with torch.inference_mode():
        state = module.init_state(batch, (16,))
        for f in frames[:5]:
            _, state = module.step(f, state)
        module.step(discarded, state)  # its result is dropped: the same state is stepped again
        got = []
        for f in frames[5:]:
            y, state = module.step(f, state)
            got.append(y)
        ref = module(torch.stack(frames, dim=2))
    torch.testing.assert_close(torch.stack(got, dim=2), ref[:, :, -4:], atol=1e-5, rtol=0)


def test_a_batch_that_fails_after_the_ring_write_moves_no_stream(monkeypatch):
    module = _layer(window=4)
    streams = es.StreamSet(module, (16,), capacity=2)
    a, b = streams.open(), streams.open()
    frames = {s: [torch.randn(16) for _ in range(10)] for s in (a, b)}
    outs = {a: [], b: []}
    real_tail = tl.out_and_tail
    for i in range(10):
        if i == 6:  # the whole pool is written in place, then the layer fails
            monkeypatch.setattr(tl, "out_and_tail", lambda *args: (_ for _ in ()).throw(RuntimeError("device lost")))
            res = streams.step({a: torch.randn(16), b: torch.randn(16)})
            assert isinstance(res.errors[a], ExecutionError) and isinstance(res.errors[b], ExecutionError)
            monkeypatch.setattr(tl, "out_and_tail", real_tail)
        res = streams.step({s: frames[s][i] for s in (a, b)})
        for s in (a, b):
            outs[s].append(res.outputs[s])
    for s in (a, b):
        assert_same_outputs(outs[s], solo(module, frames[s]))


def test_streams_at_different_phases_share_batches():
    """Each stream's ring slot follows its own count: streams that joined at different ticks, some skipping
    ticks, stepped together (whole pool in place, or gathered rows), each equal their solo run."""
    module = _layer(window=5)
    rng = random.Random(1)
    streams = es.StreamSet(module, (16,), capacity=4)
    frames = {s: [] for s in range(4)}
    outputs = {s: [] for s in range(4)}
    for tick in range(30):
        if tick < 4:
            streams.open(tick)  # stream s joins at tick s: four phases
        sending = {s: torch.randn(16) for s in streams.streams if tick % 7 != 3 or rng.random() < 0.5}
        res = streams.step(sending)
        assert not res.errors
        for s, frame in sending.items():
            frames[s].append(frame)
            outputs[s].append(res.outputs[s])
    for s in frames:
        assert_same_outputs(outputs[s], solo(module, frames[s]))
        assert sum(y is not None for y in outputs[s]) >= 15
