"""Pure-torch references for the stitching-layer ops: the CPU fallback and the test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    if lora_a is not None and lora_b is not None:
        y = y + lora_scale * F.linear(F.linear(x, lora_a), lora_b)
    return y
