"""`OnnxRuntimeExecutor` on a real export: eager outputs, typed failures, provider choice."""

import json
import logging

import pytest
import torch

from elastic.checkpoint import MANIFEST
from elastic.errors import ExportError, InvalidInput, UnknownSubnet
from elastic.export.onnx import manifest_digest
from elastic.export.session import CPU, CUDA, default_providers
from elastic.serving.executor import EXECUTORS, EagerExecutor, make_executor
from elastic.serving.onnx_executor import OnnxRuntimeExecutor

pytestmark = pytest.mark.slow  # the session fixture exports six subnets (seconds each)


@pytest.fixture
def ort_executor(small_model, exported):
    return make_executor("onnxruntime", small_model, "cpu", export_dir=exported[0])


def test_registered_and_made_by_name(ort_executor, exported):
    assert "onnxruntime" in EXECUTORS
    assert isinstance(ort_executor, OnnxRuntimeExecutor) and ort_executor.name == "onnxruntime"
    assert ort_executor.subnet_ids == [e["id"] for e in exported[1]["subnets"]]
    assert ort_executor.providers == [CPU]


@pytest.mark.parametrize("batch", [1, 5])
def test_runs_every_subnet_like_the_eager_executor(small_model, ort_executor, batch):
    eager = EagerExecutor(small_model)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(10 + batch))
    for sid in ort_executor.subnet_ids:
        got = ort_executor.run(sid, x)
        assert got.device == torch.device("cpu") and got.dtype == torch.float32
        torch.testing.assert_close(got, eager.run(sid, x), atol=1e-4, rtol=0)


def test_sessions_are_created_once_on_first_use(ort_executor):
    assert ort_executor._sessions == {}
    ort_executor.warmup(3, 4)
    session = ort_executor.session(3)
    assert list(ort_executor._sessions) == [3]
    ort_executor.warmup(3, 1)
    assert ort_executor.session(3) is session


def test_bad_inputs_are_the_models_typed_errors(ort_executor):
    for bad in (
        torch.full((1, 3, 32, 32), float("nan")),
        torch.randn(1, 3, 16, 16),
        torch.randn(3, 32, 32),
        torch.zeros(1, 3, 32, 32, dtype=torch.int64),
        torch.zeros(0, 3, 32, 32),
        [[0.0]],
    ):
        with pytest.raises(InvalidInput):
            ort_executor.run(0, bad)
    with pytest.raises(UnknownSubnet):
        ort_executor.run(99, torch.zeros(1, 3, 32, 32))


def test_half_precision_input_runs_in_float32(small_model, ort_executor):
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ort_executor.run(1, x.half()), ort_executor.run(1, x.half().float()))


def test_subnet_not_exported_is_an_export_error(small_model, export_copy):
    manifest = json.loads((export_copy / MANIFEST).read_text())
    manifest["subnets"] = [e for e in manifest["subnets"] if e["id"] != 4]
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (export_copy / MANIFEST).write_text(json.dumps(manifest))
    executor = OnnxRuntimeExecutor(small_model, export_dir=export_copy)
    assert 4 not in executor.subnet_ids
    with pytest.raises(ExportError, match="subnet 4 was not exported"):
        executor.run(4, torch.zeros(1, 3, 32, 32))
    executor.run(5, torch.zeros(1, 3, 32, 32))


def test_tampered_graph_fails_its_first_run(small_model, export_copy):
    manifest = json.loads((export_copy / MANIFEST).read_text())
    file = export_copy / manifest["subnets"][2]["file"]
    data = bytearray(file.read_bytes())
    data[-100] ^= 0xFF
    file.write_bytes(bytes(data))
    executor = OnnxRuntimeExecutor(small_model, export_dir=export_copy)
    with pytest.raises(ExportError, match="does not match its manifest"):
        executor.run(2, torch.zeros(1, 3, 32, 32))
    executor.run(0, torch.zeros(1, 3, 32, 32))  # the others still serve


def test_export_of_other_weights_is_refused_on_first_use(fresh_small_model, exported):
    with torch.no_grad():
        fresh_small_model.family[0].model.head.bias.add_(0.5)  # same structure, other weights
    executor = OnnxRuntimeExecutor(fresh_small_model, export_dir=exported[0])
    with pytest.raises(ExportError, match="does not reproduce subnet 0"):
        executor.run(0, torch.zeros(1, 3, 32, 32))
    executor.run(1, torch.zeros(1, 3, 32, 32))  # anchor 1 does not use that head


def test_export_of_another_structure_is_refused_at_once(exported, vit_specs):
    import elastic
    from elastic.anchors import AnchorFamily

    family = AnchorFamily.from_timm(vit_specs(widths=(32, 64), depth=3))
    other = elastic.StitchedNet(family).eval()
    with pytest.raises(ExportError, match="subnet 2 is"):
        OnnxRuntimeExecutor(other, export_dir=exported[0])


def test_missing_export_dir_is_an_export_error(small_model, tmp_path):
    with pytest.raises(ExportError, match="export_dir"):
        make_executor("onnxruntime", small_model)
    with pytest.raises(ExportError, match="not an ONNX export folder"):
        make_executor("onnxruntime", small_model, export_dir=tmp_path / "missing")


def test_threading_is_set_deliberately(small_model, exported):
    executor = OnnxRuntimeExecutor(small_model, export_dir=exported[0], intra_op_threads=2)
    options = executor.session(0).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# ---- provider choice (the one place a GPU is mocked: this machine has none) -------------
def test_cpu_device_uses_the_cpu_provider():
    assert default_providers("cpu") == [CPU]


def test_cuda_device_uses_cuda_then_cpu_when_onnxruntime_gpu_has_it(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    assert default_providers("cuda:1") == [(CUDA, {"device_id": 1}), CPU]


def test_cuda_device_without_onnxruntime_gpu_falls_back_to_cpu_and_says_so(monkeypatch, caplog):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with caplog.at_level(logging.WARNING, logger="elastic.export.session"):
        assert default_providers("cuda") == [CPU]
    assert "onnxruntime-gpu" in caplog.text
