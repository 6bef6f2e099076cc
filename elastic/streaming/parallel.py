"""Parallel branches over one input, aligned in time and reduced into one output.

Branches whose delays differ are aligned by delaying the faster ones (CoX3D, Hedegaard &
Iosifidis, ECCV 2022), so at every step all branches hand over the output of the same index
`t - max(delay)`. Offline, branch outputs are cut to the shortest length (the frames a
stream produces before it ends) and reduced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from elastic.errors import UnsupportedArchitecture

from .base import State, StreamingModule, and_masks
from .delay import Delay


def _reduce_sum(ys: Sequence[Tensor]) -> Tensor:
    out = ys[0]
    for y in ys[1:]:
        out = out + y
    return out


def _reduce_mean(ys: Sequence[Tensor]) -> Tensor:
    return _reduce_sum(ys) / len(ys)


def _reduce_max(ys: Sequence[Tensor]) -> Tensor:
    out = ys[0]
    for y in ys[1:]:
        out = torch.maximum(out, y)
    return out


def _reduce_mul(ys: Sequence[Tensor]) -> Tensor:
    out = ys[0]
    for y in ys[1:]:
        out = out * y
    return out


def _reduce_concat(ys: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(ys), dim=1)


REDUCTIONS: dict[str, Callable[[Sequence[Tensor]], Tensor]] = {
    "sum": _reduce_sum,
    "mean": _reduce_mean,
    "max": _reduce_max,
    "mul": _reduce_mul,
    "concat": _reduce_concat,
}


class Parallel(StreamingModule):
    """Run every branch on the same input and reduce their (time-aligned) outputs.

    Args:
        *branches: `StreamingModule`s of one temporal stride.
        reduce: "sum", "mean", "max", "mul", "concat" (channels) or a callable on the list of
            branch outputs (each `(B, C, ...)` when stepping, `(B, C, T, ...)` offline).
    """

    def __init__(self, *branches: StreamingModule, reduce: str | Callable[[Sequence[Tensor]], Tensor] = "sum") -> None:
        super().__init__()
        if not branches:
            raise ValueError("Parallel needs at least one branch")
        strides = {b.temporal_stride for b in branches}
        if len(strides) != 1:
            raise UnsupportedArchitecture(f"Parallel branches must share one temporal stride, got {sorted(strides)}")
        if strides != {1} and len({b.delay for b in branches}) != 1:
            raise UnsupportedArchitecture("strided Parallel branches must share one delay (their phases differ)")
        self.branches = nn.ModuleList(branches)
        self.reduce_name = reduce if isinstance(reduce, str) else getattr(reduce, "__name__", "custom")
        self.reduce = REDUCTIONS[reduce] if isinstance(reduce, str) else reduce
        top = max(b.delay for b in branches)
        self.aligners = nn.ModuleList(Delay(top - b.delay) for b in branches)

    def extra_repr(self) -> str:
        return f"reduce={self.reduce_name}"

    @property
    def delay(self) -> int:
        return max(b.delay for b in self.branches)

    @property
    def receptive_field(self) -> int:
        return max(b.receptive_field + a.delay_steps for b, a in zip(self.branches, self.aligners, strict=True))

    @property
    def temporal_stride(self) -> int:
        return self.branches[0].temporal_stride

    def forward(self, x: Tensor) -> Tensor:
        """Shape: `(B, C, T, ...)` -> `(B, C', T_out, ...)` with `T_out` the shortest branch's length."""
        ys = [b(x) for b in self.branches]
        n = min(y.shape[2] for y in ys)
        return self.reduce([y[:, :, :n] for y in ys])

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        shapes = [b.out_frame_shape(frame_shape) for b in self.branches]
        probe = self.reduce([torch.zeros(1, *s) for s in shapes])
        return tuple(probe.shape[1:])

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        out = []
        for b, a in zip(self.branches, self.aligners, strict=True):
            s = b.init_state(batch, frame_shape, device=device, dtype=dtype)
            d = a.init_state(batch, b.out_frame_shape(frame_shape), device=device, dtype=dtype)
            out.append((s, d))
        return tuple(out)

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        ys, masks, states = [], [], []
        for b, a, (sb, sa) in zip(self.branches, self.aligners, state, strict=True):
            y, v, sb = b.step_masked(x, sb, valid)
            y, v, sa = a.step_masked(y, sa, v)
            ys.append(y)
            masks.append(v)
            states.append((sb, sa))
        out_valid = masks[0]
        for m in masks[1:]:
            out_valid = and_masks(out_valid, m)
        return self.reduce(ys), out_valid, tuple(states)
