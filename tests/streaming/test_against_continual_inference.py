"""The continual modules against continual-inference 1.2.4 (Hedegaard & Iosifidis, 2022).

Where that library is correct, both step to the same outputs on random networks (fp32,
1e-5). Where it is not, a test here documents it — the library's behaviour next to the
torch reference, and ours matching torch:

- `TransformerEncoderLayerFactory(activation="gelu")` builds a ReLU feed-forward block, and
  `TransformerEncoder.build_from` rejects a gelu encoder;
- an encoder of three or more layers cannot be built (its middle layer is a stub), and the
  two-layer encoder drifts from the torch output once a stream is `2 * window - 1` steps old;
- max pooling with temporal padding pads the state with zeros instead of -inf;
- temporal dilation is refused;
- a kernel-1 conv with temporal stride outputs at every `forward_step` (its `forward_steps` is right);
- `continual.onnx` marks dim 0 of every dynamic state as the batch, but a `Delay` buffer is
  `(delay, B, ...)`.
"""

from __future__ import annotations

import logging
import random
import warnings

import pytest
import torch
from stepping import stepped
from torch import nn

import elastic.streaming as es

co = pytest.importorskip("continual")
logging.getLogger("continual").setLevel(logging.ERROR)


def co_steps(module, x: torch.Tensor) -> torch.Tensor:
    """continual-inference's own stepping: `forward_step` on each frame, outputs stacked on dim 2."""
    outs = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.eval()
        for t in range(x.shape[2]):
            y = module.forward_step(x[:, :, t])
            if isinstance(y, torch.Tensor):
                outs.append(y)
    return torch.stack(outs, dim=2) if outs else None


def random_temporal_net(rng: random.Random, channels: int = 4, dims: int = 1) -> nn.Sequential:
    """A random stack of what both libraries support: convs (stride, padding), pools, ReLU, BatchNorm."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    avg = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims]
    mx = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    spatial = (1,) * (dims - 1)
    layers: list[nn.Module] = []
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["conv", "conv", "relu", "avg", "max", "bn"])
        if kind == "conv":
            k = rng.randint(1, 4)
            pad = rng.randint(0, k - 1)
            stride = rng.choice([1, 1, 2]) if k > 1 else 1  # a strided 1-frame conv: see the failure test
            layers.append(
                conv(
                    channels,
                    channels,
                    (k, *(3,) * (dims - 1)),
                    stride=(stride, *spatial),
                    padding=(pad, *spatial),
                )
            )
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "avg":
            k = rng.randint(1, 3)
            layers.append(
                avg(
                    (k, *spatial),
                    stride=(rng.choice([1, k]), *spatial),
                    padding=(rng.randint(0, k // 2), *(0,) * (dims - 1)),
                )
            )
        elif kind == "max":  # no temporal padding: continual-inference pads max pools with zeros (see below)
            k = rng.randint(1, 3)
            layers.append(mx((k, *spatial), stride=(rng.choice([1, k]), *spatial)))
        else:
            norm = bn(channels)
            with torch.no_grad():
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
            layers.append(norm)
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_random_conv_nets_match(seed, dims):
    rng = random.Random(seed * 10 + dims)
    torch.manual_seed(seed)
    net = random_temporal_net(rng, dims=dims)
    x = torch.randn(2, 4, 20, *(5,) * (dims - 1))
    ours = es.convert(net)
    theirs = co.continual(net)
    assert ours.delay == theirs.delay
    y, yc = stepped(ours, x), co_steps(theirs, x)
    assert y is not None and yc is not None, f"{net} gave no output on 20 frames"
    torch.testing.assert_close(y, yc, atol=1e-5, rtol=0)


def test_residual_and_parallel_match():
    torch.manual_seed(0)
    c1, c2 = nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=0)
    ours = es.Sequential(es.Residual(es.convert(c1)), es.Parallel(es.convert(c2), es.Delay(0), reduce="sum"))
    theirs = co.Sequential(
        co.Residual(co.Conv1d.build_from(c1)),
        co.BroadcastReduce(co.Conv1d.build_from(c2), co.Delay(0), reduce="sum", auto_delay=True),
    )
    x = torch.randn(2, 4, 12)
    torch.testing.assert_close(stepped(ours, x), co_steps(theirs, x), atol=1e-5, rtol=0)


def test_linear_and_positional_encoding_match():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    pe_co = co.RecyclingPositionalEncoding(6, 9, learned=True, forward_update_index_steps=0)
    pe = es.RecyclingPositionalEncoding(6, 9)
    pe.pe.weight.data.copy_(pe_co.pe.weight.data)
    ours = es.Sequential(pe, es.convert(lin))
    theirs = co.Sequential(pe_co, co.Linear.build_from(lin, channel_dim=1))
    x = torch.randn(2, 6, 14)
    torch.testing.assert_close(stepped(ours, x), co_steps(theirs, x), atol=1e-5, rtol=0)


def _relu_encoder(layers: int, seed: int) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


@pytest.mark.parametrize("window", [4, 9])
def test_one_layer_encoder_matches(window):
    enc = _relu_encoder(1, window)
    x = torch.randn(2, 16, 3 * window)
    y = stepped(es.convert(enc, window=window), x)
    yc = co_steps(co.TransformerEncoder.build_from(enc, sequence_len=window), x)
    torch.testing.assert_close(y, yc, atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [4, 9])
def test_two_layer_encoder_matches_for_its_first_window(window):
    """Two ReLU layers agree while the stream is younger than two windows (see the failure test below)."""
    enc = _relu_encoder(2, window)
    x = torch.randn(2, 16, 2 * window - 2)  # outputs 0 .. window - 2
    y = stepped(es.convert(enc, window=window), x)
    yc = co_steps(co.TransformerEncoder.build_from(enc, sequence_len=window), x)
    torch.testing.assert_close(y, yc, atol=1e-5, rtol=0)


# ---- where continual-inference 1.2.4 is wrong ----


def test_co_gelu_factory_silently_builds_relu():
    factory = co.TransformerEncoderLayerFactory(8, 2, 16, dropout=0.0, activation="gelu", sequence_len=4)
    acts = [m.fn for n, m in co.TransformerEncoder(factory, 1).named_modules() if n.endswith("activation")]
    assert acts and all(fn is torch.nn.functional.relu for fn in acts)  # asked for gelu, got relu
    z = torch.tensor([-1.0])
    assert acts[0](z).item() == 0.0 and torch.nn.functional.gelu(z).item() != 0.0


def test_co_cannot_convert_a_gelu_encoder_and_ours_matches_torch():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True),
        1,
        enable_nested_tensor=False,
    ).eval()
    with pytest.raises(AssertionError):
        co.TransformerEncoder.build_from(enc, sequence_len=5)
    x = torch.randn(2, 16, 5)
    with torch.no_grad():
        ref = enc(x.transpose(1, 2))[:, -1]
    torch.testing.assert_close(stepped(es.convert(enc, window=5), x)[:, :, 0], ref, atol=1e-5, rtol=0)


def test_co_three_layer_encoder_is_broken_and_ours_matches_torch():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 3, enable_nested_tensor=False
    ).eval()
    with pytest.raises(AssertionError):
        co.TransformerEncoder.build_from(enc, sequence_len=6)
    x = torch.randn(2, 16, 6)
    with torch.no_grad():
        ref = enc(x.transpose(1, 2))[:, -1]
    torch.testing.assert_close(stepped(es.convert(enc, window=6), x)[:, :, 0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [3, 5])
def test_co_two_layer_encoder_drifts_once_the_window_has_slid(window):
    """continual-inference's 2-layer encoder is wrong from output `window - 1` on; ours matches torch throughout."""
    enc = _relu_encoder(2, window)
    x = torch.randn(2, 16, 3 * window)
    ours = es.convert(enc, window=window)
    with torch.no_grad():
        ref = ours(x)  # nn.TransformerEncoder on every window (checked against torch in test_equivalence)
    theirs = co_steps(co.TransformerEncoder.build_from(enc, sequence_len=window), x)
    n = window - 1
    torch.testing.assert_close(theirs[:, :, :n], ref[:, :, :n], atol=1e-5, rtol=0)
    assert (theirs[:, :, n:] - ref[:, :, n:]).abs().max() > 1e-2
    torch.testing.assert_close(stepped(ours, x), ref, atol=1e-5, rtol=0)


