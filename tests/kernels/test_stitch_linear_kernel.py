"""The Triton stitching kernel under the CPU interpreter vs the torch reference.

Forward and gradients (through the custom op's autograd vs torch autograd on the reference)
for every variant on small awkward shapes, fp32 (the interpreter is wrong in bf16). The same
tests run on a GPU in fp16 / bf16 when one is there (`gpu` marker).
"""

import os

import pytest
import torch

from elastic import kernels
from elastic.builders.stitch_layer import StitchLayer

stitch_linear, stitch_linear_layernorm = kernels.stitch_linear, kernels.stitch_linear_layernorm
stitch_linear_ref = kernels.stitch_linear_ref
stitch_linear_layernorm_ref = kernels.stitch_linear_layernorm_ref

ROWS = [1, 7, 33]
CHANNELS = [(24, 40), (33, 17)]
VARIANTS = ["plain", "bias", "lora", "layernorm", "layernorm-plain"]


def make_operands(rows, c_in, c_out, variant, dtype=torch.float32, device="cpu", seed=0):
    """Keyword operands of one call, all leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()

    kw = dict(x=leaf(rows, c_in), weight=leaf(c_out, c_in, scale=c_in**-0.5))
    if variant != "plain" and variant != "layernorm-plain":
        kw["bias"] = leaf(c_out, scale=0.1)
    if variant == "lora":
        kw.update(lora_a=leaf(3, c_in, scale=c_in**-0.5), lora_b=leaf(c_out, 3), lora_scale=0.5)
    if variant == "layernorm":
        kw.update(ln_weight=leaf(c_out), ln_bias=leaf(c_out), eps=1e-5)
    return kw


def run(variant, backend, **kw):
    """Outputs as a list, through the public function for `variant`."""
    if variant.startswith("layernorm"):
        return list(stitch_linear_layernorm(**kw, backend=backend))
    return [stitch_linear(**kw, backend=backend)]


def run_ref(variant, **kw):
    if variant.startswith("layernorm"):
        return list(stitch_linear_layernorm_ref(**kw))
    return [stitch_linear_ref(**kw)]


def grads(outputs, leaves, seed=1):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g).to(o)).sum() for o in outputs)
    return torch.autograd.grad(loss, leaves)


def assert_matches(kw, variant, atol=1e-5, rtol=1e-4):
    leaves = [v for v in kw.values() if torch.is_tensor(v)]
    got = run(variant, "triton", **kw)
    want = run_ref(variant, **kw)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    for name, a, b in zip(
        [k for k, v in kw.items() if torch.is_tensor(v)], grads(got, leaves), grads(want, leaves), strict=True
    ):
        torch.testing.assert_close(a, b, atol=atol * 10, rtol=rtol * 10, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("c_in,c_out", CHANNELS)
@pytest.mark.parametrize("rows", ROWS)
def test_forward_and_grads_match_reference(rows, c_in, c_out, variant):
    assert_matches(make_operands(rows, c_in, c_out, variant), variant)


@pytest.mark.parametrize("variant", ["lora", "layernorm"])
def test_token_batches(variant):
    kw = make_operands(14, 24, 40, variant)
    kw["x"] = kw["x"].detach().reshape(2, 7, 24).requires_grad_()
    assert_matches(kw, variant)


def test_strided_inputs_are_read_in_place():
    """A sliced x (row stride != C_in) and a transposed weight (column-major) work."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 50, generator=g)[::2, 3:27]  # (5, 24), strides (100, 1)
    w = torch.randn(24, 40, generator=g).t()  # (40, 24), strides (1, 40)
    b = torch.randn(40, generator=g)
    torch.testing.assert_close(stitch_linear(x, w, b, backend="triton"), stitch_linear_ref(x, w, b))


def test_wide_output_normalises_with_torch(monkeypatch):
    """Past LN_MAX_BLOCK_N the kernel writes y and torch normalises it: same results."""
    from elastic.kernels import stitch_linear_kernel

    monkeypatch.setattr(stitch_linear_kernel, "LN_MAX_BLOCK_N", 32)
    assert_matches(make_operands(7, 24, 40, "layernorm"), "layernorm")


def test_empty_rows():
    x, w, b = torch.randn(0, 24), torch.randn(40, 24), torch.randn(40)
    y, ln = stitch_linear_layernorm(x, w, b, backend="triton")
    assert y.shape == ln.shape == (0, 40)


