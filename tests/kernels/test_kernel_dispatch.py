"""The one dispatch point: Triton op or torch reference, and why, logged once."""

import logging

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from elastic import kernels
from elastic.builders.stitch_layer import StitchLayer

dispatch = kernels.dispatch
stitch_linear, stitch_linear_layernorm = kernels.stitch_linear, kernels.stitch_linear_layernorm
stitch_linear_ref, use_triton = kernels.stitch_linear_ref, kernels.use_triton


@pytest.fixture
def fresh(monkeypatch):
    """Forget logged reasons and self-tests; count calls to the Triton ops."""
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    monkeypatch.setattr(dispatch, "_SELF_TEST", {})
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    calls = []
    for name in ("stitch_linear_op", "stitch_linear_layernorm_op"):
        real = getattr(dispatch.ops, name)
        monkeypatch.setattr(dispatch.ops, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    real_eager = dispatch.ops.launch_eager

    def launch_eager(*a):  # the op's launcher without the op: counted under the op's name
        calls.append("stitch_linear_layernorm_op" if len(a) > 6 and a[6] else "stitch_linear_op")
        return real_eager(*a)

    monkeypatch.setattr(dispatch.ops, "launch_eager", launch_eager)
    return calls


def operands():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(7, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g))


def reference_records(caplog):
    return [r for r in caplog.records if r.name == dispatch.__name__ and "torch reference" in r.getMessage()]


def test_cpu_tensor_falls_back_to_reference_logged_once(fresh, caplog):
    x, w, b = operands()
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        for _ in range(3):
            torch.testing.assert_close(stitch_linear(x, w, b), stitch_linear_ref(x, w, b))
        stitch_linear_layernorm(x, w, b)
    assert fresh == []
    records = reference_records(caplog)
    assert len(records) == 1 and "not CUDA" in records[0].getMessage()
    assert not use_triton(x, w, b)


def test_env_torch_forces_reference(fresh, caplog, monkeypatch):
    monkeypatch.setenv("ELASTIC_KERNELS", "torch")
    x, w, b = operands()
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        stitch_linear(x, w, b)
        stitch_linear(x, w, b)
        stitch_linear(x, w, b, backend="triton")  # the argument wins over the environment
    assert fresh == ["stitch_linear_op"]
    records = reference_records(caplog)
    assert len(records) == 1 and "ELASTIC_KERNELS=torch" in records[0].getMessage()


def test_env_triton_forces_kernel_under_interpreter(fresh, monkeypatch):
    monkeypatch.setenv("ELASTIC_KERNELS", "triton")
    x, w, b = operands()
    torch.testing.assert_close(stitch_linear(x, w, b), stitch_linear_ref(x, w, b))
    stitch_linear_layernorm(x, w, b)
    assert fresh == ["stitch_linear_op", "stitch_linear_layernorm_op"]


def test_forced_triton_that_cannot_run_raises(fresh, monkeypatch):
    x, w, b = operands()
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        stitch_linear(x, w, b, backend="triton")
    monkeypatch.setattr(dispatch, "_IMPORT_ERROR", ["triton does not import (ImportError: test)"])
    with pytest.raises(RuntimeError, match="does not import"):
        stitch_linear(x, w, b, backend="triton")
    with pytest.raises(RuntimeError, match="dtype"):
        stitch_linear(x.double(), w.double(), b.double(), backend="triton")


def test_unknown_backend_is_an_error(fresh, monkeypatch):
    x, w, b = operands()
    with pytest.raises(ValueError, match="backend"):
        stitch_linear(x, w, b, backend="cuda")
    monkeypatch.setenv("ELASTIC_KERNELS", "fast")
    with pytest.raises(ValueError, match="ELASTIC_KERNELS"):
        stitch_linear(x, w, b)


def test_self_test_failure_is_remembered_and_warned(fresh, monkeypatch, caplog):
    """A kernel that fails on a device is tried once, warned about, then skipped."""
    assert dispatch._self_test(torch.device("cpu")) is None  # the interpreter runs it fine
    dispatch._SELF_TEST.clear()
    monkeypatch.setattr(dispatch.ops, "stitch_linear_op", lambda *a: 1 / 0)
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        first = dispatch._self_test(torch.device("cpu"))
        second = dispatch._self_test(torch.device("cpu"))
    assert first == second and "ZeroDivisionError" in first
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_flop_counter_counts_the_op_like_f_linear():
    x, w, b = operands()
    a, lb = torch.randn(3, 24), torch.randn(40, 3)
    counts = []
    for backend in ("triton", "torch"):
        with FlopCounterMode(display=False) as fc:
            stitch_linear(x, w, b, a, lb, backend=backend)
        counts.append(fc.get_total_flops())
    assert counts[0] == counts[1] == 2 * 7 * (24 * 40 + 24 * 3 + 3 * 40)


def test_stitch_layer_on_cpu_is_f_linear(fresh):
    layer = StitchLayer(24, 40)
    x = torch.randn(2, 7, 24)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert fresh == []


def test_plain_linear_policy():
    """A plain linear on CUDA under "auto" goes to F.linear; LoRA, forcing, or CPU do not."""
    assert dispatch.plain_linear_to_torch(is_cuda=True, has_lora=False, mode="auto")
    assert not dispatch.plain_linear_to_torch(is_cuda=True, has_lora=True, mode="auto")
    assert not dispatch.plain_linear_to_torch(is_cuda=True, has_lora=False, mode="triton")
    assert not dispatch.plain_linear_to_torch(is_cuda=False, has_lora=False, mode="auto")  # CPU: "not CUDA"
    assert "issue 16" in dispatch.PLAIN_LINEAR_REASON and "backend='triton'" in dispatch.PLAIN_LINEAR_REASON


def test_eager_inference_skips_the_custom_op(fresh, monkeypatch):
    """No gradients: the launcher runs directly; gradients or a dispatch mode: the custom op."""
    direct = []
    real = dispatch.ops.launch_eager
    monkeypatch.setattr(dispatch.ops, "launch_eager", lambda *a: direct.append(1) or real(*a))
    x, w, b = operands()
    a, lb = torch.randn(3, 24), torch.randn(40, 3)
    torch.testing.assert_close(stitch_linear(x, w, b, a, lb, backend="triton"), stitch_linear_ref(x, w, b, a, lb))
    assert len(direct) == 1
    stitch_linear(x, w.requires_grad_(), b, a, lb, backend="triton")  # needs autograd: the op
    with torch.no_grad():
        stitch_linear(x, w, b, a, lb, backend="triton")  # no autograd: direct again
    with FlopCounterMode(display=False):
        stitch_linear(x.detach(), w.detach(), b, a, lb, backend="triton")  # a dispatch mode: the op
    assert len(direct) == 2 and fresh == ["stitch_linear_op"] * 4  # `fresh` counts both ways
