"""Preemption at stage boundaries: the running batch's progress, and the urgent requests that
run inside it.

A forward cannot be interrupted, but a subnet that runs block by block can pause between two
blocks. While a long batch runs on a big subnet, a request with a tight budget would wait
for all of it (and be refused at submit, `BudgetInfeasible`); with preemption it is admitted
as *urgent* instead, when

- the running batch has a stage boundary ahead, and the urgent batch (every urgent request,
  on the fastest subnet their floors allow) started at that boundary ends by each urgent
  member's deadline,
- the running batch, delayed by the urgent batch, still ends by its own members' earliest
  deadline, and
- no queued request that the plan had on time is made late by the delay
  (`BudgetScheduler._plan_late`).

At each boundary the worker tells the scheduler without taking the lock (`boundary`: the
batch's progress, published as one attribute); when urgent requests wait, it takes the lock,
asks for their batch (`interrupt`), runs it, and resumes the paused one. The urgent batch
itself is not preemptible (one level). What a busy period costs the arrivals it turns away
shrinks with it, from the whole batch to one stage, and the elastic policy prices it so
(`ElasticPolicy`, `block_fraction`).

A stitched subnet runs as a Python loop over blocks (`StitchedNet.forward_path`), so its
boundaries are the block boundaries (`ElasticModel.stage_fractions`). The urgent request
goes first as in preemptive earliest-deadline-first scheduling (Liu & Layland, 1973), at the
granularity of a block; preemptive DNN inference schedulers make the same trade on
accelerators (PREMA, Choi & Rhu, HPCA'20; REEF, Han et al., OSDI'22).

Pure Python, no clock of its own: `BudgetScheduler` owns one and drives it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from elastic.errors import ConfigError

from .output import ScheduledBatch, SchedulerOutput
from .request import Request

_INF = math.inf
URGENT_ALPHA = 0.05  # EWMA weight of one urgent try in the share the urgent path admits


def check_stages(stages: Mapping[int, Sequence[float]]) -> dict[int, tuple[float, ...]]:
    """Validated stage boundaries: subnet id -> the share of its forward done at each boundary,
    strictly increasing in (0, 1). An empty tuple: that subnet cannot pause.

    Raises:
        ConfigError: a boundary outside (0, 1), or not increasing.
    """
    checked = {}
    for sid, fractions in stages.items():
        fs = tuple(float(f) for f in fractions)
        if any(not 0.0 < f < 1.0 for f in fs) or any(a >= b for a, b in itertools.pairwise(fs)):
            raise ConfigError(f"stage boundaries of subnet {sid} must increase strictly within (0, 1), got {fs}")
        checked[int(sid)] = fs
    return checked


def longest_stage(fractions: Sequence[float]) -> float:
    """The largest share of a forward between two boundaries (1.0: it cannot pause)."""
    edges = (0.0, *fractions, 1.0)
    return max(b - a for a, b in itertools.pairwise(edges))


class Preemption:
    """The preemptible running batch and the urgent requests waiting for its next boundary.

    Args:
        stages: subnet id -> stage boundaries (`check_stages`).
    """

    def __init__(self, stages: Mapping[int, Sequence[float]]):
        self.stages = check_stages(stages)
        self.running: ScheduledBatch | None = None  # the batch that may pause
        self.fractions: tuple[float, ...] = ()  # its stage boundaries
        self.deadline = _INF  # its members' earliest binding deadline
        self.service_ms = 0.0  # its predicted service
        # (share of its forward done, when it (re)started from there, s, scheduler clock): one
        # attribute, so that admission reads a consistent pair while the worker publishes a
        # boundary it passed without the lock (`PreemptingScheduler.boundary`)
        self.progress = (0.0, 0.0)
        self.urgent: list[Request] = []  # admitted to run at the next boundary, deadline order
        self.urgent_ms = 0.0  # predicted service of their batch (0 when none)
        self.inner: ScheduledBatch | None = None  # the urgent batch running inside `running`

    def block_fraction(self, subnets: Sequence[int]) -> float:
        """The largest stage share over `subnets`: the part of a batch a tight arrival may
        have to wait for (1.0 when one of them cannot pause)."""
        return max((longest_stage(self.stages.get(s, ())) for s in subnets), default=1.0)

    def start(self, batch: ScheduledBatch, deadline: float, now: float) -> None:
        """`batch` starts at `now`; `deadline` is its members' earliest binding one."""
        self.fractions = self.stages.get(batch.subnet, ())
        self.running = batch if self.fractions else None
        self.deadline = deadline
        self.service_ms = batch.predicted_ms
        self.progress = (0.0, now)

    def reached(self, stage: int, now: float) -> None:
        """The running batch reached its boundary `stage` (0-based) at `now`."""
        fractions = self.fractions if self.running is not None else ()
        if 0 <= stage < len(fractions):
            self.progress = (fractions[stage], now)

    def resume_at(self, t: float) -> None:
        """The paused batch goes on from where it is at `t` (after an urgent batch)."""
        self.progress = (self.progress[0], t)

    def next_boundary(self, now: float) -> float | None:
        """Predicted time of the running batch's next boundary at or after `now`, after the
        urgent batch running inside it if any (None: no batch may pause, or it is past its
        predicted boundaries)."""
        if self.running is None:
            return None
        done, resumed = self.progress
        for f in self.fractions:
            if f > done:
                t = resumed + (f - done) * self.service_ms / 1e3
                if t >= now:
                    return t
        return None

    def remove(self, request_id: int) -> Request | None:
        """Take an urgent request out; the caller re-plans `urgent_ms`."""
        for k, r in enumerate(self.urgent):
            if r.id == request_id:
                return self.urgent.pop(k)
        return None

    def clear(self) -> list[Request]:
        urgent, self.urgent, self.urgent_ms = self.urgent, [], 0.0
        return urgent


