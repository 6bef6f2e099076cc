"""Simulated load runs: the real scheduler and policies on a virtual clock over a measured profile.

A discrete-event simulation of one runtime worker, in the spirit of the simulators Clockwork
(OSDI'20) and SuperServe (NSDI'25) validate their schedulers with: arrivals and budgets are
the ones a real run would get; admission, queueing, shedding and every (subnet, batch)
decision are made by the real `BudgetScheduler` and policies (pure Python), called with the
virtual time; only the forward pass is replaced by a draw from the measured profile.

The service time of a batch of b requests on subnet s is

    forward ~ p50(s, b) × LogNormal(median 1, σ)
    busy    = forward + per_batch_ms + per_request_ms × b

where p50 comes from the profile measured on this machine, the two overheads are the
runtime's own cost as its engine fitted it while serving (`OverheadModel`), and σ is the
machine's spread, one for every cell: the median over the profile's (subnet, batch) cells
of ln(p99 / p50) / z₀.₉₉. A cell's own p99 of a few dozen repeats is nearly their maximum,
so one hiccup during its runs sets it: on the development machine the per-cell
ln(p99 / p50) of three profiling runs of the demo model correlated only 0.12–0.35 from run
to run (most cells near 1.1×, a few at 2–2.7× in one run and not the next). Fitted cell by
cell, such a cell became a subnet with a heavy tail in every simulated forward, and any
policy that served it paid for a profiling accident (`per_cell_spread=True` keeps that fit,
for comparison). The
scheduler is told the forward time and the overhead, as the real engine reports them. A
request's latency is the end of its batch's service minus its arrival.

What the simulation leaves out, and why its results are reported apart from real runs:
contention between the submitting thread and the worker, the Python scheduler's own time
(it runs in zero virtual time), correlated slow-downs (draws are independent), and other
processes on the machine. Correctness is drawn (`BernoulliJudge`) with each subnet's
accuracy.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from elastic.errors import BudgetInfeasible, Overloaded
from elastic.serving.latency_model import OverheadModel
from elastic.serving.profile import LatencyProfile
from elastic.serving.refit import REFIT_MS
from elastic.serving.request import Request
from elastic.serving.scheduler import BudgetScheduler
from elastic.subnet import Subnet

from .outcomes import ANSWERED, REJECTED, SHED, BernoulliJudge, Outcome

Z99 = 2.326348  # the standard normal's 99th percentile
_INF = math.inf
_TICK = 1e-9  # s: the watchdog looks just after a request's latest start (expiry is strict)
_POLL = 1e-3  # s: an idle worker with a queue and no wake-up time looks again this soon


@dataclass(frozen=True)
class ServiceModel:
    """How long a batch keeps the simulated worker busy."""

    profile: LatencyProfile  # measured p50 / p99 per (subnet, batch size)
    per_request_ms: float = 0.0  # the runtime's own cost per request in a batch
    per_batch_ms: float = 0.0  # the runtime's own cost per batch
    per_cell_spread: bool = False  # fit σ to each cell's own p50 / p99 instead of the shared one

    @cached_property
    def sigma(self) -> float:
        """The log-normal's σ shared by every cell: the median over the profile's cells of
        ln(p99 / p50) / z₀.₉₉ (a cell whose p99 is below its p50 counts as 0)."""
        profile = self.profile
        return statistics.median(_cell_sigma(profile, s, b) for s in profile.subnet_ids for b in profile.batch_sizes)

    def forward_ms(self, subnet: int, batch: int, rng: random.Random) -> float:
        """One forward time: the profiled median times a log-normal draw with median 1."""
        p50 = self.profile.latency_ms(subnet, batch, "p50")
        sigma = _cell_sigma(self.profile, subnet, batch) if self.per_cell_spread else self.sigma
        return p50 * math.exp(sigma * rng.gauss(0.0, 1.0))

    def overhead_ms(self, batch: int) -> float:
        return self.per_batch_ms + self.per_request_ms * batch


def _cell_sigma(profile: LatencyProfile, subnet: int, batch: int) -> float:
    """σ of the log-normal whose median and 99th percentile are the cell's p50 and p99."""
    p50 = profile.latency_ms(subnet, batch, "p50")
    p99 = profile.latency_ms(subnet, batch, "p99")
    return math.log(p99 / p50) / Z99 if p99 > p50 > 0 else 0.0


