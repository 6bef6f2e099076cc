"""The streaming bench's contenders compute what they claim, on tiny models (no timing asserted)."""

from __future__ import annotations

import torch
from torch import nn

from elastic.bench.streaming import Case, conv_net, throughput


def tiny_encoder(layers: int) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def test_encoder_case_step_is_the_recompute_of_its_window():
    case = Case("enc", tiny_encoder(1), 8, (16,))
    with torch.inference_mode():
        window = case.frames[1:9]  # the next step sees frame 8; its window is frames 1..8
        y = case.step()
        ref = case.model(window.unsqueeze(0))[:, -1]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)
    assert case.ref is not None  # continual-inference builds one layer
    fl = case.flops()
    assert 0 < fl["step"] < fl["recompute"] and fl["co"] > 0


def test_conv_case_window_is_its_receptive_field_and_throughput_rows():
    torch.manual_seed(0)
    case = Case("conv", conv_net(), 7, (3, 32, 32))
    rows = throughput(case, streams_list=(1, 2), repeats=2)
    assert [r["streams"] for r in rows] == [1, 2]
    assert all(r["streamset_frames_per_s"] > 0 for r in rows)
