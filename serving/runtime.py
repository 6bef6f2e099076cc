"""`Runtime`: serve an elastic model under per-request latency budgets.

One worker thread runs the engine step of vLLM v1 — schedule -> execute -> update ->
stats — over a `BudgetScheduler`: callers submit single samples with a budget; the
scheduler picks a subnet and a batch of the most urgent requests that all make their
deadlines (Clockwork, OSDI'20; SuperServe, NSDI'25); the worker stacks their inputs, runs
one forward, and answers each request with its slice of the output. Dynamic batching with
a bounded queue and typed rejections is what Triton Inference Server's dynamic batcher
does for one fixed model; here the model is elastic, so the batcher also picks the
subnet (INFaaS, ATC'21, picks among model variants the same way).

Guarantees: invalid inputs and infeasible budgets are refused before queueing; every
admitted request ends exactly once, with a `Result` or a typed error (`Overloaded` when
shed, `ExecutionError` when its batch's forward raised, with the cause attached); a failing
forward fails only its own batch, and the worker lives on; `close(drain=True)` answers
everything admitted before it returns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from elastic.errors import BudgetInfeasible, ElasticError, ExecutionError, InvalidInput, Overloaded
from elastic.model import ElasticModel

from .metrics import ServingMetrics
from .output import ScheduledBatch, ShedRequest
from .policies import Policy, make_policy
from .profile import LatencyProfile
from .profiler import device_name, measure_latency
from .request import Request, Result
from .scheduler import BudgetScheduler

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """An admitted request, with what only the runtime holds: its input and its future."""

    request: Request
    x: torch.Tensor  # (1, C, H, W), on the CPU or wherever the caller had it
    squeeze: bool  # the caller sent (C, H, W): answer with (num_classes,)
    future: Future


class Runtime:
    """Serve `model` with per-request latency budgets, deadline-aware batching and shedding.

    Use as a context manager (closing drains the queue)::

        with Runtime(model, max_batch_size=8) as rt:
            rt.profile(example, path=model_dir)        # or reuse profile-<device>.json
            result = rt.infer(x, budget_ms=20)          # Result(output, subnet, ...)

    Args:
        model: an elastic model (`subnets()`, `forward(x, subnet)`, `check_input`).
        device: where the model runs.
        max_batch_size: most requests per forward.
        max_queue: most requests waiting; beyond it, submits raise `Overloaded` (or evict a
            lower-priority request).
        policy: "elastic" (default), "slackfit", "static:<subnet id>", or a `Policy`.
        profile: a latency profile to start with (else call `profile()` before serving).
        quantile: profiled quantile the scheduler plans with, "p99" or "p50".
        ewma_alpha: weight of each observation in the online latency correction.
        metrics_window: requests in the rolling effective-accuracy / SLO gauges.
        clock: monotonic clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        model: ElasticModel,
        device: str | torch.device = "cpu",
        max_batch_size: int = 8,
        max_queue: int = 256,
        policy: str | Policy = "elastic",
        *,
        profile: LatencyProfile | None = None,
        quantile: str = "p99",
        ewma_alpha: float = 0.2,
        metrics_window: int = 1000,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.policy = make_policy(policy)
        self.quantile = quantile
        self.ewma_alpha = ewma_alpha
        self.metrics = ServingMetrics(window=metrics_window)
        self._clock = clock
        self._cond = threading.Condition()
        self._exec_lock = threading.Lock()  # one forward at a time: serving or profiling
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._scheduler: BudgetScheduler | None = None
        self._closing = False
        self._closed = False
        self._worker = threading.Thread(target=self._serve_loop, name="elastic-runtime", daemon=True)
        self._worker.start()
        if profile is not None:
            self.set_profile(profile)

    # ---- profile -----------------------------------------------------------------------
    def profile(
        self,
        example: torch.Tensor | None = None,
        batch_sizes: Sequence[int] = (1, 2, 4, 8),
        *,
        repeats: int = 10,
        warmup: int = 2,
        path: str | Path | None = None,
        reuse: bool = True,
        seed: int = 0,
    ) -> LatencyProfile:
        """Measure (or reuse) the latency profile on this runtime's device and install it.

        Serving pauses while it measures (requests wait, and may be shed if their
        budgets run out).

        Args:
            example: one input sample, (C, H, W) or (1, C, H, W); zeros when None.
            batch_sizes: batch sizes to measure (larger batches are extrapolated).
            repeats: timed runs per (subnet, batch size), interleaved.
            warmup: untimed runs per (subnet, batch size) first.
            path: the model's directory: `profile-<device>.json` there is reused when it
                fits this model, device and batch sizes, and (re)written otherwise.
            reuse: False forces a new measurement.
            seed: seeds the interleaving order.
        """
        sizes = sorted({int(b) for b in batch_sizes})
        if sizes[-1] < self.max_batch_size:
            log.warning(
                "profiling up to batch %d < max_batch_size %d: larger batches are extrapolated",
                sizes[-1],
                self.max_batch_size,
            )
        subnets = self.model.subnets()
        if path is not None and reuse:
            saved = LatencyProfile.load(path, str(self.device))
            if saved is not None:
                why = saved.fits(subnets, device_name(self.device), sizes)
                if why is None:
                    log.info("reusing latency profile from %s", path)
                    self.set_profile(saved)
                    return saved
                log.info("not reusing the saved latency profile: %s", why)
        if example is None:
            example = torch.zeros(self.model.input_size())
        with self._exec_lock:
            measured = measure_latency(self.model, example, sizes, self.device, repeats, warmup, seed=seed)
        if path is not None:
            measured.save(path)
        self.set_profile(measured)
        return measured

    def set_profile(self, profile: LatencyProfile) -> None:
        """Install a profile (and re-read the model's accuracies); resets online correction."""
        subnets = self.model.subnets()
        with self._cond:
            if self._scheduler is None:
                self._scheduler = BudgetScheduler(
                    subnets,
                    profile,
                    self.policy,
                    self.max_batch_size,
                    self.max_queue,
                    self.quantile,
                    self.ewma_alpha,
                )
            else:
                self._scheduler.set_profile(profile, subnets)
            self.metrics.set_subnets(self._scheduler.candidates)
            self._cond.notify_all()

    @property
    def latency_profile(self) -> LatencyProfile | None:
        return self._scheduler.profile if self._scheduler is not None else None

    @property
    def scheduler(self) -> BudgetScheduler | None:
        return self._scheduler

    @property
    def candidates(self) -> list[int]:
        """Subnet ids the scheduler may choose (the Pareto front, or the static one)."""
        return list(self._scheduler.candidates) if self._scheduler is not None else []

    # ---- requests ----------------------------------------------------------------------
    def submit(
        self,
        x: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        priority: int = 0,
        best_effort: bool = False,
    ) -> Future[Result]:
        """Queue one sample; the future ends with a `Result` or a typed `ElasticError`.

        Refusals are raised here, at once, before anything is queued.

        Args:
            x: one sample, (C, H, W) or (1, C, H, W).
            budget_ms: latency budget from now, in milliseconds (math.inf: none).
            min_accuracy: only subnets at least this accurate may serve it.
            priority: higher goes first and is shed last.
            best_effort: run even if the budget cannot be met (the result says so).

        Raises:
            InvalidInput: `x` is not one finite float sample of the model's input size.
            BudgetInfeasible: no eligible subnet can finish within `budget_ms` (and not
                best effort), the budget is not > 0, or no subnet meets `min_accuracy`.
            Overloaded: the queue is full, or the runtime is closed.
            RuntimeError: no latency profile yet (call `profile()`).
        """
        arrival = self._clock()
        try:
            budget = float(budget_ms)
        except (TypeError, ValueError):
            self.metrics.rejected("infeasible")
            raise BudgetInfeasible(f"budget_ms must be a number of milliseconds, got {budget_ms!r}") from None
        try:
            sample, squeeze = self._prepare(x)
        except InvalidInput:
            self.metrics.rejected("invalid")
            raise
        with self._cond:
            if self._closing:
                self.metrics.rejected("closed", budget)
                raise Overloaded("the runtime is closed")
            if self._scheduler is None:
                raise RuntimeError("no latency profile: call Runtime.profile() first")
            request = Request(next(self._ids), arrival, budget, min_accuracy, priority, best_effort)
            try:
                evicted = self._scheduler.add_request(request, self._clock())
            except BudgetInfeasible:
                self.metrics.rejected("infeasible", budget)
                raise
            except Overloaded:
                self.metrics.rejected("overloaded", budget)
                raise
            self.metrics.admitted(budget)
            future: Future[Result] = Future()
            future.set_running_or_notify_cancel()  # running from now on: cannot be cancelled
            self._pending[request.id] = _Pending(request, sample, squeeze, future)
            victims = [(self._pending.pop(s.request_id), s) for s in evicted]
            self.metrics.set_queue_depth(self._scheduler.get_num_waiting())
            self._cond.notify_all()
        self._shed(victims)
        return future

    def infer(
        self,
        x: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        priority: int = 0,
        best_effort: bool = False,
    ) -> Result:
        """`submit` and wait: the `Result`, or the typed error raised."""
        return self.submit(x, budget_ms, min_accuracy=min_accuracy, priority=priority, best_effort=best_effort).result()

    async def infer_async(
        self,
        x: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        priority: int = 0,
        best_effort: bool = False,
    ) -> Result:
        """`submit` and await, for asyncio servers."""
        future = self.submit(x, budget_ms, min_accuracy=min_accuracy, priority=priority, best_effort=best_effort)
        return await asyncio.wrap_future(future)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Validate one sample; returns it as (1, C, H, W) and whether to squeeze the answer."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInput(f"expected a torch.Tensor, got {type(x).__name__}")
        squeeze = x.dim() == 3
        batch = x.unsqueeze(0) if squeeze else x
        self.model.check_input(batch)
        if batch.shape[0] != 1:
            raise InvalidInput(
                f"one sample per request: got a batch of {batch.shape[0]}; submit each sample, the runtime batches them"
            )
        return batch.detach().clone(), squeeze

    # ---- the worker --------------------------------------------------------------------
    def _serve_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (self._scheduler is None or not self._scheduler.has_waiting()):
                    self._cond.wait()
                scheduler = self._scheduler
                if scheduler is None or not scheduler.has_waiting():
                    return  # closing, and nothing left
                try:
                    out = scheduler.schedule(self._clock())
                    shed = [(self._pending.pop(s.request_id), s) for s in out.shed]
                    batch = out.batch
                    members = [self._pending.pop(rid) for rid in batch.request_ids] if batch else []
                except Exception:  # a scheduler bug must not strand requests
                    log.exception("scheduling failed; failing every queued request")
                    scheduler.abort_all("error")
                    # no batch runs while the worker is here: everything pending was queued
                    shed, batch, members = [], None, []
                    errors = list(self._pending.values())
                    self._pending.clear()
                    self.metrics.failed(len(errors))
                    for p in errors:
                        self._fail(p, ExecutionError("the scheduler failed; see the runtime's log"))
                self.metrics.set_queue_depth(scheduler.get_num_waiting())
            self._shed(shed)
            if batch is not None:
                try:
                    self._execute(scheduler, batch, members)
                except Exception as e:  # metrics or result assembly: still answer everyone
                    log.exception("finishing batch %s failed", batch)
                    left = [m for m in members if not m.future.done()]
                    self.metrics.failed(len(left))
                    for m in left:
                        self._fail(m, _execution_error(batch, e))

    def _execute(self, scheduler: BudgetScheduler, batch: ScheduledBatch, members: list[_Pending]) -> None:
        """One forward for the batch; answer each member with its slice, or fail them all."""
        error: Exception | None = None
        with self._exec_lock:
            start = self._clock()
            try:
                x = torch.cat([m.x for m in members]).to(self.device)
                with torch.inference_mode():
                    y = self.model(x, subnet=batch.subnet)
                y = y.detach().to("cpu")  # on CUDA, also waits for the forward
            except Exception as e:
                error = e
            end = self._clock()
        exec_ms = 1e3 * (end - start)
        with self._cond:
            ratio = scheduler.update_from_output(batch, None if error else exec_ms)
            corrections = scheduler.predictor.corrections()
        if error is not None:
            log.warning("forward of subnet %d on %d requests failed: %r", batch.subnet, batch.size, error)
            self.metrics.failed(len(members))
            for m in members:
                self._fail(m, _execution_error(batch, error))
            return
        self.metrics.batch(batch.size, exec_ms / 1e3, ratio)
        self.metrics.set_corrections(corrections)
        accuracy = scheduler.real_accuracy(batch.subnet)
        for i, m in enumerate(members):
            r = m.request
            latency_ms = 1e3 * (end - r.arrival)
            queue_ms = 1e3 * (start - r.arrival)
            met = latency_ms <= r.budget_ms
            output = y[i] if m.squeeze else y[i : i + 1]
            self.metrics.answered(batch.subnet, accuracy, latency_ms / 1e3, queue_ms / 1e3, met)
            m.future.set_result(Result(output, batch.subnet, queue_ms, exec_ms, latency_ms, met, batch.size, r.id))

    def _shed(self, shed: list[tuple[_Pending, ShedRequest]]) -> None:
        for p, s in shed:
            self.metrics.shed(s.reason if s.reason in ("deadline", "evicted", "closed") else "closed")
            self._fail(p, Overloaded(f"request {s.request_id} shed: {s.detail or s.reason}"))

    @staticmethod
    def _fail(p: _Pending, error: ElasticError) -> None:
        if not p.future.done():
            p.future.set_exception(error)

    # ---- lifecycle ---------------------------------------------------------------------
    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Expose Prometheus metrics at http://addr:port/metrics (loopback by default).

        Returns:
            the bound port (useful with port=0, which picks a free one).
        """
        return self.metrics.serve(port, addr)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests and stop the worker.

        Args:
            drain: answer every queued request first (True), or shed them all with
                `Overloaded` (False). The batch already running finishes either way.
            timeout: most seconds to wait for the worker (None: as long as it takes).
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            aborted = []
            if not drain and self._scheduler is not None:
                aborted = [(self._pending.pop(s.request_id), s) for s in self._scheduler.abort_all("closed")]
                self.metrics.set_queue_depth(0)
            self._cond.notify_all()
        self._shed(aborted)
        if threading.current_thread() is self._worker:  # close() from a result callback
            return
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("runtime worker still busy after %.3g s; it will finish in the background", timeout)
            return
        with self._cond:
            left = list(self._pending.values())
            self._pending.clear()
            self._closed = True
        for p in left:  # cannot happen unless the worker died; never leave a future pending
            self.metrics.shed("closed")
            self._fail(p, Overloaded("the runtime closed before answering"))
        self.metrics.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=True)


def _execution_error(batch: ScheduledBatch, cause: BaseException) -> ExecutionError:
    error = ExecutionError(
        f"forward of subnet {batch.subnet} on a batch of {batch.size} failed: {type(cause).__name__}: {cause}"
    )
    error.__cause__ = cause
    return error
