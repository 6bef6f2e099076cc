"""Continual average and max pooling over time (1d / 2d / 3d, time is the first pooled dim).

As for convolutions (CoX3D, Hedegaard & Iosifidis, ECCV 2022): the state keeps the last
`(k - 1) * dilation` input frames and each step pools the window `[buffer, x_t]` into one
output frame. Temporal padding is the buffer a stream starts with: zeros for average
pooling (torch's default `count_include_pad=True`), -inf for max pooling. torch pools with
stride = kernel by default, so most pools output only every k-th step; the phase is per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elastic.errors import InvalidInput, UnsupportedArchitecture

from .base import PhaseCounter, State, StreamingModule, keep_rows, param_device_dtype


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _TemporalPool(StreamingModule):
    """Mixin over `nn.AvgPoolNd` / `nn.MaxPoolNd`; subclasses set `_dims`, `_fill` and `_pool_window`."""

    _dims = 1
    _fill = 0.0

    def _geometry(self) -> tuple[tuple[int, ...], ...]:
        n = self._dims
        stride = self.stride if self.stride is not None else self.kernel_size
        dilation = getattr(self, "dilation", 1)
        return (
            _tuple(self.kernel_size, n),
            _tuple(stride, n),
            _tuple(self.padding, n),
            _tuple(dilation, n),
        )

    def _check_supported(self) -> None:
        k, _, p, d = self._geometry()
        if self.ceil_mode:
            raise UnsupportedArchitecture(f"{type(self).__name__}: ceil_mode=True")
        if getattr(self, "return_indices", False):
            raise UnsupportedArchitecture(f"{type(self).__name__}: return_indices=True")
        if getattr(self, "count_include_pad", True) is False and p[0] > 0:
            raise UnsupportedArchitecture(f"{type(self).__name__}: count_include_pad=False with temporal padding")
        if getattr(self, "divisor_override", None) is not None:
            raise UnsupportedArchitecture(f"{type(self).__name__}: divisor_override")

    @property
    def _span(self) -> int:
        k, _, _, d = self._geometry()
        return (k[0] - 1) * d[0]

    @property
    def delay(self) -> int:
        return self._span - self._geometry()[2][0]

    @property
    def receptive_field(self) -> int:
        return self._span + 1

    @property
    def temporal_stride(self) -> int:
        return self._geometry()[1][0]

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        k, s, p, d = self._geometry()
        spatial = [
            (n + 2 * pp - dd * (kk - 1) - 1) // ss + 1
            for n, kk, ss, pp, dd in zip(frame_shape[1:], k[1:], s[1:], p[1:], d[1:], strict=True)
        ]
        return (frame_shape[0], *spatial)

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        self._check_supported()
        if len(frame_shape) != self._dims:
            raise InvalidInput(
                f"{type(self).__name__}: frames must be (C, ...) with {self._dims - 1} spatial dims, "
                f"got {tuple(frame_shape)}"
            )
        dev, dt = param_device_dtype(self, device, dtype)
        buffer = torch.full((batch, frame_shape[0], self._span, *frame_shape[1:]), self._fill, device=dev, dtype=dt)
        return {"frames": buffer, "t": PhaseCounter.init(batch, dev)}

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        window = torch.cat([state["frames"], x.unsqueeze(2)], dim=2)
        y = self._pool_window(window).squeeze(2)  # (B, C, 1, ...) -> one frame
        ready, t_next = PhaseCounter.advance(state["t"], valid, self.delay, self.temporal_stride)
        return y, ready, keep_rows(valid, {"frames": window[:, :, 1:], "t": t_next}, state)


class _AvgPool(_TemporalPool):
    _fill = 0.0

    def _pool_window(self, window: Tensor) -> Tensor:
        k, s, p, _ = self._geometry()
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self._dims]
        # the buffer already holds the temporal zero padding, so it counts as the offline pool's padding would
        return fn(window, k, (1, *s[1:]), (0, *p[1:]), False, getattr(self, "count_include_pad", True))


class _MaxPool(_TemporalPool):
    _fill = float("-inf")

    def _pool_window(self, window: Tensor) -> Tensor:
        k, s, p, d = self._geometry()
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[self._dims]
        return fn(window, k, (1, *s[1:]), (0, *p[1:]), d)


class AvgPool1d(_AvgPool, nn.AvgPool1d):
    """`nn.AvgPool1d` over `(B, C, T)` that can also step one frame `(B, C)` at a time."""

    _dims = 1


class AvgPool2d(_AvgPool, nn.AvgPool2d):
    """`nn.AvgPool2d` over `(B, C, T, S)` that can also step one frame `(B, C, S)` at a time."""

    _dims = 2


class AvgPool3d(_AvgPool, nn.AvgPool3d):
    """`nn.AvgPool3d` over `(B, C, T, H, W)` that can also step one frame `(B, C, H, W)` at a time."""

    _dims = 3


class MaxPool1d(_MaxPool, nn.MaxPool1d):
    """`nn.MaxPool1d` over `(B, C, T)` that can also step one frame `(B, C)` at a time."""

    _dims = 1


class MaxPool2d(_MaxPool, nn.MaxPool2d):
    """`nn.MaxPool2d` over `(B, C, T, S)` that can also step one frame `(B, C, S)` at a time."""

    _dims = 2


class MaxPool3d(_MaxPool, nn.MaxPool3d):
    """`nn.MaxPool3d` over `(B, C, T, H, W)` that can also step one frame `(B, C, H, W)` at a time."""

    _dims = 3


_FROM_TORCH = {
    nn.AvgPool1d: AvgPool1d,
    nn.AvgPool2d: AvgPool2d,
    nn.AvgPool3d: AvgPool3d,
    nn.MaxPool1d: MaxPool1d,
    nn.MaxPool2d: MaxPool2d,
    nn.MaxPool3d: MaxPool3d,
}


def pool_from_torch(pool: nn.Module) -> _TemporalPool:
    """The continual pool with `pool`'s settings."""
    cls = _FROM_TORCH[type(pool)]
    out = cls.__new__(cls)
    nn.Module.__init__(out)
    for key, value in vars(pool).items():
        if not key.startswith("_"):
            setattr(out, key, value)
    out._check_supported()
    return out
