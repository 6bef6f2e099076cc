"""Every continual module, stepped frame by frame, equals its offline forward after `delay` (fp32, 1e-5).

One suite over a zoo of modules (timm's tests/test_models.py style): each entry is built
with random weights and checked the same way, plus the geometry (how many outputs a clip
gives) and the state layout (batch first in every leaf, which StreamSet relies on).
"""

from __future__ import annotations

import pytest
import torch
from stepping import assert_steps_match_forward, stepped
from torch import nn
from torch.utils._pytree import tree_leaves

import elastic.streaming as es


def _encoder(layers: int, activation: str = "relu", norm_first: bool = False, batch_first: bool = True, window=6):
    layer = nn.TransformerEncoderLayer(
        16, 2, 32, dropout=0.0, activation=activation, norm_first=norm_first, batch_first=batch_first
    )
    enc = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(16), enable_nested_tensor=False)
    return es.convert(enc, window=window)


def _layer(cls, activation="relu", norm_first=False, window=6):
    layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation, norm_first=norm_first)
    return cls(layer, window)


# (id, factory, clip shape (B, C, T, ...))
ZOO = [
    ("conv1d", lambda: es.Conv1d(3, 4, 3, padding=1), (2, 3, 10)),
    ("conv1d_nopad", lambda: es.Conv1d(3, 4, 4), (2, 3, 10)),
    ("conv1d_k1", lambda: es.Conv1d(3, 4, 1), (2, 3, 5)),
    ("conv1d_stride2_dil2", lambda: es.Conv1d(3, 4, 3, padding=2, stride=2, dilation=2), (2, 3, 15)),
    ("conv1d_stride3_groups", lambda: es.Conv1d(4, 6, 2, stride=3, groups=2, bias=False), (2, 4, 14)),
    ("conv2d", lambda: es.Conv2d(3, 4, (3, 3), padding=(1, 1), stride=(1, 2)), (2, 3, 10, 8)),
    ("conv3d", lambda: es.Conv3d(3, 4, (3, 3, 3), padding=(0, 1, 1)), (2, 3, 9, 6, 6)),
    ("conv3d_stride_pad", lambda: es.Conv3d(3, 5, (3, 1, 3), padding=(1, 0, 1), stride=(2, 1, 2)), (2, 3, 11, 5, 6)),
    ("avgpool1d", lambda: es.AvgPool1d(3), (2, 3, 13)),
    ("avgpool1d_pad", lambda: es.AvgPool1d(3, stride=1, padding=1), (2, 3, 9)),
    ("avgpool2d", lambda: es.AvgPool2d((2, 2), stride=(1, 2)), (2, 3, 8, 6)),
    ("avgpool3d", lambda: es.AvgPool3d((2, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0)), (2, 3, 9, 6, 6)),
    ("maxpool1d", lambda: es.MaxPool1d(2), (2, 3, 9)),
    ("maxpool2d_dil", lambda: es.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1)), (2, 3, 12, 5)),
    ("maxpool3d", lambda: es.MaxPool3d((3, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)), (2, 3, 8, 5, 5)),
    ("delay0", lambda: es.Delay(0), (2, 3, 4)),
    ("delay3", lambda: es.Delay(3), (2, 3, 8)),
    ("linear", lambda: es.convert(nn.Linear(3, 5)), (2, 3, 6)),
    ("layernorm", lambda: es.convert(nn.LayerNorm(3)), (2, 3, 6)),
    ("batchnorm3d", lambda: es.convert(_trained_bn(nn.BatchNorm3d(3))), (2, 3, 4, 5, 5)),
    ("gelu_tanh", lambda: es.convert(nn.GELU(approximate="tanh")), (2, 3, 4)),
    ("recycling_pe_learned", lambda: es.RecyclingPositionalEncoding(3, 5), (2, 3, 12)),
    ("recycling_pe_sinusoid", lambda: es.RecyclingPositionalEncoding(4, 7, learned=False), (2, 4, 12)),
    (
        "sequential_strided",
        lambda: es.Sequential(
            es.Conv1d(3, 4, 3, padding=1),
            es.convert(nn.ReLU()),
            es.Conv1d(4, 4, 3, stride=2),
            es.AvgPool1d(2, stride=1),
            es.Conv1d(4, 2, 2, stride=2, padding=1),
        ),
        (2, 3, 30),
    ),
    (
        "residual",
        lambda: es.Residual(es.Sequential(es.Conv1d(3, 3, 3, padding=1), es.convert(nn.GELU()), es.Conv1d(3, 3, 3))),
        (2, 3, 12),
    ),
    (
        "parallel_concat",
        lambda: es.Parallel(es.Conv1d(3, 4, 3, padding=1), es.Conv1d(3, 4, 5), es.Delay(0), reduce="concat"),
        (2, 3, 12),
    ),
    (
        "parallel_max",
        lambda: es.Parallel(es.Conv2d(3, 4, 3, padding=1), es.Conv2d(3, 4, 1), reduce="max"),
        (2, 3, 7, 4),
    ),
    ("parallel_strided", lambda: es.Parallel(es.Conv1d(3, 3, 3, stride=2), es.MaxPool1d(3, stride=2)), (2, 3, 12)),
    (
        "cox3d_block",
        lambda: es.Sequential(
            es.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1)),
            es.convert(_trained_bn(nn.BatchNorm3d(8))),
            es.convert(nn.ReLU()),
            es.Residual(
                es.Sequential(
                    es.Conv3d(8, 8, (3, 3, 3), padding=(1, 1, 1)),
                    es.convert(nn.SiLU()),
                    es.Conv3d(8, 8, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1)),
                )
            ),
            es.MaxPool3d((1, 2, 2)),
            es.AvgPool3d((4, 3, 3), stride=(1, 1, 1)),
            es.convert(nn.Linear(8, 5)),
        ),
        (2, 3, 10, 6, 6),
    ),
    ("single_output_relu", lambda: _layer(es.SingleOutputEncoderLayer), (2, 16, 12)),
    ("single_output_gelu_prenorm", lambda: _layer(es.SingleOutputEncoderLayer, "gelu", True), (2, 16, 12)),
    ("single_output_window1", lambda: _layer(es.SingleOutputEncoderLayer, window=1), (2, 16, 4)),
    ("retroactive_relu", lambda: _layer(es.RetroactiveEncoderLayer), (2, 16, 12)),
    ("retroactive_gelu_prenorm", lambda: _layer(es.RetroactiveEncoderLayer, "gelu", True), (2, 16, 12)),
    ("encoder1_gelu", lambda: _encoder(1, "gelu"), (2, 16, 10)),
    ("encoder2_gelu", lambda: _encoder(2, "gelu"), (2, 16, 10)),
    ("encoder3_relu", lambda: _encoder(3), (2, 16, 10)),
    ("encoder3_gelu_prenorm_seqfirst", lambda: _encoder(3, "gelu", True, batch_first=False), (2, 16, 10)),
    ("encoder5_gelu", lambda: _encoder(5, "gelu", window=4), (2, 16, 9)),
    (
        "pe_encoder_head",
        lambda: es.Sequential(
            es.Conv1d(4, 16, 3, padding=2),
            es.RecyclingPositionalEncoding(16, 11),
            _encoder(2, "gelu"),
            es.convert(nn.Linear(16, 3)),
        ),
        (2, 4, 14),
    ),
]


