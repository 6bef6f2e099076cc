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

At the boundary the worker asks the scheduler (`BudgetScheduler.interrupt`), runs the urgent
batch, and resumes the paused one. The urgent batch itself is not preemptible (one level).
What a busy period costs the arrivals it turns away shrinks with it, from the whole batch to
one stage, and the elastic policy prices it so (`ElasticPolicy`, `block_fraction`).

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

from .output import ScheduledBatch
from .request import Request

_INF = math.inf


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
        self.deadline = _INF  # its members' earliest binding deadline
        self.service_ms = 0.0  # its predicted service
        self.done = 0.0  # share of its forward done at `resumed`
        self.resumed = 0.0  # when it (re)started from `done` (s, scheduler clock)
        self.urgent: list[Request] = []  # admitted to run at the next boundary, deadline order
        self.urgent_ms = 0.0  # predicted service of their batch (0 when none)
        self.inner: ScheduledBatch | None = None  # the urgent batch running inside `running`

    def block_fraction(self, subnets: Sequence[int]) -> float:
        """The largest stage share over `subnets`: the part of a batch a tight arrival may
        have to wait for (1.0 when one of them cannot pause)."""
        return max((longest_stage(self.stages.get(s, ())) for s in subnets), default=1.0)

    def start(self, batch: ScheduledBatch, deadline: float, now: float) -> None:
        """`batch` starts at `now`; `deadline` is its members' earliest binding one."""
        pausable = bool(self.stages.get(batch.subnet))
        self.running = batch if pausable else None
        self.deadline = deadline
        self.service_ms = batch.predicted_ms
        self.done = 0.0
        self.resumed = now

    def reached(self, stage: int, now: float) -> None:
        """The running batch reached its boundary `stage` (0-based) at `now`."""
        fractions = self.stages.get(self.running.subnet, ()) if self.running is not None else ()
        if 0 <= stage < len(fractions):
            self.done, self.resumed = fractions[stage], now

    def next_boundary(self, now: float) -> float | None:
        """Predicted time of the running batch's next boundary at or after `now`, after the
        urgent batch running inside it if any (None: no batch may pause, or it is past its
        predicted boundaries)."""
        if self.running is None:
            return None
        for f in self.stages[self.running.subnet]:
            if f > self.done:
                t = self.resumed + (f - self.done) * self.service_ms / 1e3
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