def test_bad_operands_raise():
    x, w = torch.randn(3, 24), torch.randn(40, 24)
    with pytest.raises(ValueError, match="both or neither"):
        stitch_linear(x, w, lora_a=torch.randn(2, 24), backend="triton")
    with pytest.raises(ValueError, match="does not map"):
        stitch_linear(x, torch.randn(40, 25), backend="triton")
    with pytest.raises(ValueError, match="bias"):
        stitch_linear(x, w, torch.randn(41), backend="triton")
    with pytest.raises(RuntimeError, match="dtype"):
        stitch_linear(x.double(), w.double(), backend="triton")


@pytest.mark.parametrize("lora_rank", [0, 3])
def test_conv_stitch_nchw_through_stitch_layer(monkeypatch, lora_rank):
    """StitchLayer's 1x1-conv stitch: an NHWC view of an NCHW map, read without a copy."""
    from elastic.kernels import stitch_linear_kernel

    torch.manual_seed(0)
    layer = StitchLayer(24, 40, layout="nchw", lora_rank=lora_rank)
    if lora_rank:
        torch.nn.init.normal_(layer.lora_b)
    x = torch.randn(2, 24, 3, 5, requires_grad=True)
    rows = stitch_linear_kernel._as_rows(x.permute(0, 2, 3, 1))
    assert rows.shape == (2, 15, 24) and rows.data_ptr() == x.data_ptr()  # a view, no copy
    monkeypatch.setenv("ELASTIC_KERNELS", "torch")
    want = layer(x)
    want_grads = grads([want], [x, *layer.parameters()])
    monkeypatch.setenv("ELASTIC_KERNELS", "triton")
    got = layer(x)
    assert got.shape == (2, 40, 3, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads([got], [x, *layer.parameters()]), want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


GPU_DTYPES = [(torch.float32, 1e-4, 1e-4), (torch.float16, 2e-3, 2e-3), (torch.bfloat16, 2e-2, 2e-2)]


INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
GPU_SKIP = (
    "needs a CUDA device"
    if not torch.cuda.is_available()
    else "compiled Triton needs TRITON_INTERPRET=0"
    if INTERPRETER
    else None
)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
@pytest.mark.parametrize("dtype,atol,rtol", GPU_DTYPES)
def test_gpu_forward_matches_reference(dtype, atol, rtol):
    assert kernels.use_triton(torch.ones(1, device="cuda", dtype=dtype))  # auto picks Triton
    for rows in (1, 7, 1023):
        for variant in VARIANTS:
            kw = make_operands(rows, 192, 384, variant, dtype=dtype, device="cuda")
            with torch.no_grad():
                for a, b in zip(run(variant, "triton", **kw), run_ref(variant, **kw), strict=True):
                    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
def test_gpu_autocast_takes_the_kernel(monkeypatch):
    """Under bf16 autocast fp32 parameters are cast as F.linear would, and Triton runs."""
    from elastic.kernels import dispatch

    calls = []
    for name in ("stitch_linear_op", "launch_eager"):  # the op, or its launcher in eager inference
        real = getattr(dispatch.ops, name)
        monkeypatch.setattr(dispatch.ops, name, lambda *a, _real=real: calls.append(1) or _real(*a))
    kw = make_operands(197, 192, 384, "lora", device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got = stitch_linear(**kw)
        want = stitch_linear_ref(**kw)
    assert calls and got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
def test_gpu_plain_linear_goes_to_torch(monkeypatch):
    """Under "auto" a plain linear on CUDA runs F.linear; forcing the kernel still runs it."""
    from elastic.kernels import dispatch

    monkeypatch.delenv("ELASTIC_KERNELS", raising=False)
    calls = []
    for name in ("stitch_linear_op", "launch_eager"):
        real = getattr(dispatch.ops, name)
        monkeypatch.setattr(dispatch.ops, name, lambda *a, _real=real: calls.append(1) or _real(*a))
    kw = {k: v.detach() for k, v in make_operands(197, 192, 384, "bias", dtype=torch.bfloat16, device="cuda").items()}
    torch.testing.assert_close(stitch_linear(**kw), stitch_linear_ref(**kw), atol=0, rtol=0)
    assert calls == []
    stitch_linear(**kw, backend="triton")
    assert calls == [1]


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
@pytest.mark.parametrize("variant", ["lora", "layernorm"])
def test_gpu_kernel_replays_in_a_cuda_graph(variant):
    """A warmed-up shape captures in a CUDA graph (no sync, no autotuning on the hot path),
    and the replay on new input values equals the eager kernel."""
    kw = {
        k: v.detach() if torch.is_tensor(v) else v
        for k, v in make_operands(394, 192, 384, variant, dtype=torch.bfloat16, device="cuda").items()
    }
    static_x = kw.pop("x").clone()
    with torch.no_grad():
        run(variant, "triton", x=static_x, **kw)  # autotunes and caches the launch plan
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run(variant, "triton", x=static_x, **kw)
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        want = run(variant, "triton", x=static_x, **kw)
    torch.cuda.synchronize()
    for a, b in zip(static_out, want, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c_out", [17, 384, 768, 1024])
def test_gpu_configs_survive_pruning(dtype, c_out):
    """On a GPU the autotuner keeps at least one config for every SN-Net width and dtype."""
    from elastic.kernels import stitch_linear_kernel as sk

    args = {"x_ptr": torch.empty(1, dtype=dtype)}
    block_n = 1 << (c_out - 1).bit_length()
    linear = sk._prune_linear_configs(sk.GPU_LINEAR_CONFIGS, args)
    assert linear and all(sk._fits(c, c.kwargs["BLOCK_N"], dtype.itemsize) for c in linear)
    ln = [c for c in sk.GPU_LN_CONFIGS if sk._fits(c, block_n, dtype.itemsize)]
    assert ln and sk._prune_ln_configs(sk.GPU_LN_CONFIGS, args, BLOCK_N=block_n) == ln


def test_launch_plan_cached_per_shape(monkeypatch):
    """Validation and autotuning run once per shape key; later calls reuse the plan."""
    from elastic.kernels import stitch_linear_kernel as sk

    monkeypatch.setattr(sk, "_PLANS", {})
    made, tuned = [], []
    real_make, real_first = sk._make_plan, sk._first_launch
    monkeypatch.setattr(sk, "_make_plan", lambda *a: made.append(1) or real_make(*a))
    monkeypatch.setattr(sk, "_first_launch", lambda *a: tuned.append(1) or real_first(*a))
    with torch.no_grad():
        for rows in (7, 7, 7, 9, 7):
            kw = {k: v.detach() for k, v in make_operands(rows, 24, 40, "lora").items() if torch.is_tensor(v)}
            torch.testing.assert_close(
                sk.stitch_linear_triton(**kw, lora_scale=0.5)[0], stitch_linear_ref(**kw, lora_scale=0.5)
            )
    assert len(made) == len(tuned) == len(sk._PLANS) == 2
    plan = next(iter(sk._PLANS.values()))
    assert plan.tuned and plan.grid[0] >= 1 and {"BLOCK_M", "num_warps"} <= set(plan.config)


def test_plan_cache_keeps_operands_apart(monkeypatch):
    """A cached plan is never reused for other strides, optional operands or a bad weight."""
    from elastic.kernels import stitch_linear_kernel as sk

    monkeypatch.setattr(sk, "_PLANS", {})
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    wt = torch.randn(24, 40, generator=g).t()
    for args in [(x, w, b), (x, w, None), (x, wt, b), (torch.randn(10, 48, generator=g)[::2, ::2], w, b)]:
        torch.testing.assert_close(sk.stitch_linear_triton(*args)[0], stitch_linear_ref(*args))
    assert len(sk._PLANS) == 4
    with pytest.raises(ValueError, match="bias"):
        sk.stitch_linear_triton(x, w, torch.randn(41))


def test_untuned_config_for_capture_fits():
    """The config a shape first seen during CUDA-graph capture gets is one the pruner keeps."""
    from elastic.kernels import stitch_linear_kernel as sk

    x3 = torch.empty(1, 197, 192)
    for layernorm in (False, True):
        plan = sk._make_plan(x3, x3, torch.empty(384, 192), None, None, None, layernorm, None, None)
        config = sk._untuned_config(plan, x3)
        assert {"BLOCK_M", "BLOCK_K", "num_warps"} <= set(config)
        assert sk._grid(plan, config)[0] >= 1
