"""Pointwise (per-frame) modules: Linear and LayerNorm over channels, BatchNorm, activations.

A module that treats every frame on its own has no temporal state and no delay: stepping
applies it to the frame, and the offline forward applies it to every frame of the clip
(Hedegaard & Iosifidis, CoX3D, ECCV 2022, call these "continual" for free). Channels are
dim 1 here, as in convs: `Linear` and `LayerNorm` move them last, apply, and move them back.
BatchNorm is per-frame in eval mode only (train mode would pool statistics over the clip).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from elastic.errors import UnsupportedArchitecture

from .base import State, StreamingModule

#: torch modules that act elementwise (any shape) or are the identity in eval mode
ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.PReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
#: torch modules that act on the channel vector of one position (channels moved last)
CHANNEL_LAST = (nn.Linear, nn.LayerNorm)
#: torch modules that act per frame with channels at dim 1 (eval-mode statistics)
CHANNEL_FIRST = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Pointwise(StreamingModule):
    """Apply `fn` to each frame on its own: no state, no delay.

    Args:
        fn: an `nn.Module` or callable on one frame. Elementwise functions take any shape;
            `nn.Linear` / `nn.LayerNorm` (channels last) and BatchNorm (channels first) are placed
            by `layout`.
        layout: "elementwise" (fn takes the tensor as is), "channel_last" (channels moved to
            the last dim around fn), or "channel_first" (frames of a clip folded into the batch).
    """

    def __init__(self, fn: nn.Module | Callable[[Tensor], Tensor], layout: str = "elementwise") -> None:
        super().__init__()
        if layout not in ("elementwise", "channel_last", "channel_first"):
            raise ValueError(f"unknown layout {layout!r}")
        self.fn = fn
        self.layout = layout

    def extra_repr(self) -> str:
        return f"layout={self.layout}" if isinstance(self.fn, nn.Module) else f"{self.fn!r}, layout={self.layout}"

    @property
    def delay(self) -> int:
        return 0

    @property
    def receptive_field(self) -> int:
        return 1

    def _frame(self, x: Tensor) -> Tensor:
        if self.layout == "channel_last":
            return self.fn(x.movedim(1, -1)).movedim(-1, 1)
        return self.fn(x)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: `(B, C, T, ...)` -> `(B, C', T, ...)`."""
        if self.layout == "elementwise":
            return self.fn(x)
        if self.layout == "channel_last":
            return self.fn(x.movedim(1, -1)).movedim(-1, 1)
        b, t = x.shape[0], x.shape[2]  # channel_first: frames into the batch, (B*T, C, ...)
        y = self.fn(x.movedim(2, 1).flatten(0, 1))
        return y.unflatten(0, (b, t)).movedim(1, 2)

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        if isinstance(self.fn, nn.Linear):
            return (self.fn.out_features, *frame_shape[1:])
        return tuple(frame_shape)

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        return ()

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        return self._frame(x), valid, state


def pointwise_from_torch(module: nn.Module) -> Pointwise:
    """Wrap a supported torch module (sharing its parameters) as a `Pointwise`."""
    if isinstance(module, ELEMENTWISE):
        return Pointwise(module, "elementwise")
    if isinstance(module, CHANNEL_LAST):
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            raise UnsupportedArchitecture(f"LayerNorm over {module.normalized_shape}: only the channel dim streams")
        return Pointwise(module, "channel_last")
    if isinstance(module, CHANNEL_FIRST):
        if module.running_mean is None:
            raise UnsupportedArchitecture(
                "BatchNorm without running statistics normalises over the clip, not per frame"
            )
        return Pointwise(_FrameBatchNorm(module), "channel_first")
    raise UnsupportedArchitecture(f"{type(module).__name__} is not a per-frame module")


class _FrameBatchNorm(nn.Module):
    """A BatchNorm that accepts frames of any rank (a BatchNorm3d's frame is 4-D) with its eval statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if bn.training:
            raise UnsupportedArchitecture("BatchNorm streams only in eval mode (call .eval())")
        return torch.nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
