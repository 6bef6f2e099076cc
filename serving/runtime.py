"""`Runtime`: serve an elastic model under per-request latency budgets (the front end).

The runtime is a thin front end over an engine loop, after vLLM v1's split: the front end
validates each request on the caller's thread (`admission.py`) and hands it to the
`EngineCore` (engine.py), whose scheduler (`BudgetScheduler`, scheduler.py) admits it only if
the latency model predicts it — and every request admitted before — can still make its
deadline behind the queue; the engine's worker then runs *schedule → execute → update →
stats*: the policy picks a subnet and a batch of the most urgent requests (Clockwork,
OSDI'20; SuperServe, NSDI'25), an `Executor` (executor.py: eager, torch.compile, ...) runs
the forward, and each request is answered with its row. Dynamic batching with a bounded
queue and typed rejections is what Triton Inference Server's dynamic batcher does for one
fixed model; here the model is elastic, so the batcher also picks the subnet (INFaaS,
ATC'21, picks among model variants the same way).

Guarantees: invalid arguments and infeasible budgets are refused before queueing, each with
a typed error naming the field; every admitted request ends exactly once, with a `Result`
or a typed error (`Overloaded` when shed — at the moment it can no longer make its deadline,
even while the worker is busy — `ExecutionError` when its batch's forward raised or its
output is not finite); a failing forward fails only its own batch; a dead worker fails
everything pending and refuses new work; `close(drain=True)` answers everything admitted
before it returns.

Worker threading: torch's OpenMP settings are per thread, and a fresh thread starts with a
team as large as the machine; two such teams on a small CPU made every forward in the worker
3-5x slower than on the main thread (worker_threads.py has the cause,
bench/worker_threads.py the measurement, docs/serving.md the numbers). The worker
therefore sets its own thread count before its first forward: `worker_threads` (default:
the constructing thread's `torch.get_num_threads()`, i.e. what the caller chose), and
profiles run on the worker too, so the profile times what serving sees. A CPU runtime
whose teams would throttle OpenMP logs a warning saying so.

A caller blocking on a result while the worker is idle runs that batch on its own thread
(`caller_runs`, engine.py): at batch 1 a request then costs no thread hand-off at all.

Threading contract: result callbacks (`Future.add_done_callback`) run on the engine's
threads (or the thread that ran the batch); keep them short. `infer` — or `result()` of a
pending future — from such a callback raises `ReentrantCall` (it would wait for itself);
`submit` is fine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import torch

from elastic.errors import BudgetInfeasible, ConfigError, InvalidInput, Overloaded, ReentrantCall
from elastic.model import ElasticModel

from .admission import SampleCheck, check_best_effort, check_budget, check_min_accuracy, check_priority
from .engine import EngineCore
from .executor import Executor, make_executor
from .gc_heap import freeze_gc_heap
from .lanes import LaneRouter, default_split_ms
from .metrics import ServingMetrics
from .policies import Policy, StaticPolicy, make_policy
from .profile import QUANTILES, LatencyProfile
from .profiler import device_name, measure_latency
from .refit import REFIT_MS, check_refit_ms
from .request import Result
from .scheduler import BudgetScheduler, check_positive_int
from .slo_margin import check_slo_target
from .worker_threads import warn_if_throttled

log = logging.getLogger(__name__)


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
        ewma_alpha: weight of each observation in the online latency correction, in (0, 1].
        metrics_window: requests in the rolling effective-accuracy / SLO gauges.
        clock: monotonic clock in seconds (tests may pass their own).
        executor: "eager" (default), "compiled", "traced", "traced_staged" (pauses), "process",
            another name in `EXECUTORS`, or an `Executor` (one made here from a name is closed by `close`).
        executor_options: keyword arguments for the executor (e.g. `backend=` for "compiled").
        worker_threads: torch intra-op threads of the worker (default: the caller's
            `torch.get_num_threads()` at construction).
        batch_wait_ms: longest a partial batch is held back for more arrivals, only while
            every member's slack allows and requests arrive faster than that (0: never).
        stale_s: the latency model's online correction is dropped when an idle engine is
            about to refuse a request on it and no forward has renewed it for this many
            seconds (`BudgetScheduler.stale_s`; counted in `elastic_latency_resets_total`).
        check_outputs: fail a request whose output holds NaN or Inf (`ExecutionError`)
            instead of answering it.
        caller_runs: let a thread that blocks on a result run the next batch itself when
            the worker is idle (fewer thread hand-offs; the forward then runs with that
            thread's torch settings). False: every forward runs on the worker.
        freeze_gc: once the model and executor are ready, move every object the process
            holds to the garbage collector's permanent generation (`gc.freeze`, see
            `gc_heap.py`): a later collection of the oldest generation then scans only what
            serving allocated, instead of stopping every thread for the whole heap (~180 ms
            with torch and timm loaded on the development machine). The runtime's own
            book-keeping (metrics, engines, scheduler) is built after it, so that a closed
            runtime's is collected. False leaves the collector alone.
        lanes: engines over the one set of weights, each with its own worker thread,
            scheduler and queue (one per core the runtime may use; see `lanes.py`). With
            more than one, and a policy that chooses subnets, requests with budgets under
            `lane_split_ms` go to lane 0 first and the others to the other lanes first,
            so slow, accurate forwards never hold up the tight requests.
        lane_split_ms: that budget (default: four times the batch-1 service of the
            fastest candidate, set with each profile).
        warm: when the profile comes with the constructor (or `profile()` reuses a saved
            one), each lane's worker runs every candidate once at batch 1 and at
            `max_batch_size` (`Executor.warmup`, untimed) before serving: a new thread's
            first forwards run slower (its allocator arena and caches start cold), and the
            first requests, planned with the profile's latencies, would pay for it. A
            profile measured by `profile()` was measured on the worker: nothing to warm.

        preempt: let a running batch pause between two blocks for a request it would
            otherwise make late (`serving/preemption.py`): admitted as urgent, that request
            runs at the batch's next block boundary when the batch, the queue and it all stay
            on time; the scheduler prices a batch's busy period by the wait a tight arrival can
            expect from it. Needs a pausable executor ("eager") and a model whose subnets have
            stage boundaries (`ElasticModel.stage_fractions`: the blocks of a `StitchedNet` or
            `LearngenePool`; a `SortedNet` cannot pause yet). None (default): on exactly when
            both hold; True: required (`ConfigError` otherwise); False: batches never pause.
        slo_target: the share of admitted, non-best-effort requests that should end within
            budget. Every batch is planned at a quantile of the forwards' recent spread, and
            that quantile follows the share that ends late (`serving/slo_margin.py`): down
            while fewer than half the allowed misses happen, back up (never past 0.95) while
            more do. None: a fixed quantile (0.95).
        refit_ms: fold what the forwards teach the latency model (forward times, the
            engine's overhead, late requests) once the oldest is this old, all together
            (`serving/refit.py`): between small forwards each fold runs on cold caches,
            and folding less often takes time off every request (`elastic bench overhead`,
            its refit_ms table; docs/serving.md, "Grouped refits"). A forward off its
            prediction by 2×, a forward of `refit_ms` or more, or a late request refits at
            once; 0: after every batch.

    Raises:
        ConfigError: a bad setting; no thread is left running.
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
        executor: str | Executor = "eager",
        executor_options: dict[str, Any] | None = None,
        worker_threads: int | None = None,
        batch_wait_ms: float = 1.0,
        stale_s: float = 0.5,
        check_outputs: bool = True,
        caller_runs: bool = True,
        freeze_gc: bool = True,
        lanes: int = 1,
        lane_split_ms: float | None = None,
        warm: bool = True,
        preempt: bool | None = None,
        slo_target: float | None = 0.99,
        refit_ms: float = REFIT_MS,
    ):
        # every check first: a failure here leaves no thread behind
        self.max_batch_size = check_positive_int("max_batch_size", max_batch_size)
        self.max_queue = check_positive_int("max_queue", max_queue)
        check_positive_int("metrics_window", metrics_window)
        if quantile not in QUANTILES:
            raise ConfigError(f"quantile must be one of {QUANTILES}, got {quantile!r}")
        if isinstance(ewma_alpha, bool) or not isinstance(ewma_alpha, (int, float)) or not 0 < ewma_alpha <= 1:
            raise ConfigError(f"ewma_alpha must be a number in (0, 1], got {ewma_alpha!r}")
        if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, (int, float)) or not batch_wait_ms >= 0:
            raise ConfigError(f"batch_wait_ms must be a number >= 0, got {batch_wait_ms!r}")
        if isinstance(stale_s, bool) or not isinstance(stale_s, (int, float)) or not stale_s > 0:
            raise ConfigError(f"stale_s must be a number > 0, got {stale_s!r}")
        self.slo_target = check_slo_target(slo_target) if slo_target is not None else None
        self.refit_ms = check_refit_ms(refit_ms)
        if worker_threads is None:
            worker_threads = torch.get_num_threads()
        worker_threads = check_positive_int("worker_threads", worker_threads)
        check_positive_int("lanes", lanes)
        self._split_given = lane_split_ms is not None
        self._router = LaneRouter(lanes, lane_split_ms)
        self.policy = make_policy(policy)
        ids = {s.id for s in model.subnets()}
        if isinstance(self.policy, StaticPolicy) and self.policy.subnet not in ids:
            raise ConfigError(f"policy {self.policy.name}: the model has no subnet {self.policy.subnet}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"bad device {device!r}: {e}") from e
        self.quantile = quantile
        self.ewma_alpha = float(ewma_alpha)
        self.batch_wait_ms = float(batch_wait_ms)
        self.stale_s = float(stale_s)
        self.warm = bool(warm)
        self.model = model.to(self.device).eval()
        first = next(self.model.parameters(), None)
        self.dtype = first.dtype if first is not None else torch.get_default_dtype()
        try:
            self.executor = make_executor(executor, self.model, self.device, **(executor_options or {}))
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self._owns_executor = not isinstance(executor, Executor)  # made here: closed here
        torch_threads = ("eager", "compiled", "traced", "traced_staged")  # run on this process's torch threads
        if self.device.type == "cpu" and self.executor.name in torch_threads:
            warn_if_throttled(torch.get_num_threads(), worker_threads, lanes)
        self._stages = None  # subnet id -> stage boundaries, with preemption
        if preempt and not self.executor.pausable:
            if self._owns_executor:
                self.executor.close()
            raise ConfigError(f"preempt=True needs an executor that can pause; {self.executor.name!r} cannot")
        if preempt or (preempt is None and self.executor.pausable):
            stages = {s.id: self.model.stage_fractions(s.id) for s in self.model.subnets()}
            if preempt or any(stages.values()):  # auto: only a model that can pause somewhere
                self._stages = stages
        self._check_sample = SampleCheck(self.model, self.dtype)
        self._clock = clock
        if freeze_gc:  # before the book-keeping: frozen, its reference cycles would outlive `close`
            freeze_gc_heap()
        self.metrics = ServingMetrics(window=metrics_window)
        ids = itertools.count()  # one counter: request ids stay unique across lanes
        self._engines = [
            EngineCore(
                self.executor,
                self.metrics,
                clock,
                worker_threads,
                check_outputs,
                name="elastic-runtime" if lanes == 1 else f"elastic-runtime-lane{k}",
                caller_runs=caller_runs,
                ids=ids,
                finish_sample=self._check_sample.finish,
            )
            for k in range(lanes)
        ]
        self._engine = self._engines[0]  # profiles run on it; its scheduler is `scheduler`
        if profile is not None:
            self.set_profile(profile)
        for engine in self._engines:
            engine.start()
        if profile is not None and self.warm:
            try:
                self._warm_workers()
            except BaseException:  # a model that cannot run: leave no thread behind
                self.close(drain=False)
                raise

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
        progress: bool = False,
    ) -> LatencyProfile:
        """Measure (or reuse) the latency profile on this runtime's device and install it.

        It is measured on the engine's worker thread, through the runtime's executor, so it
        times exactly what serving runs; serving pauses meanwhile (requests wait, and may be
        shed if their budgets run out).

        Args:
            example: one input sample, (C, H, W) or (1, C, H, W); zeros when None.
            batch_sizes: batch sizes to measure (larger batches are extrapolated).
            repeats: timed runs per (subnet, batch size), interleaved.
            warmup: untimed runs per (subnet, batch size) first.
            path: the model's directory: `profile-<device>.json` there is reused when it
                fits this model, device and batch sizes, and (re)written otherwise.
            reuse: False forces a new measurement.
            seed: seeds the interleaving order.
            progress: show a progress bar.
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
                    if self.warm:
                        self._warm_workers()
                    return saved
                log.info("not reusing the saved latency profile: %s", why)
        if example is None:
            example = torch.zeros(self.model.input_size(), dtype=self.dtype)

        def measure() -> LatencyProfile:
            return measure_latency(
                self.model,
                example,
                sizes,
                self.device,
                repeats,
                warmup,
                seed=seed,
                executor=self.executor,
                progress=progress,
            )

        measured = self._engine.call(measure).result()
        if path is not None:
            measured.save(path)
        self.set_profile(measured)
        return measured

    def set_profile(self, profile: LatencyProfile) -> None:
        """Install a profile (and re-read the model's accuracies) on every lane; resets
        online correction."""
        subnets = self.model.subnets()
        for engine in self._engines:
            with engine.lock:
                scheduler = engine.scheduler
                if scheduler is None:
                    scheduler = BudgetScheduler(
                        subnets,
                        profile,
                        self.policy,
                        self.max_batch_size,
                        self.max_queue,
                        self.quantile,
                        self.ewma_alpha,
                        batch_wait_ms=self.batch_wait_ms,
                        stale_s=self.stale_s,
                        stages=self._stages,
                        slo_target=self.slo_target,
                        refit_ms=self.refit_ms,
                    )
                    scheduler.on_forget = self.metrics.latency_reset
                else:
                    scheduler.set_profile(profile, subnets)
                self.metrics.set_subnets(scheduler.candidates)
            engine.install(scheduler)
        if len(self._engines) > 1:
            schedulers = [e.scheduler for e in self._engines]
            self.metrics.track_queue_depth(lambda: sum(s.get_num_waiting() for s in schedulers))
            if not self._split_given and not isinstance(self.policy, StaticPolicy):
                fastest = schedulers[0].fastest(None, 1)
                self._router = LaneRouter(len(self._engines), default_split_ms(fastest[1]) if fastest else None)

    def _warm_workers(self) -> None:
        """Each lane's worker runs every candidate of its scheduler once at batch 1 and at
        the largest batch, untimed; returns when all have (an error is raised here)."""
        sizes = sorted({1, self.max_batch_size})
        jobs = []
        for engine in self._engines:

            def run(ids=tuple(engine.scheduler.candidates)) -> None:
                for sid in ids:
                    for b in sizes:
                        self.executor.warmup(sid, b)

            jobs.append(engine.call(run))
        for job in jobs:
            job.result()

    @property
    def latency_profile(self) -> LatencyProfile | None:
        return self._engine.scheduler.profile if self._engine.scheduler is not None else None

    @property
    def preempts(self) -> bool:
        """Whether a running batch may pause at block boundaries for urgent requests."""
        return self._stages is not None

    @property
    def scheduler(self) -> BudgetScheduler | None:
        return self._engine.scheduler

    @property
    def candidates(self) -> list[int]:
        """Subnet ids the scheduler may choose (the Pareto front, or the static one)."""
        scheduler = self._engine.scheduler
        return list(scheduler.candidates) if scheduler is not None else []

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
            x: one sample, (C, H, W) or (1, C, H, W), dense, finite, of the model's dtype.
            budget_ms: latency budget from now, in milliseconds (math.inf: none).
            min_accuracy: only subnets at least this accurate may serve it (in [0, 1]).
            priority: an integer; higher goes first and is shed last.
            best_effort: run even if the budget cannot be met (the result says so).

        Raises:
            InvalidInput: `x` is not one finite sample of the model's input size and dtype,
                or `priority`, `best_effort` or `min_accuracy` is malformed (named).
            BudgetInfeasible: `budget_ms` is not a number > 0, no eligible subnet can
                finish within it (and not best effort), or no subnet meets `min_accuracy`.
            Overloaded: the queue is full, the queue ahead would make it (or an admitted
                request) late, or the runtime is closed.
            RuntimeError: no latency profile yet (call `profile()`).
        """
        return self._submit(x, budget_ms, min_accuracy, priority, best_effort)

    def _submit(
        self,
        x: torch.Tensor,
        budget_ms: float,
        min_accuracy: float | None,
        priority: int,
        best_effort: bool,
        inline: bool = False,
    ) -> Future[Result]:
        arrival = self._clock()
        metrics = self.metrics
        try:
            budget = check_budget(budget_ms)
        except BudgetInfeasible:
            metrics.rejected("infeasible")
            raise
        try:
            floor = check_min_accuracy(min_accuracy)
            level = check_priority(priority)
            effort = check_best_effort(best_effort)
            # no tensor operation yet: the engine finishes the checks and copies the sample
            # once it admits it (a refusal, the common outcome in overload, costs neither)
            squeeze = self._check_sample.shape(x)
        except InvalidInput:
            metrics.rejected("invalid")
            raise
        engines = self._engines
        if len(engines) == 1:
            return self._engine.submit(arrival, budget, floor, level, effort, x, squeeze, inline)
        order = self._router.order(budget, [e.load() for e in engines])
        for k in order[:-1]:  # a lane that refuses passes the request on; the last one's refusal counts
            try:
                return engines[k].submit(arrival, budget, floor, level, effort, x, squeeze, inline, count_refusal=False)
            except (BudgetInfeasible, Overloaded):
                if engines[k].dead is not None or engines[k].closing:
                    raise
        return engines[order[-1]].submit(arrival, budget, floor, level, effort, x, squeeze, inline)

    def submit_many(
        self,
        xs: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        priority: int = 0,
        best_effort: bool = False,
    ) -> list[Future[Result]]:
        """Queue every sample of a stacked batch, each as its own request, in one call.

        What `[submit(x, budget_ms, ...) for x in xs]` does — every sample admitted,
        scheduled, answered and counted as its own request with the same budget and
        options, answered with (num_classes,) — for a caller that already holds a batch:
        the batch is validated and copied once, admitted under one lock, and the rows that
        run together reach the executor as one slice of that copy, without stacking.

        Args:
            xs: (B, C, H, W) samples, dense, finite, of the model's dtype.
            budget_ms, min_accuracy, priority, best_effort: as `submit`, for every sample.

        Returns:
            one future per sample, in order.

        Raises:
            InvalidInput, BudgetInfeasible: a malformed argument or batch (rows that are not
                finite are named): nothing is queued.
            Overloaded: the runtime is closed.
            RuntimeError: no latency profile yet.

        A sample the scheduler refuses — its budget cannot be met, or the queue is full —
        is not raised: its future is returned already failed with that error
        (`BudgetInfeasible` or `Overloaded`), and the other samples are still served.
        """
        arrival = self._clock()
        metrics = self.metrics
        n = xs.shape[0] if isinstance(xs, torch.Tensor) and xs.dim() == 4 and xs.shape[0] > 0 else 1
        try:
            budget = check_budget(budget_ms)
        except BudgetInfeasible:
            for _ in range(n):
                metrics.rejected("infeasible")
            raise
        try:
            floor = check_min_accuracy(min_accuracy)
            level = check_priority(priority)
            effort = check_best_effort(best_effort)
            batch = self._check_sample.batch(xs)
        except InvalidInput:
            for _ in range(n):
                metrics.rejected("invalid")
            raise
        engines = self._engines
        engine = (
            engines[self._router.order(budget, [e.load() for e in engines])[0]] if len(engines) > 1 else self._engine
        )
        return engine.submit_many(arrival, budget, floor, level, effort, batch)

    def infer(
        self,
        x: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        priority: int = 0,
        best_effort: bool = False,
        timeout: float | None = None,
    ) -> Result:
        """`submit` and wait: the `Result`, or the typed error raised.

        Args:
            timeout: most seconds to wait; past it a still-queued request is withdrawn and
                `Overloaded` raised (a request already running still ends, unobserved).

        Raises:
            ReentrantCall: called on one of the runtime's own threads (a result callback).
        """
        if any(e.on_engine_thread() for e in self._engines):
            raise ReentrantCall(
                "Runtime.infer() called on the runtime's own thread (from a result callback?) would wait for "
                "itself; use submit() there"
            )
        future = self._submit(x, budget_ms, min_accuracy, priority, best_effort, inline=timeout is None)
        try:
            return future.result(timeout)
        except FutureTimeout:
            for engine in self._engines:  # the lane holding it takes it out
                if engine.cancel(future, "timeout"):
                    break
            raise Overloaded(f"no answer within timeout={timeout} s") from None

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

    # ---- lifecycle ---------------------------------------------------------------------
    @property
    def dead(self) -> BaseException | None:
        """What killed a worker (the first lane's that died), or None while all live."""
        return next((e.dead for e in self._engines if e.dead is not None), None)

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Expose Prometheus metrics at http://addr:port/metrics (loopback by default).

        Returns:
            the bound port (useful with port=0, which picks a free one).

        Raises:
            ConfigError: the port cannot be bound (in use, no permission).
        """
        return self.metrics.serve(port, addr)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests, stop the engine's threads and the metrics server.

        Args:
            drain: answer every queued request first (True), or shed them all with
                `Overloaded` (False). The batch already running finishes either way.
            timeout: most seconds to wait for the worker (None: as long as it takes); past
                it, queued requests are shed and the running batch ends in the background.
        """
        from .streams import close_streams

        close_streams(self, drain, timeout)  # first: draining a stream needs its encodings
        for engine in self._engines:
            engine.close(drain, timeout)
        if self._owns_executor:
            self.executor.close()

    def open_stream(self, module, budget_ms: float = math.inf, **kw):
        """A stream of continual `module` (an `elastic.streaming` module) whose frames this
        runtime encodes, each within `budget_ms` on the subnet its scheduler picks; see
        `serving.streams.open_stream` for the options and what a refused frame does."""
        from .streams import open_stream

        return open_stream(self, module, budget_ms, **kw)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=True)
