"""`torch.library` custom ops around the Triton stitching kernel.

    torch.ops.elastic.stitch_linear(x, weight, bias, lora_a, lora_b, lora_scale) -> y
    torch.ops.elastic.stitch_linear_layernorm(x, weight, bias, lora_a, lora_b, lora_scale,
                                              ln_weight, ln_bias, eps) -> (y, ln_y)

Each op has a fake (meta) implementation, so `torch.compile(fullgraph=True)` keeps it as
one node with no graph break, an autograd formula (the backward runs torch ops: three or
five matmuls, plus `native_layer_norm_backward` for the fused norm), and a FLOP formula,
so `torch.utils.flop_counter` counts it like the `F.linear` calls it replaces.

The implementations always launch the kernel (on CPU tensors that needs TRITON_INTERPRET=1);
choosing between them and the torch reference is `elastic.kernels.dispatch`'s job. In eager
inference (no gradients, not tracing) the dispatch calls `launch_eager`, the same launcher
without the custom op around it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula


def _launch(x, weight, bias, lora_a, lora_b, lora_scale, **layernorm):
    from .stitch_linear_kernel import stitch_linear_triton  # imports triton, so only when launched

    return stitch_linear_triton(x, weight, bias, lora_a, lora_b, lora_scale, **layernorm)


def launch_eager(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    lora_scale: float,
    layernorm: bool = False,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel launched directly, without the custom op's dispatcher round trip.

    For eager inference only (no autograd, not tracing): the dispatch calls this when no
    operand needs a gradient, which saves the custom op's per-call Python overhead; the
    result is the op's own (the op runs this same launcher).

    Shape:
        as `stitch_linear_layernorm_op`; the second output is None unless `layernorm`.
    """
    if layernorm:
        return _launch(
            x, weight, bias, lora_a, lora_b, lora_scale, layernorm=True, ln_weight=ln_weight, ln_bias=ln_bias, eps=eps
        )
    return _launch(x, weight, bias, lora_a, lora_b, lora_scale)


def _out_shape(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], weight.shape[0])


# ---- y = x W^T + b + s (x A^T) B^T -------------------------------------------------------
@torch.library.custom_op("elastic::stitch_linear", mutates_args=())
def stitch_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    lora_scale: float,
) -> torch.Tensor:
    """The Triton stitching layer as one op.

    Shape:
        x: (..., C_in), weight: (C_out, C_in), bias: (C_out,), lora_a: (r, C_in),
        lora_b: (C_out, r) -> (..., C_out)
    """
    return _launch(x, weight, bias, lora_a, lora_b, lora_scale)[0]


@stitch_linear_op.register_fake
def _(x, weight, bias, lora_a, lora_b, lora_scale):
    return x.new_empty(_out_shape(x, weight))


