"""What callers hand the engine: requests (`submit`, `submit_many`), steps run on a waiting
caller's thread (`help`, "caller runs" in serving/engine.py), withdrawals (`cancel`) and
jobs for the worker thread (`call`). A mixin of `EngineCore`, over its lock, scheduler,
pending table and worker state.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from elastic.errors import BudgetInfeasible, InvalidInput, Overloaded

from .batch_run import execution_error
from .output import ScheduledBatch, ShedRequest
from .pending import HelpingFuture, Pending, fail_future
from .request import Request, Result
from .scheduler import BudgetScheduler

log = logging.getLogger(__name__)
# Callers that block on their results run the batches themselves (caller runs): after this
# many in a row, an idle worker polls every POLL_S rather than being woken by each submit,
# for as long as callers keep doing so (POLL_LINGER_S after the last such batch)
CLAIM_STREAK = 4
POLL_S = 0.020
POLL_LINGER_S = 1.0


class Intake:
    """The caller-facing half of `EngineCore` (a mixin: see the module docstring)."""

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

        `x` may be the caller's own tensor, checked but for what takes a tensor operation
        (`SampleCheck.shape`): that part (`finish_sample`, `SampleCheck.finish`) runs here
        once the request is admitted, and the sample is copied once it is queued, not when
        it runs before this call returns. A refusal, the common outcome in overload, so
        costs no tensor operation, no copy and no future; each tensor operation lets go of
        the interpreter lock, which a forward on the worker is waiting to take back. With
        no `finish_sample`, `x` is a checked (1, C, H, W) sample.
        """
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
            finish = self.finish_sample
            # a full queue makes room by evicting a queued request: never for an invalid one
            early = finish is not None and len(scheduler._reqs) >= scheduler.max_queue
            if early:
                x = self._finished(finish, x, squeeze)
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
            if finish is not None and not early:
                try:
                    x = self._finished(finish, x, squeeze)
                except InvalidInput:
                    scheduler.remove(request.id)  # admitted a moment ago; nobody has seen it
                    raise
            metrics.admitted(budget_ms)
            future = self._new_future()
            future.request_id = request.id  # lets `cancel` find it
            pending = self._pending[request.id] = Pending(request, x, squeeze, future)
            victims = [(self._pending.pop(s.request_id), s) for s in evicted] if evicted else None
            step, shed = self._claim_step() if inline and not victims and len(scheduler._reqs) == 1 else (None, [])
            if step is None:
                pending.x = x.clone()  # queued: the caller may change its tensor once this returns
                if self._idle:
                    wake = self._hold_until is None or self._hold_must_end(scheduler, request)
                    if wake and not self._looks_in_time(scheduler, request):
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

    def _finished(self, finish: Callable[[torch.Tensor, bool], torch.Tensor], x: torch.Tensor, squeeze: bool):
        """`finish(x, squeeze)` (the sample checks left for after admission: its tensor
        operations), a refusal counted as invalid."""
        try:
            return finish(x, squeeze)
        except InvalidInput:
            self.metrics.rejected("invalid")
            raise

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
            if self._idle and admitted and not self._looks_in_time(scheduler, request):
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
        return _must_start_by(scheduler, request) <= self._hold_until

    def _looks_in_time(self, scheduler: BudgetScheduler, request: Request) -> bool:
        """Under the lock, the worker idle: while waiting callers run the batches
        (`_callers_run`), need a submit leave the worker asleep? Yes when it looks at the queue
        by itself (its poll or its hold ends) before `request` must start — its deadline less
        the front's slowest full batch (O(log subnets)). A caller about to block on a result
        then runs the batch (`help`) without the two thread hand-offs a wake-up costs; a caller
        that never blocks is served when the worker looks."""
        wakes = self._hold_until if self._hold_until is not None else self._poll_until
        if wakes is None or self._claims < CLAIM_STREAK:
            return False
        return _must_start_by(scheduler, request) > wakes

    def _new_future(self) -> Future[Result]:
        """A request's future, running from the start (it cannot be cancelled)."""
        if self.caller_runs:
            return HelpingFuture(self)  # created running
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
        self._claims += 1
        self._claimed_at = t_sched
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
                fail_future(m.future, execution_error(batch, e))
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


def _must_start_by(scheduler: BudgetScheduler, request: Request) -> float:
    """When a queued request must be started at the latest, as a wake-up rule can tell in
    O(log subnets): its deadline less the full batch of the front's slowest subnet (inf for
    best effort or no deadline)."""
    deadline = request.deadline
    if request.best_effort or deadline == math.inf:
        return math.inf
    top = scheduler.best_within(scheduler.max_batch_size, -math.inf, math.inf)  # the front's slowest
    return deadline - (top[1] if top is not None else 0.0) / 1e3
