"""Delay: hand a frame back `n` steps later; the identity offline.

Continual networks align branches whose delays differ (a residual beside a padded conv,
parallel branches) by delaying the faster ones (Hedegaard & Iosifidis, CoX3D, ECCV 2022).
The state is a buffer of the last `n` frames plus a per-row step counter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PhaseCounter, State, StreamingModule, keep_rows, param_device_dtype


class Delay(StreamingModule):
    """Output frame `t - n` at step `t`; `forward` is the identity.

    Args:
        delay_steps: how many steps to delay (0: a pass-through).
    """

    def __init__(self, delay_steps: int) -> None:
        super().__init__()
        if delay_steps < 0:
            raise ValueError(f"Delay steps must be >= 0, got {delay_steps}")
        self.delay_steps = delay_steps

    def extra_repr(self) -> str:
        return str(self.delay_steps)

    @property
    def delay(self) -> int:
        return self.delay_steps

    @property
    def receptive_field(self) -> int:
        return 1

    def forward(self, x: Tensor) -> Tensor:
        """Shape: `(B, C, T, ...)` -> the same tensor."""
        return x

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        if self.delay_steps == 0:
            return ()
        dev, dt = param_device_dtype(self, device, dtype)
        return {
            "frames": torch.zeros(batch, self.delay_steps, *frame_shape, device=dev, dtype=dt),
            "t": PhaseCounter.init(batch, dev),
        }

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        if self.delay_steps == 0:
            return x, valid, state
        frames = state["frames"]
        y = frames[:, 0]
        ready, t_next = PhaseCounter.advance(state["t"], valid, self.delay_steps, 1)
        new = {"frames": torch.cat([frames[:, 1:], x.unsqueeze(1)], dim=1), "t": t_next}
        return y, ready, keep_rows(valid, new, state)
