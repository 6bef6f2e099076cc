"""A stateful wrapper for one batch of streams in lockstep: `y = s.step(x_t)` without carrying state.

Convenience over the functional contract (`StreamingModule.step(x, state)`), in the manner of
continual-inference's `forward_step` (Hedegaard & Iosifidis, 2022) — except that the state
lives in the wrapper, not in the module, so one module can serve many wrappers and
`StreamSet`s at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import State, StreamingModule


class Stateful:
    """Hold the state of `batch` lockstep streams of `module`.

    Args:
        module: the continual module (not modified; shared freely).
        frame_shape: one frame's shape without batch, `(C, ...)`.
        batch: streams stepped together.
    """

    def __init__(
        self,
        module: StreamingModule,
        frame_shape: Sequence[int],
        batch: int = 1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.module = module
        self.frame_shape = tuple(frame_shape)
        self.batch = batch
        self._device, self._dtype = device, dtype
        self.state: State = None
        self.reset()

    def reset(self) -> None:
        """Forget every frame seen (a fresh stream)."""
        self.state = self.module.init_state(self.batch, self.frame_shape, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor) -> Tensor | None:
        """One frame per stream. Shape: `(batch, C, ...)` -> `(batch, C', ...)` or None (warm-up, stride)."""
        y, self.state = self.module.step(x, self.state)
        return y

    def steps(self, x: Tensor) -> Tensor | None:
        """A clip, frame by frame. Shape: `(batch, C, T, ...)` -> `(batch, C', T_out, ...)` or None."""
        y, self.state = self.module.steps(x, self.state)
        return y
