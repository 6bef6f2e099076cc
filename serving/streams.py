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

The frames may be raw inputs of an elastic frame encoder (an `ElasticModel`, e.g. a
`StitchedNet`) whose output feeds the continual module; each stream then has a latency
budget per frame (`open_stream(budget_ms=)`, or per push), and consecutive frames of one
stream may be encoded by different subnets (`Stream.subnets` lists them). Two ways:

- `runtime=`: each pushed frame is submitted to a `Runtime` serving the encoder
  (`rt.submit(frame, budget_ms)`), so the runtime's admission and scheduler choose the
  subnet and batch frames of all streams with the rest of its traffic. When a frame's
  encoding resolves, its continual step runs on this server's worker, batched across
  streams, strictly in each stream's push order (encodings may finish out of order: a
  stream's step k waits for its step k-1). `open_stream(runtime, module)` below is what
  `Runtime.open_stream` delegates to.
- `encoder=` + `profile=` (self-contained, no runtime): the worker encodes each frame with
  the most accurate subnet the profile predicts still makes its deadline (the fastest when
  none does), same-subnet frames of a batch together.

A frame whose encoding fails (refused at submit: `BudgetInfeasible`, `Overloaded`; shed or
failed later: `Overloaded`, `ExecutionError`) resolves with that error and is *skipped*:
the stream's state does not move and its later frames go on. This is what a live feed
under overload wants (a dropped frame, not a dead camera), and the offline equivalence
then holds over the frames that were stepped: the stream's outputs are the offline model's
outputs on its sequence of successfully encoded frames (a skipped frame is as if it was
never pushed, so temporal positions after it shift by one). `Stream.skipped` counts them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from elastic.errors import ConfigError, ElasticError, ExecutionError, InvalidInput, Overloaded, StreamError
from elastic.streaming import StreamingModule, StreamSet

log = logging.getLogger(__name__)


@dataclass
class _Frame:
    """One pushed frame: its data (or the runtime's encoding of it), its future, when and with what budget."""

    data: Tensor | None  # the frame (raw, or the encoder's input); None once a runtime encodes it
    future: Future  # resolved with the stream's output for this frame, or an error
    pushed: float  # perf_counter() at push
    budget_ms: float = math.inf  # this frame's latency budget (elastic encoder only)
    encoding: Future | None = None  # the runtime's Future[Result] (runtime mode only)

    def ready(self) -> bool:
        """Can be stepped (or skipped) now: a raw frame, or an encoding that has ended."""
        return self.encoding is None or self.encoding.done()


def _encoding_error(encoding: Future) -> BaseException | None:
    """Why an ended encoding has no result (None: it has one)."""
    if encoding.cancelled():
        return Overloaded("the frame's encoding was cancelled")
    return encoding.exception()


