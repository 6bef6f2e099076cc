"""StreamSet: many independent streams of one continual module, stepped together as one batch.

continual-inference (Hedegaard & Iosifidis, 2022) keeps state inside the module, so one
module serves one lockstep batch. Here every stream's state is a row of a pooled state
(each leaf has the batch first): a step gathers the rows of the streams that sent a frame,
runs `step_masked` once on that batch, and scatters the new rows back. Streams join and
leave at any step; a stream's outputs depend only on its own frames, whatever else is in
the batch (its stride phase and warm-up are in its row). A bad frame fails that stream's
step only, and leaves its state as it was.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map

from elastic.errors import ElasticError, ExecutionError, InvalidInput, StreamError

from .base import State, StreamingModule, param_device_dtype

log = logging.getLogger(__name__)


@dataclass
class StepResults:
    """What one `StreamSet.step` gave each stream that sent a frame."""

    outputs: dict[Hashable, Tensor | None] = field(default_factory=dict)  # stream -> output frame, None if none yet
    errors: dict[Hashable, ElasticError] = field(default_factory=dict)  # stream -> why its frame was not stepped
    batch_size: int = 0  # rows in the batch that ran


class StreamSet:
    """The states of many streams of `module`, as rows of one pooled state.

    Args:
        module: the continual module (shared, not modified).
        frame_shape: one frame's shape without batch, `(C, ...)`; every stream's frames must match.
        capacity: rows allocated up front (the pool doubles when full).
    """

    def __init__(
        self,
        module: StreamingModule,
        frame_shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        capacity: int = 8,
    ) -> None:
        self.module = module
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.device, self.dtype = param_device_dtype(module, device, dtype)
        with torch.inference_mode():
            self._pool: State = self._fresh(max(1, capacity))
        self._capacity = max(1, capacity)
        self._rows: dict[Hashable, int] = {}
        self._free: list[int] = list(range(self._capacity - 1, -1, -1))
        self._ids = itertools.count()

    def _fresh(self, batch: int) -> State:
        return self.module.init_state(batch, self.frame_shape, device=self.device, dtype=self.dtype)

    @property
    def streams(self) -> list[Hashable]:
        """The open streams, in the order they joined."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, stream: Hashable) -> bool:
        return stream in self._rows

    def open(self, stream: Hashable | None = None) -> Hashable:
        """Add a stream (a fresh state row); returns its id (`stream`, or the next integer)."""
        if stream is None:
            stream = next(self._ids)
            while stream in self._rows:
                stream = next(self._ids)
        elif stream in self._rows:
            raise StreamError(f"stream {stream!r} is already open")
        if not self._free:
            self._grow()
        row = self._free.pop()
        index = torch.tensor([row], device=self.device)
        with torch.inference_mode():  # the pool holds inference tensors (steps run in inference mode)
            tree_map(lambda pool, new: pool.index_copy_(0, index, new), self._pool, self._fresh(1))
        self._rows[stream] = row
        return stream

    def close(self, stream: Hashable) -> None:
        """Remove a stream; its row is reused by a later `open`. Other streams are untouched."""
        row = self._rows.pop(stream, None)
        if row is None:
            raise StreamError(f"stream {stream!r} is not open")
        self._free.append(row)

    def _grow(self) -> None:
        extra = self._capacity
        with torch.inference_mode():
            self._pool = tree_map(lambda a, b: torch.cat([a, b], dim=0), self._pool, self._fresh(extra))
        self._free.extend(range(self._capacity + extra - 1, self._capacity - 1, -1))
        self._capacity += extra
        log.debug("stream pool grown to %d rows", self._capacity)

    def check_frame(self, frame: object) -> Tensor:
        """The frame as a tensor on the set's device and dtype, or `InvalidInput` saying what is wrong.

        Non-finite values are checked batched in `step`.
        """
        if not isinstance(frame, Tensor):
            raise InvalidInput(f"a frame must be a tensor, got {type(frame).__name__}")
        if tuple(frame.shape) != self.frame_shape:
            raise InvalidInput(f"frame shape {tuple(frame.shape)} != the stream's {self.frame_shape}")
        if not (frame.is_floating_point() or frame.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32)):
            raise InvalidInput(f"frame dtype {frame.dtype} is not numeric")
        if frame.dtype == self.dtype and frame.device == self.device:
            return frame
        return frame.to(self.device, self.dtype)

    def step(self, frames: Mapping[Hashable, Tensor]) -> StepResults:
        """Step every stream in `frames` by its frame, all in one batch.

        Shape:
            each frame `frame_shape`; each output the module's output frame, or None while that
            stream warms up or between its strided outputs.

        Returns:
            `StepResults`: an output for every stream whose frame ran, an error for every other
            one (`StreamError` unknown stream, `InvalidInput` bad frame, `ExecutionError` the
            batch failed — then no state moved).
        """
        results = StepResults()
        ids, xs = [], []
        for stream, frame in frames.items():
            if stream not in self._rows:
                results.errors[stream] = StreamError(f"stream {stream!r} is not open")
                continue
            try:
                xs.append(self.check_frame(frame))
                ids.append(stream)
            except InvalidInput as e:
                results.errors[stream] = e
        if not ids:
            return results
        x = torch.stack(xs)
        # one reduction and one read: NaN or inf anywhere makes the sum non-finite (a finite overflow only
        # sends the batch to the per-row check below, which then finds no fault); isfinite().all() cost ~4 us more
        if not math.isfinite(x.sum().item()):  # rare: find the rows at fault
            finite = torch.isfinite(x).flatten(1).all(dim=1)
            keep = finite.tolist()
            for stream, ok in zip(ids, keep, strict=True):
                if not ok:
                    results.errors[stream] = InvalidInput(f"stream {stream!r}: frame has non-finite values")
            ids = [s for s, ok in zip(ids, keep, strict=True) if ok]
            x = x[finite]
            if not ids:
                return results
        rows = [self._rows[s] for s in ids]
        whole = rows == list(range(self._capacity))
        index = None if whole else torch.tensor(rows, device=self.device)
        state = self._pool if whole else tree_map(lambda t: t.index_select(0, index), self._pool)
        try:
            # entering inference mode costs ~1 us: skipped when the caller is in it already
            with nullcontext() if torch.is_inference_mode_enabled() else torch.inference_mode():
                y, valid, new = self.module.step_masked(x, state, None)
        except Exception as e:  # a failed batch fails its streams, and no state moves
            err = ExecutionError(f"streaming step failed: {type(e).__name__}: {e}")
            err.__cause__ = e
            for stream in ids:
                results.errors[stream] = err
            return results
        if whole:
            self._pool = new
        else:
            with torch.inference_mode():
                for pool, rows_new in zip(tree_leaves(self._pool), tree_leaves(new), strict=True):
                    pool.index_copy_(0, index, rows_new)
        ready = [True] * len(ids) if valid is None else valid.tolist()
        for stream, row, ok in zip(ids, y.unbind(0), ready, strict=True):
            results.outputs[stream] = row if ok else None
        results.batch_size = len(ids)
        return results
