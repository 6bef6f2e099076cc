"""`QueuePlan`: the engine's cheapest plan of the queue, which queue-aware admission checks.

The plan serves the queue in order (earliest deadline first within a priority), each batch
on the fastest subnet meeting its members' accuracy floors, as large as every member's
deadline allows: the batches the scheduler forms when it must save time, which is how an
elastic model moves queued requests to cheaper subnets to keep them on time. A request is
admitted only if it is on time in that plan and no admitted request that was on time stops
being so (`_admission_check`); the elastic policy plans the rest of the queue with it when
its quick look-ahead finds no choice that keeps everyone on time (`plan_late`).

A mixin of `BudgetScheduler`, over its queue arrays (`_hard`, `_floor`, `_n_floored`) and
its cost table (`front_query`: the plan is `FrontQuery.plan_late`, compiled when built).
"""

from __future__ import annotations

import math

_NO_FLOOR = -math.inf


class QueuePlan:
    """Who misses in the cheapest plan, and whether a new request breaks it (a mixin: see the
    module docstring)."""

    def plan_late(self, hard: list[float], floors: list[float] | None, t: float) -> list[int]:
        """`_plan_late`, for policies: who misses in the engine's cheapest plan from `t`."""
        return self._plan_late(hard, floors, t)

    def _plan_late(self, hard: list[float], floors: list[float] | None, t: float) -> list[int]:
        """Positions in `hard` that miss their deadline in the engine's cheapest plan, from `t`.

        The plan serves the queue in order, each batch on the fastest subnet meeting its
        members' floors, as large as every member's deadline allows (full when it can):
        the batches the scheduler forms when it must save time. A member that cannot make
        its deadline even alone is counted late and skipped (it would be shed).
        """
        return self.front_query().plan_late(hard, floors, t, self.max_batch_size)  # compiled when built

    def _admission_check(self, p: int, deadline: float, floor: float, start: float) -> str | None:
        """Why inserting a request (deadline, floor) at queue position `p` breaks the plan
        (`_plan_late`, after the running batch), or None if the new request and every
        admitted request that was on time in the plan stay on time."""
        floored = self._n_floored > 0 or floor > _NO_FLOOR
        tail = self._hard[:p] + [deadline] + self._hard[p:]
        floors_with = self._floor[:p] + [floor] + self._floor[p:] if floored else None
        late = self._plan_late(tail, floors_with, start)
        if not late:
            return None
        if p in late:
            return f"the queue ahead ({p} requests) would finish it after its deadline"
        before = self._plan_late(self._hard, self._floor if floored else None, start)
        if len(late) > len(before):
            return f"admitting it would make {len(late) - len(before)} admitted request(s) miss their deadline"
        return None