def _fail(future: Future, error: BaseException) -> None:
    """Resolve `future` with `error` unless it already ended (cancelled by its caller)."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)


@dataclass
class _StreamQueue:
    """One stream's pending frames and lifecycle, guarded by the server's condition."""

    pending: deque[_Frame] = field(default_factory=deque)  # in push order
    closing: bool = False  # no more pushes; leave once pending is stepped
    queued: bool = False  # in the server's ready queue
    budget_ms: float = math.inf  # default per-frame latency budget (elastic encoder only)
    subnets: deque[int] = field(default_factory=lambda: deque(maxlen=4096))  # encoder subnet of each stepped frame
    skipped: int = 0  # frames whose encoding failed (not stepped)


class Stream:
    """A handle on one open stream of a `StreamServer`. Use `push`, then `close` (or `with`)."""

    def __init__(self, server: StreamServer, stream_id: Hashable) -> None:
        self._server = server
        self.id = stream_id

    def push(self, frame: Tensor, budget_ms: float | None = None) -> Future[Tensor | None]:
        """Queue one frame; the future resolves to this stream's output for it (None: no output at this step).

        Args:
            frame: one frame without batch dim: the continual module's input, or the encoder's.
            budget_ms: this frame's latency budget from now (default: the stream's); used only
                with an encoder (a runtime's or the server's own).

        Shape:
            frame: the server's `frame_shape` (with an encoder: the encoder's one-sample input);
            the output: the module's output frame.

        Raises:
            InvalidInput: wrong shape, dtype or non-finite values (the stream's state does not move).
            StreamError: the stream is closed.
            Overloaded: this stream's queue is full, or the server is closed.

        With a runtime, a frame the runtime refuses (`BudgetInfeasible`, `Overloaded`) or fails
        is not raised here: its future resolves with that error and the stream skips the frame.
        Callbacks on the future then run on the runtime's thread: keep them short, never block
        on another frame's result there.
        """
        return self._server._push(self.id, frame, budget_ms)

    def step(self, frame: Tensor, timeout: float | None = None) -> Tensor | None:
        """`push(frame).result(timeout)`: block for this frame's output."""
        return self.push(frame).result(timeout)

    def close(self, drain: bool = True) -> None:
        """Leave: pending frames are still stepped (drain) or fail with `StreamError`; later pushes raise."""
        self._server._close_stream(self.id, drain)

    @property
    def closed(self) -> bool:
        """No more pushes: the stream or its server was closed."""
        return self._server._is_closed(self.id)

    @property
    def subnets(self) -> list[int]:
        """The encoder subnet each of this stream's stepped frames used, in order (last 4096; encoder only)."""
        with self._server._cond:
            q = self._server._queues.get(self.id)
            return list(q.subnets) if q is not None else []

    @property
    def skipped(self) -> int:
        """Frames whose encoding failed, so the stream skipped them (their futures hold the errors)."""
        with self._server._cond:
            q = self._server._queues.get(self.id)
            return q.skipped if q is not None else 0

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
        frame_shape: one frame's shape without batch, `(C, ...)` (with an encoder: its output's).
        device: where states and steps live (default: the module's).
        max_batch_size: most streams stepped in one batch.
        max_pending: most frames one stream may have queued.
        threads: torch intra-op threads of the worker (set inside its thread).
        runtime: a `Runtime` serving the elastic frame encoder: pushed frames are submitted to it
            (its input samples), its results' outputs are the module's frames.
        encoder: (without a runtime) an elastic frame encoder (`forward(x, subnet)`, `subnets()`)
            this server runs itself; pushed frames are its inputs (shape `encoder_input_shape`).
        profile: the encoder's `LatencyProfile` (required with `encoder`): which subnet makes a deadline.
        encoder_input_shape: one raw frame's shape for `encoder`.

    Raises:
        ConfigError: both `runtime` and `encoder`, or a bad size.

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
        runtime: Any = None,
        encoder: Any = None,
        profile: Any = None,
        encoder_input_shape: Sequence[int] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_pending < 1:
            raise ConfigError("max_batch_size and max_pending must be >= 1")
        if runtime is not None and encoder is not None:
            raise ConfigError("pass either a runtime (which serves the encoder) or an encoder, not both")
        self.runtime = runtime
        self.encoder = encoder.eval() if encoder is not None else None
        if encoder is not None:
            if profile is None or encoder_input_shape is None:
                raise ConfigError("an elastic encoder needs its latency profile and encoder_input_shape")
            self.profile = profile
            self.encoder_input_shape = tuple(int(n) for n in encoder_input_shape)
            value = {s.id: (s.accuracy if s.accuracy is not None else float(s.flops)) for s in encoder.subnets()}
            # fastest first; later ones are more accurate (the profile's accuracy/latency front)
            self._ladder = profile.candidates(encoder.subnets(), value=value)
            if not self._ladder:
                raise ConfigError("the profile covers none of the encoder's subnets")
        self._step_ms = 0.0  # running estimate of the continual step's cost, taken off each frame's budget
        self.module = module.eval()
        self.streams = StreamSet(module, frame_shape, device=device, capacity=min(max_batch_size, 64))
        self.max_batch_size = max_batch_size
        self.max_pending = max_pending
        self.threads = threads
        self._cond = threading.Condition()  # an RLock: encoding callbacks may run inside our own calls
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

        `budget_ms` (with an encoder): each frame's default latency budget from `push` to its output.

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

    def _open_queue(self, sid: Hashable) -> _StreamQueue:
        """The stream's queue if it takes another frame (caller holds `_cond`), else the typed error."""
        if self._closing:
            raise Overloaded("the stream server is closed")
        q = self._queues.get(sid)
        if q is None or q.closing:
            raise StreamError(f"stream {sid!r} is closed")
        if len(q.pending) >= self.max_pending:
            raise Overloaded(f"stream {sid!r} has {len(q.pending)} frames queued (max_pending)")
        return q

    def _enqueue(self, sid: Hashable, frame: _Frame) -> None:
        with self._cond:
            q = self._open_queue(sid)
            q.pending.append(frame)
            self._mark_ready(sid, q)

    def _mark_ready(self, sid: Hashable, q: _StreamQueue) -> None:
        """Put the stream in the ready queue if its oldest frame can be stepped (caller holds `_cond`)."""
        if not q.queued and q.pending and q.pending[0].ready():
            q.queued = True
            self._ready.append(sid)
            self._cond.notify()

    def _push(self, sid: Hashable, frame: Tensor, budget_ms: float | None) -> Future[Tensor | None]:
        if self.runtime is not None:
            return self._push_to_runtime(sid, frame, budget_ms)
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
            budget = self._open_queue(sid).budget_ms if budget_ms is None else budget_ms
        self._enqueue(sid, _Frame(x, future, time.perf_counter(), budget))
        return future

    def _push_to_runtime(self, sid: Hashable, frame: Tensor, budget_ms: float | None) -> Future[Tensor | None]:
        """Submit the frame to the runtime now; the stream steps it when its encoding (and every earlier one) ends."""
        pushed = time.perf_counter()
        with self._cond:
            q = self._open_queue(sid)  # refuse before spending an encoding
            budget = q.budget_ms if budget_ms is None else budget_ms
        future: Future[Tensor | None] = Future()
        try:
            # the continual step comes after the encoding, inside the same budget
            encoding = self.runtime.submit(frame, budget - self._step_ms)
        except InvalidInput:
            raise
        except ElasticError as e:  # refused (BudgetInfeasible, Overloaded): the stream skips this frame
            with self._cond:
                if sid in self._queues:
                    self._queues[sid].skipped += 1
            future.set_exception(e)
            return future
        entry = _Frame(None, future, pushed, budget, encoding)
        try:
            self._enqueue(sid, entry)
        except ElasticError:  # closed meanwhile: the encoding's result is not needed
            encoding.cancel()
            raise
        encoding.add_done_callback(lambda done, sid=sid, entry=entry: self._encoded(sid, entry))
        return future

    def _encoded(self, sid: Hashable, entry: _Frame) -> None:
        """An encoding ended (on a runtime thread): fail its frame at once if it failed; wake the worker."""
        error = _encoding_error(entry.encoding)
        if error is not None:
            _fail(entry.future, error)
        with self._cond:
            q = self._queues.get(sid)
            if q is not None:
                self._mark_ready(sid, q)

    def _close_stream(self, sid: Hashable, drain: bool) -> None:
        failed: list[_Frame] = []
        with self._cond:
            q = self._queues.get(sid)
            if q is None or q.closing:
                raise StreamError(f"stream {sid!r} is closed")
            q.closing = True
            if not drain:
                failed = list(q.pending)
                q.pending.clear()
            if not q.pending and not q.queued:
                self._leave(sid)
        for f in failed:
            _fail(f.future, StreamError(f"stream {sid!r} closed before this frame was stepped"))
            if f.encoding is not None:
                f.encoding.cancel()

    def _is_closed(self, sid: Hashable) -> bool:
        with self._cond:
            q = self._queues.get(sid)
            return self._closing or q is None or q.closing

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop: step every queued frame first (drain) or fail them with `Overloaded`; then stop the worker.

        With a runtime, draining waits for the frames' encodings, so close the streams before the runtime.
        """
        failed: list[_Frame] = []
        with self._cond:
            self._closing = True
            self._drain = drain
            if not drain:
                for q in self._queues.values():
                    failed += q.pending
                    q.pending.clear()
            self._cond.notify_all()
        for f in failed:
            _fail(f.future, Overloaded("the stream server closed before this frame was stepped"))
            if f.encoding is not None:
                f.encoding.cancel()
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

    def _next_batch(self) -> dict[Hashable, _Frame] | None:
        """Up to `max_batch_size` streams' oldest frames, or None when closed and nothing is pending."""
        with self._cond:
            while not self._ready:
                if self._closing and not any(q.pending for q in self._queues.values()):
                    return None
                self._cond.wait()
            batch = {}
            while self._ready and len(batch) < self.max_batch_size:
                sid = self._ready.popleft()
                q = self._queues[sid]
                q.queued = False
                while q.pending and q.pending[0].ready():
                    frame = q.pending.popleft()
                    if frame.encoding is not None and _encoding_error(frame.encoding) is not None:
                        q.skipped += 1  # its future already holds the error (`_encoded`)
                        continue
                    if frame.future.set_running_or_notify_cancel():  # a cancelled frame is not stepped
                        batch[sid] = frame
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
                    self._mark_ready(sid, q)
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
    def _encode(self, batch: dict[Hashable, _Frame]) -> tuple[dict[Hashable, Tensor], dict[Hashable, int]]:
        """Each stream's frame through the encoder subnet its deadline allows; same-subnet frames together."""
        now = time.perf_counter()
        chosen = {}
        for sid, frame in batch.items():
            if math.isfinite(frame.budget_ms):
                chosen[sid] = self._choose_subnet(frame.pushed + frame.budget_ms / 1e3, now, len(batch))
            else:
                chosen[sid] = self._ladder[-1]
        features: dict[Hashable, Tensor] = {}
        for subnet in sorted(set(chosen.values())):
            sids = [sid for sid in batch if chosen[sid] == subnet]
            out = self.encoder(torch.stack([batch[sid].data for sid in sids]), subnet=subnet)
            features.update(zip(sids, out, strict=True))
        return features, chosen

    def _inputs(self, batch: dict[Hashable, _Frame]) -> tuple[dict[Hashable, Tensor], dict[Hashable, int]]:
        """The module's input frame of each stream in the batch, and the encoder subnet that made it."""
        if self.runtime is not None:
            results = {sid: frame.encoding.result() for sid, frame in batch.items()}
            return {sid: r.output for sid, r in results.items()}, {sid: r.subnet for sid, r in results.items()}
        if self.encoder is not None:
            return self._encode(batch)
        return {sid: frame.data for sid, frame in batch.items()}, {}

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            chosen: dict[Hashable, int] = {}
            try:
                frames, chosen = self._inputs(batch)
                t0 = time.perf_counter()
                with self._set_lock:
                    results = self.streams.step(frames)
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
            for sid, frame in batch.items():
                if results is None:
                    frame.future.set_exception(err)
                elif sid in results.outputs:
                    frame.future.set_result(results.outputs[sid])
                else:
                    frame.future.set_exception(results.errors[sid])


# ---- streams of a Runtime: one StreamServer per (runtime, continual module) ----

_RUNTIME_SERVERS: weakref.WeakKeyDictionary[Any, dict[int, tuple[StreamServer, dict]]] = weakref.WeakKeyDictionary()
_RUNTIME_LOCK = threading.Lock()


def encoder_output_shape(runtime: Any) -> tuple[int, ...]:
    """One sample's output shape of the runtime's model (its first subnet on a zero input), without batch."""
    model = runtime.model
    x = torch.zeros(1, *model.input_size(), dtype=runtime.dtype, device=runtime.device)
    with torch.inference_mode():
        y = model(x, subnet=model.subnets()[0].id)
    return tuple(y.shape[1:])


def open_stream(
    runtime: Any,
    module: StreamingModule,
    budget_ms: float = math.inf,
    *,
    stream_id: Hashable | None = None,
    frame_shape: Sequence[int] | None = None,
    **server_options: Any,
) -> Stream:
    """A stream whose frames `runtime` encodes and `module` (a continual module) steps: `Runtime.open_stream`.

    The runtime keeps one `StreamServer` per continual module, made on the first stream of that
    module and closed by `close_streams(runtime)`; every stream of it is batched with the others.

    Args:
        runtime: a `Runtime` serving the elastic frame encoder (with a latency profile).
        module: the continual module fed by the encoder's outputs.
        budget_ms: each frame's default latency budget, push to output (the runtime's scheduler
            picks the encoder subnet per frame within it); `Stream.push(frame, budget_ms=)` overrides.
        stream_id: the stream's id (default: the next integer of that module's server).
        frame_shape: the encoder's output shape per sample (default: found by one forward).
        **server_options: `StreamServer` settings (max_batch_size, max_pending, threads, device),
            used when the module's server is made; later streams of it must pass the same.

    Raises:
        ConfigError: `server_options` differ from those of the module's running server.
        StreamError: `stream_id` is already open.
        Overloaded: the module's server is closed.
    """
    with _RUNTIME_LOCK:
        servers = _RUNTIME_SERVERS.setdefault(runtime, {})
        entry = servers.get(id(module))
        if entry is None:
            shape = tuple(frame_shape) if frame_shape is not None else encoder_output_shape(runtime)
            server = StreamServer(module, shape, runtime=runtime, **server_options)
            servers[id(module)] = entry = (server, dict(server_options))
        elif server_options and server_options != entry[1]:
            raise ConfigError(f"the module's stream server runs with {entry[1]}, not {server_options}")
    return entry[0].open_stream(stream_id, budget_ms=budget_ms)


def close_streams(runtime: Any, drain: bool = True, timeout: float | None = None) -> None:
    """Close every stream server of `runtime` (`Runtime.close` calls this before stopping its engine).

    Args:
        drain: step every pushed frame first (their encodings still run on the runtime), or
            fail them with `Overloaded`.
        timeout: most seconds to wait for each server's worker.
    """
    with _RUNTIME_LOCK:
        servers = _RUNTIME_SERVERS.pop(runtime, {})
    for server, _ in servers.values():
        server.close(drain=drain, timeout=timeout)
