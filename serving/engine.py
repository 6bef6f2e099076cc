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
(`_hold_must_end`); otherwise the worker wakes by itself when the hold ends. And once
waiting callers run the batches (`CLAIM_STREAK` in a row), the idle worker polls the queue
instead of being woken, and a submit leaves it asleep when it will look before the request
must start (`_looks_in_time`); the first batch the worker runs itself ends that mode.

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
from typing import Any

import torch

from elastic.errors import ExecutionError, Overloaded

from .batch_run import BatchRunner, execution_error
from .executor import Executor
from .intake import CLAIM_STREAK, POLL_LINGER_S, POLL_S, Intake
from .metrics import ServingMetrics
from .output import ScheduledBatch, ShedRequest
from .pending import Pending, fail_future
from .scheduler import BudgetScheduler
from .worker_threads import configure_worker_threads

log = logging.getLogger(__name__)


class EngineCore(Intake, BatchRunner):
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
        finish_sample: the sample checks `submit` runs once the scheduler admits a request
            (`SampleCheck.finish`: its tensor operations, which a refusal never runs); None:
            samples arrive checked, as (1, C, H, W).
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
        finish_sample: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
    ):
        self.executor = executor
        self.finish_sample = finish_sample
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
        # callers run the batches: how many in a row since the worker last ran one, the last
        # one's time, and when the idle worker, polling instead of waiting to be woken, looks next
        self._claims = 0
        self._claimed_at = -math.inf
        self._poll_until: float | None = None
        # last batch, folded into the scheduler under the next lock: (size, overhead ms, of it
        # waking the worker, late, ended)
        self._overhead: tuple[int, float, float, int, int] | None = None
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
                lambda: scheduler.predictor.tail_quantile,
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

    def _callers_run(self, now: float) -> bool:
        """Under the lock: have waiting callers run the last `CLAIM_STREAK` batches (the
        worker none since), the last within `POLL_LINGER_S`? Then the idle worker polls the
        queue every `POLL_S` instead of sleeping until a submit wakes it (`_looks_in_time`)."""
        return self._claims >= CLAIM_STREAK and now - self._claimed_at <= POLL_LINGER_S

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
                            self._claims = 0  # the worker serves: submits wake it again
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
                    now = clock()
                    if self._callers_run(now):  # look now and then: submits need not wake it
                        self._poll_until = now + POLL_S
                        self._work.wait(POLL_S)
                        self._poll_until = None
                    else:
                        self._work.wait()
                    self._idle = False
            if failed:
                self.metrics.failed(len(failed))
                for p in failed:
                    fail_future(p.future, ExecutionError("the scheduler failed; see the runtime's log"))
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
                        fail_future(m.future, execution_error(batch, e))
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

    def _fold_overhead(self) -> None:
        """Fold the last batch's overhead, and how many of its requests ended late, into
        the latency model (under the lock)."""
        size, ms, wake_ms, late, ended = self._overhead
        self._overhead = None
        scheduler = self.scheduler
        scheduler.observe_overhead(size, ms, wake_ms)  # the metrics read the model at scrape time
        if ended:
            scheduler.observe_outcomes(late, ended)

    def _shed(self, shed: list[tuple[Pending, ShedRequest]]) -> None:
        missed = 0  # admitted, not best effort, and no longer able to make its deadline
        for p, s in shed:
            self.metrics.shed(s.reason if s.reason in ("deadline", "evicted", "timeout", "error") else "closed")
            fail_future(p.future, Overloaded(s.message()))
            missed += s.reason == "deadline" and not p.request.best_effort
        if missed:
            with self._lock:  # a late ending, for the planning margin (`observe_outcomes`)
                if self.scheduler is not None:
                    self.scheduler.observe_outcomes(missed, missed)

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
            fail_future(p.future, cause)
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
