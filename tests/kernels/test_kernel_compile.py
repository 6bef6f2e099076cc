"""The custom ops under torch.library's checks and torch.compile(fullgraph=True), on the CPU.

The Triton kernel runs in the interpreter (ELASTIC_KERNELS=triton), so the compiled graphs
hold `elastic::stitch_linear` itself, not the reference's F.linear.
"""

import pytest
import torch

import elastic
from elastic import kernels

stitch_linear, stitch_linear_layernorm = kernels.stitch_linear, kernels.stitch_linear_layernorm
stitch_linear_ref = kernels.stitch_linear_ref


def op_args(layernorm=False):
    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    args = [leaf(2, 7, 24), leaf(40, 24), leaf(40), leaf(3, 24), leaf(40, 3), 0.5]
    return args + [leaf(40), leaf(40), 1e-5] if layernorm else args


@pytest.mark.parametrize("layernorm", [False, True])
def test_opcheck(layernorm):
    """Schema, fake (meta) implementation, autograd registration, dispatch consistency."""
    op = kernels.ops.stitch_linear_layernorm_op if layernorm else kernels.ops.stitch_linear_op
    torch.library.opcheck(op, op_args(layernorm))


class GraphRecorder:
    """A torch.compile backend that notes the ops in each graph and runs it eagerly."""

    def __init__(self):
        self.targets, self.graphs = [], 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.targets += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        return gm.forward


def test_compile_fullgraph_forward_and_backward(monkeypatch):
    monkeypatch.setenv("ELASTIC_KERNELS", "triton")
    x, w, b, a, lb, scale, lnw, lnb, eps = op_args(layernorm=True)

    def f(x):
        y, ln = stitch_linear_layernorm(x, w, b, a, lb, scale, lnw, lnb, eps)
        return torch.relu(y)[..., :3] + stitch_linear(ln, lb.t())  # a transposed weight

    rec = GraphRecorder()
    out = torch.compile(f, fullgraph=True, backend=rec)(x)
    assert rec.graphs == 1
    assert "elastic.stitch_linear_layernorm.default" in rec.targets
    assert "elastic.stitch_linear.default" in rec.targets
    monkeypatch.setenv("ELASTIC_KERNELS", "torch")
    want = f(x)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)

    monkeypatch.setenv("ELASTIC_KERNELS", "triton")
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [x, w, b, a, lb, lnw, lnb]
    got = torch.autograd.grad(compiled(x).square().sum(), leaves)
    want = torch.autograd.grad(want.square().sum(), leaves)
    for g1, g2 in zip(got, want, strict=True):
        torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-3)


def _stitched_id(net):
    return next(s.id for s in net.subnets() if s.kind == "stitch")


@pytest.fixture(scope="module")
def tiny_stitched():
    """Two tiny ViT anchors (widths 32, 64; depth 2), stitched; built once for this module."""
    torch.manual_seed(0)
    specs = [
        (
            "vit_tiny_patch16_224",
            dict(embed_dim=w, num_heads=w // 32, depth=2, img_size=32, patch_size=8, num_classes=10),
            f"vit-w{w}",
        )
        for w in (32, 64)
    ]
    net = elastic.StitchedNet(elastic.anchors.AnchorFamily.from_timm(specs)).eval()
    net.init_stitches(torch.randn(8, 3, 32, 32))
    return net


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_stitched_subnet(tiny_stitched, monkeypatch, backend):
    """A stitched path of StitchedNet compiles in one graph with the custom op in it
    (`ElasticModel.check_input` skips its data-dependent finiteness check while compiling)."""
    net, sid = tiny_stitched, _stitched_id(tiny_stitched)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        monkeypatch.setenv("ELASTIC_KERNELS", "torch")
        want = net(x, subnet=sid)
        monkeypatch.setenv("ELASTIC_KERNELS", "triton")
        if backend == "aot_eager":
            rec = GraphRecorder()
            torch.compile(lambda x: net(x, subnet=sid), fullgraph=True, backend=rec)(x)
            assert rec.graphs == 1 and "elastic.stitch_linear.default" in rec.targets
        got = torch.compile(lambda x: net(x, subnet=sid), fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_reference_graph_has_no_custom_op(monkeypatch):
    """With the reference chosen (CPU, auto) the graph is plain aten: nothing opaque."""
    monkeypatch.delenv("ELASTIC_KERNELS", raising=False)
    x, w, b = torch.randn(7, 24), torch.randn(40, 24), torch.randn(40)
    rec = GraphRecorder()
    out = torch.compile(lambda x: stitch_linear(x, w, b), fullgraph=True, backend=rec)(x)
    assert not any("elastic" in t for t in rec.targets)
    torch.testing.assert_close(out, stitch_linear_ref(x, w, b))
