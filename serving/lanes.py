"""`LaneRouter`: which of a runtime's lanes a request is offered to, and in what order.

A lane is one engine — a worker thread, its scheduler and queue — over the runtime's one
set of weights. A forward cannot be interrupted, so on one lane a batch on a slow, accurate
subnet holds every request that arrives behind it; one with a tight budget is then refused
or served by the fastest subnet only. With two lanes on two cores, the requests whose
budgets are too short to wait behind such a batch go to a *fast lane*, and the others to a
lane where slow, accurate subnets can run without holding them up: a partition by latency
class, as Clipper (NSDI'17) and Clockwork (OSDI'20) keep separate queues per latency
objective (`elastic bench lanes` measures one lane against two).

The split is by budget: below `split_ms` the fast lane first, else the other lanes first;
each request is offered to the other class's lanes when its own refuse it, so no lane
refuses what another could serve. Within a class, the least loaded lane comes first. A
policy whose every forward costs the same (a static subnet) gains nothing from the split:
every lane is then one class, least loaded first.

The default split is twice the batch-1 service of the most accurate candidate: a request
with less than that cannot wait for one such forward and still be served by another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from elastic.errors import ConfigError


class LaneRouter:
    """The order in which a request is offered to the lanes.

    Args:
        lanes: how many lanes (>= 1).
        split_ms: budgets below it go to the fast lane (lane 0) first; None: no split
            (every lane one class, least loaded first).
    """

    def __init__(self, lanes: int, split_ms: float | None = None):
        if lanes < 1:
            raise ConfigError(f"lanes must be >= 1, got {lanes}")
        if split_ms is not None and not (split_ms > 0 and math.isfinite(split_ms)):
            raise ConfigError(f"lane split must be a finite number of ms > 0, got {split_ms!r}")
        self.lanes = lanes
        self.split_ms = split_ms if lanes > 1 else None

    def order(self, budget_ms: float, loads: Sequence[int]) -> list[int]:
        """Lane indices to offer a request with `budget_ms` to, best first.

        Args:
            loads: requests queued or running per lane (a snapshot; ties keep lane order).
        """
        if self.lanes == 1:
            return [0]
        by_load = sorted(range(self.lanes), key=loads.__getitem__)
        if self.split_ms is None:
            return by_load
        if budget_ms < self.split_ms:
            return [0, *(k for k in by_load if k != 0)]
        slow = [k for k in by_load if k != 0]
        return [*slow, 0]


def default_split_ms(top_service_ms: float) -> float:
    """The default split: twice the batch-1 service (ms) of the most accurate candidate."""
    return 2.0 * top_service_ms
