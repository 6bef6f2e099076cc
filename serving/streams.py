"""StreamServer: many concurrent streams of one continual module, their steps batched together.

The runtime side of `elastic.streaming` (Continual Inference Networks, Hedegaard et al.:
CoX3D, ECCV 2022; Continual Transformers, ICLR 2023). Callers open streams and push frames;
a worker thread takes the oldest pending frame of up to `max_batch_size` streams, steps
them as one batch through a `StreamSet` (each stream's state is a row of a pooled state),
and resolves each frame's future with that stream's output — a tensor, or None while the
stream warms up or between its strided outputs. A stream's frames are stepped in push
order, one per batch; streams join and leave at any step without changing the others'
outputs.

Failures are typed and local: a bad frame raises `InvalidInput` at `push` (that stream's
state does not move); a closed stream raises `StreamError`; a full queue or a closed server
raises `Overloaded`; a batch whose step fails resolves its futures with `ExecutionError`.
Every accepted frame's future is resolved: with its output, or with `Overloaded` /
`StreamError` when the server or stream is closed without draining.

Optionally the frames are raw inputs of an elastic frame encoder (an `ElasticModel`, e.g.
a `StitchedNet`) whose output feeds the continual module: each stream then has a latency
budget per frame, and at every step each stream's frame is encoded by the most accurate
subnet the latency profile says still makes that frame's deadline (the fastest one when none
does), so consecutive steps of one stream may use different subnets. Frames of one batch
that chose the same subnet are encoded together.

This server is self-contained (its own worker thread) and does not go through
`serving/runtime.py`'s engine loop or scheduler.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from elastic.errors import ExecutionError, InvalidInput, Overloaded, StreamError
from elastic.streaming import StreamingModule, StreamSet

log = logging.getLogger(__name__)


@dataclass
class _StreamQueue:
    """One stream's pending frames and lifecycle, guarded by the server's condition."""

    pending: deque[tuple[Tensor, Future, float]] = field(default_factory=deque)  # frame, future, push time
    closing: bool = False  # no more pushes; leave once pending is stepped
    queued: bool = False  # in the server's ready queue
    budget_ms: float = math.inf  # per-frame latency budget (elastic encoder only)
    subnets: deque[int] = field(default_factory=lambda: deque(maxlen=4096))  # encoder subnet of each stepped frame


class Stream:
    """A handle on one open stream of a `StreamServer`. Use `push`, then `close` (or `with`)."""

    def __init__(self, server: StreamServer, stream_id: Hashable) -> None:
        self._server = server
        self.id = stream_id

    def push(self, frame: Tensor) -> Future[Tensor | None]:
        """Queue one frame; the future resolves to this stream's output for it (None: no output at this step).

        Shape:
            frame: the server's `frame_shape`; the output: the module's output frame.

        Raises:
            InvalidInput: wrong shape, dtype or non-finite values (the stream's state does not move).
            StreamError: the stream is closed.
            Overloaded: this stream's queue is full, or the server is closed.
        """
        return self._server._push(self.id, frame)

    def step(self, frame: Tensor, timeout: float | None = None) -> Tensor | None:
        """`push(frame).result(timeout)`: block for this frame's output."""
        return self.push(frame).result(timeout)

    def close(self, drain: bool = True) -> None:
        """Leave: pending frames are still stepped (drain) or fail with `StreamError`; later pushes raise."""
        self._server._close_stream(self.id, drain)

    @property
    def closed(self) -> bool:
        return self._server._is_closed(self.id)

    @property
    def subnets(self) -> list[int]:
        """The encoder subnet each of this stream's stepped frames used (last 4096; elastic encoder only)."""
        with self._server._cond:
            q = self._server._queues.get(self.id)
            return list(q.subnets) if q is not None else []

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.close()

    def __repr__(self) -> str:
        return f"Stream({self.id!r})"


class StreamServer:
    """Serve many streams of one continual module with batched steps.

    Args:
        module: the continual module (`elastic.streaming`), in eval mode.
        frame_shape: one frame's shape without batch, `(C, ...)` (with `encoder`: its output's).
        device: where states and steps live (default: the module's).
        max_batch_size: most streams stepped in one batch.
        max_pending: most frames one stream may have queued.
        threads: torch intra-op threads of the worker (set inside its thread).
        encoder: an elastic frame encoder (`forward(x, subnet)`, `subnets()`); pushed frames are
            its inputs (shape `encoder_input_shape`), its outputs are the module's frames.
        profile: the encoder's `LatencyProfile` (required with `encoder`): which subnet makes a deadline.
        encoder_input_shape: one raw frame's shape for the encoder.

    Example:
        with StreamServer(es.convert(model), frame_shape=(3, 64, 64)) as server:
            cam = server.open_stream()
            future = cam.push(frame)          # Future[Tensor | None]
    """

    def __init__(
        self,
        module: StreamingModule,
        frame_shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        max_batch_size: int = 64,
        max_pending: int = 256,
        threads: int = 1,
        encoder: Any = None,
        profile: Any = None,
        encoder_input_shape: Sequence[int] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_pending < 1:
            raise ValueError("max_batch_size and max_pending must be >= 1")
        self.encoder = encoder.eval() if encoder is not None else None
        if encoder is not None:
            if profile is None or encoder_input_shape is None:
                raise ValueError("an elastic encoder needs its latency profile and encoder_input_shape")
            self.profile = profile
            self.encoder_input_shape = tuple(int(n) for n in encoder_input_shape)
            value = {s.id: (s.accuracy if s.accuracy is not None else float(s.flops)) for s in encoder.subnets()}
            # fastest first; later ones are more accurate (the profile's accuracy/latency front)
            self._ladder = profile.candidates(encoder.subnets(), value=value)
            if not self._ladder:
                raise ValueError("the profile covers none of the encoder's subnets")
            self._step_ms = 0.0  # running estimate of the continual step's cost, added to each prediction
        self.module = module.eval()
        self.streams = StreamSet(module, frame_shape, device=device, capacity=min(max_batch_size, 64))
        self.max_batch_size = max_batch_size
        self.max_pending = max_pending
        self.threads = threads
        self._cond = threading.Condition()
        self._set_lock = threading.Lock()  # StreamSet rows: open / close / step
        self._queues: dict[Hashable, _StreamQueue] = {}
        self._ready: deque[Hashable] = deque()
        self._closing = False
        self._drain = True
        self.steps = 0  # frames stepped
        self.batches = 0  # batches run
        self._worker = threading.Thread(target=self._loop, name="elastic-streams", daemon=True)
        self._worker.start()

    # ---- caller side ----

    def open_stream(self, stream_id: Hashable | None = None, budget_ms: float = math.inf) -> Stream:
        """Open a stream (a fresh state row); `stream_id` defaults to the next integer.

        `budget_ms` (elastic encoder only): each frame's latency budget from `push` to its output.

        Raises:
            Overloaded: the server is closed.
            StreamError: `stream_id` is already open.
        """
        with self._cond:
            if self._closing:
                raise Overloaded("the stream server is closed")
            with self._set_lock:
                sid = self.streams.open(stream_id)
            self._queues[sid] = _StreamQueue(budget_ms=budget_ms)
        return Stream(self, sid)

    def _push(self, sid: Hashable, frame: Tensor) -> Future[Tensor | None]:
        if self.encoder is not None:
            if not isinstance(frame, Tensor) or tuple(frame.shape) != self.encoder_input_shape:
                got = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
                raise InvalidInput(f"stream {sid!r}: frame {got} != the encoder's input {self.encoder_input_shape}")
            x = frame.to(self.streams.device, self.streams.dtype)
        else:
            x = self.streams.check_frame(frame)
        if not bool(torch.isfinite(x).all()):
            raise InvalidInput(f"stream {sid!r}: frame has non-finite values")
        x = x.clone() if x is frame else x  # the caller may reuse its buffer
        future: Future[Tensor | None] = Future()
        with self._cond:
            if self._closing:
                raise Overloaded("the stream server is closed")
            q = self._queues.get(sid)
            if q is None or q.closing:
                raise StreamError(f"stream {sid!r} is closed")
            if len(q.pending) >= self.max_pending:
                raise Overloaded(f"stream {sid!r} has {len(q.pending)} frames queued (max_pending)")
            q.pending.append((x, future, time.perf_counter()))
            if not q.queued:
                q.queued = True
                self._ready.append(sid)
                self._cond.notify()
        return future

    def _close_stream(self, sid: Hashable, drain: bool) -> None:
        failed: list[Future] = []
        with self._cond:
            q = self._queues.get(sid)
            if q is None or q.closing:
                raise StreamError(f"stream {sid!r} is closed")
            q.closing = True
            if not drain:
                failed = [f for _, f, _ in q.pending]
                q.pending.clear()
            if not q.pending and not q.queued:
                self._leave(sid)
        for f in failed:
            f.set_exception(StreamError(f"stream {sid!r} closed before this frame was stepped"))

    def _is_closed(self, sid: Hashable) -> bool:
        with self._cond:
            q = self._queues.get(sid)
            return q is None or q.closing

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop: step every queued frame first (drain) or fail them with `Overloaded`; then stop the worker."""
        failed: list[Future] = []
        with self._cond:
            self._closing = True
            self._drain = drain
            if not drain:
                for q in self._queues.values():
                    failed += [f for _, f, _ in q.pending]
                    q.pending.clear()
            self._cond.notify_all()
        for f in failed:
            f.set_exception(Overloaded("the stream server closed before this frame was stepped"))
        self._worker.join(timeout)

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def open_streams(self) -> list[Hashable]:
        with self._cond:
            return [sid for sid, q in self._queues.items() if not q.closing]

    # ---- worker side ----

    def _leave(self, sid: Hashable) -> None:
        """Drop a stream whose queue is empty (caller holds `_cond`)."""
        del self._queues[sid]
        with self._set_lock:
            self.streams.close(sid)

    def _next_batch(self) -> dict[Hashable, tuple[Tensor, Future, float]] | None:
        """Up to `max_batch_size` streams' oldest frames, or None when closed and drained."""
        with self._cond:
            while not self._ready and not self._closing:
                self._cond.wait()
            if not self._ready:
                return None
            batch = {}
            while self._ready and len(batch) < self.max_batch_size:
                sid = self._ready.popleft()
                q = self._queues[sid]
                q.queued = False
                while q.pending:
                    frame, future, pushed = q.pending.popleft()
                    if future.set_running_or_notify_cancel():  # a cancelled frame is not stepped
                        batch[sid] = (frame, future, pushed)
                        break
                if sid not in batch and q.closing and not q.pending:
                    self._leave(sid)
            return batch

    def _requeue(self, sids) -> None:
        with self._cond:
            for sid in sids:
                q = self._queues.get(sid)
                if q is None:
                    continue
                if q.pending:
                    if not q.queued:
                        q.queued = True
                        self._ready.append(sid)
                elif q.closing:
                    self._leave(sid)

    def _choose_subnet(self, deadline: float, now: float, batch: int) -> int:
        """The most accurate subnet on the profile's front predicted to finish by `deadline`, else the fastest."""
        left_ms = 1e3 * (deadline - now) - self._step_ms
        best = self._ladder[0]
        for subnet in self._ladder:
            if self.profile.latency_ms(subnet, batch) <= left_ms:
                best = subnet
        return best

    @torch.inference_mode()
    def _encode(self, batch: dict) -> tuple[dict[Hashable, Tensor], dict[Hashable, int]]:
        """Each stream's frame through the encoder subnet its deadline allows; same-subnet frames together."""
        now = time.perf_counter()
        with self._cond:
            budgets = {sid: self._queues[sid].budget_ms if sid in self._queues else math.inf for sid in batch}
        chosen = {}
        for sid, (_, _, pushed) in batch.items():
            deadline = pushed + budgets[sid] / 1e3 if math.isfinite(budgets[sid]) else math.inf
            chosen[sid] = self._ladder[-1] if deadline == math.inf else self._choose_subnet(deadline, now, len(batch))
        features: dict[Hashable, Tensor] = {}
        for subnet in sorted(set(chosen.values())):
            sids = [sid for sid in batch if chosen[sid] == subnet]
            out = self.encoder(torch.stack([batch[sid][0] for sid in sids]), subnet=subnet)
            features.update(zip(sids, out, strict=True))
        return features, chosen

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                frames = {sid: frame for sid, (frame, _, _) in batch.items()}
                chosen: dict[Hashable, int] = {}
                if self.encoder is not None:
                    frames, chosen = self._encode(batch)
                t0 = time.perf_counter()
                with self._set_lock:
                    results = self.streams.step(frames)
                if self.encoder is not None:
                    self._step_ms = 0.8 * self._step_ms + 0.2 * 1e3 * (time.perf_counter() - t0)
            except Exception as e:  # the encoder failed (StreamSet turns step failures into per-stream errors)
                log.exception("stream batch failed")
                err = ExecutionError(f"stream batch failed: {type(e).__name__}: {e}")
                err.__cause__ = e
                results = None
            if chosen and results is not None:
                with self._cond:
                    for sid, subnet in chosen.items():
                        if sid in self._queues and sid in results.outputs:
                            self._queues[sid].subnets.append(subnet)
            self._requeue(batch)
            self.batches += 1
            self.steps += len(batch)
            for sid, (_, future, _) in batch.items():
                if results is None:
                    future.set_exception(err)
                elif sid in results.outputs:
                    future.set_result(results.outputs[sid])
                else:
                    future.set_exception(results.errors[sid])