def _trained_bn(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A BatchNorm with non-trivial running statistics, in eval mode."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


@pytest.mark.parametrize("factory,shape", [pytest.param(f, s, id=i) for i, f, s in ZOO])
def test_steps_equal_forward(factory, shape):
    torch.manual_seed(0)
    module = factory().eval()
    assert_steps_match_forward(module, torch.randn(shape))


@pytest.mark.parametrize("factory,shape", [pytest.param(f, s, id=i) for i, f, s in ZOO])
def test_state_is_batch_first(factory, shape):
    """Every state leaf has the batch as dim 0, so rows can be gathered per stream (and exported with it)."""
    module = factory().eval()
    for batch in (1, 3):
        state = module.init_state(batch, (shape[1], *shape[3:]))
        for leaf in tree_leaves(state):
            assert leaf.shape[0] == batch


@pytest.mark.parametrize("factory,shape", [pytest.param(f, s, id=i) for i, f, s in ZOO])
def test_out_frame_shape(factory, shape):
    """`out_frame_shape` (used to size the next module's state) matches what a step returns."""
    torch.manual_seed(0)
    module = factory().eval()
    y = stepped(module, torch.randn(shape))
    assert tuple(y.shape[:2]) == (shape[0], module.out_frame_shape((shape[1], *shape[3:]))[0])
    assert tuple(y.shape[3:]) == module.out_frame_shape((shape[1], *shape[3:]))[1:]


def test_converted_forward_is_the_torch_forward():
    """convert() shares weights: the continual module's offline forward is the torch module's."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(3, 6, 3, padding=(1, 1, 1)),
        _trained_bn(nn.BatchNorm3d(6)),
        nn.ReLU(),
        nn.AvgPool3d((2, 2, 2)),
        nn.Conv3d(6, 4, (2, 1, 1)),
    ).eval()
    co = es.convert(net)
    x = torch.randn(2, 3, 9, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(co(x), net(x), atol=0, rtol=0)
    assert co[0].weight is net[0].weight
    assert_steps_match_forward(co, x)


def test_converted_encoder_matches_torch_encoder_on_a_window():
    """On a clip of exactly `window` frames the continual encoder's one output is nn.TransformerEncoder's last token."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True),
        3,
        enable_nested_tensor=False,
    ).eval()
    co = es.convert(enc, window=8)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        ref = enc(x.transpose(1, 2))[:, -1]
    y = stepped(co, x)
    assert y.shape == (2, 16, 1)
    torch.testing.assert_close(y[:, :, 0], ref, atol=1e-5, rtol=0)


