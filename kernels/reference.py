"""Pure-torch references for the stitching-layer ops: the CPU fallback and the test oracle.

Every op in `elastic.kernels` has its reference here with the same signature; the dispatch
(`elastic.kernels.dispatch`) runs these when Triton cannot run, and the tests compare the
Triton kernels against them (forward and gradients, through torch's own autograd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_lora(lora_a: torch.Tensor | None, lora_b: torch.Tensor | None) -> bool:
    """True when a low-rank term is given; both factors or neither, else `ValueError`."""
    if (lora_a is None) != (lora_b is None):
        raise ValueError("lora_a and lora_b go together: pass both or neither")
    return lora_a is not None


def stitch_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    lora_scale: float = 1.0,
) -> torch.Tensor:
    """y = x @ W^T + b (+ scale * (x @ A^T) @ B^T).

    Shape:
        x: (..., C_in), weight: (C_out, C_in), bias: (C_out,), lora_a: (r, C_in),
        lora_b: (C_out, r) -> (..., C_out)
    """
    y = F.linear(x, weight, bias)
    if check_lora(lora_a, lora_b):
        y = y + lora_scale * F.linear(F.linear(x, lora_a), lora_b)
    return y


def stitch_linear_layernorm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    lora_scale: float = 1.0,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, LayerNorm(y)) with y from `stitch_linear_ref`; the norm is over C_out.

    Shape:
        x: (..., C_in), weight: (C_out, C_in), bias / ln_weight / ln_bias: (C_out,),
        lora_a: (r, C_in), lora_b: (C_out, r) -> ((..., C_out), (..., C_out))
    """
    y = stitch_linear_ref(x, weight, bias, lora_a, lora_b, lora_scale)
    return y, F.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias, eps)