def simulate(
    subnets: Sequence[Subnet],
    service: ServiceModel,
    policy: str,
    arrivals_s: Sequence[float],
    budgets_ms: Sequence[float],
    judge: BernoulliJudge,
    *,
    max_batch_size: int = 8,
    max_queue: int = 256,
    batch_wait_ms: float = 1.0,
    seed: int | str = 0,
    stages: Mapping[int, Sequence[float]] | None = None,
    slo_target: float | None = 0.99,
    refit_ms: float = REFIT_MS,
    on_end: Callable[[BudgetScheduler], None] | None = None,
) -> list[Outcome]:
    """Run one load on a virtual clock; one `Outcome` per request, as a real run gives.

    The loop mirrors the runtime's engine (`elastic.serving.engine`): an idle worker asks the
    scheduler for a batch at every arrival; a batch that may wait to fill up (`wait_until`)
    is asked for again then or at the next arrival; while a batch runs, the deadline
    watchdog sheds queued requests at `next_expiry`; after each batch the scheduler gets
    the forward time (`update_from_output`), the overhead (`observe_overhead`) and how many
    of its requests ended late (`observe_outcomes`, as are deadline sheds), so its latency
    model learns the overhead and its planning margin online as the real one does.

    Args:
        subnets: the model's subnet table, accuracies set.
        service: the measured profile and the runtime's overheads.
        policy: "elastic", "slackfit" or "static:<id>".
        arrivals_s: arrival times, ascending.
        budgets_ms: each request's budget.
        judge: correctness per (request, subnet).
        max_batch_size, max_queue, batch_wait_ms: as the real `Runtime` is configured.
        seed: seeds the forward-time draws (the same seed gives the same run).
        stages: subnet id -> stage boundaries (`ElasticModel.stage_fractions`): batches
            pause there, as a preemptive worker does (`BudgetScheduler.boundary`, then
            `interrupt` when an urgent batch waits), the boundaries placed at those shares
            of the drawn forward; None: they never pause.
        slo_target: as `Runtime(slo_target=...)`: the planning quantile follows the late
            share (None: fixed).
        refit_ms: as `Runtime(refit_ms=...)`: how long observations wait to be folded
            into the latency model together (serving/refit.py; 0: after every batch).
        on_end: called with the scheduler once every request has ended (to read its state).
    """
    if len(arrivals_s) != len(budgets_ms):
        raise ValueError(f"{len(arrivals_s)} arrival times for {len(budgets_ms)} budgets")
    sched = BudgetScheduler(
        subnets,
        service.profile,
        policy,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        overhead=OverheadModel(),
        batch_wait_ms=batch_wait_ms,
        stages=stages,
        slo_target=slo_target,
        refit_ms=refit_ms,
    )
    rng = random.Random(f"service/{seed}")

    outcomes: list[Outcome | None] = [None] * len(arrivals_s)
    requests: dict[int, Request] = {}
    running = None  # [batch, end time, forward ms, overhead ms, boundary times ahead]
    inner = None  # an urgent batch running while `running` is paused: (batch, end, forward, overhead)
    wake = _INF  # when an idle worker holding a partial batch looks again
    n, i, now = len(arrivals_s), 0, 0.0

    def shed(items) -> None:
        missed = 0
        for s in items:
            r = requests.pop(s.request_id)
            outcomes[r.id] = Outcome(SHED, r.budget_ms, reason=s.reason)
            missed += s.reason == "deadline"
        if missed:  # as the engine reports them (`EngineCore._shed`)
            sched.observe_outcomes(missed, missed)

    def answer(batch, forward: float, overhead: float) -> None:
        late = 0
        for rid in batch.request_ids:
            r = requests.pop(rid)
            latency = 1e3 * (now - r.arrival)
            late += latency > r.budget_ms
            correct = judge(rid, rid, batch.subnet)
            outcomes[rid] = Outcome(ANSWERED, r.budget_ms, batch.subnet, latency, batch.size, correct)
        sched.update_from_output(batch, forward, now)
        sched.observe_overhead(batch.size, overhead)
        sched.observe_outcomes(late, batch.size)

    while i < n or running is not None or sched.has_waiting():
        t_arrival = arrivals_s[i] if i < n else _INF
        t_end = running[1] if running is not None else _INF
        t_inner = inner[1] if inner is not None else _INF
        t_stage = running[4][0] if running is not None and inner is None and running[4] else _INF
        t_watch = _INF
        if running is not None:
            nxt = sched.next_expiry()
            t_watch = nxt + _TICK if nxt is not None else _INF
        t = min(t_end, t_inner, t_stage, t_arrival, wake, t_watch)
        if t == _INF:
            raise RuntimeError("simulation stalled: requests queued, nothing scheduled and no time to wake")
        now = max(now, t)
        if t == t_inner:  # the urgent batch ends: the paused one resumes
            batch, _, forward, overhead = inner
            inner = None
            answer(batch, forward, overhead)
            continue
        if t == t_stage:  # a boundary of the running batch: run the urgent batch, if any, first
            running[4].pop(0)
            stage = len(sched.stages_of(running[0])) - len(running[4]) - 1
            if not sched.boundary(stage, now):
                continue  # nobody urgent: on, as the engine goes on without the lock
            out = sched.interrupt(now, stage)
            shed(out.shed)
            if out.batch is not None:
                forward = service.forward_ms(out.batch.subnet, out.batch.size, rng)
                overhead = service.overhead_ms(out.batch.size)
                busy = (forward + overhead) / 1e3
                inner = (out.batch, now + busy, forward, overhead)
                running[1] += busy
                running[4] = [b + busy for b in running[4]]
            continue
        if t == t_end:  # the worker frees first on ties
            batch, _, forward, overhead, _ = running
            running = None
            answer(batch, forward, overhead)
        elif t == t_watch:
            shed(sched.shed_expired(now))
            continue
        elif t == t_arrival:
            r = Request(i, now, float(budgets_ms[i]))
            i += 1
            try:
                evicted = sched.add_request(r, now)
            except BudgetInfeasible:
                outcomes[r.id] = Outcome(REJECTED, r.budget_ms, reason="infeasible")
                continue
            except Overloaded:
                outcomes[r.id] = Outcome(REJECTED, r.budget_ms, reason="overloaded")
                continue
            requests[r.id] = r
            shed(evicted)
        wake = _INF
        if running is None and sched.has_waiting():
            out = sched.schedule(now)
            shed(out.shed)
            if out.batch is not None:
                forward = service.forward_ms(out.batch.subnet, out.batch.size, rng)
                overhead = service.overhead_ms(out.batch.size)
                bounds = [now + f * forward / 1e3 for f in sched.stages_of(out.batch)]
                running = [out.batch, now + (forward + overhead) / 1e3, forward, overhead, bounds]
            elif sched.has_waiting():
                wake = out.wait_until if out.wait_until is not None and out.wait_until > now else now + _POLL
    missing = [k for k, o in enumerate(outcomes) if o is None]
    if missing:
        raise RuntimeError(f"simulation lost {len(missing)} requests (first: {missing[:5]})")
    if on_end is not None:
        on_end(sched)
    return outcomes  # type: ignore[return-value]
