"""`EngineCore`: the engine loop behind `Runtime` — scheduler → executor → results and metrics.

After vLLM v1's EngineCore: one worker thread runs the step *schedule → execute → update →
stats* over a `BudgetScheduler` and an `Executor`; the front end (`Runtime`) only validates
and hands requests over. Beside the worker, a deadline watchdog thread sheds queued
requests at the moment they can no longer make their deadline, also while the worker is
inside a long forward (Clockwork, OSDI'20, drops requests as soon as they cannot meet their
SLO rather than when a worker comes back).

Guarantees:
- every admitted request ends exactly once: a `Result`, or a typed error (`Overloaded` when
  shed, `ExecutionError` when its forward failed or produced non-finite outputs);
- a failing forward (`Exception`) fails only its batch; anything else that escapes the
  worker (a `BaseException`, an error inside an error handler) kills it *loudly*: every
  pending request and job is failed with `ExecutionError`, and new submits are refused
  with `Overloaded` naming the cause;
- the latency model is fed: forward time per batch (online correction) and the engine's
  own time around it (`observe_overhead`), exported as metrics.

Caller runs: a thread about to block on a result (`Runtime.infer`, or `result()` on a
future) while the worker sleeps runs the next engine step itself — the same schedule →
execute → answer, under the same lock discipline — instead of waking the worker and
sleeping until it answers. On a loaded CPU each of those two thread hand-offs costs more
than a small forward. The forward then runs with the calling thread's torch settings.
Likewise, while the worker holds a partial batch back to fill it, a submit wakes it only
when the batch is full or the new request could not wait for the hold's end
(`_hold_must_end`); otherwise the worker wakes by itself when the hold ends.

Threading contract: futures are resolved — and their done-callbacks run — on the worker
thread, on a caller-runs thread (results, failed batches), on the watchdog thread
(deadline sheds), or on the thread that submitted (requests it evicted). Callbacks must be
short and must not block on this runtime: `Runtime.infer` or `result()` of a pending future
called on an engine thread raises `ReentrantCall` instead of waiting for itself; `submit`
from a callback is fine.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED as _CANCELLED
from concurrent.futures._base import CANCELLED_AND_NOTIFIED as _CANCELLED_AND_NOTIFIED
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import RUNNING as _RUNNING
from concurrent.futures._base import InvalidStateError
from dataclasses import dataclass
from typing import Any

import torch

from elastic.errors import BudgetInfeasible, ElasticError, ExecutionError, Overloaded, ReentrantCall

from .executor import Executor
from .metrics import ServingMetrics
from .output import ScheduledBatch, ShedRequest
from .request import Request, Result
from .scheduler import BudgetScheduler
from .worker_threads import configure_worker_threads

log = logging.getLogger(__name__)
_DONE_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))


@dataclass(slots=True)
class Pending:
    """An admitted request with what only the engine holds: its input and its future."""

    request: Request
    x: torch.Tensor | None  # (1, C, H, W), a private copy (None: row `row` of `base`)
    squeeze: bool  # the caller sent (C, H, W): answer with (num_classes,)
    future: Future
    base: torch.Tensor | None = None  # `submit_many`: the (B, C, H, W) copy the sample is row `row` of
    row: int = 0

    def sample(self) -> torch.Tensor:
        """The sample as (1, C, H, W) (a `submit_many` row is sliced only when it runs alone).

        Shape:
            (1, C, H, W)
        """
        return self.x if self.x is not None else self.base[self.row : self.row + 1]


class EngineCore:
    """The worker and watchdog threads, the pending futures, and one scheduler.

    Args:
        executor: runs (subnet, batch) forwards.
        metrics: where every outcome is counted.
        clock: monotonic clock in seconds (the scheduler's clock too).
        worker_threads: torch intra-op threads the worker sets on itself (None: keep the
            process default for a new thread; see `worker_threads.py` for why to set it).
        check_outputs: fail requests whose output row holds NaN or Inf.
        name: thread name prefix.
        caller_runs: a thread that blocks on a result while the worker sleeps runs the next
            engine step itself (`help`), saving the hand-offs to and from the worker.
        ids: where request ids come from (engines of one runtime share one counter, so ids
            stay unique across its lanes); default: a counter of its own.
    """

    def __init__(
        self,
        executor: Executor,
        metrics: ServingMetrics,
        clock: Callable[[], float],
        worker_threads: int | None = None,
        check_outputs: bool = True,
        name: str = "elastic-runtime",
        caller_runs: bool = True,
        ids: Iterator[int] | None = None,
    ):
        self.executor = executor
        self.metrics = metrics
        self.clock = clock
        self.worker_threads = worker_threads
        self.check_outputs = check_outputs
        self.caller_runs = caller_runs
        self.scheduler: BudgetScheduler | None = None
        self.dead: BaseException | None = None
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits here
        self._watch = threading.Condition(self._lock)  # the watchdog waits here
        self._pending: dict[int, Pending] = {}
        self._ids = ids if ids is not None else itertools.count()
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._running: tuple[ScheduledBatch, list[Pending]] | None = None
        self._idle = False  # the worker is waiting for work
        self._woken_at: float | None = None  # when a submit woke the idle worker
        self._hold_until: float | None = None  # the worker holds a partial batch back until then
        self._overhead: tuple[int, float, int] | None = None  # last batch: (size, overhead ms, subnet)
        self._watch_at = math.inf  # when the watchdog next wakes by itself
        self._closing = False
        self._stopped = False
        self._broken_schedule = False  # a caller's schedule() raised: the worker fails the queue
        self._worker = threading.Thread(target=self._run_worker, name=name, daemon=True)
        self._watchdog = threading.Thread(target=self._run_watchdog, name=f"{name}-deadlines", daemon=True)

    # ---- set-up ------------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()
        self._watchdog.start()

    def install(self, scheduler: BudgetScheduler) -> None:
        """Serve with `scheduler` from now on (its queue must be empty or the current one's)."""
        with self._lock:
            self.scheduler = scheduler
            self.metrics.track_queue_depth(scheduler.get_num_waiting)  # read at scrape time
            self.metrics.track_latency_model(
                lambda: (scheduler.overhead.per_batch_ms, scheduler.overhead.per_request_ms),
                lambda sid: scheduler.predictor.correction(sid),
            )
            self._work.notify()

    @property
    def closing(self) -> bool:
        """`close` was called: new submits are refused."""
        return self._closing

    def load(self) -> int:
        """Requests queued or running (read without the lock: a snapshot for routing)."""
        scheduler = self.scheduler
        return (scheduler.get_num_waiting() if scheduler is not None else 0) + (self._running is not None)

    def on_engine_thread(self) -> bool:
        """True on the worker or watchdog thread (where blocking on a result deadlocks)."""
        current = threading.current_thread()
        return current is self._worker or current is self._watchdog

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    # ---- requests ----------------------------------------------------------------------
    def submit(
        self,
        arrival: float,
        budget_ms: float,
        min_accuracy: float | None,
        priority: int,
        best_effort: bool,
        x: torch.Tensor,
        squeeze: bool,
        inline: bool = False,
        count_refusal: bool = True,
    ) -> Future[Result]:
        """Admit one validated request, or raise (`BudgetInfeasible`, `Overloaded`).

        `count_refusal=False`: a refusal by the scheduler is raised but not counted (the
        caller offers the request to another lane next, and counts it once if all refuse).

        With `inline` (a caller about to block on the result), when the engine is idle —
        nothing queued, nothing running — the request's batch runs right here on the
        caller's thread, and the future is done on return: two thread hand-offs saved,
        which on a loaded CPU cost more than a small forward. Otherwise, and whenever the
        scheduler would rather hold the request back to fill a batch, the worker serves it.

        `x` must be the caller's private copy, except with `inline`: then it may be the
        caller's own tensor (a view), and is copied here only if the request is queued
        rather than run before this call returns.
        """
        future = self._new_future()
        metrics = self.metrics
        with self._lock:
            if self.dead is not None:
                metrics.rejected("closed", budget_ms)
                raise Overloaded(
                    f"the runtime's worker died ({type(self.dead).__name__}: {self.dead}); create a new Runtime"
                )
            if self._closing:
                metrics.rejected("closed", budget_ms)
                raise Overloaded("the runtime is closed")
            scheduler = self.scheduler
            if scheduler is None:
                raise RuntimeError("no latency profile: call Runtime.profile() first")
            request = Request(next(self._ids), arrival, budget_ms, min_accuracy, priority, best_effort)
            if self._overhead is not None:  # now, not at the next schedule: one `fastest_at` rebuild, not two
                self._fold_overhead()
            now = self.clock()
            try:
                evicted = scheduler.add_request(request, now)
            except BudgetInfeasible:
                if count_refusal:
                    metrics.rejected("infeasible", budget_ms)
                raise
            except Overloaded:
                if count_refusal:
                    metrics.rejected("overloaded", budget_ms)
                raise
            metrics.admitted(budget_ms)
            future.request_id = request.id  # lets `cancel` find it
            self._pending[request.id] = Pending(request, x, squeeze, future)
            victims = [(self._pending.pop(s.request_id), s) for s in evicted] if evicted else None
            step, shed = self._claim_step() if inline and not victims and len(scheduler._reqs) == 1 else (None, [])
            if step is None:
                if inline:  # queued: the caller may change its tensor once this returns
                    self._pending[request.id].x = x.clone()
                if self._idle:
                    if self._hold_until is None or self._hold_must_end(scheduler, request):
                        self._woken_at = now
                        self._work.notify()
                elif self._running is not None and not best_effort:
                    nxt = scheduler.next_expiry()
                    if nxt is not None and nxt < self._watch_at:
                        self._watch.notify()
        if victims or shed:
            self._shed((victims or []) + shed)
        if step is not None:
            self._execute_here(scheduler, *step)
        return future

    def submit_many(
        self,
        arrival: float,
        budget_ms: float,
        min_accuracy: float | None,
        priority: int,
        best_effort: bool,
        xs: torch.Tensor,
    ) -> list[Future[Result]]:
        """Admit each row of a validated, private (B, C, H, W) copy as its own request, in
        order, under one lock; answers are (num_classes,) rows.

        A request the scheduler refuses gets a future already failed with that error
        (`BudgetInfeasible`, `Overloaded`) and the rows after it are still offered; a closed
        or dead runtime raises `Overloaded` for the whole call. The worker is woken once.
        Rows that run together in one batch are passed to the executor as one slice of
        `xs`, without stacking.
        """
        n = xs.shape[0]
        futures: list[Future[Result]] = []
        for _ in range(n):
            futures.append(self._new_future())
        metrics = self.metrics
        victims: list[tuple[Pending, ShedRequest]] = []
        refused: list[tuple[Future, Exception]] = []
        with self._lock:
            if self.dead is not None or self._closing:
                for _ in range(n):
                    metrics.rejected("closed", budget_ms)
                if self.dead is not None:
                    raise Overloaded(
                        f"the runtime's worker died ({type(self.dead).__name__}: {self.dead}); create a new Runtime"
                    )
                raise Overloaded("the runtime is closed")
            scheduler = self.scheduler
            if scheduler is None:
                raise RuntimeError("no latency profile: call Runtime.profile() first")
            if self._overhead is not None:
                self._fold_overhead()
            now = self.clock()
            admitted = 0
            for i, future in enumerate(futures):
                request = Request(next(self._ids), arrival, budget_ms, min_accuracy, priority, best_effort)
                try:
                    evicted = scheduler.add_request(request, now)
                except (BudgetInfeasible, Overloaded) as e:
                    metrics.rejected("infeasible" if isinstance(e, BudgetInfeasible) else "overloaded", budget_ms)
                    refused.append((future, e))
                    continue
                admitted += 1
                future.request_id = request.id
                self._pending[request.id] = Pending(request, None, True, future, xs, i)
                if evicted:
                    victims += [(self._pending.pop(s.request_id), s) for s in evicted]
            if admitted:
                metrics.admitted(budget_ms, admitted)
            if self._idle:
                self._woken_at = now
                self._work.notify()
            elif self._running is not None and not best_effort:
                nxt = scheduler.next_expiry()
                if nxt is not None and nxt < self._watch_at:
                    self._watch.notify()
        for future, error in refused:
            future.set_exception(error)
        if victims:
            self._shed(victims)
        return futures

    def _hold_must_end(self, scheduler: BudgetScheduler, request: Request) -> bool:
        """Under the lock, the worker holding a partial batch back until `_hold_until`: must
        the request just queued wake it before then? Yes when the batch is now full, or when
        the request could not wait that long (its deadline minus the full batch of the
        slowest subnet on the front comes before; O(log subnets)). Otherwise the worker
        wakes by itself at `_hold_until` — or a caller about to block runs the batch first —
        so a burst of submits costs no wake-up (no thread hand-off) per request."""
        if scheduler.get_num_waiting() >= scheduler.max_batch_size or self._hold_until is None:
            return True
        deadline = request.deadline
        if request.best_effort or deadline == math.inf:
            return False
        top = scheduler.best_within(scheduler.max_batch_size, -math.inf, math.inf)  # the front's slowest
        slowest_ms = top[1] if top is not None else 0.0
        return deadline - slowest_ms / 1e3 <= self._hold_until

    def _new_future(self) -> Future[Result]:
        """A request's future, running from the start (it cannot be cancelled)."""
        if self.caller_runs:
            return _HelpingFuture(self)  # created running
        future: Future[Result] = Future()
        future.set_running_or_notify_cancel()
        return future

    def help(self) -> None:
        """A caller is about to block on a result: if the engine is idle with requests
        queued, run one engine step on the caller's thread instead of waking the worker."""
        if not self.caller_runs or self.on_engine_thread():
            return
        with self._lock:
            step, shed = self._claim_step()
            scheduler = self.scheduler
        if shed:
            self._shed(shed)
        if step is not None:
            self._execute_here(scheduler, *step)

    def _claim_step(self) -> tuple[tuple | None, list[tuple[Pending, ShedRequest]]]:
        """Under the lock: when nothing runs and the worker sleeps, schedule one batch for
        the calling thread to run. Returns ((batch, members, t_sched) or None, shed): None
        when the worker is awake or busy, or when the scheduler holds the batch to fill it."""
        scheduler = self.scheduler
        if (
            not self._idle
            or self._running is not None
            or self._jobs
            or self._closing
            or self._broken_schedule
            or scheduler is None
            or not scheduler.has_waiting()
        ):
            return None, []
        if self._overhead is not None:
            self._fold_overhead()
        t_sched = self.clock()
        try:
            out = scheduler.schedule(t_sched, hold=False)
        except Exception:  # a scheduler bug must not strand requests: the worker fails them
            log.exception("scheduling on a caller's thread failed; the worker fails the queue")
            self._broken_schedule = True
            self._work.notify()
            return None, []
        shed = [(self._pending.pop(x.request_id), x) for x in out.shed]
        if out.batch is None:
            if scheduler.has_waiting():
                self._work.notify()  # the scheduler holds the batch to fill it: the worker waits
            return None, shed
        members = [self._pending.pop(rid) for rid in out.batch.request_ids]
        self._running = (out.batch, members)
        self._woken_at = None  # a wake-up the worker has not acted on is not the next batch's cost
        return (out.batch, members, t_sched), shed

    def _execute_here(
        self, scheduler: BudgetScheduler, batch: ScheduledBatch, members: list[Pending], t_sched: float
    ) -> None:
        """Run a batch on the calling thread (`submit(inline=True)`), then hand the worker
        whatever arrived meanwhile."""
        try:
            self._execute(scheduler, batch, members, t_sched, None)
        except BaseException as e:  # noqa: BLE001 - fail the batch, then let the caller see it
            for m in members:
                _fail(m.future, _execution_error(batch, e))
            if not isinstance(e, Exception):
                raise
            log.exception("finishing batch %s failed", batch)
        finally:
            with self._lock:
                self._running = None
                if scheduler.has_waiting() or self._jobs:
                    self._work.notify()

    def cancel(self, future: Future, reason: str = "timeout") -> bool:
        """Take a still-queued request out and fail it with `Overloaded`; False if it
        already runs or ended."""
        rid = getattr(future, "request_id", None)
        with self._lock:
            if rid is None or self.scheduler is None or not self.scheduler.remove(rid):
                return False
            p = self._pending.pop(rid)
        self._shed([(p, ShedRequest(rid, reason, "the caller stopped waiting"))])
        return True

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the worker thread between batches (profiling runs there, so it sees
        the worker's threading and executor); inline when already on the worker."""
        future: Future = Future()
        if threading.current_thread() is self._worker:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(fn())
            except Exception as e:
                future.set_exception(e)
            return future
        with self._lock:
            if self.dead is not None or self._stopped:
                raise Overloaded("the runtime is closed")
            self._jobs.append((fn, future))
            self._work.notify()
        return future

    # ---- the worker --------------------------------------------------------------------
    def _run_worker(self) -> None:
        try:
            configure_worker_threads(self.worker_threads)
            self._loop()
        except BaseException as e:  # noqa: BLE001 - the worker must never die silently
            self._die(e)

    def _loop(self) -> None:
        clock = self.clock
        while True:
            job = batch = None
            shed: list[tuple[Pending, ShedRequest]] = []
            failed: list[Pending] = []
            with self._lock:
                while True:
                    if self._overhead is not None and self.scheduler is not None:
                        self._fold_overhead()
                    if self._jobs:
                        job = self._jobs.popleft()
                        break
                    scheduler = self.scheduler
                    if scheduler is not None and scheduler.has_waiting() and self._running is None:
                        t_sched = clock()
                        try:
                            if self._broken_schedule:
                                self._broken_schedule = False
                                raise RuntimeError("scheduling failed on a caller's thread")
                            out = scheduler.schedule(t_sched)
                        except Exception:  # a scheduler bug must not strand requests
                            log.exception("scheduling failed; failing every queued request")
                            scheduler.abort_all("error")
                            failed = list(self._pending.values())  # nothing runs now: all queued
                            self._pending.clear()
                            break
                        if out.shed:
                            shed = [(self._pending.pop(s.request_id), s) for s in out.shed]
                        if out.batch is not None:
                            batch = out.batch
                            members = [self._pending.pop(rid) for rid in batch.request_ids]
                            self._running = (batch, members)
                            woken_at, self._woken_at = self._woken_at, None
                            if scheduler.has_waiting():
                                self._watch.notify()
                            break
                        if shed:
                            break
                        if out.wait_until is not None and not self._closing:
                            self._idle = True
                            self._hold_until = out.wait_until
                            self._work.wait(max(0.0, out.wait_until - clock()))
                            self._hold_until = None
                            self._idle = False
                            continue
                    if self._closing:
                        return
                    self._idle = True
                    self._work.wait()
                    self._idle = False
            if failed:
                self.metrics.failed(len(failed))
                for p in failed:
                    _fail(p.future, ExecutionError("the scheduler failed; see the runtime's log"))
            if shed:
                self._shed(shed)
            if job is not None:
                self._run_job(*job)
            if batch is not None:
                try:
                    self._execute(scheduler, batch, members, t_sched, woken_at)
                except Exception as e:  # metrics or result assembly: still answer everyone
                    log.exception("finishing batch %s failed", batch)
                    left = [m for m in members if not m.future.done()]
                    for m in left:
                        _fail(m.future, _execution_error(batch, e))
                    with self._lock:
                        self._running = None
                    self.metrics.failed(len(left))  # if this raises too, the worker dies loudly

    def _run_job(self, fn: Callable[[], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except Exception as e:
            future.set_exception(e)

    def _execute(
        self,
        scheduler: BudgetScheduler,
        batch: ScheduledBatch,
        members: list[Pending],
        t_sched: float,
        woken_at: float | None,
        inner: bool = False,
    ) -> None:
        """One forward for the batch; answer each member with its row, or fail them.

        A batch the scheduler lets pause (`stages_of`) runs stage by stage, with the urgent
        batches the scheduler hands out at its boundaries run in between (`inner`: such a
        batch, run while another is paused); its forward time excludes theirs."""
        clock = self.clock
        error: Exception | None = None
        bad: set[int] = set()
        start = clock()
        paused = 0.0  # seconds the batch spent paused for urgent batches
        try:
            x = members[0].sample() if len(members) == 1 else _stack(members)
            stages = scheduler.stages_of(batch) if self.executor.pausable else ()
            if stages:
                y, paused = self._run_pausing(scheduler, batch, x)
            else:
                y = self.executor.run(batch.subnet, x)
            if y.device.type != "cpu":
                y = y.to("cpu")  # on CUDA, also waits
            if y.requires_grad:  # not in inference mode (a custom executor): hand out no graph
                y = y.detach()
            # a finite sum means every output is finite (one reduction, no mask); else find the rows
            if self.check_outputs and not math.isfinite(y.sum().item()):
                finite = torch.isfinite(y.reshape(len(members), -1)).all(dim=1)
                bad = {i for i, ok in enumerate(finite.tolist()) if not ok}
        except Exception as e:
            error = e
        end = clock()
        exec_ms = 1e3 * (end - start - paused)
        with self._lock:
            ratio = scheduler.update_from_output(batch, None if error else exec_ms, end)
            if not inner:
                self._running = None
        metrics = self.metrics
        if error is not None:
            log.warning("forward of subnet %d on %d requests failed: %r", batch.subnet, batch.size, error)
            metrics.failed(len(members))
            for m in members:
                _fail(m.future, _execution_error(batch, error))
        else:
            metrics.batch(batch.size, exec_ms / 1e3, ratio)
            accuracy = scheduler.real_accuracy(batch.subnet)
            subnet, size = batch.subnet, batch.size
            rows: list[tuple[float, float, bool]] = []
            answers: list[tuple[Future, Result]] = []
            outputs = y.unbind(0) if size > 1 else (y[0],)  # views, no copies
            answered_at = clock()  # one instant for the batch: every answer is ready now
            for i, m in enumerate(members):
                r = m.request
                if i in bad:
                    metrics.failed(1)
                    _fail(
                        m.future,
                        ExecutionError(
                            f"subnet {subnet} gave non-finite outputs for request {r.id} (inputs too large?)"
                        ),
                    )
                    continue
                output = outputs[i] if m.squeeze else (y if size == 1 else outputs[i].unsqueeze(0))
                latency_ms = 1e3 * (answered_at - r.arrival)
                queue_ms = 1e3 * (start - r.arrival)
                met = latency_ms <= r.budget_ms
                rows.append((latency_ms / 1e3, queue_ms / 1e3, met))
                answers.append((m.future, Result(output, subnet, queue_ms, exec_ms, latency_ms, met, size, r.id)))
            if rows:
                metrics.answered_batch(subnet, accuracy, rows)  # counted before anyone is told
            for future, result in answers:
                future.set_result(result)
        overhead_ms = 1e3 * (clock() - t_sched - paused) - exec_ms
        if woken_at is not None and t_sched > woken_at:
            overhead_ms += 1e3 * (t_sched - woken_at)
        if inner:  # the paused batch's own overhead is stashed after this one's: fold this one now
            with self._lock:
                scheduler.observe_overhead(batch.size, overhead_ms)
        else:
            self._overhead = (batch.size, overhead_ms, batch.subnet)

    def _run_pausing(
        self, scheduler: BudgetScheduler, batch: ScheduledBatch, x: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """Run `batch` stage by stage (`Executor.run_stages`); at each boundary ask the
        scheduler for an urgent batch (`interrupt`), shed what it sheds, and run the urgent
        batch to its end before going on. Returns the logits and the seconds spent paused."""
        clock = self.clock
        stages = self.executor.run_stages(batch.subnet, x)
        paused, k = 0.0, 0
        with torch.inference_mode():
            while True:
                try:
                    next(stages)
                except StopIteration as stop:
                    return stop.value, paused
                with self._lock:
                    t = clock()
                    out = scheduler.interrupt(t, k)
                    shed = [(self._pending.pop(s.request_id), s) for s in out.shed]
                    urgent = out.batch
                    members = [self._pending.pop(rid) for rid in urgent.request_ids] if urgent is not None else []
                k += 1
                if shed:
                    self._shed(shed)
                if urgent is not None:
                    try:
                        self._execute(scheduler, urgent, members, t, None, inner=True)
                    except Exception as e:  # metrics or result assembly: still answer everyone
                        log.exception("finishing urgent batch %s failed", urgent)
                        left = [m for m in members if not m.future.done()]
                        for m in left:
                            _fail(m.future, _execution_error(urgent, e))
                        self.metrics.failed(len(left))
                    paused += clock() - t

    def _fold_overhead(self) -> None:
        """Fold the last batch's overhead into the latency model (under the lock)."""
        size, ms, _ = self._overhead
        self._overhead = None
        self.scheduler.observe_overhead(size, ms)  # the metrics read the model at scrape time

    def _shed(self, shed: list[tuple[Pending, ShedRequest]]) -> None:
        for p, s in shed:
            self.metrics.shed(s.reason if s.reason in ("deadline", "evicted", "timeout", "error") else "closed")
            _fail(p.future, Overloaded(f"request {s.request_id} shed: {s.detail or s.reason}"))

    def _die(self, error: BaseException) -> None:
        """The worker is dying: fail everything pending, refuse new work, say so loudly."""
        log.critical(
            "the runtime's worker died: %s: %s; failing every pending request and refusing new ones",
            type(error).__name__,
            error,
            exc_info=(type(error), error, error.__traceback__),
        )
        with self._lock:
            self.dead = error
            self._closing = True
            left = list(self._pending.values())
            self._pending.clear()
            if self._running is not None:
                left += self._running[1]
                self._running = None
            if self.scheduler is not None:
                self.scheduler.abort_all("error")
            jobs = list(self._jobs)
            self._jobs.clear()
            self._work.notify_all()
            self._watch.notify_all()
        cause = ExecutionError(f"the runtime's worker died: {type(error).__name__}: {error}")
        cause.__cause__ = error
        left = [p for p in left if not p.future.done()]
        for p in left:
            _fail(p.future, cause)
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(cause)
        try:
            self.metrics.failed(len(left))
        except Exception:  # noqa: BLE001 - the metrics may be what failed; the futures are failed already
            log.exception("could not count the failed requests")

    # ---- the deadline watchdog ---------------------------------------------------------
    def _run_watchdog(self) -> None:
        """While a batch runs, shed queued requests the moment they cannot make it."""
        clock = self.clock
        try:
            with self._lock:
                while not self._stopped:
                    scheduler = self.scheduler
                    if self._running is None or scheduler is None or not scheduler.has_waiting():
                        self._watch_at = math.inf
                        self._watch.wait()
                        continue
                    nxt = scheduler.next_expiry()
                    now = clock()
                    if nxt is None:
                        self._watch_at = math.inf
                        self._watch.wait()
                        continue
                    if nxt > now:
                        self._watch_at = nxt
                        self._watch.wait(nxt - now)
                        continue
                    shed = [(self._pending.pop(s.request_id), s) for s in scheduler.shed_expired(now)]
                    if shed:
                        self._lock.release()
                        try:
                            self._shed(shed)
                        finally:
                            self._lock.acquire()
        except BaseException:  # noqa: BLE001
            log.exception("the deadline watchdog died; deadlines are enforced between batches only")

    # ---- lifecycle ---------------------------------------------------------------------
    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; answer (drain) or shed the queue; stop both threads.

        When the worker is still busy after `timeout` seconds, the queued requests are shed
        and the running batch answers in the background.
        """
        with self._lock:
            if self._stopped:
                return
            self._closing = True
            aborted = []
            if not drain and self.scheduler is not None:
                aborted = [(self._pending.pop(s.request_id), s) for s in self.scheduler.abort_all("closed")]
            self._work.notify_all()
        self._shed(aborted)
        if self.on_engine_thread():  # close() from a callback: the worker ends by itself
            with self._lock:
                self._stopped = True
                self._watch.notify_all()
            self.metrics.close()
            return
        self._worker.join(timeout)
        with self._lock:
            if self._worker.is_alive():
                log.warning("runtime worker still busy after %.3g s; its batch finishes in the background", timeout)
                left = []
                if self.scheduler is not None:
                    left = [(self._pending.pop(s.request_id), s) for s in self.scheduler.abort_all("closed")]
            else:
                left = [(p, ShedRequest(p.request.id, "closed", "the runtime closed")) for p in self._pending.values()]
                self._pending.clear()
            jobs = list(self._jobs)
            self._jobs.clear()
            self._stopped = True
            self._watch.notify_all()
        self._shed(left)
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(Overloaded("the runtime closed"))
        self.metrics.close()
        self._watchdog.join(1.0)


class _HelpingFuture(Future):
    """A future whose blocking `result()` first lets the engine run a step on the waiting
    thread (`EngineCore.help`) when the worker is asleep: the caller would only wait."""

    def __init__(self, engine: EngineCore):
        super().__init__()
        # what `set_running_or_notify_cancel()` does to a new future (nobody can hold it
        # yet: no lock, no cancel check); `Future` keeps its state in `_state`
        self._state = _RUNNING
        self._engine = engine

    def result(self, timeout: float | None = None):
        # answered: `_state` is written (under the condition) after `_result`/`_exception`,
        # so once it reads FINISHED both are in place; no lock needed to read them
        if self._state == _FINISHED:
            if self._exception is None:
                return self._result
            return super().result()
        if not self.done():
            if self._engine.on_engine_thread():
                raise ReentrantCall(
                    "waiting for a result on the runtime's own thread (in a result callback?) would wait forever"
                )
            if timeout is None:
                self._engine.help()
        return super().result(timeout)

    def set_result(self, result) -> None:
        """`Future.set_result`, without the notify when no thread waits in `result()` /
        `exception()` (the caller that ran the batch, or nobody yet) and without the
        callback pass when none was added: the common case, once per answered request."""
        condition = self._condition
        with condition:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = _FINISHED
            for waiter in self._waiters:  # `concurrent.futures.wait` / `as_completed`
                waiter.add_result(self)
            if condition._waiters:  # threads blocked in result() / exception()
                condition.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()


def _stack(members: list[Pending]) -> torch.Tensor:
    """The members' samples as one batch: a slice of their common `submit_many` copy when
    they are consecutive rows of it (no copy), else stacked."""
    base, first = members[0].base, members[0].row
    if base is not None and all(m.base is base and m.row == first + i for i, m in enumerate(members)):
        return base[first : first + len(members)]
    return torch.cat([m.sample() for m in members])


def _fail(future: Future, error: ElasticError) -> None:
    if not future.done():
        future.set_exception(error)


def _execution_error(batch: ScheduledBatch, cause: BaseException) -> ExecutionError:
    error = ExecutionError(
        f"forward of subnet {batch.subnet} on a batch of {batch.size} failed: {type(cause).__name__}: {cause}"
    )
    error.__cause__ = cause
    return error