class PreemptingScheduler:
    """The scheduler side of preemption: urgent admission, the urgent batch at a boundary, and
    the stages a batch may pause at. A mixin of `BudgetScheduler`, over its queue and its
    `Preemption` state (`_preempt`, None when batches never pause)."""

    def _init_preemption(self, stages: Mapping[int, Sequence[float]] | None) -> None:
        self._preempt = Preemption(stages) if stages is not None else None
        self._block: tuple[list[int], float] | None = None  # (candidates, their longest stage share)
        self._urgent_admitted = 1.0  # EWMA: did the urgent path admit a request it was tried for?

    def _urgent_service(self, urgent: Sequence[Request]) -> tuple[int, float] | None:
        """(id, service ms) of the batch `urgent` runs as: the fastest subnet their floors allow."""
        floors = [r.min_accuracy for r in urgent if r.min_accuracy is not None]
        return self.fastest(max(floors) if floors else None, len(urgent))

    def _admit_urgent(self, request: Request, now: float, start: float) -> bool:
        """Admit a hard `request` the running batch would make late as urgent, to run at its
        next boundary, if that keeps it, the running batch and the queue's plan on time (the
        module docstring); False (nothing changed) otherwise. Every try counts towards the
        share of such requests the urgent path admits (`block_fraction`)."""
        pre = self._preempt
        if pre is None:
            return False
        admitted = self._try_urgent(pre, request, now, start)
        self._urgent_admitted += URGENT_ALPHA * (float(admitted) - self._urgent_admitted)
        return admitted

    def _try_urgent(self, pre: Preemption, request: Request, now: float, start: float) -> bool:
        """`_admit_urgent`'s checks and, when they pass, the admission itself.

        The worker publishes each boundary it passes without the lock (`boundary`) and takes
        it only when an urgent batch waits. So the plan is checked against the progress it
        was made from once the request is in `pre.urgent`: had the worker passed a boundary
        meanwhile, it may have gone on without seeing the request, and the request is planned
        again for the next boundary. (After the check, the worker sees it at the next one.)"""
        while True:
            progress = pre.progress
            at = pre.next_boundary(now)
            if at is None or len(pre.urgent) >= self.max_batch_size:
                return False
            urgent = sorted([*pre.urgent, request], key=Request.order_key)
            found = self._urgent_service(urgent)
            if found is None:
                return False
            delay = (found[1] - pre.urgent_ms) / 1e3  # what the running batch and the queue wait more
            if at + found[1] / 1e3 > min(r.deadline for r in urgent) or start + delay > pre.deadline:
                return False
            if self._reqs:
                floors = self._floor if self._n_floored else None
                late = self._plan_late(self._hard, floors, start + delay)
                if late and len(late) > len(self._plan_late(self._hard, floors, start)):
                    return False
            before = pre.urgent, pre.urgent_ms
            pre.urgent, pre.urgent_ms = urgent, found[1]
            if pre.progress is progress:
                break
            pre.urgent, pre.urgent_ms = before  # a boundary passed while planning: plan from it
        self._busy_until += delay
        self._queued[request.id] = request
        return True

    def boundary(self, stage: int, now: float) -> bool:
        """The running batch reached its boundary `stage` (0-based) at `now`, seen by the
        worker *without* the lock: it publishes the batch's progress (one attribute, which
        admission reads whole) and is told whether to take the lock and call `interrupt` —
        only when urgent requests wait for this boundary. Taking the lock and asking at
        every boundary cost a batch of one demo request ~30 µs (five boundaries, each run
        with the caches the forward's blocks left); what expires meanwhile, the deadline
        watchdog sheds. Safe without the lock: only the thread running the batch changes
        `running` and `inner`, and `_try_urgent` checks its plan against the progress."""
        pre = self._preempt
        if pre is None or pre.running is None or pre.inner is not None:
            return False
        pre.reached(stage, now)
        return bool(pre.urgent)

    def interrupt(self, now: float, stage: int) -> SchedulerOutput:
        """The running batch reached its stage boundary `stage` (0-based, as in its subnet's
        `stages`) at `now`: shed what can no longer make it, then the urgent batch to run
        before the paused one resumes (no batch: resume at once). The worker reports the
        urgent batch with `update_from_output` as any other."""
        out = SchedulerOutput(shed=self.shed_expired(now))
        pre = self._preempt
        if pre is None or pre.running is None or pre.inner is not None:
            return out
        pre.reached(stage, now)
        if pre.urgent:
            out.batch = pre.inner = self._dispatch_urgent(now)
            pre.resume_at(now + out.batch.predicted_ms / 1e3)  # the paused batch goes on after it
        return out

    def _dispatch_urgent(self, now: float) -> ScheduledBatch:
        """The urgent requests as one batch starting `now`, on the fastest subnet their floors
        allow; the predicted end of the work ahead of the queue moves by its new prediction."""
        pre = self._preempt
        planned = pre.urgent_ms
        urgent = pre.clear()
        sid, ms = self._urgent_service(urgent)
        for r in urgent:
            del self._queued[r.id]
        if self._busy_until is not None:
            self._busy_until += (ms - planned) / 1e3
        return ScheduledBatch(sid, tuple(r.id for r in urgent), ms, now, self.policy.name)

    def stages_of(self, batch: ScheduledBatch) -> tuple[float, ...]:
        """Where the worker calls `boundary` while `batch` runs (shares of its forward): its
        subnet's stage boundaries when it is the batch that may pause, else none."""
        pre = self._preempt
        return pre.stages.get(batch.subnet, ()) if pre is not None and pre.running is batch else ()

    def block_fraction(self) -> float:
        """The share of a batch on a candidate that a tight arrival it would make late waits
        for, in expectation: the whole batch (1.0) without preemption; with it, one stage
        (the longest over the candidates) when the urgent path admits the arrival, and the
        whole batch when it does not — so stage + (1 - stage) × (1 - the share of recent
        tries it admitted). A batch cannot always pause for one: its own members' deadline,
        the queue's plan and the one urgent batch per pause refuse some, and a charge that
        counted one stage for all of them priced long batches as nearly free. Every
        decision asks: the stage share is computed once per candidate set."""
        if self._preempt is None:
            return 1.0
        known = self._block
        if known is None or known[0] is not self.candidates:
            known = self._block = (self.candidates, self._preempt.block_fraction(self.candidates))
        stage = known[1]
        return stage + (1.0 - stage) * (1.0 - self._urgent_admitted)
