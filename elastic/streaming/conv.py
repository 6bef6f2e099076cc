"""Continual temporal convolutions: Conv1d / Conv2d / Conv3d whose first spatial dim is time.

CoX3D (Hedegaard & Iosifidis, "Continual 3D Convolutional Neural Networks for Real-time
Processing of Videos", ECCV 2022): a convolution over time needs, per step, only the newest
frame and the last `(k - 1) * dilation` frames, so a clip model runs one frame at a time at
the cost of one output frame. Here the state keeps those input frames (batch first); each
step convolves the window `[buffer, x_t]` into one output frame. Temporal zero padding `p`
is the zero-filled buffer a stream starts with (so `delay = (k - 1) * dilation - p`);
temporal stride keeps a per-row phase counter. Spatial dims behave as in torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elastic.errors import InvalidInput, UnsupportedArchitecture

from .base import PhaseCounter, State, StreamingModule, keep_rows, param_device_dtype


class _TemporalConv(StreamingModule):
    """Mixin over `nn.ConvNd`: the offline forward is torch's, `step_masked` convolves one window."""

    _conv = staticmethod(F.conv1d)

    def _check_supported(self) -> None:
        if self.padding_mode != "zeros":
            raise UnsupportedArchitecture(f"{type(self).__name__}: padding_mode {self.padding_mode!r} (only 'zeros')")
        if isinstance(self.padding, str):
            raise UnsupportedArchitecture(f"{type(self).__name__}: string padding {self.padding!r}; give numbers")
        if self.padding[0] > self._span:
            raise UnsupportedArchitecture(
                f"{type(self).__name__}: temporal padding {self.padding[0]} exceeds (kernel-1)*dilation = {self._span}"
            )

    @property
    def _span(self) -> int:
        """Past frames one output needs besides the newest: (k - 1) * dilation."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    @property
    def delay(self) -> int:
        return self._span - self.padding[0]

    @property
    def receptive_field(self) -> int:
        return self._span + 1

    @property
    def temporal_stride(self) -> int:
        return self.stride[0]

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        spatial = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(
                frame_shape[1:], self.kernel_size[1:], self.stride[1:], self.padding[1:], self.dilation[1:], strict=True
            )
        ]
        return (self.out_channels, *spatial)

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        self._check_supported()
        if len(frame_shape) != len(self.kernel_size) or frame_shape[0] != self.in_channels:
            raise InvalidInput(
                f"{type(self).__name__}: frames must be (C={self.in_channels}, ...) with {len(self.kernel_size) - 1} "
                f"spatial dims, got {tuple(frame_shape)}"
            )
        dev, dt = param_device_dtype(self, device, dtype)
        buffer = torch.zeros(batch, frame_shape[0], self._span, *frame_shape[1:], device=dev, dtype=dt)
        return {"frames": buffer, "t": PhaseCounter.init(batch, dev)}

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        window = torch.cat([state["frames"], x.unsqueeze(2)], dim=2)
        y = self._conv(
            window,
            self.weight,
            self.bias,
            (1, *self.stride[1:]),
            (0, *self.padding[1:]),
            self.dilation,
            self.groups,
        ).squeeze(2)
        ready, t_next = PhaseCounter.advance(state["t"], valid, self.delay, self.temporal_stride)
        new = {"frames": window[:, :, 1:], "t": t_next}
        return y, ready, keep_rows(valid, new, state)


class Conv1d(_TemporalConv, nn.Conv1d):
    """`nn.Conv1d` over `(B, C, T)` that can also step one frame `(B, C)` at a time."""

    _conv = staticmethod(F.conv1d)


class Conv2d(_TemporalConv, nn.Conv2d):
    """`nn.Conv2d` over `(B, C, T, S)` (time first) that can also step one frame `(B, C, S)` at a time."""

    _conv = staticmethod(F.conv2d)


class Conv3d(_TemporalConv, nn.Conv3d):
    """`nn.Conv3d` over `(B, C, T, H, W)` that can also step one frame `(B, C, H, W)` at a time."""

    _conv = staticmethod(F.conv3d)


def conv_from_torch(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> Conv1d | Conv2d | Conv3d:
    """A continual conv sharing `conv`'s weight and bias tensors."""
    cls = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}[type(conv)]
    out = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device="meta",
    )
    out.weight = conv.weight
    out.bias = conv.bias
    out._check_supported()
    return out
