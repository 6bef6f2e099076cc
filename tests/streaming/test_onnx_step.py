"""An exported step runs in onnxruntime at any batch size and equals stepping in torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import elastic.streaming as es
from elastic.streaming.onnx_step import export_step_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_exported_step_has_a_dynamic_batch_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True)
    net = es.Sequential(
        es.Conv1d(4, 16, 3, padding=1),
        es.Conv1d(16, 16, 2, stride=2),
        es.RecyclingPositionalEncoding(16, 9),
        es.convert(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), window=3),
    ).eval()
    path = tmp_path / "step.onnx"
    names = export_step_onnx(net, (4,), path)
    session = ort.InferenceSession(str(path))
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["x", *names]
    assert all(i.shape[0] == "batch" for i in inputs)  # every state tensor: batch first, dynamic
    for batch in (1, 3):
        state = net.init_state(batch, (4,))
        onnx_state = [t.numpy() for t in tree_flatten(state)[0]]
        seen_output = False
        for _ in range(10):
            x = torch.randn(batch, 4)
            with torch.inference_mode():
                y, valid, state = net.step_masked(x, state, None)
            out = session.run(None, {"x": x.numpy(), **dict(zip(names, onnx_state, strict=True))})
            onnx_state = out[2:]
            assert out[1].tolist() == valid.tolist()
            if valid.all():
                seen_output = True
                torch.testing.assert_close(torch.from_numpy(out[0]), y, atol=1e-5, rtol=0)
        assert seen_output


@pytest.mark.slow
def test_a_step_exported_under_no_grad_writes_its_rings_and_matches_torch(tmp_path):
    """Grad off: the traced step takes the in-place ring writes, and the layers' filled parameter caches
    meet export's storage-less tensors (rebuilt uncached); the graph still returns the written rings."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    net = es.Sequential(
        es.Conv1d(16, 16, 1),
        es.RecyclingPositionalEncoding(16, 9),
        es.convert(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), window=3),
    ).eval()
    with torch.inference_mode():  # stepped in torch first: the layers' parameter caches are filled
        net.steps(torch.randn(1, 16, 4), net.init_state(1, (16,)))
    path = tmp_path / "step.onnx"
    with torch.no_grad():
        names = export_step_onnx(net, (16,), path)
    session = ort.InferenceSession(str(path))
    for batch in (1, 3):
        state = net.init_state(batch, (16,))
        onnx_state = [t.numpy() for t in tree_flatten(state)[0]]
        for step in range(7):
            x = torch.randn(batch, 16)
            with torch.inference_mode():
                y, state = net.step(x, state)
            out = session.run(None, {"x": x.numpy(), **dict(zip(names, onnx_state, strict=True))})
            onnx_state = out[2:]
            assert (y is None) == (step < 2)
            if y is not None:
                torch.testing.assert_close(torch.from_numpy(out[0]), y, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_model_whose_first_state_is_a_step_counter_exports_float_frames(tmp_path):
    torch.manual_seed(0)
    net = es.Sequential(es.RecyclingPositionalEncoding(8, 5), es.Conv1d(8, 8, 3, padding=1)).eval()
    assert not tree_flatten(net.init_state(1, (8,)))[0][0].is_floating_point()  # the counter comes first
    path = tmp_path / "step.onnx"
    names = export_step_onnx(net, (8,), path)
    session = ort.InferenceSession(str(path))
    assert session.get_inputs()[0].type == "tensor(float)"
    state = net.init_state(2, (8,))
    onnx_state = [t.numpy() for t in tree_flatten(state)[0]]
    for _ in range(6):
        x = torch.randn(2, 8)
        with torch.inference_mode():
            y, valid, state = net.step_masked(x, state, None)
        out = session.run(None, {"x": x.numpy(), **dict(zip(names, onnx_state, strict=True))})
        onnx_state = out[2:]
        if valid is None or valid.all():
            torch.testing.assert_close(torch.from_numpy(out[0]), y, atol=1e-5, rtol=0)
