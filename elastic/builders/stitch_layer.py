"""`StitchLayer`: the layer that joins two anchors (SN-Net, Pan et al., CVPR 2023).

A linear map on channels: `Linear(C_front, C_back)` on ViT tokens, a 1×1 convolution on CNN
feature maps (the same linear map, applied channels-last). It is initialised by least
squares on calibration activations, `[A | 1] M ≈ B`, and may carry a low-rank (LoRA) update
for training, as in SN-Netv2 (`classification/snnet.py`: `Linear` with `lora_alpha=1`, so the
update is scaled by 1/rank, A initialised like `nn.Linear`, B at zero, the base weight frozen).
The arithmetic goes through `elastic.kernels.stitch_linear`,
which runs a Triton kernel on CUDA and the torch reference elsewhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from elastic import kernels


def flatten_channels(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, N, C) tokens or (B, C, H, W) maps -> (rows, C)."""
    if layout == "nchw":
        x = x.permute(0, 2, 3, 1)
    return x.reshape(-1, x.shape[-1])


def least_squares(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve `[a | 1] M ≈ b` in fp64; returns (weight (C_out, C_in), bias (C_out,)).

    Shape:
        a: (rows, C_in), b: (rows, C_out)
    """
    a64 = torch.cat([a.double(), a.new_ones(a.shape[0], 1, dtype=torch.float64)], dim=1)
    m = torch.linalg.lstsq(a64, b.double(), driver="gelsd" if a.device.type == "cpu" else None)
    m = m.solution
    return m[:-1].T.contiguous(), m[-1].contiguous()


class StitchLayer(nn.Module):
    """Linear map from the front anchor's channels to the back anchor's.

    Args:
        in_features: front anchor's width at the stitch.
        out_features: back anchor's width at the stitch.
        layout: "tokens" for (B, N, C) inputs, "nchw" for (B, C, H, W) feature maps.
        lora_rank: rank of an optional low-rank update (0 = none); B starts at zero.
        lora_alpha: the update is scaled by lora_alpha / lora_rank (SN-Netv2: 1 / rank).
        lora_freeze_base: with a low-rank update, freeze the base weight (SN-Netv2); the
            bias stays trainable.

    Shape:
        x: (B, N, C_in) -> (B, N, C_out), or (B, C_in, H, W) -> (B, C_out, H, W)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        layout: str = "tokens",
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        lora_freeze_base: bool = False,
    ):
        super().__init__()
        if layout not in ("tokens", "nchw"):
            raise ValueError(f"layout must be 'tokens' or 'nchw', not {layout!r}")
        self.in_features, self.out_features, self.layout = in_features, out_features, layout
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.lora_rank = lora_rank
        self.lora_scale = lora_alpha / lora_rank if lora_rank else 1.0
        if lora_rank:
            self.lora_a = nn.Parameter(torch.empty(lora_rank, in_features))
            self.lora_b = nn.Parameter(torch.zeros(out_features, lora_rank))
        else:
            self.register_parameter("lora_a", None)
            self.register_parameter("lora_b", None)
        self.reset_parameters()
        if lora_rank and lora_freeze_base:
            self.weight.requires_grad_(False)

    def reset_parameters(self) -> None:
        """`nn.Linear`'s default init (the baseline least squares must beat)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.lora_a is not None:
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            nn.init.zeros_(self.lora_b)

    @torch.no_grad()
    def set_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        if self.lora_b is not None:
            self.lora_b.zero_()

    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold the low-rank update into the weight (for serving)."""
        if self.lora_a is not None:
            self.weight.add_(self.lora_scale * (self.lora_b @ self.lora_a))
            self.lora_b.zero_()

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The map on channels-last input.

        Shape:
            x: (..., C_in) -> (..., C_out)
        """
        return kernels.stitch_linear(x, self.weight, self.bias, self.lora_a, self.lora_b, self.lora_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "nchw":
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.linear(x)

    def extra_repr(self) -> str:
        lora = f", lora_rank={self.lora_rank}, lora_scale={self.lora_scale:g}" if self.lora_rank else ""
        return f"{self.in_features} -> {self.out_features}, layout={self.layout}{lora}"
