"""The streaming contract every continual module meets, and the per-row state helpers.

A continual module (Hedegaard et al., "Continual 3D Convolutional Neural Networks for
Real-time Processing of Videos", ECCV 2022; "Continual Transformers: Redundancy-Free
Attention for Online Inference", ICLR 2023) has two ways to run:

- `forward(x)`: the offline computation over a clip `x` of shape `(B, C, T, ...)`,
  identical to the regular torch module's forward.
- `step(x_t, state) -> (y_t | None, state)`: one frame `x_t` of shape `(B, C, ...)`,
  reusing what earlier steps computed. The module holds weights only, and the state is a
  value the caller keeps (a tuple / dict tree of tensors, batch first, so any rows of it can
  be gathered into a batch and scattered back; see `stream_set.py`). Step from the state a
  step returns. A step may write the state it was given in place where that only overwrites
  what the next step would overwrite anyway (the transformer layers' rings under inference),
  so stepping the given state again (a retry) stays exact, but two different steps from one
  state cannot both be continued.

After `delay` steps, the k-th output that stepping returns equals `forward(x)[:, :, k]`.
A module with temporal stride `s` returns an output only every `s`-th step after that; the
phase of each row (stream) is part of its state, so rows that joined at different steps
can be stepped in one batch. `step_masked` is the per-row form: rows whose `valid` flag is
false keep their state, and the returned mask says which rows produced an output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from elastic.errors import StreamError

State = Any
"""A tree (tuple / list / dict) of tensors whose first dimension is the batch (one row per stream)."""


class StreamingModule(nn.Module):
    """Base class of the continual modules: the contract, with lockstep `step` built on `step_masked`.

    Subclasses implement `init_state`, `step_masked`, `out_frame_shape` and the temporal
    geometry (`delay`, `receptive_field`, `stride`); `forward` is the offline computation.
    """

    @property
    def delay(self) -> int:
        """Steps consumed before the first output: step `delay + k * stride` returns output k."""
        raise NotImplementedError

    @property
    def receptive_field(self) -> int:
        """Input frames one output depends on."""
        raise NotImplementedError

    @property
    def temporal_stride(self) -> int:
        """Input steps between two outputs once the module is warm."""
        return 1

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one output frame (without batch) for input frames of `frame_shape`."""
        return tuple(frame_shape)

    def init_state(
        self,
        batch: int,
        frame_shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """A fresh state for `batch` streams whose frames have shape `frame_shape` (`(C, ...)`, no batch)."""
        return ()

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None) -> tuple[Tensor, Tensor | None, State]:
        """One step for rows flagged by `valid` (None: all rows); other rows keep their state.

        Shape:
            x: `(B, C, ...)`, one frame per row. valid: `(B,)` bool or None.
            Returns `(y, valid_out, state)`: y `(B, C', ...)` (rows where `valid_out` is false hold
            garbage), valid_out `(B,)` bool or None (all rows).
        """
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor | None, State]:
        """One step of a lockstep batch: every row's output, or None while the module warms up.

        Shape:
            x: `(B, C, ...)`; returns y `(B, C', ...)` or None.

        Raises:
            StreamError: rows are at different phases (states gathered from streams that joined
                at different steps); use `step_masked` or `StreamSet` for those.
        """
        y, valid, state = self.step_masked(x, state, None)
        if valid is None or bool(valid if valid.numel() == 1 else valid.all()):  # one stream: no `all` op
            return y, state
        if not bool(valid.any()):
            return None, state
        raise StreamError("rows are at different phases; step them with step_masked or a StreamSet")

    def steps(self, x: Tensor, state: State) -> tuple[Tensor | None, State]:
        """Step through a clip frame by frame; outputs stacked on dim 2 (None if there were none).

        Shape:
            x: `(B, C, T, ...)`; returns `(B, C', T_out, ...)` or None.
        """
        outs = []
        for t in range(x.shape[2]):
            y, state = self.step(x[:, :, t], state)
            if y is not None:
                outs.append(y)
        return (torch.stack(outs, dim=2) if outs else None), state


def param_device_dtype(
    module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a state should take: as given, else those of the module's first tensor."""
    ref = next(iter(module.parameters()), None)
    if ref is None:
        ref = next(iter(module.buffers()), None)
    dev = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    dt = dtype if dtype is not None else (ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    return dev, dt


def keep_rows(valid: Tensor | None, new: State, old: State) -> State:
    """Per row: the new state where `valid`, else the old one (None: all rows take the new state)."""
    if valid is None:
        return new

    def pick(n: Tensor, o: Tensor) -> Tensor:
        return torch.where(valid.view(-1, *([1] * (n.dim() - 1))), n, o)

    return tree_map(pick, new, old)


def and_masks(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Conjunction of two row masks where None means all rows."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


class PhaseCounter:
    """Stride bookkeeping shared by the strided modules: which rows output at this step.

    A row counts the valid frames it has seen (`t`, int64, in the state); it outputs at
    `t = delay + k * stride`.
    """

    @staticmethod
    def init(batch: int, device: torch.device) -> Tensor:
        return torch.zeros(batch, dtype=torch.long, device=device)

    @staticmethod
    def advance(t: Tensor, valid: Tensor | None, delay: int, stride: int) -> tuple[Tensor, Tensor | None]:
        """The rows that output at this step (among the `valid` ones) and the advanced counters."""
        if stride == 1:
            ready = t >= delay
        else:
            since = t - delay
            ready = (since >= 0) & (since % stride == 0)
        ready = ready if valid is None else ready & valid
        t_next = t + 1 if valid is None else t + valid.long()
        return ready, t_next