def test_geometry_composes():
    seq = es.Sequential(es.Conv1d(1, 1, 3, padding=1), es.Conv1d(1, 1, 3, stride=2), es.AvgPool1d(2, stride=1))
    assert seq.delay == 1 + 1 * 2 + 2 * 1
    assert seq.receptive_field == 1 + 2 + 2 + 1 * 2
    assert seq.temporal_stride == 2
    res = es.Residual(es.Conv1d(2, 2, 5, padding=1))
    assert res.delay == 3 and res.receptive_field == 5


def test_stateful_wrapper_steps_like_the_pure_contract():
    torch.manual_seed(0)
    net = es.Sequential(es.Conv1d(2, 3, 3, padding=1), es.AvgPool1d(2)).eval()
    x = torch.randn(1, 2, 9)
    runner = es.Stateful(net, (2,))
    outs = [runner.step(x[:, :, t]) for t in range(9)]
    got = torch.stack([o for o in outs if o is not None], dim=2)
    torch.testing.assert_close(got, net(x)[:, :, : got.shape[2]], atol=1e-6, rtol=0)
    assert outs[0] is None and outs[1] is None and outs[2] is not None  # delay 1 + 1 * 1, then stride 2
    runner.reset()
    assert runner.step(x[:, :, 0]) is None


def test_lockstep_step_refuses_mixed_phases():
    """States gathered from streams at different phases must go through step_masked / StreamSet."""
    net = es.Conv1d(1, 1, 2, stride=2)
    a, b = net.init_state(1, (1,)), net.init_state(1, (1,))
    with torch.inference_mode():
        _, a = net.step(torch.randn(1, 1), a)
        both = {k: torch.cat([a[k], b[k]]) for k in a}
        with pytest.raises(es.base.StreamError):
            net.step(torch.randn(2, 1), both)
