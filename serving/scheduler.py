"""`BudgetScheduler`: queue-aware admission, deadline-ordered queue, shedding, online correction.

The control loop of an SLO-aware model server — Clockwork (Gujarati et al., OSDI'20),
INFaaS (Romero et al., ATC'21), SuperServe (Khare et al., NSDI'25) — over one elastic
model whose subnets are the "model variants":

- latency model: the profile's forward latency, corrected online, plus the engine's own
  per-batch and per-request cost (`LatencyModel`); every deadline check uses it;
- admission (queue-aware): a new request is placed where it belongs in the queue and the
  whole queue is planned the cheapest way the elastic model allows — earliest deadline
  first, in full batches on the fastest eligible subnet, after the running batch — which is
  exactly the plan that moves queued requests to cheaper subnets when that saves them
  (`QueuePlan`, serving/queue_plan.py). It is admitted only if it makes its deadline in
  that plan and no admitted request that made its deadline stops making it; else it is
  rejected at once (`BudgetInfeasible` when its budget cannot be met even by an idle
  engine, `Overloaded` when the queue is what stands in the way). A full queue rejects,
  or evicts a queued request of lower priority;
- step: shed queued requests that can no longer make their deadline (each comes back as a
  `ShedRequest`), then let the policy pick (subnet, batch); the elastic policy takes the
  most accurate subnet that keeps every planned request on time;
- decision cost: for every batch size a Pareto front (latency ascending, accuracy
  ascending) is precomputed (`CostTable`, serving/cost_table.py), so "the fastest subnet
  meeting an accuracy floor" and "the most accurate subnet within t ms" are binary
  searches; the queue is a sorted list with
  parallel deadline / floor arrays, and expiry is a heap, so no step loops over every subnet
  or (for shedding) over every queued request;
- feedback: every batch's observed forward time corrects the forward predictions, the
  engine reports its overhead (`observe_overhead`), and how many admitted requests ended
  late (`observe_outcomes`), which sets the quantile of the forwards' spread every batch
  is planned at (`TailQuantile`, serving/slo_margin.py); with `refit_ms` the three are
  kept and folded together once the oldest is that old (`GroupedRefit`, serving/refit.py).
- preemption (optional, `stages=`): a request the running batch would make late runs inside
  it at its next block boundary when the batch, the queue and it stay on time
  (`PreemptingScheduler`, serving/preemption.py; the worker calls `boundary` at each
  boundary, and `interrupt` when it says an urgent batch waits).

Pure Python (its inner searches also compiled: serving/front_search.py), no torch,
single-threaded: the runtime serialises calls, and the clock is an
argument, so tests drive time by hand. Only subnets on the accuracy/latency Pareto front of
the profile are candidates. When the model carries no accuracies at all, the scheduler
plans with FLOPs as a stand-in (more FLOPs taken as more accurate, the SN-Net premise) and
says so in the log; `min_accuracy` can then not be met by any subnet.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral

from elastic.errors import BudgetInfeasible, ConfigError, Overloaded
from elastic.subnet import Subnet

from .batch_hold import BatchHold
from .cost_table import CostTable
from .demand import Demand
from .interface import SchedulerInterface
from .latency_model import OverheadModel
from .output import ScheduledBatch, SchedulerOutput, ShedRequest
from .policies import Decision, Policy, make_policy
from .predictor import TAIL_QUANTILE
from .preemption import PreemptingScheduler
from .profile import QUANTILES, LatencyProfile
from .queue_plan import QueuePlan
from .refit import SURPRISE, GroupedRefit
from .request import Request
from .slo_margin import TailQuantile

log = logging.getLogger(__name__)

_INF = math.inf
_NO_FLOOR = -math.inf


def check_positive_int(name: str, value: object) -> int:
    """`value` as an int >= 1, or `ConfigError` naming `name` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class BudgetScheduler(CostTable, QueuePlan, BatchHold, PreemptingScheduler, GroupedRefit, SchedulerInterface):
    """Deadline-aware batching over the subnets of one elastic model.

    Args:
        subnets: the model's subnet table (accuracies included when known).
        profile: measured latencies on the serving device.
        policy: "elastic" (default), "slackfit", "static:<id>", or a `Policy`.
        max_batch_size: most requests per forward.
        max_queue: most requests waiting (not counting the batch running).
        quantile: which profiled quantile to plan with, "p99" (default) or "p50".
        ewma_alpha: weight of a new observation in the online latency correction.
        overhead: the engine's overhead model (zero until the engine reports any).
        batch_wait_ms: longest the head request may be held back to fill a batch, when
            every member's slack allows and requests are arriving faster than that (0: never).
        stale_s: an online correction no forward has renewed for this long is dropped
            when it alone makes an idle engine refuse a request (`add_request`).
        stages: subnet id -> the share of its forward done at each stage boundary where
            it can pause (`ElasticModel.stage_fractions`); given, a request the running
            batch would make late runs inside it at its next boundary when that keeps
            everyone on time (`serving/preemption.py`), and the worker must call
            `boundary` at every boundary (and `interrupt` when it says so). None: batches
            never pause.
        slo_target: the share of admitted, non-best-effort requests that should end within
            budget; the quantile of the forwards' spread that plans every batch follows it
            (`TailQuantile`, serving/slo_margin.py), fed by `observe_outcomes`. None: the
            quantile stays at `predictor.TAIL_QUANTILE`.
        refit_ms: keep what the batches teach the latency model and fold it together once
            the oldest is this old, or at once on a surprise (serving/refit.py); 0 (the
            default here; the runtime groups): after every batch.

    Raises:
        ConfigError: a bad setting (also a `ValueError`).
    """

    def __init__(
        self,
        subnets: Sequence[Subnet],
        profile: LatencyProfile,
        policy: str | Policy = "elastic",
        max_batch_size: int = 8,
        max_queue: int = 256,
        quantile: str = "p99",
        ewma_alpha: float = 0.2,
        *,
        overhead: OverheadModel | None = None,
        batch_wait_ms: float = 0.0,
        stale_s: float = 0.5,
        stages: Mapping[int, Sequence[float]] | None = None,
        slo_target: float | None = 0.99,
        refit_ms: float = 0.0,
    ):
        self.max_batch_size = check_positive_int("max_batch_size", max_batch_size)
        self.max_queue = check_positive_int("max_queue", max_queue)
        if quantile not in QUANTILES:
            raise ConfigError(f"quantile must be one of {QUANTILES}, got {quantile!r}")
        if isinstance(ewma_alpha, bool) or not isinstance(ewma_alpha, (int, float)) or not 0 < ewma_alpha <= 1:
            raise ConfigError(f"ewma_alpha must be a number in (0, 1], got {ewma_alpha!r}")
        if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, (int, float)) or not batch_wait_ms >= 0:
            raise ConfigError(f"batch_wait_ms must be a number >= 0, got {batch_wait_ms!r}")
        if isinstance(stale_s, bool) or not isinstance(stale_s, (int, float)) or not stale_s > 0:
            raise ConfigError(f"stale_s must be a number > 0, got {stale_s!r}")
        self.policy = make_policy(policy)
        self.quantile = quantile
        self.ewma_alpha = float(ewma_alpha)
        self.batch_wait_ms = float(batch_wait_ms)
        self.stale_s = float(stale_s)
        self.forgotten = 0  # times the online correction was dropped as stale
        self.on_forget: Callable[[], None] | None = None  # told each time (the runtime counts it)
        self._observed_at: float | None = None  # when the last forward time was observed
        self.overhead = overhead if overhead is not None else OverheadModel()
        self._subnets = list(subnets)
        # the queue, in Request.order_key order, as parallel arrays
        self._keys: list[tuple[int, float, int]] = []
        self._reqs: list[Request] = []
        self._hard: list[float] = []  # deadline, or inf for best-effort requests (they never bind)
        self._floor: list[float] = []  # min_accuracy, or -inf
        self._n_floored = 0  # queued requests with an accuracy floor
        self._queued: dict[int, Request] = {}
        self._expiry: list[tuple[float, int]] = []  # heap of (latest start, request id); lazy deletion
        self._busy_until: float | None = None  # predicted end of the batch running
        self._planned_loaded = False  # the latency model's state when the running batch was planned
        self.demand = Demand()  # recent arrival rate and budgets, every request counted
        self._init_holds()
        self._eligible_cache: dict[float | None, list[int]] = {}
        self._fast_any: list[tuple[int, float] | None] | None = None  # `fastest_at()`, until a prediction changes
        self._init_preemption(stages)
        self.tail_control = TailQuantile(slo_target, TAIL_QUANTILE) if slo_target is not None else None
        self._init_refit(refit_ms)
        self.set_profile(profile)

    # ---- the queue, as policies read it -------------------------------------------------
    def queue_arrays(self, queue: Sequence[Request]) -> tuple[list[float], list[float]]:
        """(binding deadlines, accuracy floors) of `queue`, position by position: the
        scheduler's own arrays when `queue` is its queue (no copy), else computed."""
        if queue is self._reqs:
            return self._hard, self._floor
        hard = [_INF if r.best_effort else r.deadline for r in queue]
        floors = [_NO_FLOOR if r.min_accuracy is None else r.min_accuracy for r in queue]
        return hard, floors

    def worker_free_at(self, now: float) -> float:
        """When the worker is expected to take its next batch, seen at `now`.

        Nothing running: now. A batch within its predicted service: its predicted end. A
        batch past it: as long again as it has overrun so far. A forward that has outrun
        the plan's tail margin is stalled (another process, or the submitting threads
        holding the interpreter lock between its ops), and the longer a stall has lasted,
        the longer it is likely to go on (the expected remainder of a Pareto tail of index
        2 equals its age). Taking the overrun as over would admit requests the stall then
        sheds; this turns them away at submit, while they can still go elsewhere.
        """
        end = self._busy_until
        if end is None:
            return now
        return end if end > now else now + (now - end)

    def _set_loaded(self, loaded: bool) -> None:
        """Plan for forwards that share the interpreter with arriving requests, or run alone
        (`LatencyPredictor.set_loaded`): requests arrive when the last two came within the
        fastest forward of each other and of now (`Demand.streaming`)."""
        if self.latency.forward.set_loaded(loaded):
            self._fast_any = None

    def _correction_stale(self, now: float) -> bool:
        """Is the online correction, about to refuse a request an idle engine would serve
        alone, evidence nothing has renewed for `stale_s`? A correction learned in a burst
        (forwards slowed by the submitting threads) can put every subnet past every budget:
        then nothing is admitted, nothing runs, and nothing corrects it. Idle, empty queue."""
        if self._busy_until is not None or self._reqs or not self.latency.forward.corrected:
            return False
        return self._observed_at is None or now - self._observed_at > self.stale_s

    def _forget(self, now: float) -> None:
        """Drop the online forward correction of the machine state the engine is in (and the
        tail): plan from the profile until forwards run again (`LatencyPredictor.forget`)."""
        forward = self.latency.forward
        log.info(
            "latency model: no forward observed for %.0f ms while refusing work it predicts %.2fx the profile"
            " (%s); planning from the profile again",
            1e3 * (now - self._observed_at) if self._observed_at is not None else math.inf,
            forward.shared * (forward.tail or 1.0),
            "requests arriving" if forward.loaded else "alone",
        )
        forward.forget()
        self.forgotten += 1
        if self.on_forget is not None:
            self.on_forget()
        self._fast_any = None
        self._refresh_fronts()

    def set_profile(self, profile: LatencyProfile, subnets: Sequence[Subnet] | None = None) -> None:
        """`CostTable.set_profile`, after folding what the old profile's forwards taught
        (their correction goes with it; the overhead and the tail control stay)."""
        self.refit()
        super().set_profile(profile, subnets)

    # ---- SchedulerInterface ------------------------------------------------------------
    def add_request(self, request: Request, now: float) -> list[ShedRequest]:
        budget = request.budget_ms
        if not budget > 0:  # also catches NaN
            raise BudgetInfeasible(f"budget must be > 0 ms, got {budget}")
        if self._unfit_since is not None and now - self._unfit_since >= self._refit_s:
            self.refit()  # the model lags the forwards by at most `refit_ms` (serving/refit.py)
        demand = self.demand
        demand.record(now, math.inf if request.best_effort else budget, self._busy_until is not None)
        self._set_loaded(demand.streaming(now, self._stream_gap_s))
        floor = request.min_accuracy
        found = self.fastest(floor, 1)
        if found is None:
            known = [self._real_accuracy[s] for s in self.candidates if s in self._real_accuracy]
            best = f"the best candidate reaches {max(known):.4f}" if known else "no candidate has a measured accuracy"
            raise BudgetInfeasible(f"no subnet meets min_accuracy={floor}: {best}")
        fastest = found[1]
        deadline = request.deadline
        hard = not request.best_effort
        start = self.worker_free_at(now)
        if hard:
            if now + fastest / 1e3 > deadline and self._correction_stale(now):
                self._forget(now)
                fastest = self.fastest(floor, 1)[1]
            if now + fastest / 1e3 > deadline:
                raise BudgetInfeasible(f"budget {budget:.3g} ms < {fastest:.3g} ms predicted for the fastest subnet")
            if start + fastest / 1e3 > deadline:
                if self._admit_urgent(request, now, start):
                    return self._admitted(request, now, self._latest_start(deadline, fastest))
                raise BudgetInfeasible(
                    f"budget {budget:.3g} ms < {fastest:.3g} ms predicted for the fastest subnet"
                    f" + {(start - now) * 1e3:.3g} ms until the running batch ends"
                )
        victim = None
        if len(self._reqs) >= self.max_queue:
            victim = self._eviction_victim()
            if victim is None or victim.priority >= request.priority:
                raise Overloaded(f"queue full ({self.max_queue} requests waiting)")
        key = (-request.priority, deadline, request.id)  # `Request.order_key()`
        p = bisect.bisect_left(self._keys, key)
        if hard and self._reqs:
            why = self._admission_check(p, deadline, _NO_FLOOR if floor is None else floor, start)
            if why is not None:
                if self._admit_urgent(request, now, start):
                    return self._admitted(request, now, self._latest_start(deadline, fastest))
                raise Overloaded(why)
        evicted: list[ShedRequest] = []
        if victim is not None:
            self._remove(victim)
            evicted.append(
                ShedRequest(victim.id, "evicted", f"evicted from a full queue by a priority-{request.priority} request")
            )
            p = bisect.bisect_left(self._keys, key)
        self._insert(p, key, request, deadline if hard else _INF, _NO_FLOOR if floor is None else floor)
        return self._admitted(request, now, self._latest_start(deadline, fastest) if hard else _INF, evicted)

    def _admitted(
        self, request: Request, now: float, latest_start: float, evicted: list[ShedRequest] | None = None
    ) -> list[ShedRequest]:
        """Book-keeping of an admitted request (queued or urgent): its expiry, the arrival gap."""
        if latest_start < _INF:
            heapq.heappush(self._expiry, (latest_start, request.id))
        self._arrived(now)
        return evicted if evicted is not None else []

    def schedule(self, now: float, hold: bool = True) -> SchedulerOutput:
        """Shed what can no longer make it, then pick the next batch; `hold=False` never
        holds a partial batch back (a caller-runs step: the caller is waiting anyway)."""
        out = SchedulerOutput(shed=self.shed_expired(now))
        pre = self._preempt
        if pre is not None and pre.urgent:  # the batch they were to interrupt ended first
            out.batch = batch = self._dispatch_urgent(now)
            self._busy_until = now + batch.predicted_ms / 1e3
            self._planned_loaded = True  # urgent: requests are arriving
            pre.running = None
            return out
        queue = self._reqs
        if not queue:
            return out
        self._set_loaded(self.demand.streaming(now, self._stream_gap_s))
        b_max = self.max_batch_size
        decision = self.policy.choose(queue, now, self, b_max)
        if decision is None or not 1 <= decision.size <= min(len(queue), b_max):
            decision = Decision(self.fastest(queue[0].min_accuracy, 1)[0], 1)
        size = decision.size
        predicted = self.predict_ms(decision.subnet, size)
        if self._waiting_for is not None:
            self._hold_ended(now)
        if hold and self.batch_wait_ms > 0 and size == len(queue) and size < b_max:
            wait_until = self._hold(now, decision.subnet, size, predicted)
            if wait_until is not None:
                out.wait_until = wait_until
                return out
        members = queue[:size]
        binding = min(self._hard[:size])
        del self._keys[:size], self._reqs[:size], self._hard[:size], self._floor[:size]
        for r in members:
            del self._queued[r.id]
            if r.min_accuracy is not None:
                self._n_floored -= 1
        self._busy_until = now + predicted / 1e3
        self._planned_loaded = self.latency.forward.loaded
        out.batch = ScheduledBatch(decision.subnet, tuple([r.id for r in members]), predicted, now, self.policy.name)
        if pre is not None:
            pre.start(out.batch, binding, now)
        return out

    def update_from_output(
        self, batch: ScheduledBatch, exec_ms: float | None, now: float | None = None
    ) -> float | None:
        """Report a finished batch's forward time (None: it failed) at `now` (default: its
        start + forward + predicted overhead); returns observed over predicted forward time,
        as predicted in the machine state it was planned in (the overhead is reported apart,
        `observe_overhead`). An urgent batch that ran inside a paused one leaves that one
        running, its predicted end moved by the urgent one's misprediction."""
        if now is not None:
            busy_ms = 1e3 * (now - batch.start)
        else:
            busy_ms = batch.predicted_ms if exec_ms is None else exec_ms + self.overhead_ms(batch.size)
        pre = self._preempt
        if pre is not None and batch is pre.inner:
            pre.inner = None
            pre.resume_at(batch.start + busy_ms / 1e3)
            if self._busy_until is not None:
                self._busy_until += (busy_ms - batch.predicted_ms) / 1e3
            loaded = True  # an urgent batch runs because requests are arriving
        else:
            loaded = self._planned_loaded  # the latency model's state when it was planned
            self._busy_until = None
            if pre is not None:
                pre.running = None
            self.demand.busy_ended(busy_ms)
        if exec_ms is None:
            return None
        predicted_forward = self.latency.forward.predict_in(batch.subnet, batch.size, loaded)  # as it was planned
        self._observed_at = now if now is not None else batch.start + busy_ms / 1e3
        ratio = exec_ms / predicted_forward if predicted_forward > 0 else None
        surprise = ratio is None or not 1 / SURPRISE <= ratio <= SURPRISE
        self._keep_forward(batch.subnet, batch.size, exec_ms, loaded, surprise, self._observed_at)
        return ratio

    def observe_outcomes(self, late: int, total: int) -> None:
        """`total` admitted, non-best-effort requests ended, `late` of them after their
        deadline or shed because they could no longer make it: the planning quantile
        follows (`TailQuantile`; nothing without `slo_target`). Folded with the next refit
        (serving/refit.py); at once when any ended late."""
        if self.tail_control is not None and total > 0:
            self._keep_outcomes(late, total)

    def observe_overhead(self, batch_size: int, overhead_ms: float, wake_ms: float = 0.0) -> None:
        """The engine's own time around one batch's forward (wake-up, scheduling, stacking,
        answering), `wake_ms` of it waking the worker: folded into the overhead model every
        prediction adds (the wake-up apart, which shedding leaves out: `_latest_start`),
        with the next refit (serving/refit.py)."""
        self._keep_overhead(batch_size, overhead_ms, wake_ms)

    def abort_all(self, reason: str = "closed") -> list[ShedRequest]:
        urgent = self._preempt.clear() if self._preempt is not None else []
        shed = [ShedRequest(r.id, reason, "the runtime closed without draining its queue") for r in urgent + self._reqs]
        self._keys.clear()
        self._reqs.clear()
        self._hard.clear()
        self._floor.clear()
        self._queued.clear()
        self._expiry.clear()
        self._n_floored = 0
        return shed

    def get_num_waiting(self) -> int:
        return len(self._queued)

    def has_waiting(self) -> bool:
        return bool(self._queued)

    # ---- deadlines ---------------------------------------------------------------------
    def next_expiry(self) -> float | None:
        """The earliest time a queued request may become impossible to serve (its deadline
        minus the fastest service it can get), or None: when to call `shed_expired` next."""
        heap = self._expiry
        while heap and heap[0][1] not in self._queued:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _latest_start(self, deadline: float, service_ms: float) -> float:
        """The latest time a queued request can be started on a batch of `service_ms` (its
        fastest service alone) and still make `deadline`. Only a worker that is awake starts
        or sheds queued requests — between batches, or the watchdog while one runs — so the
        wake-up the service includes (`OverheadModel.wake_part`) is not ahead of it: counted
        again, a request admitted to an idle worker with less slack than its wake-up was
        shed at the worker's first look, where a forward in its planned time answers it."""
        return deadline - (service_ms - self.overhead.wake_part(1)) / 1e3

    def shed_expired(self, now: float) -> list[ShedRequest]:
        """Remove and return the queued requests that can no longer make their deadline
        even if served alone on the fastest eligible subnet from `now` by an awake worker
        (`_latest_start`)."""
        shed: list[ShedRequest] = []
        heap = self._expiry
        while heap and heap[0][0] < now:
            _, rid = heapq.heappop(heap)
            r = self._queued.get(rid)
            if r is None:
                continue  # already scheduled or removed
            found = self.fastest(r.min_accuracy, 1)
            latest = self._latest_start(r.deadline, found[1] if found is not None else math.inf)
            if latest >= now:  # predictions improved since it was queued: check again later
                heapq.heappush(heap, (latest, rid))
                continue
            self._remove(r)
            waited = (now - r.arrival) * 1e3
            shed.append(
                ShedRequest(
                    r.id, "deadline", f"budget {r.budget_ms:.3g} ms can no longer be met after {waited:.3g} ms queued"
                )
            )
        if len(heap) > 4 * len(self._queued) + 64:  # drop stale entries of scheduled requests
            self._expiry = [e for e in heap if e[1] in self._queued]
            heapq.heapify(self._expiry)
        return shed

    # ---- helpers -----------------------------------------------------------------------
    def waiting(self) -> list[Request]:
        """The queue in scheduling order (a copy), urgent requests first."""
        return [*self._preempt.urgent, *self._reqs] if self._preempt is not None else list(self._reqs)

    def remove(self, request_id: int) -> bool:
        """Take a queued request out (a caller gave up on it); False if it is not queued."""
        r = self._queued.get(request_id)
        if r is None:
            return False
        self._remove(r)
        return True

    def _insert(self, p: int, key: tuple, request: Request, hard: float, floor: float) -> None:
        self._keys.insert(p, key)
        self._reqs.insert(p, request)
        self._hard.insert(p, hard)
        self._floor.insert(p, floor)
        self._queued[request.id] = request
        if request.min_accuracy is not None:
            self._n_floored += 1

    def _remove(self, request: Request) -> None:
        pre = self._preempt
        if pre is not None and pre.remove(request.id) is not None:  # urgent: its batch shrinks
            del self._queued[request.id]
            found = self._urgent_service(pre.urgent) if pre.urgent else None
            ms = found[1] if found is not None else 0.0
            if self._busy_until is not None:
                self._busy_until += (ms - pre.urgent_ms) / 1e3
            pre.urgent_ms = ms
            return
        p = bisect.bisect_left(self._keys, request.order_key())
        del self._keys[p], self._reqs[p], self._hard[p], self._floor[p]
        del self._queued[request.id]
        if request.min_accuracy is not None:
            self._n_floored -= 1

    def _eviction_victim(self) -> Request | None:
        """Lowest priority, latest deadline, latest arrival: the cheapest request to shed —
        the queue's last, as it is kept sorted by that key (`Request.order_key`); O(1) on the
        path every submit to a full queue takes."""
        return self._reqs[-1] if self._reqs else None