def test_co_strided_one_frame_conv_steps_every_frame():
    """A kernel-1 conv with temporal stride 2: continual-inference's forward_step outputs at every step."""
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 4, 1, stride=2)
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        ref = conv(x)  # 4 outputs
    theirs = co_steps(co.continual(conv), x)
    assert theirs.shape[2] == 8 != ref.shape[2]
    torch.testing.assert_close(stepped(es.convert(conv), x), ref, atol=1e-6, rtol=0)


def test_co_max_pool_pads_time_with_zeros():
    pool = nn.MaxPool1d(2, stride=1, padding=1)
    x = -1 - torch.rand(1, 1, 6)  # all negative: a zero pad wins every max it enters
    with torch.no_grad():
        ref = pool(x)
    theirs = co_steps(co.continual(pool), x)
    assert theirs[0, 0, 0].item() == 0.0 and ref[0, 0, 0].item() < 0  # the first output is the pad
    ours = stepped(es.convert(pool), x)
    torch.testing.assert_close(ours, ref[:, :, : ours.shape[2]], atol=0, rtol=0)


def test_co_refuses_temporal_dilation():
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 2, 3, dilation=2, padding=2)
    with pytest.raises(AssertionError, match="dilation"):
        co.continual(conv)
    x = torch.randn(1, 2, 10)
    ours = stepped(es.convert(conv), x)
    with torch.no_grad():
        torch.testing.assert_close(ours, conv(x)[:, :, : ours.shape[2]], atol=1e-6, rtol=0)


def test_co_onnx_marks_the_wrong_state_axis_as_batch():
    from continual.onnx import OnnxWrapper

    delay = co.Delay(2)
    delay.forward_steps(torch.randn(3, 4, 5))  # batch 3
    buffer = delay.get_state()[0]
    assert buffer.shape[:2] == (2, 3)  # (delay, batch, ...)
    assert OnnxWrapper(delay).state_dynamic_axes["s0"] == {0: "batch"}  # but dim 0 is exported as the batch
    ours = es.Delay(2).init_state(3, (4,))
    assert all(t.shape[0] == 3 for t in ours.values())  # ours: batch first in every leaf
