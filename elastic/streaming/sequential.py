"""Sequential: continual modules in a chain, stepping each on the previous one's output.

The chain's geometry composes as in CoX3D (Hedegaard & Iosifidis, ECCV 2022): module `i`
sees one input per `s_0 * ... * s_{i-1}` steps, so `delay = d_0 + s_0 * (d_1 + s_1 * (...))`
and the receptive field grows by `(rf_i - 1) * s_0 * ... * s_{i-1}`. A row whose frame a
module does not output (warm-up, stride) is masked for the rest of the chain, so its later
modules' state does not move.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import State, StreamingModule


class Sequential(StreamingModule, nn.Sequential):
    """`nn.Sequential` of `StreamingModule`s; `forward` is nn.Sequential's."""

    def __init__(self, *modules: StreamingModule) -> None:
        nn.Sequential.__init__(self, *modules)
        for m in self:
            if not isinstance(m, StreamingModule):
                raise TypeError(f"Sequential holds StreamingModules; convert {type(m).__name__} first")

    forward = nn.Sequential.forward

    @property
    def delay(self) -> int:
        delay, scale = 0, 1
        for m in self:
            delay += scale * m.delay
            scale *= m.temporal_stride
        return delay

    @property
    def receptive_field(self) -> int:
        rf, scale = 1, 1
        for m in self:
            rf += (m.receptive_field - 1) * scale
            scale *= m.temporal_stride
        return rf

    @property
    def temporal_stride(self) -> int:
        s = 1
        for m in self:
            s *= m.temporal_stride
        return s

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(frame_shape)
        for m in self:
            shape = m.out_frame_shape(shape)
        return shape

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        states, shape = [], tuple(frame_shape)
        for m in self:
            states.append(m.init_state(batch, shape, device=device, dtype=dtype))
            shape = m.out_frame_shape(shape)
        return tuple(states)

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        new_states = []
        for m, s in zip(self, state, strict=True):
            x, valid, s = m.step_masked(x, s, valid)
            new_states.append(s)
        return x, valid, tuple(new_states)