# ---- (y, LayerNorm(y)) -------------------------------------------------------------------
@torch.library.custom_op("elastic::stitch_linear_layernorm", mutates_args=())
def stitch_linear_layernorm_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    lora_scale: float,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton stitching layer with the next block's LayerNorm fused, as one op.

    Shape:
        x: (..., C_in), weight: (C_out, C_in), bias / ln_weight / ln_bias: (C_out,),
        lora_a: (r, C_in), lora_b: (C_out, r) -> ((..., C_out), (..., C_out))
    """
    return _launch(
        x, weight, bias, lora_a, lora_b, lora_scale, layernorm=True, ln_weight=ln_weight, ln_bias=ln_bias, eps=eps
    )


@stitch_linear_layernorm_op.register_fake
def _(x, weight, bias, lora_a, lora_b, lora_scale, ln_weight, ln_bias, eps):
    shape = _out_shape(x, weight)
    return x.new_empty(shape), x.new_empty(shape)


# ---- autograd ----------------------------------------------------------------------------
def _linear_grads(
    needs: Sequence[bool],
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    lora_scale: float,
) -> tuple[torch.Tensor | None, ...]:
    """(dx, dW, db, dA, dB) of y = x W^T + b + s (x A^T) B^T; None where not needed.

    Shape:
        grad: (..., C_out), x: (..., C_in) -> shapes of x, W, b, A, B
    """
    g = grad.reshape(-1, grad.shape[-1])  # (M, C_out)
    x2 = x.reshape(-1, x.shape[-1])  # (M, C_in)
    dx = dw = db = da = dlb = None
    has_lora = lora_a is not None and lora_b is not None
    gb = g @ lora_b if has_lora and (needs[0] or needs[3]) else None  # (M, r)
    if needs[0]:
        dx = g @ weight
        if has_lora:
            dx = dx + lora_scale * (gb @ lora_a)
        dx = dx.reshape(x.shape)
    if needs[1]:
        dw = g.t() @ x2
    if needs[2]:
        db = g.sum(0)
    if has_lora and needs[3]:
        da = lora_scale * (gb.t() @ x2)
    if has_lora and needs[4]:
        dlb = lora_scale * (g.t() @ (x2 @ lora_a.t()))
    return dx, dw, db, da, dlb


def _linear_setup(ctx, inputs, output):
    x, weight, bias, lora_a, lora_b, lora_scale = inputs
    ctx.lora_scale = lora_scale
    ctx.save_for_backward(x, weight, lora_a, lora_b)


def _linear_backward(ctx, grad_y):
    x, weight, lora_a, lora_b = ctx.saved_tensors
    grads = _linear_grads(ctx.needs_input_grad, grad_y, x, weight, lora_a, lora_b, ctx.lora_scale)
    return (*grads, None)


def _layernorm_setup(ctx, inputs, output):
    x, weight, bias, lora_a, lora_b, lora_scale, ln_weight, ln_bias, eps = inputs
    ctx.lora_scale, ctx.eps = lora_scale, eps
    ctx.save_for_backward(x, weight, lora_a, lora_b, ln_weight, ln_bias, output[0])


def _layernorm_backward(ctx, grad_y, grad_ln):
    x, weight, lora_a, lora_b, ln_weight, ln_bias, y = ctx.saved_tensors
    needs = ctx.needs_input_grad
    n = [y.shape[-1]]
    grad = grad_y
    dlnw = dlnb = None
    if grad_ln is not None:
        _, mean, rstd = torch.ops.aten.native_layer_norm(y, n, ln_weight, ln_bias, ctx.eps)
        mask = [True, ln_weight is not None and needs[6], ln_bias is not None and needs[7]]
        dy, dlnw, dlnb = torch.ops.aten.native_layer_norm_backward(grad_ln, y, n, mean, rstd, ln_weight, ln_bias, mask)
        grad = dy if grad is None else grad + dy
    if grad is None:
        grad = torch.zeros_like(y)
    grads = _linear_grads(needs, grad, x, weight, lora_a, lora_b, ctx.lora_scale)
    return (*grads, None, dlnw, dlnb, None)


stitch_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)
stitch_linear_layernorm_op.register_autograd(_layernorm_backward, setup_context=_layernorm_setup)


# ---- FLOPs (matmuls only, as torch counts F.linear) -------------------------------------
def _flops(x_shape, w_shape, lora_a_shape) -> int:
    rows = 1
    for d in x_shape[:-1]:
        rows *= d
    n, k = w_shape
    flops = 2 * rows * n * k
    if lora_a_shape is not None:
        r = lora_a_shape[0]
        flops += 2 * rows * r * k + 2 * rows * n * r
    return flops


@register_flop_formula(torch.ops.elastic.stitch_linear)
def _stitch_linear_flop(
    x_shape, w_shape, bias_shape, lora_a_shape, lora_b_shape, *args, out_shape=None, **kwargs
) -> int:
    return _flops(x_shape, w_shape, lora_a_shape if lora_b_shape is not None else None)


@register_flop_formula(torch.ops.elastic.stitch_linear_layernorm)
def _stitch_linear_layernorm_flop(
    x_shape, w_shape, bias_shape, lora_a_shape, lora_b_shape, *args, out_shape=None, **kwargs
) -> int:
    return _flops(x_shape, w_shape, lora_a_shape if lora_b_shape is not None else None)
